"""The scheduler core: which task starts next, and what a result does to the graph.

Pure, synchronous and deterministic: no I/O, no trio, no clock. Time comes in
as ``now`` (seconds, any epoch) so the daemon, the tests and the benchmark all
drive the same code. One `Scheduler` per session.

The tasks are the state, kept as compact `TaskRow`s: they are mutated in place
and every mutating method returns the tasks whose state changed, so the caller
persists exactly those. Everything else here is a derived index rebuilt by ``__init__`` from
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
import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import TypeVar

from corral import errors
from corral.models import (
    TERMINAL_TASK_STATES,
    ErrorCategory,
    ErrorStrategy,
    IntegrationPolicy,
    IntegrationStatus,
    SchedulerConfig,
    Strategy,
    Task,
    TaskSpec,
    TaskState,
)
from corrald.core.graph import batch_order, topological_order
from corrald.core.paths import any_overlap
from corrald.core.taskrow import TaskRow

H = TypeVar("H", bound=Hashable)

__all__ = ["NON_RETRYABLE", "SATISFIED", "WAITING", "Scheduler"]

#: a dependency in one of these states lets its dependents run
SATISFIED = frozenset({TaskState.COMPLETED, TaskState.SKIPPED})
#: a dependency in one of these states blocks its dependents for good
_BLOCKING = frozenset({TaskState.FAILED, TaskState.BLOCKED, TaskState.CANCELLED})
#: states from which a task moves on by itself (the others wait or have ended)
_MOVING = frozenset(
    {TaskState.READY, TaskState.IN_PROGRESS, TaskState.RETRY_WAIT, TaskState.RATE_LIMITED}
)
#: integration statuses of a completed task still on its way in
_AWAITING = frozenset({IntegrationStatus.QUEUED, IntegrationStatus.GATING})
#: parked until ``retry_at``
WAITING = frozenset({TaskState.RETRY_WAIT, TaskState.RATE_LIMITED})
#: failures that another attempt cannot fix: they fail for good at once
NON_RETRYABLE = frozenset({ErrorCategory.MISSING_EXECUTABLE, ErrorCategory.INTERNAL})

# Above this many non-terminal tasks a full recount walks ancestors instead of
# using bitsets (n bits per task would cost n**2 / 8 bytes).
_BITSET_LIMIT = 20_000


class _Node:
    """A task's place in the graph: everything derived, in one object for locality."""

    __slots__ = ("dependents", "deps", "ndeps", "seq", "task", "unmet", "ver")

    def __init__(self, task: TaskRow, seq: int) -> None:
        self.task = task
        self.seq = seq  # insertion order
        self.deps: tuple[_Node, ...] = ()
        self.dependents: list[_Node] = []
        self.unmet = 0  # dependencies not yet completed/skipped
        self.ndeps = 0  # non-terminal transitive dependents (dependency_first)
        self.ver = 0  # version of its newest heap entry; older entries are stale

    def __repr__(self) -> str:
        return f"_Node({self.task.id}, {self.task.state.value})"


# Heap entries end in the unique seq before the node, so nodes are never compared.
_ReadyEntry = tuple[int, int, int, int, _Node]  # key0, key1, seq, version, node
_WaitEntry = tuple[float, int, int, _Node]  # retry_at, seq, version, node


