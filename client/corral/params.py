"""The params of every RPC method: one model each, shared by the daemon and the client.

The daemon validates a request's params with its method's model (-32602 with
the errors otherwise); the client takes its keyword arguments from the same
model, so a misspelt argument is a type error before anything is sent.
Unknown keys are refused (`Params` forbids extras). camelCase and snake_case
are both accepted on the wire.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from corral.models import (
    ErrorCategory,
    MergeConflict,
    NoParams,
    Params,
    ResolutionStrategy,
    SchedulerConfig,
    TaskId,
    TaskSpec,
    TaskState,
    TaskStatus,
)

__all__ = [
    "AddTaskParams",
    "AddTasksParams",
    "AgentRef",
    "AgentResultParams",
    "AllocateParams",
    "AutoMergeConfig",
    "AutoMergeParams",
    "BranchRef",
    "CompleteParams",
    "DeallocateByAgentParams",
    "DeallocateParams",
    "DetectParams",
    "FailParams",
    "InitParams",
    "ListAgentsParams",
    "ListTasksParams",
    "LogsParams",
    "MatrixParams",
    "MergeParams",
    "MergeWithAiParams",
    "MergeableParams",
    "NoParams",
    "PairParams",
    "PathParams",
    "ResolveParams",
    "ScheduleParams",
    "SessionParams",
    "SubscribeParams",
    "SummaryParams",
    "TaskRef",
    "UnsubscribeParams",
]

#: Most tasks one `parallel_add_tasks` call may carry.
MAX_BATCH_TASKS = 100_000
#: The longest path the kernel takes (PATH_MAX less its NUL) and name in it (NAME_MAX).
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255


def check_path(value: str) -> str:
    """A path the kernel can take: no NUL, at most PATH_MAX bytes, no name over NAME_MAX."""
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    if len(value.encode(errors="surrogatepass")) > MAX_PATH_BYTES:
        raise ValueError(f"path is longer than {MAX_PATH_BYTES} bytes")
    if any(len(name.encode(errors="surrogatepass")) > MAX_NAME_BYTES for name in value.split("/")):
        raise ValueError(f"path has a name longer than {MAX_NAME_BYTES} bytes")
    return value


def check_absolute(value: str) -> str:
    """The daemon's working directory is not the client's: relative paths are refused."""
    if not os.path.isabs(value):
        raise ValueError(
            f"{value[:200]!r} is not an absolute path: the daemon cannot know what it is"
            " relative to"
        )
    return check_path(value)


PathText = Annotated[str, AfterValidator(check_path)]
AbsolutePath = Annotated[str, AfterValidator(check_absolute)]


# --- sessions ----------------------------------------------------------------------


class InitParams(Params):
    config: SchedulerConfig | None = None
    repo_path: AbsolutePath
    session_id: TaskId | None = None


class SessionParams(Params):
    session_id: str | None = None


class ScheduleParams(SessionParams):
    """The seed's `{sessionId, projectPath}`: see `Call.seed_session` for how they map."""

    project_path: AbsolutePath | None = None


# --- tasks -------------------------------------------------------------------------


class AddTaskParams(Params):
    """The seed's `{task}`, or corral's flat form (the task's fields beside `sessionId`).

    Both at once is refused: a `task` with flat fields beside it would leave
    one of them silently unused.
    """

    session_id: str | None = None
    task: TaskSpec

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        session = {k: v for k, v in data.items() if k in ("sessionId", "session_id")}
        rest = {k: v for k, v in data.items() if k not in session}
        if "task" not in rest:
            return {**session, "task": rest}
        flat = sorted(k for k in rest if k != "task")
        if flat:
            raise ValueError(
                f"give the task either as `task` or as flat fields, not both: {', '.join(flat)}"
                " given beside `task`"
            )
        return data


class AddTasksParams(Params):
    session_id: str | None = None
    tasks: list[TaskSpec] = Field(max_length=MAX_BATCH_TASKS)


