"""Sessions: one scheduler per repository run, its durable state and its events.

The engine owns the in-memory state (one `Scheduler` per session), writes
every change to the store before returning, and publishes an event for it.
RPC handlers call it; it knows nothing about sockets.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

from corral import errors
from corral.models import (
    ErrorCategory,
    SchedulerConfig,
    SchedulerStats,
    Session,
    SessionStatus,
    Task,
    TaskSpec,
    TaskStatus,
    check_task_id,
)
from corrald.core.scheduler import Scheduler
from corrald.state.events import EventBus
from corrald.state.store import Store

log = logging.getLogger("corrald.state.engine")

ACTIVE_STATUSES = (SessionStatus.RUNNING, SessionStatus.PAUSED, SessionStatus.STOPPING)


class SessionState:
    """A session's model and its scheduler (the live task state)."""

    def __init__(self, session: Session, scheduler: Scheduler) -> None:
        self.session = session
        self.scheduler = scheduler
        self.running_agents: set[str] = set()

    @property
    def id(self) -> str:
        return self.session.id

    def __repr__(self) -> str:
        return f"SessionState({self.id}, {self.session.status.value}, {self.scheduler!r})"


class Engine:
    """Sessions and tasks, durable and observable."""

    def __init__(
        self, store: Store, bus: EventBus, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.sessions: dict[str, SessionState] = {}
        self.on_change: list[Callable[[SessionState], None]] = []  # pool wakes up on these
        for session in store.sessions():
            tasks = store.tasks(session.id)
            self.sessions[session.id] = SessionState(session, Scheduler(session.config, tasks))

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

    # --- persistence + events -------------------------------------------------------
    def _save_session(self, state: SessionState, event: str = "session.status") -> None:
        self.store.put_session(state.session)
        self.bus.publish(event, state.id, {"status": state.session.status.value})

    def commit_tasks(self, state: SessionState, changed: Sequence[Task]) -> None:
        """Persist changed tasks, publish their new status, wake the runner."""
        if not changed:
            return
        with self.store.transaction():
            self.store.put_tasks(state.id, changed)
            for task in changed:
                self.bus.publish(
                    "task.status",
                    state.id,
                    {
                        "taskId": task.id,
                        "status": task.status.value,
                        "attempts": task.attempts,
                        **({"error": task.error} if task.error else {}),
                        **(
                            {"errorCategory": task.error_category.value}
                            if task.error_category
                            else {}
                        ),
                    },
                )
            self._maybe_finish(state)
        for callback in self.on_change:
            callback(state)

    def _maybe_finish(self, state: SessionState) -> None:
        session = state.session
        if session.status is SessionStatus.RUNNING and state.scheduler.is_finished():
            failed = any(
                t.status in (TaskStatus.FAILED, TaskStatus.BLOCKED) for t in state.scheduler.tasks()
            )
            session.status = SessionStatus.FAILED if failed else SessionStatus.COMPLETED
            self._save_session(state)

    # --- sessions -------------------------------------------------------------------------
    def init_session(self, config: SchedulerConfig, root: str, session_id: str | None) -> Session:
        """Create a session on the repository whose main work tree is `root` (resolved)."""
        if session_id is not None:
            check_task_id(session_id)
            existing = self.sessions.get(session_id)
            if existing is not None:
                if existing.running_agents:
                    raise errors.SessionBusy(
                        f"session {session_id} has {len(existing.running_agents)} running agents;"
                        " stop them first",
                        {"sessionId": session_id, "agents": sorted(existing.running_agents)},
                    )
                existing.session.config = config
                existing.session.repo_path = root
                existing.session.status = SessionStatus.IDLE
                existing.scheduler.config = config
                with self.store.transaction():
                    self._save_session(existing, "session.reinit")
                return existing.session
        else:
            session_id = f"s-{uuid.uuid4().hex[:8]}"
        session = Session(
            id=session_id,
            repo_path=root,
            config=config,
            status=SessionStatus.IDLE,
            created_at=self.clock(),
        )
        state = SessionState(session, Scheduler(config))
        with self.store.transaction():
            self.sessions[session_id] = state
            self._save_session(state, "session.created")
        return session

    def set_status(self, session_id: str | None, status: SessionStatus) -> Session:
        state = self.session(session_id)
        current = state.session.status
        allowed = {
            SessionStatus.RUNNING: {
                SessionStatus.IDLE,
                SessionStatus.PAUSED,
                SessionStatus.COMPLETED,
                SessionStatus.FAILED,
            },
            SessionStatus.PAUSED: {SessionStatus.RUNNING},
        }
        if current is not status and current not in allowed.get(status, set()):
            raise errors.InvalidStateTransition(
                f"session {state.id} is {current.value}; cannot become {status.value}",
                {"sessionId": state.id, "from": current.value, "to": status.value},
            )
        if current is not status:
            state.session.status = status
            with self.store.transaction():
                self._save_session(state)
                self._maybe_finish(state)
            for callback in self.on_change:
                callback(state)
        return state.session

    # --- tasks ------------------------------------------------------------------------------
    def add_tasks(self, session_id: str | None, specs: Sequence[TaskSpec]) -> list[Task]:
        state = self.session(session_id)
        added = state.scheduler.add_tasks(specs, self.clock())
        if state.session.status in (SessionStatus.COMPLETED, SessionStatus.FAILED):
            state.session.status = SessionStatus.RUNNING
            self.store.put_session(state.session)
        self.commit_tasks(state, added)
        return added

    def list_tasks(self, session_id: str | None, status: TaskStatus | None) -> list[Task]:
        return self.session(session_id).scheduler.tasks(status)

    def get_task(self, session_id: str | None, task_id: str) -> Task:
        return self.session(session_id).scheduler.get(task_id)

    def complete_task(
        self, session_id: str | None, task_id: str, actual_tokens: int | None = None
    ) -> list[Task]:
        state = self.session(session_id)
        changed = state.scheduler.complete(task_id, self.clock(), actual_tokens)
        self.commit_tasks(state, changed)
        return changed

    def fail_task(
        self, session_id: str | None, task_id: str, error: str, category: ErrorCategory
    ) -> list[Task]:
        state = self.session(session_id)
        changed = state.scheduler.fail(task_id, self.clock(), error, category)
        self.commit_tasks(state, changed)
        return changed

    def cancel_task(self, session_id: str | None, task_id: str) -> list[Task]:
        state = self.session(session_id)
        changed = state.scheduler.cancel(task_id, self.clock())
        self.commit_tasks(state, changed)
        return changed

    def stats(self, session_id: str | None) -> SchedulerStats:
        state = self.session(session_id)
        counts = state.scheduler.counts()
        return SchedulerStats(
            total=sum(counts.values()),
            pending=counts.get(TaskStatus.PENDING, 0),
            ready=counts.get(TaskStatus.READY, 0),
            in_progress=counts.get(TaskStatus.IN_PROGRESS, 0),
            completed=counts.get(TaskStatus.COMPLETED, 0),
            failed=counts.get(TaskStatus.FAILED, 0),
            blocked=counts.get(TaskStatus.BLOCKED, 0),
            cancelled=counts.get(TaskStatus.CANCELLED, 0),
            retry_wait=counts.get(TaskStatus.RETRY_WAIT, 0),
            rate_limited=counts.get(TaskStatus.RATE_LIMITED, 0),
            skipped=counts.get(TaskStatus.SKIPPED, 0),
            max_parallel=state.session.config.max_parallel,
            strategy=state.session.config.strategy,
            session_status=state.session.status,
        )

    def __repr__(self) -> str:
        return f"Engine(sessions={len(self.sessions)}, {self.bus!r})"
