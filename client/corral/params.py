"""The params of every RPC method: one model each, shared by the daemon and the client.

The daemon validates a request's params with its method's model (-32602 with
the errors otherwise); the client takes its keyword arguments from the same
model, so a misspelt argument is a type error before anything is sent.
Unknown keys are refused (`Params` forbids extras). camelCase and snake_case
are both accepted on the wire.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator, Field

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
    "AllocateParams",
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
    "NoParams",
    "PairParams",
    "ResolveParams",
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


# --- tasks -------------------------------------------------------------------------


class AddTaskParams(TaskSpec):
    session_id: str | None = None


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
