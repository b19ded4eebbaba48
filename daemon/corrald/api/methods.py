"""The RPC methods: one thin function each (validate, call the engine, return a model).

Each function's docstring is its documentation: it feeds `rpc.discover`, the
README's RPC reference and the CLI help. Params are by name (camelCase or
snake_case); positional params map onto the fields in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from corral import __version__, errors
from corral.models import (
    Agent,
    Assignment,
    CgroupFeatures,
    CleanupReport,
    CompletedAgent,
    ConflictMatrix,
    ConflictResolutionResult,
    ConflictSummary,
    DaemonStatus,
    ErrorCategory,
    Event,
    LogEntry,
    MergeConflict,
    MergeReport,
    NoParams,
    Params,
    PoolStats,
    ResolutionStrategy,
    SchedulerConfig,
    SchedulerStats,
    Session,
    SessionStatus,
    Task,
    TaskId,
    TaskSpec,
    TaskStatus,
    Violation,
    Wire,
    WorktreeAllocation,
    overlay,
)
from corrald.core import conflicts as conflict_rules
from corrald.core.scheduler import merge_order
from corrald.git import worktrees
from corrald.git.merge import detect, queue, resolve
from corrald.git.repo import repo_root
from corrald.pool.pool import AgentPool
from corrald.rpc.dispatch import Registry, openrpc_document
from corrald.rpc.server import Connection
from corrald.state.engine import Engine, SessionState
from corrald.state.events import pump


@dataclass
class DaemonInfo:
    """Facts about the running daemon that `daemon_status` reports."""

    socket_path: str
    state_dir: str
    cgroup: CgroupFeatures
    request_shutdown: Callable[[], None]
    defaults: SchedulerConfig = field(default_factory=SchedulerConfig)
    started_at: float = field(default_factory=time.monotonic)
    connections: Callable[[], int] = lambda: 0


@dataclass
class Call:
    """What every handler gets: engine, pool, daemon facts, the calling connection."""

    engine: Engine
    pool: AgentPool
    daemon: DaemonInfo
    conn: Connection


methods: Registry[Call] = Registry()


# --- daemon ------------------------------------------------------------------------


@methods.method()
async def daemon_status(call: Call, p: NoParams) -> DaemonStatus:
    """Report the daemon's version, pid, uptime, connections, sessions and cgroup support.

    Result: DaemonStatus. `cgroup` says whether per-agent cgroups (v2) are
    available here, with which controllers, and why not if they are not;
    `executor` is what runs agents and its capacity (cores, memory).
    """
    info = call.daemon
    return DaemonStatus(
        version=__version__,
        pid=os.getpid(),
        uptime_secs=round(time.monotonic() - info.started_at, 3),
        connections=info.connections(),
        sessions=len(call.engine.sessions),
        subscribers=len(call.engine.bus.subscribers),
        event_seq=call.engine.bus.seq,
        executor=call.pool.executor.capacity(),
        socket_path=info.socket_path,
        state_dir=info.state_dir,
        cgroup=info.cgroup,
    )


@methods.method()
async def daemon_shutdown(call: Call, p: NoParams) -> bool:
    """Shut the daemon down gracefully.

    Accepting stops at once; running agents are stopped and their tasks go back
    to `ready` (worktrees and branches kept); in-flight requests finish within
    the shutdown grace. Result: true (sent before the daemon exits).
    """
    call.daemon.request_shutdown()
    return True


@methods.method("rpc.discover")
async def rpc_discover(call: Call, p: NoParams) -> dict[str, Any]:
    """Return the OpenRPC document describing every method, its params and result."""
    return openrpc_document(
        methods,
        title="corrald",
        version=__version__,
        description="corral daemon: parallel AI coding agents in git worktrees",
    )


# --- sessions ----------------------------------------------------------------------


class InitParams(Params):
    config: SchedulerConfig | None = None
    repo_path: str
    session_id: TaskId | None = None


class SessionParams(Params):
    session_id: str | None = None


@methods.method()
async def init_parallel_scheduler(call: Call, p: InitParams) -> Session:
    """Create a session (one scheduler run on one repository).

    Params: `config` (SchedulerConfig; fields not given come from the daemon
    config's `[defaults]`, then the built-in defaults), `repoPath` (a git work
    tree), `sessionId` (optional; generated if omitted). Calling it again with
    an existing `sessionId` replaces that session's config and keeps its tasks,
    unless agents are running: then it fails with 1002 SessionBusy.
    Errors: 1010 NotAGitRepository, 1002 SessionBusy, 1007 for a bad id.
    """
    defaults = call.daemon.defaults
    config = defaults if p.config is None else overlay(defaults, p.config)
    root = await repo_root(p.repo_path)
    return call.engine.init_session(config, root, p.session_id)


@methods.method()
async def session_list(call: Call, p: NoParams) -> list[Session]:
    """List every session, oldest first."""
    return [s.session for s in call.engine.sessions.values()]


@methods.method()
async def session_get(call: Call, p: SessionParams) -> Session:
    """Return one session. `sessionId` may be omitted when exactly one exists.

    Errors: 1001 SessionNotFound, 1009 SessionRequired.
    """
    return call.engine.session(p.session_id).session


@methods.method()
async def session_start(call: Call, p: SessionParams) -> Session:
    """Start scheduling: tasks start by themselves as slots and resources allow.

    Errors: 1001, 1009, 1008 InvalidStateTransition (e.g. from stopping).
    """
    return call.engine.set_status(p.session_id, SessionStatus.RUNNING)


@methods.method()
async def session_pause(call: Call, p: SessionParams) -> Session:
    """Pause a running session: no new task starts; running agents continue.

    Errors: 1001, 1009, 1008 when the session is not running.
    """
    return call.engine.set_status(p.session_id, SessionStatus.PAUSED)


@methods.method()
async def session_resume(call: Call, p: SessionParams) -> Session:
    """Resume a paused session. Errors: 1001, 1009, 1008 when not paused."""
    engine = call.engine
    state = engine.session(p.session_id)
    if state.session.status is not SessionStatus.PAUSED:
        raise errors.InvalidStateTransition(
            f"session {state.id} is {state.session.status.value}, not paused",
            {"sessionId": state.id, "from": state.session.status.value, "to": "running"},
        )
    return engine.set_status(state.id, SessionStatus.RUNNING)


# --- tasks -------------------------------------------------------------------------


class AddTaskParams(TaskSpec):
    session_id: str | None = None


class AddTasksParams(Params):
    session_id: str | None = None
    tasks: list[TaskSpec] = Field(max_length=100_000)


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
    status: TaskStatus | None = None


@methods.method()
async def parallel_add_task(call: Call, p: AddTaskParams) -> Task:
    """Add one task to a session.

    Params: TaskSpec fields (`id`, `title`, `description`, `priority`,
    `dependencies`, `estimatedTokens`, `agentType`) and `sessionId`.
    Errors: 1004 UnknownDependency, 1006 DuplicateTaskId, -32602 for an
    invalid id (ids match [A-Za-z0-9][A-Za-z0-9._-]{0,63}, no '..').
    """
    spec = TaskSpec.model_validate(p.model_dump(exclude={"session_id"}))
    return call.engine.add_tasks(p.session_id, [spec])[0]


@methods.method()
async def parallel_add_tasks(call: Call, p: AddTasksParams) -> list[Task]:
    """Add a batch of tasks, all or nothing.

    The whole batch is validated first: duplicate ids (1006), unknown
    dependencies (1004, `data.missing`) and cycles (1005, `data.cycle` lists the
    cycle in order) reject the batch and nothing of it is kept.
    """
    return call.engine.add_tasks(p.session_id, p.tasks)


@methods.method()
async def parallel_list_tasks(call: Call, p: ListTasksParams) -> list[Task]:
    """List a session's tasks in insertion order, optionally only one `status`."""
    return call.engine.list_tasks(p.session_id, p.status)


