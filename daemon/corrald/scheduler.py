"""The scheduler core: which task starts next, and what a result does to the graph.

Pure, synchronous and deterministic: no I/O, no trio, no clock. Time comes in
as ``now`` (seconds, any epoch) so the daemon, the tests and the benchmark all
drive the same code. One `Scheduler` per session.

The `Task` models are the state: they are mutated in place and every mutating
method returns the tasks whose state changed, so the caller persists exactly
those. Everything else here is a derived index rebuilt by ``__init__`` from
persisted tasks.

Cost model (benchmarked in ``bench/scheduler_core.py``):

* ``add_tasks`` is O(batch + its dependency edges): duplicate and unknown ids
  are dict look-ups, and cycle detection walks the batch only, because an
  existing task can never depend on a new one.
* ``next_task`` peeks one heap ordered by the active strategy. Entries are
  invalidated lazily (a per-task version number), so a status change never
  searches the heap; stale entries are dropped when they reach the top, and
  the heap is rebuilt when it holds too many of them.
* ``dependency_first`` needs, per task, the number of distinct non-terminal
  tasks that transitively depend on it. A new task adds one to each of its
  non-terminal ancestors and a task that turns terminal removes one, which is
  exact because each event concerns one distinct task. These walks are
  deferred to the next ``next_task`` under that strategy (so adding stays
  O(batch)), and a large backlog, a manual retry or a restore recounts
  everything at once with bitsets.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence

from corral import errors
from corral.models import (
    TERMINAL_TASK_STATUSES,
    ErrorCategory,
    ErrorStrategy,
    SchedulerConfig,
    Strategy,
    Task,
    TaskSpec,
    TaskStatus,
)

__all__ = ["NON_RETRYABLE", "SATISFIED", "WAITING", "Scheduler"]

#: a dependency in one of these states lets its dependents run
SATISFIED = frozenset({TaskStatus.COMPLETED, TaskStatus.SKIPPED})
#: a dependency in one of these states blocks its dependents for good
_BLOCKING = frozenset({TaskStatus.FAILED, TaskStatus.BLOCKED, TaskStatus.CANCELLED})
#: parked until ``retry_at``
WAITING = frozenset({TaskStatus.RETRY_WAIT, TaskStatus.RATE_LIMITED})
#: failures that another attempt cannot fix: they fail for good at once
NON_RETRYABLE = frozenset({ErrorCategory.MISSING_EXECUTABLE})

# Above this many non-terminal tasks a full recount walks ancestors instead of
# using bitsets (n bits per task would cost n**2 / 8 bytes).
_BITSET_LIMIT = 20_000

_ReadyEntry = tuple[int, int, int, int, str]  # key0, key1, seq, version, id
_WaitEntry = tuple[float, int, int, str]  # retry_at, seq, version, id


class Scheduler:
    """Dependency-aware task state machine and start-order policy for one session.

    ``config`` may be replaced at any time (a new strategy takes effect at the
    next `next_task`). ``aborted`` is set by a failure under the ``abort``
    error strategy; no task starts while it is true. It is not part of the
    task state, so a caller that restores a session sets it again.
    """

    def __init__(self, config: SchedulerConfig, tasks: Iterable[Task] = ()) -> None:
        """Restore from persisted tasks (their order is the insertion order).

        Derived indexes are recomputed; a ``pending`` task whose dependencies
        are all satisfied becomes ``ready``. ``in_progress`` tasks stay so: the
        caller decides (e.g. `requeue` after a daemon restart).
        """
        self.config = config
        self.aborted = False
        self._tasks: dict[str, Task] = {}
        self._seq: dict[str, int] = {}
        self._deps: dict[str, tuple[str, ...]] = {}
        self._dependents: dict[str, list[str]] = {}
        self._unmet: dict[str, int] = {}  # dependencies not yet completed/skipped
        self._ndeps: dict[str, int] = {}  # non-terminal transitive dependents
        self._ver: dict[str, int] = {}  # heap entry version; older entries are stale
        self._count: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        self._running: dict[str, None] = {}  # in_progress ids, an ordered set
        self._heap: list[_ReadyEntry] = []
        self._heap_strategy: Strategy = config.strategy
        self._wait: list[_WaitEntry] = []
        self._backlog: list[tuple[str, int]] = []  # deferred dependent-count walks
        self._counts_stale = False

        restored = list(tasks)
        for task in restored:
            if task.id in self._tasks:
                raise errors.DuplicateTaskId(
                    f"duplicate task id {task.id!r} in restored tasks", data={"ids": [task.id]}
                )
            self._register(task)
        for task in restored:
            known = tuple(d for d in dict.fromkeys(task.dependencies) if d in self._tasks)
            self._deps[task.id] = known
            for dep in known:
                self._dependents[dep].append(task.id)
            self._unmet[task.id] = sum(1 for d in known if self._tasks[d].status not in SATISFIED)
        for task in restored:
            if task.status is TaskStatus.PENDING and self._unmet[task.id] == 0:
                self._set_status(task, TaskStatus.READY)
            elif task.status is TaskStatus.READY and self._unmet[task.id] > 0:
                self._set_status(task, TaskStatus.PENDING)
        self._counts_stale = bool(restored)
        self._rebuild_heap()

    # --- queries -------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        """The task with this id; `errors.TaskNotFound` if there is none."""
        try:
            return self._tasks[task_id]
        except KeyError:
            raise errors.TaskNotFound(
                f"task {task_id!r} not found", data={"taskId": task_id}
            ) from None

    def tasks(self, status: TaskStatus | None = None) -> list[Task]:
        """All tasks (or those in one status) in insertion order."""
        if status is None:
            return list(self._tasks.values())
        return [t for t in self._tasks.values() if t.status is status]

    def counts(self) -> dict[TaskStatus, int]:
        """Number of tasks per status (every status present), kept incrementally."""
        return dict(self._count)

    def in_progress(self) -> list[Task]:
        """Running tasks in insertion order."""
        return sorted((self._tasks[i] for i in self._running), key=self._seq_of)

    def dependents_count(self, task_id: str) -> int:
        """Distinct non-terminal tasks that transitively depend on this one.

        This is the ``dependency_first`` key. Only meaningful for a
        non-terminal task; 0 for a terminal one.
        """
        task = self.get(task_id)
        if task.status in TERMINAL_TASK_STATUSES:
            return 0
        self._settle_counts()
        return self._ndeps[task_id]

    def slots(self) -> int:
        """How many more tasks may start now (0 when aborted)."""
        if self.aborted:
            return 0
        return max(0, self._limit() - len(self._running))

    def is_finished(self) -> bool:
        """True when nothing more will happen without outside intervention.

        Every task is terminal, or the session is aborted and nothing runs.
        """
        if self.aborted:
            return not self._running
        terminal = sum(self._count[s] for s in TERMINAL_TASK_STATUSES)
        return terminal == len(self._tasks)

    def next_wakeup(self) -> float | None:
        """Earliest ``retry_at`` of a task in ``retry_wait``/``rate_limited``."""
        wait = self._wait
        while wait and not self._wait_valid(wait[0]):
            heapq.heappop(wait)
        return wait[0][0] if wait else None

    def __repr__(self) -> str:
        busy = ", ".join(f"{s.value}={n}" for s, n in self._count.items() if n)
        return (
            f"<Scheduler strategy={self.config.strategy.value}"
            f" max_parallel={self.config.max_parallel} tasks={len(self._tasks)}"
            f" ({busy or 'empty'}){' aborted' if self.aborted else ''}>"
        )

    # --- adding --------------------------------------------------------------

    def add_tasks(self, specs: Sequence[TaskSpec], now: float) -> list[Task]:
        """Validate a whole batch, then add it; return the new tasks in batch order.

        Rejected with nothing kept: `errors.DuplicateTaskId` (``ids``),
        `errors.UnknownDependency` (``missing``: task id -> unknown ids),
        `errors.DependencyCycle` (``cycle``: ids where each depends on the
        next, first id repeated at the end). A new task is ``ready`` when all
        its dependencies are completed or skipped, ``blocked`` at once when
        one is failed, blocked or cancelled, else ``pending``. ``now`` is
        accepted for symmetry; adding does not depend on time.
        """
        del now
        batch: dict[str, TaskSpec] = {}
        dups: list[str] = []
        for spec in specs:
            if (spec.id in self._tasks or spec.id in batch) and spec.id not in dups:
                dups.append(spec.id)
            batch.setdefault(spec.id, spec)
        if dups:
            raise errors.DuplicateTaskId(
                f"duplicate task ids: {', '.join(dups)}", data={"ids": dups}
            )
        deps = {s.id: tuple(dict.fromkeys(s.dependencies)) for s in specs}
        missing: dict[str, list[str]] = {}
        for sid, sdeps in deps.items():
            unknown = [d for d in sdeps if d not in self._tasks and d not in batch]
            if unknown:
                missing[sid] = unknown
        if missing:
            detail = "; ".join(f"{k} -> {', '.join(v)}" for k, v in missing.items())
            raise errors.UnknownDependency(
                f"unknown dependencies: {detail}", data={"missing": missing}
            )
        order = _batch_topological_order(list(deps), deps)

        # Decide every status before touching any index, dependencies first.
        status: dict[str, TaskStatus] = {}
        blocked_by: dict[str, str] = {}
        unmet: dict[str, int] = {}
        for sid in order:
            cause: str | None = None
            n_unmet = 0
            for dep in deps[sid]:
                if dep in status:
                    dst, dcause = status[dep], blocked_by.get(dep)
                else:
                    dtask = self._tasks[dep]
                    dst, dcause = dtask.status, dtask.blocked_by
                if dst in _BLOCKING and cause is None:
                    cause = (dcause or dep) if dst is TaskStatus.BLOCKED else dep
                if dst not in SATISFIED:
                    n_unmet += 1
            unmet[sid] = n_unmet
            if cause is not None:
                status[sid] = TaskStatus.BLOCKED
                blocked_by[sid] = cause
            else:
                status[sid] = TaskStatus.READY if n_unmet == 0 else TaskStatus.PENDING

        added: list[Task] = []
        for spec in specs:
            sid = spec.id
            task = Task(
                id=sid,
                title=spec.title,
                description=spec.description,
                priority=spec.priority,
                dependencies=list(deps[sid]),
                estimated_tokens=spec.estimated_tokens,
                agent_type=spec.agent_type,
                status=status[sid],
            )
            if sid in blocked_by:
                cause = blocked_by[sid]
                task.blocked_by = cause
                task.error_category = ErrorCategory.DEPENDENCY
                how = self._tasks[cause].status  # a root cause is never a new task
                task.error = f"dependency {cause} {_ended(how)}"
            self._register(task)
            self._deps[sid] = deps[sid]
            self._unmet[sid] = unmet[sid]
            added.append(task)
        for task in added:  # wired after registering: a dependency may come later
            for dep in self._deps[task.id]:
                self._dependents[dep].append(task.id)
            if task.status is TaskStatus.READY:
                self._push_ready(task)
            if task.status is not TaskStatus.BLOCKED:
                self._note(task.id, +1)
        return added

    # --- choosing and starting -----------------------------------------------

    def next_task(self, now: float) -> Task | None:
        """The task the strategy would start now, or None.

        None when the session is aborted, every slot is taken (``maxParallel``,
        or one under ``sequential``) or nothing is ready. Due retries are
        promoted first. Does not start the task: call `start`.
        """
        self.promote_due(now)
        if self.aborted or len(self._running) >= self._limit():
            return None
        return self._peek()

    def start(self, task_id: str, now: float, agent_id: str | None = None) -> Task:
        """``ready`` -> ``in_progress``: one more attempt, assigned to ``agent_id``.

        Any ready task may be started (``parallel_schedule_next`` by hand), but
        never beyond the slot limit (`errors.NoCapacity`) nor in an aborted
        session (`errors.SessionAborted`).
        """
        task = self._expect(task_id, TaskStatus.IN_PROGRESS, TaskStatus.READY)
        if self.aborted:
            raise errors.SessionAborted(data={"taskId": task_id})
        if len(self._running) >= self._limit():
            raise errors.NoCapacity(
                data={"taskId": task_id, "inProgress": len(self._running), "limit": self._limit()}
            )
        task.attempts += 1
        task.started_at = now
        task.assigned_agent = agent_id
        task.retry_at = None
        self._set_status(task, TaskStatus.IN_PROGRESS)
        return task

    # --- results -------------------------------------------------------------

    def complete(self, task_id: str, now: float, actual_tokens: int | None = None) -> list[Task]:
        """``in_progress`` -> ``completed``; returns it and the dependents now ready."""
        task = self._expect(task_id, TaskStatus.COMPLETED, TaskStatus.IN_PROGRESS)
        task.completed_at = now
        if actual_tokens is not None:
            task.actual_tokens = actual_tokens
        task.error = None
        task.error_category = None
        task.blocked_by = None
        self._set_status(task, TaskStatus.COMPLETED)
        return [task, *self._satisfied(task)]

    def fail(
        self,
        task_id: str,
        now: float,
        error: str,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
    ) -> list[Task]:
        """An attempt failed; apply ``errorStrategy``; return every changed task.

        retry: back off in ``retry_wait`` while ``attempts <= maxRetries``
        (delay ``backoff.delay(attempts)``), else fail for good. Categories in
        `NON_RETRYABLE` fail for good at once. skip: ``skipped``, dependents
        proceed as if it had completed. abort: fail for good and set
        ``aborted``. Failing for good blocks every transitive dependent.
        """
        task = self._expect(task_id, TaskStatus.FAILED, TaskStatus.IN_PROGRESS)
        task.error = error
        task.error_category = category
        strategy = self.config.error_strategy
        if strategy is ErrorStrategy.SKIP:
            task.completed_at = now
            self._set_status(task, TaskStatus.SKIPPED)
            return [task, *self._satisfied(task)]
        if (
            strategy is ErrorStrategy.RETRY
            and category not in NON_RETRYABLE
            and task.attempts <= self.config.max_retries
        ):
            task.retry_at = now + self.config.backoff.delay(task.attempts)
            self._set_status(task, TaskStatus.RETRY_WAIT)
            return [task]
        if strategy is ErrorStrategy.ABORT:
            self.aborted = True
        task.completed_at = now
        self._set_status(task, TaskStatus.FAILED)
        return [task, *self._block_dependents(task)]

    def rate_limited(self, task_id: str, now: float, reset_at: float | None) -> list[Task]:
        """Park a rate-limited attempt until ``reset_at`` without consuming a retry.

        Without a reset time the backoff for the current attempt count is
        used. The configured ``fallbackAgent`` becomes the task's agent type.
        """
        task = self._expect(task_id, TaskStatus.RATE_LIMITED, TaskStatus.IN_PROGRESS)
        task.attempts = max(0, task.attempts - 1)
        if reset_at is None:
            task.retry_at = now + self.config.backoff.delay(max(task.attempts, 1))
        else:
            task.retry_at = max(now, reset_at)
        task.error = f"rate limited until {task.retry_at:.0f}"
        task.error_category = ErrorCategory.RATE_LIMIT
        if self.config.fallback_agent:
            task.agent_type = self.config.fallback_agent
        self._set_status(task, TaskStatus.RATE_LIMITED)
        return [task]

    def requeue(self, task_id: str) -> Task:
        """``in_progress`` -> ``ready`` without consuming a retry.

        Branch and worktree are kept so the next attempt continues the work.
        For `stop_all`, a total-memory breach and a daemon restart.
        """
        task = self._expect(task_id, TaskStatus.READY, TaskStatus.IN_PROGRESS)
        task.attempts = max(0, task.attempts - 1)
        task.assigned_agent = None
        task.started_at = None
        new = TaskStatus.READY if self._unmet[task_id] == 0 else TaskStatus.PENDING
        self._set_status(task, new)
        return task

    def stop_all(self) -> list[Task]:
        """`requeue` every running task; returns them in insertion order."""
        return [self.requeue(t.id) for t in self.in_progress()]

    def cancel(self, task_id: str, now: float) -> list[Task]:
        """Any non-terminal task -> ``cancelled``; its transitive dependents -> ``blocked``.

        A running task's agent is the caller's to stop.
        """
        task = self.get(task_id)
        if task.status in TERMINAL_TASK_STATUSES:
            raise self._bad_transition(task, TaskStatus.CANCELLED)
        task.error_category = ErrorCategory.CANCELLED
        task.error = "cancelled"
        task.completed_at = now
        task.retry_at = None
        self._set_status(task, TaskStatus.CANCELLED)
        return [task, *self._block_dependents(task)]

    def retry(self, task_id: str) -> list[Task]:
        """Manual retry of a ``failed``, ``cancelled`` or ``blocked`` task.

        The task gets a fresh retry budget (``attempts`` 0) and becomes ready
        or pending; every transitive dependent that is blocked only because of
        it becomes pending again. A blocked task can be retried only once
        nothing it depends on is failed, blocked or cancelled. Does not clear
        ``aborted``. Returns every changed task.
        """
        task = self.get(task_id)
        if task.status not in _BLOCKING:
            raise self._bad_transition(task, TaskStatus.READY)
        bad = [d for d in self._deps[task_id] if self._tasks[d].status in _BLOCKING]
        if bad:
            raise errors.InvalidStateTransition(
                f"task {task_id} cannot be retried: dependency {bad[0]}"
                f" is {self._tasks[bad[0]].status.value}",
                data={
                    "taskId": task_id,
                    "from": task.status.value,
                    "to": "ready",
                    "blockedBy": bad,
                },
            )
        task.attempts = 0
        self._revive(task)
        changed = [task]
        # Blocked descendants whose every dependency is now alive come back, in
        # dependency order so a diamond sees its other parent revived first.
        for dep_id in self._blocked_descendants_in_order(task_id):
            dtask = self._tasks[dep_id]
            if all(self._tasks[d].status not in _BLOCKING for d in self._deps[dep_id]):
                self._revive(dtask)
                changed.append(dtask)
        return changed

    def promote_due(self, now: float) -> list[Task]:
        """Tasks parked until ``retry_at <= now`` become ready (pending if deps unmet)."""
        promoted: list[Task] = []
        wait = self._wait
        while wait and wait[0][0] <= now:
            entry = heapq.heappop(wait)
            if not self._wait_valid(entry):
                continue
            task = self._tasks[entry[3]]
            task.retry_at = None
            ready = self._unmet[task.id] == 0
            self._set_status(task, TaskStatus.READY if ready else TaskStatus.PENDING)
            promoted.append(task)
        return promoted

    # --- internals: state changes --------------------------------------------

    def _limit(self) -> int:
        return 1 if self.config.strategy is Strategy.SEQUENTIAL else self.config.max_parallel

    def _seq_of(self, task: Task) -> int:
        return self._seq[task.id]

    def _register(self, task: Task) -> None:
        """Index a task under its current status (dependencies are wired by the caller)."""
        tid = task.id
        self._tasks[tid] = task
        self._seq[tid] = len(self._seq)
        self._dependents[tid] = []
        self._ndeps[tid] = 0
        self._ver[tid] = 0
        self._count[task.status] += 1
        if task.status is TaskStatus.IN_PROGRESS:
            self._running[tid] = None
        elif task.status in WAITING:
            self._push_wait(task)

    def _set_status(self, task: Task, new: TaskStatus) -> None:
        """The one place a status changes, so every index follows it."""
        old = task.status
        if old is new:
            return
        self._count[old] -= 1
        self._count[new] += 1
        task.status = new
        if old is TaskStatus.IN_PROGRESS:
            del self._running[task.id]
        elif new is TaskStatus.IN_PROGRESS:
            self._running[task.id] = None
        if new is TaskStatus.READY:
            self._push_ready(task)
        elif new in WAITING:
            self._push_wait(task)
        was_terminal = old in TERMINAL_TASK_STATUSES
        if new in TERMINAL_TASK_STATUSES:
            if not was_terminal:
                self._note(task.id, -1)
        elif was_terminal:
            # Coming back to life: its count restarts from its revived
            # dependents, which an incremental event cannot express.
            self._counts_stale = True
            self._backlog.clear()

    def _expect(self, task_id: str, to: TaskStatus, *allowed: TaskStatus) -> Task:
        task = self.get(task_id)
        if task.status not in allowed:
            raise self._bad_transition(task, to)
        return task

    @staticmethod
    def _bad_transition(task: Task, to: TaskStatus) -> errors.InvalidStateTransition:
        return errors.InvalidStateTransition(
            f"task {task.id} cannot go from {task.status.value} to {to.value}",
            data={"taskId": task.id, "from": task.status.value, "to": to.value},
        )

    def _satisfied(self, task: Task) -> list[Task]:
        """``task`` completed or was skipped: dependents with nothing left to wait for are ready."""
        ready: list[Task] = []
        for dep_id in self._dependents[task.id]:
            self._unmet[dep_id] -= 1
            dtask = self._tasks[dep_id]
            if self._unmet[dep_id] == 0 and dtask.status is TaskStatus.PENDING:
                self._set_status(dtask, TaskStatus.READY)
                ready.append(dtask)
        return ready

    def _block_dependents(self, root: Task) -> list[Task]:
        """Block every non-terminal transitive dependent of ``root``, nearest first."""
        blocked: list[Task] = []
        queue = deque(self._dependents[root.id])
        while queue:
            dtask = self._tasks[queue.popleft()]
            if dtask.status in TERMINAL_TASK_STATUSES:
                continue  # its own dependents were dealt with when it ended
            dtask.blocked_by = root.id
            dtask.error_category = ErrorCategory.DEPENDENCY
            dtask.error = f"dependency {root.id} {_ended(root.status)}"
            dtask.retry_at = None
            self._set_status(dtask, TaskStatus.BLOCKED)
            blocked.append(dtask)
            queue.extend(self._dependents[dtask.id])
        return blocked

    def _revive(self, task: Task) -> None:
        task.error = None
        task.error_category = None
        task.blocked_by = None
        task.completed_at = None
        task.retry_at = None
        ready = self._unmet[task.id] == 0
        self._set_status(task, TaskStatus.READY if ready else TaskStatus.PENDING)

    def _blocked_descendants_in_order(self, root: str) -> list[str]:
        """Blocked tasks reachable from ``root`` through blocked tasks, topologically."""
        reach: set[str] = set()
        stack = [root]
        while stack:
            for d in self._dependents[stack.pop()]:
                if d not in reach and self._tasks[d].status is TaskStatus.BLOCKED:
                    reach.add(d)
                    stack.append(d)
        indeg = {x: sum(1 for d in self._deps[x] if d in reach) for x in reach}
        ready = sorted((x for x, n in indeg.items() if n == 0), key=self._seq.__getitem__)
        out: list[str] = []
        while ready:
            x = ready.pop(0)
            out.append(x)
            for d in self._dependents[x]:
                if d in indeg:
                    indeg[d] -= 1
                    if indeg[d] == 0:
                        ready.append(d)
        return out

    # --- internals: heaps ----------------------------------------------------

    def _key(self, task: Task, strategy: Strategy) -> tuple[int, int]:
        if strategy is Strategy.PRIORITY:
            return (task.priority, 0)
        if strategy is Strategy.COST_FIRST:
            return (-(task.estimated_tokens or 0), task.priority)
        if strategy is Strategy.DEPENDENCY_FIRST:
            return (-self._ndeps[task.id], task.priority)
        return (0, 0)  # fifo, sequential: insertion order alone

    def _push_ready(self, task: Task) -> None:
        tid = task.id
        ver = self._ver[tid] + 1
        self._ver[tid] = ver
        k0, k1 = self._key(task, self._heap_strategy)
        heapq.heappush(self._heap, (k0, k1, self._seq[tid], ver, tid))
        if len(self._heap) > 2 * self._count[TaskStatus.READY] + 1024:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        """Fresh heap for the current strategy, with only live entries."""
        strategy = self._heap_strategy = self.config.strategy
        heap: list[_ReadyEntry] = []
        for tid, task in self._tasks.items():
            if task.status is TaskStatus.READY:
                ver = self._ver[tid] + 1
                self._ver[tid] = ver
                k0, k1 = self._key(task, strategy)
                heap.append((k0, k1, self._seq[tid], ver, tid))
        heapq.heapify(heap)
        self._heap = heap

    def _peek(self) -> Task | None:
        strategy = self.config.strategy
        if strategy is Strategy.DEPENDENCY_FIRST:
            self._settle_counts()
        if strategy is not self._heap_strategy:
            self._rebuild_heap()
        heap, tasks, ver = self._heap, self._tasks, self._ver
        while heap:
            entry = heap[0]
            task = tasks[entry[4]]
            if task.status is TaskStatus.READY and ver[task.id] == entry[3]:
                return task
            heapq.heappop(heap)
        return None

    def _push_wait(self, task: Task) -> None:
        tid = task.id
        ver = self._ver[tid] + 1
        self._ver[tid] = ver
        at = task.retry_at if task.retry_at is not None else 0.0
        heapq.heappush(self._wait, (at, self._seq[tid], ver, tid))

    def _wait_valid(self, entry: _WaitEntry) -> bool:
        task = self._tasks[entry[3]]
        return task.status in WAITING and self._ver[task.id] == entry[2]

    # --- internals: dependent counts for dependency_first ----------------------

    def _note(self, task_id: str, delta: int) -> None:
        """Record that ``task_id`` joined (+1) or left (-1) the non-terminal set."""
        if self._counts_stale:
            return
        self._backlog.append((task_id, delta))
        if len(self._backlog) > 4096 + len(self._tasks) // 4:
            self._counts_stale = True  # cheaper to recount than to replay
            self._backlog.clear()

    def _settle_counts(self) -> None:
        """Bring ``_ndeps`` up to date and re-key the ready tasks whose count moved."""
        if self._counts_stale or len(self._backlog) > max(64, len(self._tasks) // 8):
            self._recount_all()
            if self._heap_strategy is Strategy.DEPENDENCY_FIRST:
                self._rebuild_heap()
            return
        if not self._backlog:
            return
        changed: set[str] = set()
        for tid, delta in self._backlog:
            self._walk_ancestors(tid, delta, changed)
        self._backlog.clear()
        if self._heap_strategy is Strategy.DEPENDENCY_FIRST:
            for tid in sorted(changed, key=self._seq.__getitem__):
                task = self._tasks[tid]
                if task.status is TaskStatus.READY:
                    self._push_ready(task)

    def _walk_ancestors(self, tid: str, delta: int, changed: set[str] | None) -> None:
        """Add ``delta`` to every non-terminal ancestor of ``tid``.

        Stops at completed/skipped tasks: they only ever have completed or
        skipped ancestors (a task starts only once its dependencies are), so
        nothing above them is counted. Failed, blocked and cancelled tasks are
        walked through, because a non-terminal task can sit above them.
        """
        tasks, deps, ndeps = self._tasks, self._deps, self._ndeps
        stack = list(deps[tid])
        seen = set(stack)
        while stack:
            aid = stack.pop()
            status = tasks[aid].status
            if status in SATISFIED:
                continue
            if status not in TERMINAL_TASK_STATUSES:
                ndeps[aid] += delta
                if changed is not None:
                    changed.add(aid)
            for d in deps[aid]:
                if d not in seen:
                    seen.add(d)
                    stack.append(d)

    def _recount_all(self) -> None:
        """Recompute every non-terminal task's count from scratch.

        Bitsets over the non-terminal subgraph in reverse topological order:
        a task's descendants are the union of its dependents' descendants and
        the dependents themselves. Terminal tasks never have non-terminal
        descendants, so they can be left out.
        """
        self._backlog.clear()
        self._counts_stale = False
        live = [tid for tid, t in self._tasks.items() if t.status not in TERMINAL_TASK_STATUSES]
        for tid in self._tasks:
            self._ndeps[tid] = 0
        live_set = set(live)
        indeg = {x: sum(1 for d in self._deps[x] if d in live_set) for x in live}
        queue = deque(x for x in live if indeg[x] == 0)
        order: list[str] = []
        while queue:
            x = queue.popleft()
            order.append(x)
            for c in self._dependents[x]:
                if c in indeg:
                    indeg[c] -= 1
                    if indeg[c] == 0:
                        queue.append(c)
        if len(live) > _BITSET_LIMIT:
            for x in order:
                self._walk_ancestors(x, +1, None)
            return
        bit = {x: 1 << i for i, x in enumerate(live)}
        desc: dict[str, int] = {}
        for x in reversed(order):
            acc = 0
            for c in self._dependents[x]:
                if c in bit:
                    acc |= desc[c] | bit[c]
            desc[x] = acc
            self._ndeps[x] = acc.bit_count()


def _ended(status: TaskStatus) -> str:
    return "was cancelled" if status is TaskStatus.CANCELLED else "failed"


def _batch_topological_order(ids: list[str], deps: dict[str, tuple[str, ...]]) -> list[str]:
    """Batch ids, dependencies first; `errors.DependencyCycle` if the batch has a cycle.

    Only edges inside the batch matter: existing tasks cannot depend on new
    ones, so any cycle lies wholly within the batch. The reported cycle lists
    ids so that each depends on the next, the first repeated at the end.
    """
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(ids, white)
    order: list[str] = []
    for root in ids:
        if color[root] != white:
            continue
        color[root] = grey
        path = [root]
        iters = [iter(deps[root])]
        while iters:
            for dep in iters[-1]:
                state = color.get(dep)
                if state is None or state == black:
                    continue  # an existing task, or done
                if state == grey:
                    cycle = [*path[path.index(dep) :], dep]
                    raise errors.DependencyCycle(
                        f"dependency cycle: {' -> '.join(cycle)}", data={"cycle": cycle}
                    )
                color[dep] = grey
                path.append(dep)
                iters.append(iter(deps[dep]))
                break
            else:
                iters.pop()
                done = path.pop()
                color[done] = black
                order.append(done)
    return order
