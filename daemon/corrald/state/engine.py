"""The engine: the one writer of the store and the one publisher of events.

Every state change goes through `Engine._change`: one SQLite transaction
holding the rows and the events that announce them, then, once it has
committed, the events go out and the pool is woken. If the transaction fails
(a full disk, a read-only file), nothing is announced and the session's
in-memory state (its `Scheduler` and `Session`) is rebuilt from the store,
so memory and disk never disagree.

The engine knows nothing of sockets, processes or git: the pool asks it to
record what its runs do, the RPC methods ask it for everything else.
Time comes from `clock` (epoch seconds) so tests can drive it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from corral import errors
from corral.events import (
    AgentActivityPayload,
    AgentRateLimitPayload,
    AgentStatusPayload,
    AgentTokensPayload,
    ConflictsDetectedPayload,
    ConflictsResolvedPayload,
    IntegrationBatchPayload,
    IntegrationBlockedPayload,
    LogPayload,
    LogSkippedPayload,
    MergeCompletedPayload,
    Payload,
    SessionCreatedPayload,
    SessionReinitPayload,
    SessionStatusPayload,
    TaskStatusPayload,
    ViolationPayload,
    WorktreeAllocatedPayload,
    WorktreeCleanupPayload,
    WorktreeReleasedPayload,
)
from corral.models import (
    Agent,
    AgentActivity,
    AgentLifecycle,
    CleanupReport,
    CompletedAgent,
    ConflictResolutionResult,
    EndReason,
    ErrorCategory,
    IntegrationBatch,
    IntegrationPolicy,
    LogEntry,
    MergeReport,
    SchedulerConfig,
    SchedulerStats,
    Session,
    SessionStatus,
    StorageHealth,
    TaskSpec,
    TaskState,
    TaskStatus,
    Violation,
    WorktreeAllocation,
    check_task_id,
)
from corrald.core.accounting import RunAccounting
from corrald.core.outcome import Disposition, Outcome
from corrald.core.scheduler import Scheduler
from corrald.core.taskrow import TaskRow
from corrald.state.events import EventBus, Record, Subscription
from corrald.state.store import Fault, Store, StoreFault

log = logging.getLogger("corrald.engine")

#: Finished agents kept for `parallel_poll_completed`.
COMPLETED_KEPT = 10_000
#: Violations kept for `parallel_check_violations`.
VIOLATIONS_KEPT = 1000
#: Longest log line carried by an event; bounds the replay window's memory.
EVENT_LINE_CAP = 2000

_STORAGE_ERRORS: dict[Fault, type[errors.StorageError]] = {
    Fault.FULL: errors.StorageFull,
    Fault.READ_ONLY: errors.StorageReadOnly,
    Fault.GONE: errors.StateFileGone,
    Fault.ERROR: errors.StorageError,
}

_ALLOWED_FROM: dict[SessionStatus, set[SessionStatus]] = {
    SessionStatus.RUNNING: {
        SessionStatus.IDLE,
        SessionStatus.PAUSED,
        SessionStatus.COMPLETED,
        SessionStatus.FAILED,
    },
    SessionStatus.PAUSED: {SessionStatus.RUNNING},
}


class SessionState:
    """A session's model and its scheduler (the live task state), as last committed."""

    def __init__(self, session: Session, scheduler: Scheduler) -> None:
        self.session = session
        self.scheduler = scheduler

    @property
    def id(self) -> str:
        return self.session.id

    def __repr__(self) -> str:
        return f"SessionState({self.id}, {self.session.status.value}, {self.scheduler!r})"


@dataclass(frozen=True)
class Setback:
    """A branch that conflicted with the integration head or failed the gate."""

    task_id: str
    gate: bool
    files: list[str] = field(default_factory=list)
    error: str | None = None