@methods.method()
async def parallel_get_task(call: Call, p: TaskRef) -> Task:
    """Return one task. Errors: 1003 TaskNotFound."""
    return call.engine.get_task(p.session_id, p.task_id)


@methods.method()
async def parallel_complete_task(call: Call, p: CompleteParams) -> list[Task]:
    """Mark an in-progress task completed (for externally run work).

    Result: every task whose status changed (the task and newly ready
    dependents). Errors: 1003, 1008 InvalidStateTransition.
    """
    return call.engine.complete_task(p.session_id, p.task_id, p.actual_tokens)


@methods.method()
async def parallel_fail_task(call: Call, p: FailParams) -> list[Task]:
    """Report an in-progress task as failed; the session's errorStrategy decides.

    retry: `retry_wait` with backoff while retries remain, else `failed` and
    every transitive dependent `blocked`. skip: `skipped`, dependents proceed.
    abort: `failed`, dependents blocked, no new task starts in the session.
    Result: every task whose status changed. Errors: 1003, 1008.
    """
    return call.engine.fail_task(p.session_id, p.task_id, p.error, p.error_category)


@methods.method()
async def parallel_cancel_task(call: Call, p: TaskRef) -> list[Task]:
    """Cancel a task (stopping its agent if one runs); its dependents become blocked.

    Errors: 1003, 1008 when the task already ended.
    """
    state = call.engine.session(p.session_id)
    task = state.scheduler.get(p.task_id)
    if call.pool.stop(state, p.task_id, cancel=True):
        await call.pool.wait_stopped(state, p.task_id)
        return [state.scheduler.get(p.task_id), *_blocked_by(state, p.task_id)]
    if task.status.terminal:
        raise errors.InvalidStateTransition(
            f"task {p.task_id} already ended ({task.status.value})",
            {"taskId": p.task_id, "from": task.status.value, "to": "cancelled"},
        )
    return call.engine.cancel_task(state.id, p.task_id)


