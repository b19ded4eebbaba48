"""Thin clients for corrald: `Client` (blocking) and `AsyncClient` (trio).

Both speak newline-delimited JSON-RPC 2.0 over the daemon's Unix socket
(framed by `corral.transport`), return the wire models, and raise the
`corral.errors` class of each error code. Typed methods are declared once
(`_Methods`) and shared by both: each takes its keyword arguments from the
method's params model in `corral.params`, so mypy checks their names.
`call(method, **params)` is the untyped way to call anything.

Loading this module builds no trio and no validator: `AsyncClient` lives in
`corral.aclient` (loaded on first use), and each method's result adapter is
built on its first call, so a command pays only for the models it uses.

    with Client() as c:
        print(c.daemon_status().pid)

    async with AsyncClient() as c:
        session = await c.init_parallel_scheduler(repo_path=".")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

from pydantic import TypeAdapter

from corral import errors
from corral.connection import Connection, RawClient, wait_for_socket
from corral.models import (
    Agent,
    AgentCheck,
    Assignment,
    AutoMergeResult,
    CleanupReport,
    CompletedAgent,
    ConflictMatrix,
    ConflictResolutionResult,
    ConflictSummary,
    DaemonStatus,
    Event,
    IntegrationReport,
    LogEntry,
    MergeableBranch,
    MergeBranchResult,
    MergeConflict,
    MergeReport,
    NoParams,
    Params,
    PoolStats,
    SchedulerStats,
    Session,
    Task,
    Violation,
    WorktreeAllocation,
    to_jsonable,
)
from corral.params import (
    AddTaskParams,
    AddTasksParams,
    AgentRef,
    AgentResultParams,
    AllocateParams,
    AutoMergeParams,
    CompleteParams,
    DeallocateByAgentParams,
    DeallocateParams,
    DetectParams,
    FailParams,
    InitParams,
    ListAgentsParams,
    ListTasksParams,
    LogsParams,
    MatrixParams,
    MergeableParams,
    MergeParams,
    MergeWithAiParams,
    PairParams,
    PathParams,
    ResolveParams,
    ScheduleParams,
    SessionParams,
    SummaryParams,
    TaskRef,
    UnsubscribeParams,
)
from corral.paths import socket_path
from corral.transport import MAX_FRAME, Subscription

if TYPE_CHECKING:
    from corral.aclient import AsyncClient

__all__ = ["MAX_FRAME", "AsyncClient", "Client", "socket_path"]

P = ParamSpec("P")
R = TypeVar("R")


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":  # loaded late: it brings trio, which blocking callers never need
        from corral.aclient import AsyncClient

        return AsyncClient
    raise AttributeError(name)


def _params(kwargs: dict[str, Any], aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments as wire params: renamed by `aliases`, None dropped, models dumped."""
    names = aliases or {}
    return {names.get(k, k): to_jsonable(v) for k, v in kwargs.items() if v is not None}


class _Rpc(Generic[P, R]):
    """One daemon method on both clients (a descriptor): its params model and result type.

    The method takes the keyword arguments of `params` (a `corral.params`
    model), whose constructor signature `P` captures, so mypy checks their
    names. Values are not validated here; the daemon is the authority and
    answers -32602. Each keyword is sent under its field's wire (camelCase)
    name, None is left out, and models are dumped. The answer is validated
    as `result`.
    """

    def __init__(self, name: str, params: Callable[P, Params], result: type[R]) -> None:
        self.name = name
        self.model = cast("type[Params]", params)
        self.result = result
        self._adapter: TypeAdapter[R] | None = None
        self._aliases: dict[str, str] | None = None

    @property
    def adapter(self) -> TypeAdapter[R]:
        """The result's validator, built on first use (building all of them costs ~20 ms)."""
        if self._adapter is None:
            self._adapter = TypeAdapter(self.result)
        return self._adapter

    @property
    def aliases(self) -> dict[str, str]:
        if self._aliases is None:
            self._aliases = {n: f.alias or n for n, f in self.model.model_fields.items()}
        return self._aliases

    @overload
    def __get__(self, obj: Client, owner: Any) -> Callable[P, R]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: Any) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __get__(self, obj: None, owner: Any) -> _Rpc[P, R]: ...

    def __get__(self, obj: Any, owner: Any) -> Any:
        if obj is None:
            return self
        name, adapter, aliases = self.name, self.adapter, self.aliases
        if not isinstance(obj, Client):  # an AsyncClient (not imported here: it needs trio)

            async def call_async(*args: P.args, **kwargs: P.kwargs) -> R:
                _keywords_only(name, args)
                result = await obj._request(name, _params(kwargs, aliases))
                return adapter.validate_python(result)

            return call_async

        def call_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            _keywords_only(name, args)
            return adapter.validate_python(obj._request(name, _params(kwargs, aliases)))

        return call_sync

    def __repr__(self) -> str:
        return f"_Rpc({self.name!r}, {self.model.__name__})"


def _keywords_only(name: str, args: tuple[object, ...]) -> None:
    if args:  # what a params model's constructor says too
        raise TypeError(f"{name}() takes keyword arguments only")