class Scheduler:
    """Dependency-aware task state machine and start-order policy for one session.

    ``config`` may be replaced at any time (a new strategy takes effect at the
    next `next_task`). ``aborted`` is set by a failure under the ``abort``
    error strategy; no task starts while it is true. It is not part of the
    task state: the caller persists it and passes it back on restore.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        tasks: Iterable[Task | TaskRow] = (),
        *,
        aborted: bool = False,
    ) -> None:
        """Restore from persisted tasks (their order is the insertion order).

        Derived indexes are recomputed; a ``pending`` task whose dependencies
        are all satisfied becomes ``ready`` (and a ``ready`` one whose are not,
        ``pending``). ``in_progress`` tasks stay so: the caller decides (e.g.
        `requeue` after a daemon restart). Unknown dependency ids are ignored.
        """
        self.config = config
        self.aborted = aborted
        self._nodes: dict[str, _Node] = {}
        self._rows: list[TaskRow] = []  # every task in insertion order: row i has seq i
        self._count: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self._running: dict[str, _Node] = {}  # in_progress, an ordered set
        self._heap: list[_ReadyEntry] = []
        self._heap_strategy: Strategy = config.strategy
        self._wait: list[_WaitEntry] = []
        self._backlog: list[tuple[_Node, int]] = []  # deferred dependent-count walks
        self._counts_stale = False
        self._awaiting: set[str] = set()  # completed, on their way into the integration branch
        self.held_for_paths = 0  # ready tasks the last pick passed over for overlapping paths

        restored: list[_Node] = []
        for item in tasks:
            task = TaskRow.of(item) if isinstance(item, Task) else item
            if task.id in self._nodes:
                raise errors.DuplicateTaskId(
                    f"duplicate task id {task.id!r} in restored tasks", data={"ids": [task.id]}
                )
            restored.append(self._register(task))
        nodes = self._nodes
        for node in restored:
            node.deps = tuple(nodes[d] for d in dict.fromkeys(node.task.dependencies) if d in nodes)
            for dep in node.deps:
                dep.dependents.append(node)
            node.unmet = sum(1 for d in node.deps if not self._satisfies(d.task))
            if node.task.integration_status in _AWAITING and node.task.state is TaskState.COMPLETED:
                if node.task.integration_status is IntegrationStatus.GATING:
                    node.task.integration_status = IntegrationStatus.QUEUED  # gate again
                self._awaiting.add(node.task.id)
        for node in restored:
            status = node.task.state
            if status is TaskState.PENDING and node.unmet == 0:
                self._set_state(node, TaskState.READY)
            elif status is TaskState.READY and node.unmet > 0:
                self._set_state(node, TaskState.PENDING)
        self._counts_stale = bool(restored)
        self._rebuild_heap()

    # --- queries -------------------------------------------------------------

    def get(self, task_id: str) -> TaskRow:
        """The task with this id; `errors.TaskNotFound` if there is none."""
        return self._node(task_id).task

    def tasks(self, status: TaskState | None = None) -> list[TaskRow]:
        """All tasks (or those in one status) in insertion order."""
        if status is None:
            return self._rows.copy()
        return [t for t in self._rows if t.state is status]

    def tasks_after(self, task_id: str | None) -> Iterator[TaskRow]:
        """Tasks in insertion order, from the one after `task_id` (from the first if None);
        `errors.TaskNotFound` if there is no such task."""
        start = 0 if task_id is None else self._node(task_id).seq + 1
        return itertools.islice(self._rows, start, None)

    def counts(self) -> dict[TaskState, int]:
        """Number of tasks per status (every status present), kept incrementally."""
        return dict(self._count)

    def waiting_for_paths(self) -> int:
        """Ready tasks held back because their `paths` overlap a running task's."""
        busy = [n.task.paths for n in self._running.values() if n.task.paths]
        if not busy:
            return 0
        return sum(
            1
            for n in self._nodes.values()
            if n.task.state is TaskState.READY
            and n.task.paths
            and any(any_overlap(n.task.paths, b) for b in busy)
        )

    def in_progress(self) -> list[TaskRow]:
        """Running tasks in insertion order."""
        return [n.task for n in sorted(self._running.values(), key=_seq)]

    def dependents_count(self, task_id: str) -> int:
        """Distinct non-terminal tasks that transitively depend on this one.

        This is the ``dependency_first`` key. Only meaningful for a
        non-terminal task; 0 for a terminal one.
        """
        node = self._node(task_id)
        if node.task.state in TERMINAL_TASK_STATES:
            return 0
        self._settle_counts()
        return node.ndeps

    def is_finished(self) -> bool:
        """True when nothing more will happen without outside intervention.

        No task runs, is ready or waits for a timer, and none is on its way
        into the integration branch: whatever is left (a task parked for a
        person and what depends on it) moves only by outside intervention.
        Or the session is aborted and nothing runs.
        """
        if self.aborted:
            return not self._running
        # Pending tasks with nothing left to move are stuck behind a parked one.
        moving = sum(self._count[s] for s in _MOVING)
        return moving == 0 and not self._awaiting

    def awaiting_integration(self) -> list[TaskRow]:
        """Completed tasks queued for (or being gated into) the integration branch."""
        return [
            self._nodes[i].task for i in sorted(self._awaiting, key=lambda i: self._nodes[i].seq)
        ]

    def satisfies(self, task_id: str) -> bool:
        """True when the task lets its dependents start."""
        return self._satisfies(self._node(task_id).task)

    def _satisfies(self, task: TaskRow) -> bool:
        """Skipped, or completed and (with integration on) integrated."""
        if task.state is TaskState.SKIPPED:
            return True
        if task.state is not TaskState.COMPLETED:
            return False
        return not self.config.integrate or task.integration_status is IntegrationStatus.INTEGRATED

    def next_wakeup(self) -> float | None:
        """Earliest ``retry_at`` of a task in ``retry_wait``/``rate_limited``."""
        wait = self._wait
        while wait and not _wait_valid(wait[0]):
            heapq.heappop(wait)
        return wait[0][0] if wait else None

    def __repr__(self) -> str:
        busy = ", ".join(f"{s.value}={n}" for s, n in self._count.items() if n)
        return (
            f"<Scheduler strategy={self.config.strategy.value}"
            f" max_parallel={self.config.max_parallel} tasks={len(self._nodes)}"
            f" ({busy or 'empty'}){' aborted' if self.aborted else ''}>"
        )

    # --- adding --------------------------------------------------------------

    def add_tasks(self, specs: Sequence[TaskSpec], now: float) -> list[TaskRow]:
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
        nodes = self._nodes
        batch: dict[str, TaskSpec] = {}
        dups: list[str] = []
        for spec in specs:
            if (spec.id in nodes or spec.id in batch) and spec.id not in dups:
                dups.append(spec.id)
            batch.setdefault(spec.id, spec)
        if dups:
            raise errors.DuplicateTaskId(
                f"duplicate task ids: {', '.join(dups)}", data={"ids": dups}
            )
        deps = {s.id: tuple(dict.fromkeys(s.dependencies)) for s in specs}
        missing: dict[str, list[str]] = {}
        for sid, sdeps in deps.items():
            unknown = [d for d in sdeps if d not in nodes and d not in batch]
            if unknown:
                missing[sid] = unknown
        if missing:
            detail = "; ".join(f"{k} -> {', '.join(v)}" for k, v in missing.items())
            raise errors.UnknownDependency(
                f"unknown dependencies: {detail}", data={"missing": missing}
            )
        order = batch_order(list(deps), deps)

        # Decide every status before touching any index, dependencies first.
        status: dict[str, TaskState] = {}
        blocked_by: dict[str, str] = {}
        unmet: dict[str, int] = {}
        for sid in order:
            cause: str | None = None
            n_unmet = 0
            for dep in deps[sid]:
                if dep in status:  # a new task of this batch: never done yet
                    dst, dcause, satisfied = status[dep], blocked_by.get(dep), False
                else:
                    dtask = nodes[dep].task
                    dst, dcause, satisfied = dtask.state, dtask.blocked_by, self._satisfies(dtask)
                if not satisfied:
                    n_unmet += 1
                    if cause is None and dst in _BLOCKING:
                        cause = (dcause or dep) if dst is TaskState.BLOCKED else dep
            unmet[sid] = n_unmet
            if cause is not None:
                status[sid] = TaskState.BLOCKED
                blocked_by[sid] = cause
            else:
                status[sid] = TaskState.READY if n_unmet == 0 else TaskState.PENDING

        added: list[_Node] = []
        for spec in specs:
            sid = spec.id
            task = TaskRow(
                sid,
                spec.title,
                description=spec.description,
                priority=spec.priority,
                dependencies=deps[sid],
                estimated_tokens=spec.estimated_tokens,
                agent_type=spec.agent_type,
                paths=tuple(spec.paths),
                state=status[sid],
            )
            if sid in blocked_by:
                cause = blocked_by[sid]
                task.blocked_by = cause
                task.error_category = ErrorCategory.DEPENDENCY
                how = nodes[cause].task.state  # a root cause is never a new task
                task.error = f"dependency {cause} {_ended(how)}"
            node = self._register(task)
            node.unmet = unmet[sid]
            added.append(node)
        for node in added:  # wired after registering: a dependency may come later
            node.deps = tuple(nodes[d] for d in deps[node.task.id])
            for dnode in node.deps:
                dnode.dependents.append(node)
            st = node.task.state
            if st is TaskState.READY:
                self._push_ready(node)
            if st is not TaskState.BLOCKED:
                self._note(node, +1)
        return [n.task for n in added]

    # --- choosing and starting -----------------------------------------------

    def next_task(self, now: float) -> TaskRow | None:
        """The task the strategy would start now, or None.

        None when the session is aborted, every slot is taken (``maxParallel``,
        or one under ``sequential``) or nothing is ready. Due retries are
        promoted first. Does not start the task: call `start`.
        """
        wait = self._wait
        if wait and wait[0][0] <= now:
            self.promote_due(now)
        if self.aborted or len(self._running) >= self._limit():
            return None
        node = self._peek_free()
        return node.task if node is not None else None

    def start(self, task_id: str, now: float, agent_id: str | None = None) -> TaskRow:
        """``ready`` -> ``in_progress``: one more attempt, assigned to ``agent_id``.

        Any ready task may be started (``parallel_schedule_next`` by hand), but
        never beyond the slot limit (`errors.NoCapacity`) nor in an aborted
        session (`errors.SessionAborted`).
        """
        node = self._expect(task_id, TaskState.IN_PROGRESS, TaskState.READY)
        if self.aborted:
            raise errors.SessionAborted(data={"taskId": task_id})
        if len(self._running) >= self._limit():
            raise errors.NoCapacity(
                data={"taskId": task_id, "inProgress": len(self._running), "limit": self._limit()}
            )
        task = node.task
        if task.resolving:
            task.integration_attempts += 1  # resolving a conflict spends no normal retry
        else:
            task.attempts += 1
        task.started_at = now
        task.assigned_agent = agent_id
        task.retry_at = None
        self._set_state(node, TaskState.IN_PROGRESS)
        return task

    # --- results -------------------------------------------------------------

    def complete(self, task_id: str, now: float, actual_tokens: int | None = None) -> list[TaskRow]:
        """``in_progress`` -> ``completed``; returns it and the dependents now ready."""
        node = self._expect(task_id, TaskState.COMPLETED, TaskState.IN_PROGRESS)
        task = node.task
        task.completed_at = now
        task.rate_limits = 0
        if actual_tokens is not None:
            task.actual_tokens = actual_tokens
        task.error = None
        task.error_category = None
        task.blocked_by = None
        self._set_state(node, TaskState.COMPLETED)
        if self.config.integrate:
            # Its dependents wait until its work is in the integration branch.
            task.integration_status = IntegrationStatus.QUEUED
            task.resolving = None
            task.integration_error = None
            self._awaiting.add(task.id)
            return [task]
        return [task, *self._satisfied(node)]

    # --- integration ---------------------------------------------------------

    def gating(self, task_ids: Sequence[str]) -> list[TaskRow]:
        """Queued tasks whose merged batch is being gated."""
        changed = []
        for task_id in task_ids:
            task = self._expect_awaiting(task_id)
            task.integration_status = IntegrationStatus.GATING
            changed.append(task)
        return changed

    def requeued_for_integration(self, task_ids: Sequence[str]) -> list[TaskRow]:
        """Back to queued (a batch that could not finish: gate again later)."""
        changed = []
        for task_id in task_ids:
            task = self._expect_awaiting(task_id)
            task.integration_status = IntegrationStatus.QUEUED
            changed.append(task)
        return changed

    def integrated(self, task_id: str) -> list[TaskRow]:
        """The task's work is in the integration branch: its dependents may start."""
        task = self._expect_awaiting(task_id)
        task.integration_status = IntegrationStatus.INTEGRATED
        task.conflict_files = ()
        task.integration_error = None
        self._awaiting.discard(task_id)
        return [task, *self._satisfied(self._nodes[task_id])]

    def integration_setback(
        self,
        task_id: str,
        now: float,
        *,
        gate: bool,
        files: Sequence[str] = (),
        error: str | None = None,
    ) -> list[TaskRow]:
        """The branch conflicts with the integration head (or fails the gate): apply the policy.

        `agent`/`resolver`: while `integrationAttempts < maxIntegrationAttempts`
        the task goes back to ready for a resolution attempt (which spends no
        normal retry); past the cap it fails for good with category `conflict`
        (or `gate`) and its dependents are blocked. `manual`: it parks, still
        completed, until `requeue_parked` (a person fixed it).
        """
        task = self._expect_awaiting(task_id)
        node = self._nodes[task_id]
        policy = self.config.on_gate_failure if gate else self.config.on_conflict
        task.integration_status = (
            IntegrationStatus.GATE_FAILED if gate else IntegrationStatus.CONFLICT
        )
        task.conflict_files = tuple(files)
        task.integration_error = error
        self._awaiting.discard(task_id)
        if policy is IntegrationPolicy.MANUAL:
            task.resolving = None
            return [task]
        if task.integration_attempts >= self.config.max_integration_attempts:
            what = "failed the gate" if gate else "conflicts with the integration branch"
            task.error = f"its branch {what} after {task.integration_attempts} resolution attempts"
            if error:
                task.error += f": {error[:300]}"
            task.error_category = ErrorCategory.GATE if gate else ErrorCategory.CONFLICT
            task.completed_at = now
            task.resolving = None
            self._set_state(node, TaskState.FAILED)
            return [task, *self._block_dependents(node)]
        task.resolving = "gate" if gate else "conflict"
        task.assigned_agent = None
        self._set_state(node, TaskState.READY)
        return [task]

    def reopen_to_resolve(self, task_id: str, files: Sequence[str], error: str) -> list[TaskRow]:
        """A completed task's branch conflicts with a landing target: an agent resolves it.

        ``completed`` -> ``ready`` with `resolving = "conflict"` (the caller has
        merged the target into its worktree, markers left in place); the
        attempt spends no normal retry. Its dependents wait for it again
        (those already started or ended are left as they are).
        """
        node = self._expect(task_id, TaskState.READY, TaskState.COMPLETED)
        task = node.task
        if self._satisfies(task):  # its dependents counted it as done
            for dnode in node.dependents:
                dnode.unmet += 1
        self._awaiting.discard(task_id)
        task.resolving = "conflict"
        task.conflict_files = tuple(files)
        task.integration_error = error
        task.integration_status = None
        task.assigned_agent = None
        task.completed_at = None
        self._set_state(node, TaskState.READY)
        return [task]

    def requeue_parked(self, task_id: str) -> list[TaskRow]:
        """A parked task (policy manual) goes back into the integration queue."""
        node = self._node(task_id)
        task = node.task
        parked = task.state is TaskState.COMPLETED and task.integration_status in (
            IntegrationStatus.CONFLICT,
            IntegrationStatus.GATE_FAILED,
        )
        if not parked or task_id in self._awaiting:
            raise errors.InvalidStateTransition(
                f"task {task_id} is not parked waiting for a person"
                f" (state {task.state.value}, integration {task.integration_status})",
                data={
                    "taskId": task_id,
                    "state": task.state.value,
                    "integrationStatus": task.integration_status,
                },
            )
        task.integration_status = IntegrationStatus.QUEUED
        self._awaiting.add(task_id)
        return [task]

    def _expect_awaiting(self, task_id: str) -> TaskRow:
        node = self._node(task_id)
        if task_id not in self._awaiting:
            raise errors.InvalidStateTransition(
                f"task {task_id} is not waiting to be integrated",
                data={"taskId": task_id, "integrationStatus": node.task.integration_status},
            )
        return node.task

    def fail(
        self,
        task_id: str,
        now: float,
        error: str,
        category: ErrorCategory = ErrorCategory.UNKNOWN,
    ) -> list[TaskRow]:
        """An attempt failed; apply ``errorStrategy``; return every changed task.

        retry: back off in ``retry_wait`` while ``attempts <= maxRetries``
        (delay ``backoff.delay(attempts)``), else fail for good. Categories in
        `NON_RETRYABLE` fail for good at once. skip: ``skipped``, dependents
        proceed as if it had completed. abort: fail for good and set
        ``aborted``. Failing for good blocks every transitive dependent.
        """
        node = self._expect(task_id, TaskState.FAILED, TaskState.IN_PROGRESS)
        task = node.task
        task.error = error
        task.error_category = category
        task.rate_limits = 0
        strategy = self.config.error_strategy
        if strategy is ErrorStrategy.SKIP:
            task.completed_at = now
            self._set_state(node, TaskState.SKIPPED)
            return [task, *self._satisfied(node)]
        within_budget = (
            task.integration_attempts < self.config.max_integration_attempts
            if task.resolving
            else task.attempts <= self.config.max_retries
        )
        if strategy is ErrorStrategy.RETRY and category not in NON_RETRYABLE and within_budget:
            task.retry_at = now + self.config.backoff.delay(
                task.integration_attempts if task.resolving else task.attempts
            )
            self._set_state(node, TaskState.RETRY_WAIT)
            return [task]
        if strategy is ErrorStrategy.ABORT:
            self.aborted = True
        task.completed_at = now
        self._set_state(node, TaskState.FAILED)
        return [task, *self._block_dependents(node)]

    def rate_limited(self, task_id: str, now: float, reset_at: float | None) -> list[TaskRow]:
        """Park a rate-limited attempt until ``reset_at`` without consuming a retry.

        Without a reset time the wait is the backoff for the number of rate
        limits in a row (``rateLimits``), so it grows on repeats although no
        retry is spent. The configured ``fallbackAgent`` becomes the task's
        agent type.
        """
        node = self._expect(task_id, TaskState.RATE_LIMITED, TaskState.IN_PROGRESS)
        task = node.task
        _refund(task)
        task.rate_limits += 1
        if reset_at is None:
            task.retry_at = now + self.config.backoff.delay(task.rate_limits)
        else:
            task.retry_at = max(now, reset_at)
        task.error = f"rate limited until {task.retry_at:.0f}"
        task.error_category = ErrorCategory.RATE_LIMIT
        if self.config.fallback_agent:
            task.agent_type = self.config.fallback_agent
        self._set_state(node, TaskState.RATE_LIMITED)
        return [task]

    def requeue(self, task_id: str) -> TaskRow:
        """``in_progress`` -> ``ready`` without consuming a retry.

        Branch and worktree are kept so the next attempt continues the work.
        For stopping agents, a total-memory breach and a daemon restart.
        """
        node = self._expect(task_id, TaskState.READY, TaskState.IN_PROGRESS)
        task = node.task
        _refund(task)
        task.assigned_agent = None
        task.started_at = None
        self._set_state(node, TaskState.READY if node.unmet == 0 else TaskState.PENDING)
        return task

    def cancel(self, task_id: str, now: float) -> list[TaskRow]:
        """Any non-terminal task -> ``cancelled``; its transitive dependents -> ``blocked``.

        A running task's agent is the caller's to stop.
        """
        node = self._node(task_id)
        task = node.task
        if task.state in TERMINAL_TASK_STATES:
            raise _bad_transition(task, TaskState.CANCELLED)
        task.error_category = ErrorCategory.CANCELLED
        task.error = "cancelled"
        task.completed_at = now
        task.retry_at = None
        self._set_state(node, TaskState.CANCELLED)
        return [task, *self._block_dependents(node)]

    def retry(self, task_id: str) -> list[TaskRow]:
        """Manual retry of a ``failed``, ``cancelled`` or ``blocked`` task.

        The task gets a fresh retry budget (``attempts`` 0) and becomes ready
        or pending; every transitive dependent that is blocked only because of
        it becomes pending again. A blocked task can be retried only once
        nothing it depends on is failed, blocked or cancelled. Does not clear
        ``aborted``. Returns every changed task.
        """
        node = self._node(task_id)
        task = node.task
        if task.state not in _BLOCKING:
            raise _bad_transition(task, TaskState.READY)
        bad = [d.task for d in node.deps if d.task.state in _BLOCKING]
        if bad:
            raise errors.InvalidStateTransition(
                f"task {task_id} cannot be retried: dependency {bad[0].id} is {bad[0].state.value}",
                data={
                    "taskId": task_id,
                    "from": task.state.value,
                    "to": "ready",
                    "blockedBy": [b.id for b in bad],
                },
            )
        task.attempts = 0
        task.integration_attempts = 0
        task.resolving = None
        self._revive(node)
        changed = [task]
        # Blocked descendants whose every dependency is now alive come back, in
        # dependency order so a diamond sees its other parent revived first.
        for dnode in _blocked_descendants_in_order(node):
            if all(d.task.state not in _BLOCKING for d in dnode.deps):
                self._revive(dnode)
                changed.append(dnode.task)
        return changed

    def promote_due(self, now: float) -> list[TaskRow]:
        """Tasks parked until ``retry_at <= now`` become ready (pending if deps unmet)."""
        promoted: list[TaskRow] = []
        wait = self._wait
        while wait and wait[0][0] <= now:
            entry = heapq.heappop(wait)
            if not _wait_valid(entry):
                continue
            node = entry[3]
            node.task.retry_at = None
            self._set_state(node, TaskState.READY if node.unmet == 0 else TaskState.PENDING)
            promoted.append(node.task)
        return promoted

    # --- internals: state changes --------------------------------------------

    def _node(self, task_id: str) -> _Node:
        try:
            return self._nodes[task_id]
        except KeyError:
            raise errors.TaskNotFound(
                f"task {task_id!r} not found", data={"taskId": task_id}
            ) from None

    def _limit(self) -> int:
        return 1 if self.config.strategy is Strategy.SEQUENTIAL else self.config.max_parallel

    def _register(self, task: TaskRow) -> _Node:
        """Index a task under its current status (dependencies are wired by the caller)."""
        node = _Node(task, len(self._rows))
        self._nodes[task.id] = node
        self._rows.append(task)
        self._count[task.state] += 1
        if task.state is TaskState.IN_PROGRESS:
            self._running[task.id] = node
        elif task.state in WAITING:
            self._push_wait(node)
        return node

    def _set_state(self, node: _Node, new: TaskState) -> None:
        """The one place a status changes, so every index follows it."""
        task = node.task
        old = task.state
        if old is new:
            return
        self._count[old] -= 1
        self._count[new] += 1
        task.state = new
        if old is TaskState.IN_PROGRESS:
            del self._running[task.id]
        elif new is TaskState.IN_PROGRESS:
            self._running[task.id] = node
        if new is TaskState.READY:
            self._push_ready(node)
        elif new in WAITING:
            self._push_wait(node)
        was_terminal = old in TERMINAL_TASK_STATES
        if new in TERMINAL_TASK_STATES:
            if not was_terminal:
                self._note(node, -1)
        elif was_terminal:
            # Coming back to life: its count restarts from its revived
            # dependents, which an incremental event cannot express.
            self._counts_stale = True
            self._backlog.clear()

    def _expect(self, task_id: str, to: TaskState, *allowed: TaskState) -> _Node:
        node = self._node(task_id)
        if node.task.state not in allowed:
            raise _bad_transition(node.task, to)
        return node

    def _satisfied(self, node: _Node) -> list[TaskRow]:
        """``node`` completed or was skipped: dependents with nothing left to wait for are ready."""
        ready: list[TaskRow] = []
        for dnode in node.dependents:
            dnode.unmet -= 1
            if dnode.unmet == 0 and dnode.task.state is TaskState.PENDING:
                self._set_state(dnode, TaskState.READY)
                ready.append(dnode.task)
        return ready

    def _block_dependents(self, root: _Node) -> list[TaskRow]:
        """Block every non-terminal transitive dependent of ``root``, nearest first."""
        blocked: list[TaskRow] = []
        rid = root.task.id
        error = f"dependency {rid} {_ended(root.task.state)}"
        queue = deque(root.dependents)
        while queue:
            dnode = queue.popleft()
            dtask = dnode.task
            if dtask.state in TERMINAL_TASK_STATES:
                continue  # its own dependents were dealt with when it ended
            dtask.blocked_by = rid
            dtask.error_category = ErrorCategory.DEPENDENCY
            dtask.error = error
            dtask.retry_at = None
            self._set_state(dnode, TaskState.BLOCKED)
            blocked.append(dtask)
            queue.extend(dnode.dependents)
        return blocked

    def _revive(self, node: _Node) -> None:
        task = node.task
        task.error = None
        task.error_category = None
        task.blocked_by = None
        task.completed_at = None
        task.retry_at = None
        self._set_state(node, TaskState.READY if node.unmet == 0 else TaskState.PENDING)

    # --- internals: heaps ----------------------------------------------------

    def _push_ready(self, node: _Node) -> None:
        node.ver += 1
        k0, k1 = _key(node, self._heap_strategy)
        heapq.heappush(self._heap, (k0, k1, node.seq, node.ver, node))
        if len(self._heap) > 2 * self._count[TaskState.READY] + 1024:
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        """Fresh heap for the current strategy, with only live entries."""
        strategy = self._heap_strategy = self.config.strategy
        heap: list[_ReadyEntry] = []
        for node in self._nodes.values():
            if node.task.state is TaskState.READY:
                node.ver += 1
                k0, k1 = _key(node, strategy)
                heap.append((k0, k1, node.seq, node.ver, node))
        heapq.heapify(heap)
        self._heap = heap

    def _peek(self) -> _Node | None:
        strategy = self.config.strategy
        if strategy is Strategy.DEPENDENCY_FIRST:
            self._settle_counts()
        if strategy is not self._heap_strategy:
            self._rebuild_heap()
        heap = self._heap
        while heap:
            entry = heap[0]
            node = entry[4]
            if node.task.state is TaskState.READY and node.ver == entry[3]:
                return node
            heapq.heappop(heap)
        return None

    def _peek_free(self) -> _Node | None:
        """The strategy's pick among ready tasks whose paths overlap no running task's.

        Passed-over tasks stay in the heap, in their place; `held_for_paths`
        says how many the pick had to pass over.
        """
        busy = [n.task.paths for n in self._running.values() if n.task.paths]
        node = self._peek()
        if node is None or not busy or not node.task.paths:
            self.held_for_paths = 0
            return node
        skipped: list[_ReadyEntry] = []
        found: _Node | None = None
        heap = self._heap
        while heap:
            entry = heapq.heappop(heap)
            candidate = entry[4]
            if candidate.task.state is not TaskState.READY or candidate.ver != entry[3]:
                continue  # stale
            if candidate.task.paths and any(any_overlap(candidate.task.paths, b) for b in busy):
                skipped.append(entry)
                continue
            found = candidate
            heapq.heappush(heap, entry)
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        self.held_for_paths = len(skipped)
        return found

    def _push_wait(self, node: _Node) -> None:
        node.ver += 1
        at = node.task.retry_at
        heapq.heappush(self._wait, (0.0 if at is None else at, node.seq, node.ver, node))

    # --- internals: dependent counts for dependency_first ----------------------

    def _note(self, node: _Node, delta: int) -> None:
        """Record that ``node`` joined (+1) or left (-1) the non-terminal set."""
        if self._counts_stale:
            return
        self._backlog.append((node, delta))
        if len(self._backlog) > 4096 + len(self._nodes) // 4:
            self._counts_stale = True  # cheaper to recount than to replay
            self._backlog.clear()

    def _settle_counts(self) -> None:
        """Bring ``ndeps`` up to date and re-key the ready tasks whose count moved."""
        if self._counts_stale or len(self._backlog) > max(64, len(self._nodes) // 8):
            self._recount_all()
            if self._heap_strategy is Strategy.DEPENDENCY_FIRST:
                self._rebuild_heap()
            return
        if not self._backlog:
            return
        changed: set[_Node] = set()
        for node, delta in self._backlog:
            _walk_ancestors(node, delta, changed)
        self._backlog.clear()
        if self._heap_strategy is Strategy.DEPENDENCY_FIRST:
            for cnode in sorted(changed, key=_seq):
                if cnode.task.state is TaskState.READY:
                    self._push_ready(cnode)

    def _recount_all(self) -> None:
        """Recompute every non-terminal task's count from scratch.

        Bitsets over the non-terminal subgraph in reverse topological order:
        a task's descendants are the union of its dependents' descendants and
        the dependents themselves. Terminal tasks never have non-terminal
        descendants, so they can be left out.
        """
        self._backlog.clear()
        self._counts_stale = False
        live: list[_Node] = []
        for node in self._nodes.values():
            node.ndeps = 0
            if node.task.state not in TERMINAL_TASK_STATES:
                live.append(node)
        order = topological_order(live, lambda n: n.deps, _seq)
        if len(live) > _BITSET_LIMIT:
            for n in order:
                _walk_ancestors(n, +1, None)
            return
        bit = {n: 1 << i for i, n in enumerate(live)}
        desc: dict[_Node, int] = {}
        for n in reversed(order):
            acc = 0
            for c in n.dependents:
                if c in bit:
                    acc |= desc[c] | bit[c]
            desc[n] = acc
            n.ndeps = acc.bit_count()


def _seq(node: _Node) -> int:
    return node.seq


def _refund(task: TaskRow) -> None:
    """Give back the attempt just counted (it did not really try)."""
    if task.resolving:
        task.integration_attempts = max(0, task.integration_attempts - 1)
    else:
        task.attempts = max(0, task.attempts - 1)


def _key(node: _Node, strategy: Strategy) -> tuple[int, int]:
    """The strategy's order before insertion order (the heap adds ``seq``)."""
    task = node.task
    if strategy is Strategy.PRIORITY:
        return (task.priority, 0)
    if strategy is Strategy.COST_FIRST:
        return (-(task.estimated_tokens or 0), task.priority)
    if strategy is Strategy.DEPENDENCY_FIRST:
        return (-node.ndeps, task.priority)
    return (0, 0)  # fifo, sequential: insertion order alone


def _wait_valid(entry: _WaitEntry) -> bool:
    node = entry[3]
    return node.task.state in WAITING and node.ver == entry[2]


def _bad_transition(task: TaskRow, to: TaskState) -> errors.InvalidStateTransition:
    return errors.InvalidStateTransition(
        f"task {task.id} cannot go from {task.state.value} to {to.value}",
        data={"taskId": task.id, "from": task.state.value, "to": to.value},
    )


def _walk_ancestors(node: _Node, delta: int, changed: set[_Node] | None) -> None:
    """Add ``delta`` to every non-terminal ancestor of ``node``.

    Stops at completed/skipped tasks: they only ever have completed or skipped
    ancestors (a task starts only once its dependencies are), so nothing above
    them is counted. Failed, blocked and cancelled tasks are walked through,
    because a non-terminal task can sit above them.
    """
    stack = list(node.deps)
    seen = set(stack)
    while stack:
        anc = stack.pop()
        status = anc.task.state
        if status in SATISFIED:
            continue
        if status not in TERMINAL_TASK_STATES:
            anc.ndeps += delta
            if changed is not None:
                changed.add(anc)
        for d in anc.deps:
            if d not in seen:
                seen.add(d)
                stack.append(d)


def _blocked_descendants_in_order(root: _Node) -> list[_Node]:
    """Blocked tasks reachable from ``root`` through blocked tasks, topologically."""
    reach: set[_Node] = set()
    stack = [root]
    while stack:
        for d in stack.pop().dependents:
            if d not in reach and d.task.state is TaskState.BLOCKED:
                reach.add(d)
                stack.append(d)
    return topological_order(reach, lambda n: n.deps, _seq)


def _ended(status: TaskState) -> str:
    return "was cancelled" if status is TaskState.CANCELLED else "failed"