def _blocked_by(state: SessionState, task_id: str) -> list[Task]:
    return [t for t in state.scheduler.tasks(TaskStatus.BLOCKED) if t.blocked_by == task_id]


@methods.method()
async def parallel_schedule_next(call: Call, p: SessionParams) -> Assignment:
    """Start the next task the strategy picks, now, and return the assignment.

    Result: Assignment with `task` and `agent`, or neither and a `reason`
    (no slot, nothing ready, paused). Errors: 1011 SessionAborted.
    """
    state = call.engine.session(p.session_id)
    task, agent, reason = await call.pool.schedule_next(state)
    return Assignment(task=task, agent=agent, reason=reason or None)


@methods.method()
async def parallel_stop_all(call: Call, p: SessionParams) -> list[Task]:
    """Stop every running agent of the session, and pause it if it was running.

    Their tasks return to `ready` without consuming a retry and keep their
    worktree and branch. A running session is paused first, so the tasks do
    not start again at once; `session_resume` carries on. Result: the
    requeued tasks.
    """
    state = call.engine.session(p.session_id)
    if state.session.status is SessionStatus.RUNNING:
        call.engine.set_status(state.id, SessionStatus.PAUSED)
    stopping = [r.task_id for r in call.pool.running.values() if r.state is state]
    call.pool.stop(state, cancel=False)
    await call.pool.wait_stopped(state)
    return [state.scheduler.get(task_id) for task_id in stopping]


@methods.method()
async def parallel_get_scheduler_stats(call: Call, p: SessionParams) -> SchedulerStats:
    """Counts of tasks by status, plus the session's strategy and status."""
    return call.engine.stats(p.session_id)


# --- events ------------------------------------------------------------------------


class SubscribeParams(Params):
    topics: list[str] | None = None
    session_id: str | None = None
    since_seq: int | None = Field(None, ge=0)


class SubscribeResult(Wire):
    subscription_id: str
    seq: int
    oldest: int


class UnsubscribeParams(Params):
    subscription_id: str