class _Methods:
    """Every daemon method with its params model and result type. Params are keywords."""

    daemon_status = _Rpc("daemon_status", NoParams, DaemonStatus)
    daemon_shutdown = _Rpc("daemon_shutdown", NoParams, bool)
    rpc_discover = _Rpc("rpc.discover", NoParams, dict[str, Any])
    init_parallel_scheduler = _Rpc("init_parallel_scheduler", InitParams, Session)
    session_list = _Rpc("session_list", NoParams, list[Session])
    session_get = _Rpc("session_get", SessionParams, Session)
    session_start = _Rpc("session_start", SessionParams, Session)
    session_pause = _Rpc("session_pause", SessionParams, Session)
    session_resume = _Rpc("session_resume", SessionParams, Session)
    parallel_add_task = _Rpc("parallel_add_task", AddTaskParams, Task)
    parallel_add_tasks = _Rpc("parallel_add_tasks", AddTasksParams, list[Task])
    parallel_list_tasks = _Rpc("parallel_list_tasks", ListTasksParams, list[Task])
    parallel_get_task = _Rpc("parallel_get_task", TaskRef, Task)
    parallel_complete_task = _Rpc("parallel_complete_task", CompleteParams, list[Task])
    parallel_fail_task = _Rpc("parallel_fail_task", FailParams, list[Task])
    parallel_cancel_task = _Rpc("parallel_cancel_task", TaskRef, list[Task])
    parallel_schedule_next = _Rpc(
        "parallel_schedule_next", ScheduleParams, cast("type[Agent | None]", Agent | None)
    )
    parallel_start_next = _Rpc("parallel_start_next", SessionParams, Assignment)
    parallel_handle_agent_result = _Rpc(
        "parallel_handle_agent_result", AgentResultParams, cast("type[Agent | None]", Agent | None)
    )
    parallel_stop_all = _Rpc("parallel_stop_all", SessionParams, list[Task])
    parallel_get_scheduler_stats = _Rpc(
        "parallel_get_scheduler_stats", SessionParams, SchedulerStats
    )
    parallel_get_pool_stats = _Rpc("parallel_get_pool_stats", SessionParams, PoolStats)
    agents_check = _Rpc("agents_check", NoParams, list[AgentCheck])
    parallel_check_violations = _Rpc("parallel_check_violations", SessionParams, list[str])
    parallel_list_violations = _Rpc("parallel_list_violations", SessionParams, list[Violation])
    parallel_get_agent_logs = _Rpc("parallel_get_agent_logs", LogsParams, list[LogEntry])
    parallel_poll_completed = _Rpc("parallel_poll_completed", NoParams, list[CompletedAgent])
    parallel_list_agents = _Rpc("parallel_list_agents", ListAgentsParams, list[Agent])
    parallel_get_agent = _Rpc("parallel_get_agent", AgentRef, Agent)
    worktree_allocate = _Rpc("worktree_allocate", AllocateParams, WorktreeAllocation)
    worktree_deallocate = _Rpc("worktree_deallocate", DeallocateParams, bool)
    worktree_deallocate_by_agent = _Rpc(
        "worktree_deallocate_by_agent", DeallocateByAgentParams, bool
    )
    worktree_get_allocations = _Rpc(
        "worktree_get_allocations", SessionParams, list[WorktreeAllocation]
    )
    worktree_cleanup_orphaned = _Rpc("worktree_cleanup_orphaned", SessionParams, list[str])
    worktree_cleanup_report = _Rpc("worktree_cleanup_report", SessionParams, CleanupReport)
    conflicts_detect = _Rpc("conflicts_detect", DetectParams, list[MergeConflict])
    conflicts_can_merge_safely = _Rpc("conflicts_can_merge_safely", PairParams, bool)
    conflicts_get_summary = _Rpc("conflicts_get_summary", SummaryParams, ConflictSummary)
    conflicts_matrix = _Rpc("conflicts_matrix", MatrixParams, ConflictMatrix)
    conflicts_resolve = _Rpc("conflicts_resolve", ResolveParams, ConflictResolutionResult)
    merge_completed_branches = _Rpc("merge_completed_branches", MergeParams, MergeReport)
    git_is_repository = _Rpc("git_is_repository", PathParams, bool)
    git_init_repository = _Rpc("git_init_repository", PathParams, str)
    get_mergeable_branches = _Rpc("get_mergeable_branches", MergeableParams, list[MergeableBranch])
    auto_merge_completed_branches = _Rpc(
        "auto_merge_completed_branches", AutoMergeParams, AutoMergeResult
    )
    merge_branch_with_ai = _Rpc("merge_branch_with_ai", MergeWithAiParams, MergeBranchResult)
    parallel_retry_task = _Rpc("parallel_retry_task", TaskRef, list[Task])
    integration_status = _Rpc("integration_status", SessionParams, IntegrationReport)
    task_integrate = _Rpc("task_integrate", TaskRef, Task)
    # events_subscribe is not here: it needs a connection of its own (see `events()`).
    events_unsubscribe = _Rpc("events_unsubscribe", UnsubscribeParams, bool)


class Client(_Methods, RawClient):
    """Blocking client; one request at a time per instance (thread-safe)."""

    def connect(self) -> Client:
        RawClient.connect(self)
        return self

    def __enter__(self) -> Client:
        return self.connect()

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` with named params and return its raw JSON result."""
        return self._request(method, _params(params))

    def events(
        self,
        topics: list[str] | None = None,
        *,
        session_id: str | None = None,
        since_seq: int | None = None,
        agent_id: str | None = None,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """Subscribe and yield events forever, resuming after reconnects.

        Uses a connection of its own. After a dropped connection (daemon
        restart) it reconnects and resumes from the last seq it yielded, so
        nothing is missed or repeated; with `reconnect=False` it raises
        `ConnectionLost` instead. A `lagged` notice (this reader fell behind)
        resubscribes from the last seq on the same connection either way.
        """
        sub = Subscription(topics, session_id, since_seq, agent_id)
        while True:
            try:
                with Connection.open(self.path, None) as conn:
                    sub.new_connection()
                    while True:
                        if sub.wants_subscribe:
                            conn.send(sub.subscribe())
                        event = sub.receive(conn.receive())
                        if event is not None:
                            yield event
            except (errors.ConnectionLost, errors.DaemonNotRunning):
                if not reconnect:
                    raise
                wait_for_socket(self.path)