class _Batch:
    """What one change publishes: events made inside its transaction."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.records: list[Record] = []
        self.touched: dict[str, SessionState] = {}

    def publish(self, session_id: str | None, payload: Payload) -> None:
        self.records.append(self.bus.make(session_id, payload))


class Engine:
    """Sessions, tasks and attempts: durable first, then observable."""

    def __init__(
        self, store: Store, bus: EventBus, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.sessions: dict[str, SessionState] = {}
        self.on_change: list[Callable[[SessionState], None]] = []  # the pool wakes on these
        self.completed: collections.deque[tuple[int, CompletedAgent]] = collections.deque(
            maxlen=COMPLETED_KEPT
        )
        self.violations: collections.deque[Violation] = collections.deque(maxlen=VIOLATIONS_KEPT)
        self._completed_seq = 0
        self._batch: _Batch | None = None
        self.last_batch: dict[str, IntegrationBatch] = {}  # per session, for integration_status
        self.blocked: dict[str, str] = {}  # per session: why its integration queue cannot move
        self.storage = StorageHealth(path=str(store.path))
        for session in store.sessions():
            state = self._restore(session)
            self.sessions[session.id] = state

    def _restore(self, session: Session) -> SessionState:
        """Rebuild a session from its rows; derived status changes are written back."""
        stored = self.store.tasks(session.id)
        before = {t.id: t.state for t in stored}
        scheduler = Scheduler(session.config, stored, aborted=session.aborted)
        moved = [t for t in scheduler.tasks() if before.get(t.id) is not t.state]
        if moved:  # e.g. pending with every dependency done: ready, as it should have been
            try:
                with self.store.transaction():
                    self.store.put_tasks(session.id, moved)
            except StoreFault as exc:  # derived states: written by the next change that can
                log.warning("session %s: derived task states not written: %s", session.id, exc)
        return SessionState(session, scheduler)

    # --- the one way state changes --------------------------------------------------
    @contextmanager
    def _change(self, *states: SessionState) -> Iterator[_Batch]:
        """One transaction; its events go out after the commit; on failure memory follows disk.

        Nested changes join the outermost one (one commit, one fan-out).
        """
        if self._batch is not None:
            for state in states:
                self._batch.touched[state.id] = state
            yield self._batch
            return
        batch = self._batch = _Batch(self.bus)
        for state in states:
            batch.touched[state.id] = state
        mark = self.bus.mark()
        try:
            with self.store.transaction():
                yield batch
        except BaseException as exc:
            self._batch = None
            self.bus.rewind(mark)  # its events were never announced: their seqs are free
            # Domain errors are raised before anything changes (the scheduler
            # validates first), so only other failures need the reload.
            if not isinstance(exc, errors.CorralError):
                for state in batch.touched.values():
                    self._reload(state)
            if isinstance(exc, StoreFault):
                raise self._storage_failed(exc) from exc
            raise
        self._batch = None
        if self.storage.state != Fault.GONE.value and self.storage.error is not None:
            log.warning("the state file takes writes again")
            self.storage = StorageHealth(
                path=str(self.store.path), failed_writes=self.storage.failed_writes
            )
        self.bus.fan_out(batch.records)
        for state in batch.touched.values():
            for callback in self.on_change:
                callback(state)

    def _storage_failed(self, fault: StoreFault) -> errors.StorageError:
        """Note a write the state file refused; the error the request answers with."""
        first = self.storage.state != fault.fault.value
        self.storage = StorageHealth(
            path=str(self.store.path),
            state=fault.fault.value,
            error=fault.detail,
            since=self.storage.since if not first else self.clock(),
            failed_writes=self.storage.failed_writes + 1,
            rescued=str(fault.rescued) if fault.rescued else self.storage.rescued,
        )
        if first:
            log.error("the state file refused a write (%s): %s", fault.fault.value, fault.detail)
        data: dict[str, Any] = {"storage": fault.fault.value, "path": str(self.store.path)}
        if self.storage.rescued:
            data["rescued"] = self.storage.rescued
        cls = _STORAGE_ERRORS[fault.fault]
        return cls(f"{cls.default_message}; nothing of this request was kept: {fault.detail}", data)

    def _reload(self, state: SessionState) -> None:
        """After a failed transaction: the session as the store has it."""
        for session in self.store.sessions():
            if session.id == state.id:
                fresh = self._restore(session)
                state.session, state.scheduler = fresh.session, fresh.scheduler
                return
        self.sessions.pop(state.id, None)  # it was being created

    def _tasks_changed(
        self, batch: _Batch, state: SessionState, changed: Sequence[TaskRow]
    ) -> None:
        """Write changed tasks, announce each, and settle the session's own status."""
        if not changed:
            return
        self.store.put_tasks(state.id, changed)
        for task in changed:
            batch.publish(
                state.id,
                TaskStatusPayload(
                    task_id=task.id,
                    state=task.state,
                    status=task.status,
                    attempts=task.attempts,
                    error=task.error,
                    error_category=task.error_category,
                    integration_status=task.integration_status,
                    integration_attempts=task.integration_attempts,
                ),
            )
        if state.scheduler.aborted and not state.session.aborted:
            state.session.aborted = True
            self.store.put_session(state.session)
        self._settle_finished(batch, state)

    def _settle_finished(self, batch: _Batch, state: SessionState) -> None:
        """A running session with nothing left to do is completed (or failed)."""
        scheduler = state.scheduler
        if state.session.status is SessionStatus.RUNNING and scheduler.is_finished():
            # A failed or blocked task fails the session, and so does a
            # completed one whose work never made it in (parked for a person).
            failed = any(
                t.state in (TaskState.FAILED, TaskState.BLOCKED)
                or (t.state is TaskState.COMPLETED and not scheduler.satisfies(t.id))
                for t in scheduler.tasks()
            )
            self._set_session_status(
                batch, state, SessionStatus.FAILED if failed else SessionStatus.COMPLETED
            )

    def _set_session_status(
        self,
        batch: _Batch,
        state: SessionState,
        status: SessionStatus,
        payload: type[SessionStatusPayload] = SessionStatusPayload,
    ) -> None:
        state.session.status = status
        self.store.put_session(state.session)
        batch.publish(state.id, payload(status=status))

    # --- lookup -------------------------------------------------------------------
    def session(self, session_id: str | None) -> SessionState:
        """The named session, or the only one when `session_id` is omitted."""
        if session_id is None:
            if len(self.sessions) != 1:
                raise errors.SessionRequired(data={"sessions": sorted(self.sessions)})
            return next(iter(self.sessions.values()))
        state = self.sessions.get(session_id)
        if state is None:
            raise errors.SessionNotFound(f"no session {session_id!r}", {"sessionId": session_id})
        return state

    def agent(self, agent_id: str) -> Agent:
        """An agent's stored row; AgentNotFound if there is none."""
        agent = self.store.agent(agent_id)
        if agent is None:
            raise errors.AgentNotFound(f"no agent {agent_id!r}", {"agentId": agent_id})
        return agent

    def agents(
        self, session_id: str, *, cursor: str | None = None, limit: int | None = None
    ) -> list[Agent]:
        """A session's attempts in the order they started; a page of at most `limit`
        after the attempt `cursor` when given (AgentNotFound if it names none)."""
        if cursor is not None:
            self.agent(cursor)
        return self.store.agents(session_id, after=cursor, limit=limit)

    def left_running(self) -> list[tuple[Agent, RunAccounting | None]]:
        """Agents whose row says they run, with what was recorded of their processes."""
        return [
            (agent, RunAccounting.from_json(accounting) if accounting else None)
            for agent, accounting in self.store.live_runs()
        ]

    def run_accounting(self, records: Sequence[tuple[str, RunAccounting]]) -> None:
        """Store what a restart needs to end these runs' processes (before they exist)."""
        if not records:
            return
        with self._change():
            for agent_id, record in records:
                self.store.put_accounting(agent_id, record.to_json())

    def allocations(self, session_id: str | None = None) -> list[WorktreeAllocation]:
        return self.store.allocations(session_id)

    def list_tasks(
        self,
        session_id: str | None,
        state: TaskState | None,
        status: TaskStatus | None = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list[TaskRow]:
        """A session's tasks in insertion order, filtered by state and/or seed status;
        a page of at most `limit` of them after the task `cursor` when given."""
        scheduler = self.session(session_id).scheduler
        if limit is None and cursor is None:
            tasks = scheduler.tasks(state)
            return tasks if status is None else [t for t in tasks if t.status is status]
        found = (
            t
            for t in scheduler.tasks_after(cursor)
            if (state is None or t.state is state) and (status is None or t.status is status)
        )
        return list(itertools.islice(found, limit))

    def get_task(self, session_id: str | None, task_id: str) -> TaskRow:
        return self.session(session_id).scheduler.get(task_id)

    def stats(self, session_id: str | None) -> SchedulerStats:
        state = self.session(session_id)
        counts = state.scheduler.counts()
        return SchedulerStats(
            total=sum(counts.values()),
            pending=counts.get(TaskState.PENDING, 0),
            ready=counts.get(TaskState.READY, 0),
            in_progress=counts.get(TaskState.IN_PROGRESS, 0),
            completed=counts.get(TaskState.COMPLETED, 0),
            failed=counts.get(TaskState.FAILED, 0),
            blocked=counts.get(TaskState.BLOCKED, 0),
            cancelled=counts.get(TaskState.CANCELLED, 0),
            retry_wait=counts.get(TaskState.RETRY_WAIT, 0),
            rate_limited=counts.get(TaskState.RATE_LIMITED, 0),
            skipped=counts.get(TaskState.SKIPPED, 0),
            max_parallel=state.session.config.max_parallel,
            strategy=state.session.config.strategy,
            session_status=state.session.status,
            waiting_for_paths=state.scheduler.waiting_for_paths(),
        )

    def poll_completed(self, cursor: int) -> tuple[list[CompletedAgent], int]:
        """Agents that finished after `cursor`, and the new cursor."""
        return [c for seq, c in self.completed if seq > cursor], self._completed_seq

    def session_violations(self, state: SessionState) -> list[Violation]:
        mine = {a.id for a in self.store.agents(state.id)}
        return [v for v in self.violations if v.agent_id in mine]

    def subscribe(
        self,
        topics: list[str] | None,
        session_id: str | None,
        since_seq: int | None,
        agent_id: str | None = None,
    ) -> Subscription:
        if session_id is not None:
            self.session(session_id)
        return self.bus.subscribe(topics, session_id, since_seq, agent_id)

    def unsubscribe(self, subscription_id: str) -> bool:
        return self.bus.unsubscribe(subscription_id)

    @property
    def event_seq(self) -> int:
        """The newest event's seq."""
        return self.bus.seq

    @property
    def oldest_event(self) -> int:
        """The oldest seq a subscriber may resume after (minus one)."""
        return self.bus.oldest

    @property
    def subscribers(self) -> int:
        return len(self.bus.subscribers)

    # --- sessions -------------------------------------------------------------------
    @staticmethod
    def new_session_id() -> str:
        return f"s-{uuid.uuid4().hex[:8]}"

    def init_session(
        self,
        config: SchedulerConfig,
        root: str,
        session_id: str | None,
        integration_branch: str | None = None,
    ) -> Session:
        """Create a session on the repository whose main work tree is `root` (resolved).

        An existing `session_id` gets the new config and keeps its tasks,
        unless agents are running (SessionBusy). `integration_branch` is the
        session's (already validated and created) branch when integration is on.
        """
        if config.integrate and integration_branch is None:
            raise ValueError("integration is on: the session needs its integration branch")
        if session_id is not None:
            check_task_id(session_id)
            existing = self.sessions.get(session_id)
            if existing is not None:
                running = self.store.live_agents(session_id)
                if running:
                    raise errors.SessionBusy(
                        f"session {session_id} has {len(running)} running agents; stop them first",
                        {"sessionId": session_id, "agents": running},
                    )
                with self._change(existing) as batch:
                    existing.session.config = config
                    existing.session.repo_path = root
                    existing.session.integration_branch = integration_branch
                    existing.scheduler.config = config
                    self._set_session_status(
                        batch, existing, SessionStatus.IDLE, SessionReinitPayload
                    )
                return existing.session
        else:
            session_id = self.new_session_id()
        session = Session(
            id=session_id,
            repo_path=root,
            config=config,
            status=SessionStatus.IDLE,
            created_at=self.clock(),
            integration_branch=integration_branch,
        )
        state = SessionState(session, Scheduler(config))
        self.sessions[session_id] = state
        with self._change(state) as batch:
            self._set_session_status(batch, state, SessionStatus.IDLE, SessionCreatedPayload)
        return session

    def set_status(self, session_id: str | None, status: SessionStatus) -> Session:
        """Start (running) or pause a session. InvalidStateTransition otherwise."""
        state = self.session(session_id)
        current = state.session.status
        if current is not status and current not in _ALLOWED_FROM.get(status, set()):
            raise errors.InvalidStateTransition(
                f"session {state.id} is {current.value}; cannot become {status.value}",
                {"sessionId": state.id, "from": current.value, "to": status.value},
            )
        if current is not status:
            with self._change(state) as batch:
                self._set_session_status(batch, state, status)
                self._settle_finished(batch, state)
        return state.session

    # --- tasks ------------------------------------------------------------------------
    def add_tasks(self, session_id: str | None, specs: Sequence[TaskSpec]) -> list[TaskRow]:
        """Add a batch of tasks, all or nothing; a finished session runs again."""
        state = self.session(session_id)
        with self._change(state) as batch:
            added = state.scheduler.add_tasks(specs, self.clock())
            if state.session.status in (SessionStatus.COMPLETED, SessionStatus.FAILED):
                self._set_session_status(batch, state, SessionStatus.RUNNING)
            self._tasks_changed(batch, state, added)
        return added

    def _apply(
        self, state: SessionState, fn: Callable[[Scheduler], list[TaskRow]]
    ) -> list[TaskRow]:
        with self._change(state) as batch:
            changed = fn(state.scheduler)
            self._tasks_changed(batch, state, changed)
        return changed

    def complete_task(
        self, session_id: str | None, task_id: str, actual_tokens: int | None = None
    ) -> list[TaskRow]:
        now = self.clock()
        return self._apply(
            self.session(session_id), lambda s: s.complete(task_id, now, actual_tokens)
        )

    def fail_task(
        self, session_id: str | None, task_id: str, error: str, category: ErrorCategory
    ) -> list[TaskRow]:
        now = self.clock()
        return self._apply(
            self.session(session_id), lambda s: s.fail(task_id, now, error, category)
        )

    def cancel_task(self, session_id: str | None, task_id: str) -> list[TaskRow]:
        now = self.clock()
        return self._apply(self.session(session_id), lambda s: s.cancel(task_id, now))

    def retry_task(self, session_id: str | None, task_id: str) -> list[TaskRow]:
        return self._apply(self.session(session_id), lambda s: s.retry(task_id))

    def promote_due(self, state: SessionState) -> None:
        """Tasks whose backoff or rate-limit wait is over become ready."""
        now = self.clock()
        due = state.scheduler.next_wakeup()
        if due is not None and due <= now:
            self._apply(state, lambda s: s.promote_due(now))

    # --- attempts (what the pool's runs do) ---------------------------------------------
    def start_attempt(self, state: SessionState, task_id: str, agent_id: str) -> Agent:
        """The task goes in_progress with a new agent row (lifecycle starting)."""
        with self._change(state) as batch:
            task = state.scheduler.start(task_id, self.clock(), agent_id)
            config = state.session.config
            agent_type = task.agent_type or config.agent_type
            policy = config.on_gate_failure if task.resolving == "gate" else config.on_conflict
            if task.resolving and policy is IntegrationPolicy.RESOLVER and config.resolver_agent:
                agent_type = config.resolver_agent
            agent = Agent(
                id=agent_id,
                session_id=state.id,
                task_id=task.id,
                agent_type=agent_type,
                started_at=time.time(),
                iteration_count=task.attempts,
                branch=task.branch or "",
                worktree_path=task.worktree_path or "",
            )
            self.store.put_agent(agent)
            self._tasks_changed(batch, state, [task])
            self._agent_status(batch, agent)
        return agent

    def record_allocation(
        self, state: SessionState, alloc: WorktreeAllocation, *, take_over: bool = True
    ) -> None:
        """A worktree was created or reused for `alloc.task_id` (called under the repo lock).

        With `take_over` (a task of this session starting), a worktree that an
        earlier session on the same repository allocated (the same plan run
        again) is taken over: its allocation moves to this session, and
        nothing in it is removed. It is refused with WorktreeInUse while the
        other session's task runs in it, and always for a `worktree_allocate`
        by hand (`take_over` false: corral cannot know whether the agent the
        other allocation names is still at work there), so two agents never
        share a worktree.
        """
        held = [
            a
            for a in self.store.allocations()
            if a.worktree_path == alloc.worktree_path
            and (a.session_id, a.task_id) != (alloc.session_id, alloc.task_id)
        ]
        for other in held:
            owner = self.sessions.get(other.session_id)
            running = owner is not None and any(
                t.id == other.task_id for t in owner.scheduler.in_progress()
            )
            if running or not take_over:
                raise errors.WorktreeInUse(
                    f"worktree {alloc.worktree_path} is allocated to task {other.task_id}"
                    f" of session {other.session_id}"
                    + (", which is running there" if running else ""),
                    {
                        "worktreePath": alloc.worktree_path,
                        "sessionId": other.session_id,
                        "taskId": other.task_id,
                    },
                )
        owners = [self.sessions[o.session_id] for o in held if o.session_id in self.sessions]
        with self._change(state, *owners) as batch:
            for other in held:
                self.store.delete_allocation(other.session_id, other.task_id)
                batch.publish(
                    other.session_id, WorktreeReleasedPayload.model_validate(other.to_wire())
                )
            self.store.put_allocation(alloc)
            try:  # worktree_allocate may name a task the session does not have
                task: TaskRow | None = state.scheduler.get(alloc.task_id)
            except errors.TaskNotFound:
                task = None
            if task is not None and (task.branch, task.worktree_path) != (
                alloc.branch,
                alloc.worktree_path,
            ):
                task.branch, task.worktree_path = alloc.branch, alloc.worktree_path
                self.store.put_tasks(state.id, [task])
            batch.publish(state.id, WorktreeAllocatedPayload.model_validate(alloc.to_wire()))

    def release_allocation(self, state: SessionState, worktree_path: str) -> None:
        """The worktree at `worktree_path` was removed (its branch is kept)."""
        with self._change(state) as batch:
            for alloc in self.store.allocations(state.id):
                if alloc.worktree_path == worktree_path:
                    self.store.delete_allocation(state.id, alloc.task_id)
                    batch.publish(state.id, WorktreeReleasedPayload.model_validate(alloc.to_wire()))

    def agent_spawned(
        self,
        state: SessionState,
        agent: Agent,
        *,
        pid: int | None,
        create_time: float | None,
        lifecycle: AgentLifecycle,
        accounting: RunAccounting | None = None,
    ) -> Agent:
        """The agent's process exists (pid and start time are what a restart kills by)."""
        row = agent.model_copy(update={"process_id": pid, "lifecycle": lifecycle})
        with self._change(state) as batch:
            self.store.put_agent(row, create_time)
            if accounting is not None:
                self.store.put_accounting(row.id, accounting.to_json())
            self._agent_status(batch, row)
        return row

    def finish_attempt(
        self,
        state: SessionState,
        agent: Agent,
        outcome: Outcome,
        *,
        exit_code: int | None = None,
        tokens: int = 0,
        cost: float = 0.0,
        ended_at: float | None = None,
        rate_limit_reset: float | None = None,
    ) -> Agent:
        """Record how an attempt ended and move its task on, in one transaction.

        Only the task's current attempt moves the task; a stale attempt (the
        task was cancelled or restarted meanwhile) only closes its own row.
        """
        now = self.clock()
        row = agent.model_copy(
            update={
                "exit_code": exit_code,
                "end_reason": outcome.end_reason,
                "lifecycle": outcome.lifecycle,
                "tokens": tokens,
                "cost": cost,
                "ended_at": ended_at or time.time(),
                "status": AgentActivity.IDLE,
            }
        )
        with self._change(state) as batch:
            task = state.scheduler.get(agent.task_id)
            if not row.worktree_path and task.worktree_path:  # allocated during this attempt
                row.worktree_path, row.branch = task.worktree_path, task.branch or ""
            changed: list[TaskRow] = []
            if task.state is TaskState.IN_PROGRESS and task.assigned_agent == agent.id:
                changed = self._dispose(state.scheduler, task.id, outcome, tokens, rate_limit_reset)
            self.store.put_agent(row)
            self._tasks_changed(batch, state, changed)
            self._agent_status(batch, row)
        self._completed_seq += 1
        self.completed.append(
            (
                self._completed_seq,
                CompletedAgent(
                    agent_id=row.id,
                    task_id=row.task_id,
                    session_id=state.id,
                    success=outcome.success,
                    process_id=row.process_id,
                    exit_code=exit_code,
                    end_reason=outcome.end_reason,
                    error=outcome.error,
                    tokens=tokens,
                    cost=cost,
                    ended_at=row.ended_at or now,
                ),
            )
        )
        return row

    def _dispose(
        self,
        scheduler: Scheduler,
        task_id: str,
        outcome: Outcome,
        tokens: int,
        rate_limit_reset: float | None,
    ) -> list[TaskRow]:
        now = self.clock()
        match outcome.disposition:
            case Disposition.REQUEUE:
                return [scheduler.requeue(task_id)]
            case Disposition.CANCEL:
                return scheduler.cancel(task_id, now)
            case Disposition.RATE_LIMITED:
                return scheduler.rate_limited(task_id, now, rate_limit_reset)
            case Disposition.COMPLETE:
                return scheduler.complete(task_id, now, tokens or None)
            case Disposition.FAIL:
                category = outcome.category or ErrorCategory.UNKNOWN
                return scheduler.fail(task_id, now, outcome.error or "failed", category)

    def agent_lost(self, agent: Agent, *, killed: bool) -> None:
        """After a restart: an agent the previous daemon left; its task goes back to ready."""
        row = agent.model_copy(
            update={
                "lifecycle": AgentLifecycle.KILLED if killed else AgentLifecycle.EXITED,
                "end_reason": EndReason.LOST,
                "ended_at": time.time(),
            }
        )
        state = self.sessions.get(agent.session_id)
        with self._change(*([state] if state else [])) as batch:
            self.store.put_agent(row)
            if state is not None:
                try:
                    task = state.scheduler.get(agent.task_id)
                except errors.TaskNotFound:
                    task = None
                if task is not None and task.state is TaskState.IN_PROGRESS:
                    self._tasks_changed(batch, state, [state.scheduler.requeue(task.id)])
            self._agent_status(batch, row)

    def _agent_status(self, batch: _Batch, agent: Agent) -> None:
        batch.publish(
            agent.session_id,
            AgentStatusPayload(
                agent_id=agent.id,
                task_id=agent.task_id,
                lifecycle=agent.lifecycle,
                end_reason=agent.end_reason,
                pid=agent.process_id,
            ),
        )

    # --- live figures: announced, not stored (the row gets them when the run ends) ------
    def _announce(self, session_id: str | None, payload: Payload) -> None:
        self.bus.fan_out([self.bus.make(session_id, payload)])

    def agent_log(self, agent: Agent, offset: int, stream: str, line: str, at: float) -> None:
        truncated = len(line) > EVENT_LINE_CAP  # the whole line stays in the ring and log file
        self._announce(
            agent.session_id,
            LogPayload(
                agent_id=agent.id,
                task_id=agent.task_id,
                offset=offset,
                stream=stream,
                line=line[:EVENT_LINE_CAP] if truncated else line,
                at=at,
                truncated=truncated,
            ),
        )

    def agent_log_lines(
        self, agent: Agent, first: int, stream: str, lines: Sequence[str], at: float
    ) -> None:
        """Consecutive output lines of a run read at once: a `log` event each, sent together."""
        self.bus.fan_out(
            self.bus.make_log_lines(
                agent.session_id, agent.id, agent.task_id, first, stream, lines, at, EVENT_LINE_CAP
            )
        )

    def log_skipped(
        self, session_id: str, agent_id: str, task_id: str, skipped: tuple[int, int, int, int]
    ) -> None:
        """Lines of a flooding run left unannounced: (first, last, lines, bytes)."""
        first, last, lines, nbytes = skipped
        self._announce(
            session_id,
            LogSkippedPayload(
                agent_id=agent_id,
                task_id=task_id,
                first=first,
                last=last,
                lines=lines,
                bytes=nbytes,
            ),
        )

    def gate_log(self, state: SessionState, run_id: str, entry: LogEntry) -> None:
        """One line of a gate run's output (announced as a log line of `run_id`)."""
        self._announce(
            state.id,
            LogPayload(
                agent_id=run_id,
                task_id="",
                offset=entry.offset,
                stream=entry.stream,
                line=entry.line[:EVENT_LINE_CAP],
                at=entry.at,
                truncated=len(entry.line) > EVENT_LINE_CAP,
            ),
        )

    def agent_activity(self, agent: Agent, activity: AgentActivity) -> None:
        self._announce(
            agent.session_id,
            AgentActivityPayload(agent_id=agent.id, task_id=agent.task_id, activity=activity),
        )

    def agent_tokens(self, agent: Agent, tokens: int, cost: float) -> None:
        self._announce(
            agent.session_id,
            AgentTokensPayload(agent_id=agent.id, task_id=agent.task_id, tokens=tokens, cost=cost),
        )

    def agent_rate_limit(self, agent: Agent, reset_at: float | None, detail: str) -> None:
        self._announce(
            agent.session_id,
            AgentRateLimitPayload(
                agent_id=agent.id, task_id=agent.task_id, reset_at=reset_at, detail=detail
            ),
        )

    def violation(self, session_id: str, violation: Violation) -> None:
        """A limit was hit (per agent or per session); kept and announced."""
        self.violations.append(violation)
        with self._change() as batch:
            batch.publish(session_id, ViolationPayload.model_validate(violation.to_wire()))

    # --- integration ------------------------------------------------------------------
    def integration_gating(self, state: SessionState, task_ids: Sequence[str]) -> None:
        """A batch is being merged and gated (durable: a restart gates it again)."""
        self._apply(state, lambda s: s.gating(task_ids))

    def integration_outcome(
        self,
        state: SessionState,
        batch: IntegrationBatch,
        *,
        setbacks: Sequence[Setback] = (),
        requeued: Sequence[str] = (),
    ) -> None:
        """Record what a batch did, in one transaction: integrated, sent back, queued again."""
        now = self.clock()

        def apply(s: Scheduler) -> list[TaskRow]:
            changed: list[TaskRow] = []
            for task_id in batch.integrated:
                changed += s.integrated(task_id)
            for setback in setbacks:
                changed += s.integration_setback(
                    setback.task_id,
                    now,
                    gate=setback.gate,
                    files=setback.files,
                    error=setback.error,
                )
            changed += s.requeued_for_integration(requeued)
            return changed

        with self._change(state) as b:
            self._tasks_changed(b, state, apply(state.scheduler))
            b.publish(state.id, IntegrationBatchPayload.model_validate(batch.to_wire()))
        self.last_batch[state.id] = batch

    def integration_blocked(self, state: SessionState, reason: str | None) -> None:
        """The queue cannot move (a gate that cannot run), or can again (None)."""
        if self.blocked.get(state.id) == reason:
            return
        if reason is None:
            self.blocked.pop(state.id, None)
        else:
            self.blocked[state.id] = reason
        with self._change() as b:
            b.publish(state.id, IntegrationBlockedPayload(reason=reason))

    def reopen_to_resolve(
        self, state: SessionState, task_id: str, files: Sequence[str], error: str
    ) -> list[TaskRow]:
        """A completed task goes back to an agent to resolve a landing conflict.

        A session that had finished runs again, as after `task_integrate`.
        """
        with self._change(state) as b:
            changed = state.scheduler.reopen_to_resolve(task_id, files, error)
            if state.session.status in (SessionStatus.COMPLETED, SessionStatus.FAILED):
                self._set_session_status(b, state, SessionStatus.RUNNING)
            self._tasks_changed(b, state, changed)
        return changed

    def task_integrate(self, session_id: str | None, task_id: str) -> list[TaskRow]:
        """A parked task (fixed by a person) goes back into the integration queue."""
        state = self.session(session_id)
        with self._change(state) as b:
            changed = state.scheduler.requeue_parked(task_id)
            if state.session.status in (SessionStatus.COMPLETED, SessionStatus.FAILED):
                self._set_session_status(b, state, SessionStatus.RUNNING)
            self._tasks_changed(b, state, changed)
        return changed

    # --- reports of git operations ----------------------------------------------------
    def _report(self, state: SessionState, payload: Payload) -> None:
        with self._change() as batch:
            batch.publish(state.id, payload)

    def worktrees_cleaned(self, state: SessionState, report: CleanupReport) -> None:
        self._report(state, WorktreeCleanupPayload.model_validate(report.to_wire()))

    def conflicts_detected(
        self, state: SessionState, branches: list[str], target: str | None, found: Sequence[Any]
    ) -> None:
        self._report(
            state,
            ConflictsDetectedPayload(
                branches=branches,
                target=target,
                conflicts=sum(1 for c in found if not c.auto_resolvable),
                overlaps=sum(1 for c in found if c.auto_resolvable),
            ),
        )

    def conflict_resolved(self, state: SessionState, result: ConflictResolutionResult) -> None:
        self._report(state, ConflictsResolvedPayload.model_validate(result.to_wire()))

    def merged(self, state: SessionState, report: MergeReport) -> None:
        self._report(state, MergeCompletedPayload.model_validate(report.to_wire()))

    def __repr__(self) -> str:
        return f"Engine(sessions={len(self.sessions)}, {self.bus!r})"