@methods.method()
async def events_subscribe(call: Call, p: SubscribeParams) -> SubscribeResult:
    """Push events to this connection as `event` notifications `{seq, type, sessionId, payload}`.

    Params: `topics` (event types or their prefixes: `task`, `agent`, `log`,
    `violation`, `conflicts`, `merge`, `session`; all if omitted), `sessionId`
    (only that session's events), `sinceSeq` (the last seq the client saw:
    events after it are replayed first, then live ones follow).
    Result: `{subscriptionId, seq, oldest}`: the newest seq now and the oldest
    kept. A subscriber whose queue overflows gets a `lagged` notification and
    is dropped; resuming with `sinceSeq` then misses nothing.
    Errors: 6001 EventsExpired when `sinceSeq` is outside the kept window
    (`data.oldest` says how far back it goes).
    """
    bus = call.engine.bus
    if p.session_id is not None:
        call.engine.session(p.session_id)
    sub = bus.subscribe(p.topics, p.session_id, p.since_seq)
    conn = call.conn
    conn.state.setdefault("subscriptions", set()).add(sub.id)
    conn.on_close.append(lambda: bus.unsubscribe(sub.id))

    async def deliver(events: list[Event]) -> bool:
        return await conn.send_many(
            [{"jsonrpc": "2.0", "method": "event", "params": e.to_wire()} for e in events]
        )

    async def lagged() -> None:
        await conn.notify(
            "lagged",
            {
                "subscriptionId": sub.id,
                "lastSeq": bus.seq,
                "oldest": bus.oldest,
                "reason": "subscriber queue overflowed; resubscribe with sinceSeq",
            },
        )

    assert conn.background is not None
    conn.background.start_soon(pump, sub, deliver, lagged)
    return SubscribeResult(subscription_id=sub.id, seq=bus.seq, oldest=bus.oldest)


@methods.method()
async def events_unsubscribe(call: Call, p: UnsubscribeParams) -> bool:
    """Stop a subscription made on this connection. Errors: 6002 SubscriptionNotFound."""
    mine = call.conn.state.get("subscriptions", set())
    if p.subscription_id not in mine or not call.engine.bus.unsubscribe(p.subscription_id):
        raise errors.SubscriptionNotFound(data={"subscriptionId": p.subscription_id})
    mine.discard(p.subscription_id)
    return True


# --- agents ------------------------------------------------------------------------


class AgentRef(Params):
    agent_id: str


class LogsParams(AgentRef):
    offset: int = Field(0, ge=0)
    limit: int = Field(500, ge=1, le=100_000)


class ListAgentsParams(Params):
    session_id: str | None = None
    live: bool = False


def _agent(call: Call, agent_id: str) -> Agent:
    running = call.pool.running.get(agent_id)
    if running is not None:
        return running.agent
    agent = call.engine.store.agent(agent_id)
    if agent is not None:
        return agent
    raise errors.AgentNotFound(f"no agent {agent_id!r}", {"agentId": agent_id})


@methods.method()
async def parallel_list_agents(call: Call, p: ListAgentsParams) -> list[Agent]:
    """List a session's agents (every attempt), with live CPU/memory for running ones.

    `live: true` lists only running agents.
    """
    state = call.engine.session(p.session_id)
    live = {r.agent.id: r.agent for r in call.pool.running.values() if r.state is state}
    if p.live:
        return list(live.values())
    return [live.get(a.id, a) for a in call.engine.store.agents(state.id)]


@methods.method()
async def parallel_get_agent(call: Call, p: AgentRef) -> Agent:
    """Return one agent (one attempt) by id, live figures included. Errors: 2001."""
    return _agent(call, p.agent_id)


@methods.method()
async def parallel_get_pool_stats(call: Call, p: SessionParams) -> PoolStats:
    """Running agents, their summed CPU and memory, against the session's limits."""
    return call.pool.pool_stats(call.engine.session(p.session_id))


@methods.method()
async def parallel_check_violations(call: Call, p: SessionParams) -> list[Violation]:
    """Limit violations seen (newest last): kind, measured value, limit and the action taken.

    Kinds: timeout, limit_memory, limit_cpu (per agent), total_memory (session).
    """
    state = call.engine.session(p.session_id)
    mine = {a.id for a in call.engine.store.agents(state.id)} | set(state.running_agents)
    return [v for v in call.pool.violations if v.agent_id in mine]


@methods.method()
async def parallel_get_agent_logs(call: Call, p: LogsParams) -> list[LogEntry]:
    """An agent's output lines from `offset` (line number), at most `limit`.

    Lines come from the in-memory ring while it holds them, else from the
    agent's log file (capped in size). Errors: 2001 AgentNotFound.
    """
    return call.pool.logs(_agent(call, p.agent_id), p.offset, p.limit)


@methods.method()
async def parallel_poll_completed(call: Call, p: NoParams) -> list[CompletedAgent]:
    """Agents that finished since this connection last asked (all kept ones at first)."""
    cursor = int(call.conn.state.get("completed_cursor", 0))
    done, call.conn.state["completed_cursor"] = call.pool.poll_completed(cursor)
    return done