class TaskRef(Params):
    session_id: str | None = None
    task_id: str


class CompleteParams(TaskRef):
    actual_tokens: int | None = Field(None, ge=0)


class FailParams(TaskRef):
    error: str = "failed"
    error_category: ErrorCategory = ErrorCategory.UNKNOWN


class AgentResultParams(Params):
    """The seed's `{agentId, taskId, sessionId, success, error}`."""

    session_id: str | None = None
    agent_id: str
    task_id: str
    success: bool
    error: str | None = Field(None, max_length=10_000)


class ListTasksParams(Params):
    session_id: str | None = None
    state: TaskState | None = None
    status: TaskStatus | None = None
    #: at most this many tasks (a page); without it, all of them
    limit: int | None = Field(None, ge=1, le=100_000)
    #: the id of the last task of the previous page: this page starts after it
    cursor: str | None = None


# --- events ------------------------------------------------------------------------


class SubscribeParams(Params):
    topics: list[str] | None = None
    session_id: str | None = None
    since_seq: int | None = Field(None, ge=0)
    #: only events whose payload names this agent (`agentId`)
    agent_id: str | None = None


class UnsubscribeParams(Params):
    subscription_id: str


# --- agents ------------------------------------------------------------------------


class AgentRef(Params):
    agent_id: str


class LogsParams(AgentRef):
    offset: int = Field(0, ge=0)
    limit: int = Field(500, ge=1, le=100_000)


class ListAgentsParams(Params):
    session_id: str | None = None
    live: bool = False
    #: at most this many agents (a page); without it, all of them
    limit: int | None = Field(None, ge=1, le=100_000)
    #: the id of the last agent of the previous page: this page starts after it
    cursor: str | None = None


# --- worktrees ---------------------------------------------------------------------


class AllocateParams(Params):
    session_id: str | None = None
    agent_id: str
    task_id: TaskId
    branch: str | None = None


class DeallocateParams(Params):
    session_id: str | None = None
    worktree_path: PathText
    force: bool = False


class DeallocateByAgentParams(Params):
    session_id: str | None = None
    agent_id: str
    force: bool = False


# --- conflicts and merging ---------------------------------------------------------


class BranchRef(Params):
    branch: str = Field(min_length=1)
    agent_id: str | None = None


class DetectParams(Params):
    session_id: str | None = None
    branches: list[BranchRef | tuple[str, str | None]] | None = None
    target: str | None = None


class PairParams(Params):
    session_id: str | None = None
    branch1: str = Field(min_length=1)
    branch2: str = Field(min_length=1)


class SummaryParams(Params):
    conflicts: list[MergeConflict]


class MatrixParams(Params):
    session_id: str | None = None
    branches: list[str] | None = None


class ResolveParams(Params):
    session_id: str | None = None
    conflict: MergeConflict
    strategy: ResolutionStrategy
    base_branch: str | None = None
    priority_branch: str | None = None


class MergeParams(Params):
    session_id: str | None = None
    target_branch: str | None = None
    dry_run: bool = False


class PathParams(Params):
    path: AbsolutePath


class MergeableParams(Params):
    """The seed's `{sessionId, repoPath}`."""

    session_id: str | None = None
    repo_path: AbsolutePath | None = None


class AutoMergeConfig(Params):
    target_branch: str | None = Field(None, min_length=1, max_length=250)
    delete_branches: bool = False
    cleanup_worktrees: bool = False
    use_ai_conflict_resolution: bool = False


class AutoMergeParams(MergeableParams):
    config: AutoMergeConfig = Field(default_factory=AutoMergeConfig)


class MergeWithAiParams(Params):
    """The seed's `{repoPath, sourceBranch, targetBranch, taskId}`."""

    session_id: str | None = None
    repo_path: AbsolutePath | None = None
    source_branch: str = Field(min_length=1, max_length=250)
    target_branch: str = Field(min_length=1, max_length=250)
    task_id: str | None = None
