"""One exception class per JSON-RPC error code.

The daemon raises these from method handlers; the RPC layer turns them into
error objects with `to_wire()`; the client turns error objects back into the
same classes with `from_wire()`. Codes are append-only: a test pins the table.

Groups: JSON-RPC spec codes (-32700..-32603), daemon conditions
(-32000..-32099), then domain codes: 1xxx session/task, 2xxx agent/limits,
3xxx worktree, 4xxx conflicts/merge, 5xxx config, 6xxx events, 7xxx storage.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CorralError(Exception):
    """Base of every error corral reports over the wire."""

    code: ClassVar[int] = -32603
    default_message: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        self.data: dict[str, Any] = dict(data or {})
        super().__init__(self.message)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            wire["data"] = self.data
        return wire

    @staticmethod
    def from_wire(error: dict[str, Any]) -> CorralError:
        """Rebuild the exception for a JSON-RPC error object (unknown codes too)."""
        code = error.get("code")
        message = str(error.get("message", ""))
        raw = error.get("data")
        data = raw if isinstance(raw, dict) else ({} if raw is None else {"detail": raw})
        cls = ERROR_CLASSES.get(code) if isinstance(code, int) else None
        if cls is None:
            exc = UnknownError(message, data)
            exc.code_seen = code if isinstance(code, int) else None
            return exc
        return cls(message, data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, message={self.message!r})"


class UnknownError(CorralError):
    """An error code this client does not know (a newer daemon)."""

    code = -32099
    default_message = "Unknown error"
    code_seen: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        if self.code_seen is not None:
            wire["code"] = self.code_seen  # relay a newer daemon's code unchanged
        return wire


# --- JSON-RPC 2.0 spec -------------------------------------------------------
class ParseError(CorralError):
    code = -32700
    default_message = "Parse error"


class InvalidRequest(CorralError):
    code = -32600
    default_message = "Invalid Request"


class MethodNotFound(CorralError):
    code = -32601
    default_message = "Method not found"


class InvalidParams(CorralError):
    code = -32602
    default_message = "Invalid params"


class InternalError(CorralError):
    code = -32603
    default_message = "Internal error"


# --- daemon conditions -------------------------------------------------------
class ServerError(CorralError):
    code = -32000
    default_message = "Server error"


class ShuttingDown(CorralError):
    code = -32001
    default_message = "The daemon is shutting down"


class TooManyConnections(CorralError):
    code = -32002
    default_message = "Too many connections"


class FrameTooLarge(CorralError):
    code = -32003
    default_message = "Frame too large"


class FrameTimeout(CorralError):
    code = -32004
    default_message = "Incomplete frame timed out"


class PermissionDenied(CorralError):
    code = -32005
    default_message = "Peer uid does not match the daemon's"


class BatchTooLarge(CorralError):
    """A JSON-RPC batch with more items than the daemon takes (`data.limit`)."""

    code = -32006
    default_message = "Batch has too many requests; split it"


# --- client-side conditions (never sent by the daemon) -----------------------
class DaemonNotRunning(CorralError):
    code = -32090
    default_message = (
        "corrald is not running. Start it with `corral daemon` (foreground) or "
        "`systemctl --user enable --now corrald.socket`."
    )


class ConnectionLost(CorralError):
    code = -32091
    default_message = "The connection to corrald was lost"


# --- 1xxx sessions and tasks -------------------------------------------------
class SessionNotFound(CorralError):
    code = 1001
    default_message = "Session not found"


class SessionBusy(CorralError):
    code = 1002
    default_message = "Session has running agents"


class TaskNotFound(CorralError):
    code = 1003
    default_message = "Task not found"


class UnknownDependency(CorralError):
    code = 1004
    default_message = "Unknown dependency"


class DependencyCycle(CorralError):
    code = 1005
    default_message = "Dependency cycle"


class DuplicateTaskId(CorralError):
    code = 1006
    default_message = "Duplicate task id"


class InvalidTaskId(CorralError):
    code = 1007
    default_message = "Invalid task id"


class InvalidStateTransition(CorralError):
    code = 1008
    default_message = "Invalid state transition"


class SessionRequired(CorralError):
    code = 1009
    default_message = "sessionId is required when there is not exactly one session"


class NotAGitRepository(CorralError):
    code = 1010
    default_message = "Not a git repository"


class SessionAborted(CorralError):
    code = 1011
    default_message = "Session aborted: no new task starts"


# --- 2xxx agents and limits --------------------------------------------------
class AgentNotFound(CorralError):
    code = 2001
    default_message = "Agent not found"


class UnknownAgentType(CorralError):
    code = 2002
    default_message = "Unknown agent type"


class ExecutableNotFound(CorralError):
    code = 2003
    default_message = "Agent executable not found"


class NoCapacity(CorralError):
    code = 2004
    default_message = "No slot or resources available to start an agent"


class NothingReady(CorralError):
    code = 2005
    default_message = "No task is ready"


# --- 3xxx worktrees ----------------------------------------------------------
class WorktreeDirty(CorralError):
    code = 3001
    default_message = "Worktree has uncommitted changes"


class PathOutsideBase(CorralError):
    code = 3002
    default_message = "Path is outside the worktree base directory"


class BranchCheckedOut(CorralError):
    code = 3003
    default_message = "Branch is checked out in another worktree"


class InvalidBranchName(CorralError):
    code = 3004
    default_message = "Invalid branch name"


class RepositoryNotFound(CorralError):
    code = 3005
    default_message = "Repository not found"


class WorktreeNotFound(CorralError):
    code = 3006
    default_message = "Worktree not found"


class RepositoryEmpty(CorralError):
    code = 3007
    default_message = "Repository has no commits yet"


class BaseBranchNotFound(CorralError):
    code = 3008
    default_message = "Base branch not found"


class GitFailure(CorralError):
    code = 3009
    default_message = "git operation failed"


class WorktreeInUse(CorralError):
    """The worktree is allocated to another session's task (`data.sessionId`, `data.taskId`).

    Worktrees are named by repository and task id, so two sessions on one
    repository with the same task id would share one.
    """

    code = 3010
    default_message = "Worktree is allocated to another session's task"


# --- 4xxx conflicts and merging ----------------------------------------------
class BranchNotFound(CorralError):
    code = 4001
    default_message = "Branch not found"


class MergeConflictError(CorralError):
    code = 4002
    default_message = "Merge has conflicts"


class TargetMoved(CorralError):
    code = 4003
    default_message = "Target branch moved during the merge"


class TargetDirty(CorralError):
    code = 4004
    default_message = "Target worktree has uncommitted changes"


class ResolutionFailed(CorralError):
    code = 4005
    default_message = "Conflict could not be resolved with that strategy"


# --- 5xxx configuration ------------------------------------------------------
class ConfigInvalid(CorralError):
    code = 5001
    default_message = "Invalid configuration"


# --- 6xxx events -------------------------------------------------------------
class EventsExpired(CorralError):
    code = 6001
    default_message = "sinceSeq is older than the retained event window"


class SubscriptionNotFound(CorralError):
    code = 6002
    default_message = "Subscription not found"


# --- 7xxx storage ------------------------------------------------------------
class StorageError(CorralError):
    """The state file could not be written: nothing of the request was kept."""

    code = 7001
    default_message = "The state file could not be written"


class StorageFull(StorageError):
    """No space for the state file: free some and retry; nothing of the request was kept."""

    code = 7002
    default_message = "The disk holding the state file is full"


class StorageReadOnly(StorageError):
    """The state file or its filesystem refuses writes; nothing of the request was kept."""

    code = 7003
    default_message = "The state file is read-only"


class StateFileGone(StorageError):
    """The state file was removed or replaced under the daemon; it records nothing more.

    `data.rescued`, when present, is a copy of everything the file held.
    """

    code = 7004
    default_message = "The state file was removed or replaced while the daemon ran"


def _collect() -> dict[int, type[CorralError]]:
    table: dict[int, type[CorralError]] = {}
    stack: list[type[CorralError]] = [CorralError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls is CorralError:
            continue
        if cls.code in table:
            raise RuntimeError(f"duplicate error code {cls.code}: {cls} and {table[cls.code]}")
        table[cls.code] = cls
    return dict(sorted(table.items()))


#: code -> class; pinned by tests/test_errors.py (codes are append-only)
ERROR_CLASSES: dict[int, type[CorralError]] = _collect()