# --- worktrees -----------------------------------------------------------------------


class AllocateParams(Params):
    session_id: str | None = None
    agent_id: str
    task_id: TaskId
    branch: str | None = None


class DeallocateParams(Params):
    session_id: str | None = None
    worktree_path: str
    force: bool = False


class DeallocateByAgentParams(Params):
    session_id: str | None = None
    agent_id: str
    force: bool = False


@methods.method()
async def worktree_allocate(call: Call, p: AllocateParams) -> WorktreeAllocation:
    """Create (or reuse) the worktree and branch for a task of the session.

    The worktree is `<base>/<taskId>` outside the repository, on branch
    `branch` or the session's branch template (default `corral/<taskId>`),
    created from `baseBranch` (default: the repository's HEAD branch); files
    listed in `.worktreeinclude` are copied in. Reuses an existing one: work is
    never thrown away. Errors: 3003 BranchCheckedOut, 3004 InvalidBranchName,
    3007 RepositoryEmpty, 3008 BaseBranchNotFound.
    """
    state = call.engine.session(p.session_id)
    return await call.pool.allocate(state, p.agent_id, p.task_id, p.branch)


async def _deallocate(call: Call, state: SessionState, path: str, force: bool) -> bool:
    repo = state.session.repo_path
    base = call.pool.base_dir(repo)
    resolved = str(worktrees.validate_inside(base, path))
    await worktrees.deallocate(repo, base, path, force)
    with call.engine.store.transaction():
        for alloc in call.engine.store.allocations(state.id):
            if alloc.worktree_path == resolved:
                call.engine.store.delete_allocation(state.id, alloc.task_id)
                call.engine.bus.publish("worktree.released", state.id, alloc.to_wire())
    return True


@methods.method()
async def worktree_deallocate(call: Call, p: DeallocateParams) -> bool:
    """Remove a worktree (its branch is kept).

    A worktree with modified, staged or untracked (not ignored) files is
    refused unless `force`. Errors: 3001 WorktreeDirty (`data.files`),
    3002 PathOutsideBase, 3006 WorktreeNotFound.
    """
    state = call.engine.session(p.session_id)
    return await _deallocate(call, state, p.worktree_path, p.force)


@methods.method()
async def worktree_deallocate_by_agent(call: Call, p: DeallocateByAgentParams) -> bool:
    """Remove the worktree allocated to an agent; same rules as worktree_deallocate."""
    state = call.engine.session(p.session_id)
    for alloc in call.engine.store.allocations(state.id):
        if alloc.agent_id == p.agent_id:
            return await _deallocate(call, state, alloc.worktree_path, p.force)
    raise errors.WorktreeNotFound(f"agent {p.agent_id} has no worktree", {"agentId": p.agent_id})


@methods.method()
async def worktree_get_allocations(call: Call, p: SessionParams) -> list[WorktreeAllocation]:
    """The session's worktree allocations (persisted; they survive restarts)."""
    return call.engine.store.allocations(call.engine.session(p.session_id).id)


@methods.method()
async def worktree_cleanup_orphaned(call: Call, p: SessionParams) -> CleanupReport:
    """Remove clean orphan worktrees, prune stale git metadata, report dirty ones.

    Orphans are directories under the base directory with no allocation in
    any session on this repository. Dirty orphans are listed in `keptDirty`
    and left untouched. Result: `{removed, pruned, keptDirty}`.
    """
    state = call.engine.session(p.session_id)
    report = await call.pool.cleanup_orphans(state.session.repo_path)
    call.engine.bus.publish("worktree.cleanup", state.id, report.to_wire())
    return report


# --- conflicts and merging -----------------------------------------------------------


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


def _task_branches(state: SessionState, statuses: tuple[TaskStatus, ...]) -> list[Task]:
    return [t for t in state.scheduler.tasks() if t.branch and t.status in statuses]


_WITH_WORK = (
    TaskStatus.COMPLETED,
    TaskStatus.IN_PROGRESS,
    TaskStatus.READY,
    TaskStatus.RETRY_WAIT,
    TaskStatus.RATE_LIMITED,
)


async def _target(state: SessionState, explicit: str | None) -> str:
    if explicit:
        return explicit
    return state.session.config.base_branch or await worktrees.head_branch(state.session.repo_path)


@methods.method()
async def conflicts_detect(call: Call, p: DetectParams) -> list[MergeConflict]:
    """Find conflicts between branches with real three-way merges in memory.

    Params: `branches` as `[{branch, agentId?}]` (the older `[[branch,
    agentId]]` pairs are accepted too; default: the session's task branches),
    `target` (each branch is also merged against it). Every pair is checked.
    Result: MergeConflicts; files changed on both sides that still merge
    cleanly come back with `autoResolvable: true` and `auto_merge`.
    Errors: 4001 BranchNotFound.
    """
    state = call.engine.session(p.session_id)
    if p.branches is None:
        pairs = [(t.branch or "", t.assigned_agent) for t in _task_branches(state, _WITH_WORK)]
    else:
        pairs = [
            (b.branch, b.agent_id) if isinstance(b, BranchRef) else (b[0], b[1]) for b in p.branches
        ]
    found = await detect.detect(state.session.repo_path, pairs, p.target)
    call.engine.bus.publish(
        "conflicts.detected",
        state.id,
        {
            "branches": [b for b, _ in pairs],
            "target": p.target,
            "conflicts": sum(1 for c in found if not c.auto_resolvable),
            "overlaps": sum(1 for c in found if c.auto_resolvable),
        },
    )
    return found


@methods.method()
async def conflicts_can_merge_safely(call: Call, p: PairParams) -> bool:
    """True when merging `branch1` and `branch2` has no conflicts (overlaps are fine)."""
    state = call.engine.session(p.session_id)
    return await detect.can_merge_safely(state.session.repo_path, p.branch1, p.branch2)


@methods.method()
async def conflicts_get_summary(call: Call, p: SummaryParams) -> ConflictSummary:
    """Totals of a list of conflicts: by type, by branch pair, auto-resolvable or not."""
    return conflict_rules.summarize(p.conflicts)


@methods.method()
async def conflicts_matrix(call: Call, p: MatrixParams) -> ConflictMatrix:
    """For each pair of branches: clean, overlap or conflict, with the file count.

    Default branches: the session's task branches. This is what a dashboard draws.
    """
    state = call.engine.session(p.session_id)
    branches = p.branches
    if branches is None:
        branches = [t.branch or "" for t in _task_branches(state, _WITH_WORK)]
    return await detect.matrix(state.session.repo_path, branches)


@methods.method()
async def conflicts_resolve(call: Call, p: ResolveParams) -> ConflictResolutionResult:
    """Resolve one conflict with a strategy and return a real result.

    use_first / use_last / use_priority: a commit on a resolution branch
    (`corral/resolve/<b1>--<b2>`) merging both branches, the file taken from
    that side. auto_merge: succeeds only when the file's three-way merge is
    clean. manual: the file with conflict markers in `content`, no commit.
    Errors: 4005 ResolutionFailed, 4001 BranchNotFound.
    """
    state = call.engine.session(p.session_id)
    base = await _target(state, p.base_branch)
    result = await resolve.resolve(
        state.session.repo_path, p.conflict, p.strategy, base, p.priority_branch
    )
    call.engine.bus.publish("conflicts.resolved", state.id, result.to_wire())
    return result


@methods.method()
async def merge_completed_branches(call: Call, p: MergeParams) -> MergeReport:
    """Merge the branches of completed tasks into the target, one at a time.

    Order: dependency order, then priority, then insertion. Each merge is made
    in memory (fast-forward when possible) and the target ref moves only if it
    still points where it did; a conflicting branch is reported with its files
    and skipped, never half-merged. A clean checked-out target work tree is
    updated; a dirty one refuses the whole queue. `dryRun` moves nothing.
    Result: `{totalBranches, merged, failed, skipped, results}`.
    Errors: 4004 TargetDirty (`data.files`), 4001 BranchNotFound.
    """
    state = call.engine.session(p.session_id)
    target = await _target(state, p.target_branch)
    ordered = merge_order(_task_branches(state, (TaskStatus.COMPLETED,)))
    report = await queue.merge_queue(
        state.session.repo_path, [t.branch or "" for t in ordered], target, p.dry_run
    )
    if not p.dry_run:
        call.engine.bus.publish("merge.completed", state.id, report.to_wire())
    return report
