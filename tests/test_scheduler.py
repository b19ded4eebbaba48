"""The scheduler core, driven by a simulated loop with a fake clock.

The property tests build random DAGs, run them to the end with random
completions, failures and rate limits, and check the invariants against a
reference computed here, independently and naively (a ``min`` over the ready
tasks with the strategy's key written out from DESIGN.md).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from corral import errors
from corral.models import (
    TERMINAL_TASK_STATES,
    Backoff,
    ErrorCategory,
    ErrorStrategy,
    SchedulerConfig,
    Strategy,
    Task,
    TaskSpec,
    TaskState,
)
from corrald.core.scheduler import Scheduler
from corrald.core.taskrow import TaskRow

S = TaskState
SATISFIED = {S.COMPLETED, S.SKIPPED}


def spec(tid: str, *deps: str, **kw: Any) -> TaskSpec:
    return TaskSpec(id=tid, title=f"task {tid}", dependencies=list(deps), **kw)


def config(**kw: Any) -> SchedulerConfig:
    """Scheduling alone: a completed task satisfies its dependents at once.

    (With integration on, they wait until it is integrated: test_scheduler_integration.py.)
    """
    return SchedulerConfig(**{"integrate": False, **kw})


def statuses(s: Scheduler) -> dict[str, TaskState]:
    return {t.id: t.state for t in s.tasks()}


def run_one(s: Scheduler, now: float = 0.0) -> TaskRow:
    """Start whatever the strategy picks; the test fails if nothing is startable."""
    task = s.next_task(now)
    assert task is not None
    return s.start(task.id, now)


# --- reference ordering, written out from DESIGN.md ---------------------------


def remaining_dependents(tasks: list[TaskRow], tid: str) -> int:
    """Distinct non-terminal tasks that transitively depend on ``tid`` (plain BFS)."""
    children: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for d in t.dependencies:
            children[d].append(t.id)
    by_id = {t.id: t for t in tasks}
    seen: set[str] = set()
    queue = deque(children[tid])
    while queue:
        c = queue.popleft()
        if c not in seen:
            seen.add(c)
            queue.extend(children[c])
    return sum(1 for c in seen if by_id[c].state not in TERMINAL_TASK_STATES)


def reference_pick(tasks: list[TaskRow], strategy: Strategy) -> str:
    """The id the strategy must start, by a naive scan; ``tasks`` in insertion order."""
    index = {t.id: i for i, t in enumerate(tasks)}
    ready = [t for t in tasks if t.state is S.READY]
    key: Callable[[TaskRow], tuple[int, ...]]
    if strategy is Strategy.PRIORITY:
        key = lambda t: (t.priority, index[t.id])  # noqa: E731
    elif strategy in (Strategy.FIFO, Strategy.SEQUENTIAL):
        key = lambda t: (index[t.id],)  # noqa: E731
    elif strategy is Strategy.COST_FIRST:
        key = lambda t: (-(t.estimated_tokens or 0), t.priority, index[t.id])  # noqa: E731
    else:
        key = lambda t: (-remaining_dependents(tasks, t.id), t.priority, index[t.id])  # noqa: E731
    return min(ready, key=key).id


# --- random DAGs and the simulated loop ---------------------------------------


def random_dag(rng: random.Random, n: int) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """A DAG of ``n`` tasks as (first batch, late batch), insertion order shuffled.

    Dependencies follow a hidden topological rank, so a task may depend on one
    inserted after it in the same batch. The late batch holds the top ranks
    and is added while the first one runs.
    """
    ranks = list(range(n))
    rng.shuffle(ranks)  # ranks[i] = rank of task i
    by_rank = sorted(range(n), key=lambda i: ranks[i])
    late = {i for i in range(n) if ranks[i] >= n - n // 5}
    specs: dict[int, TaskSpec] = {}
    for i in range(n):
        r = ranks[i]
        deps = (
            {by_rank[rng.randrange(r)] for _ in range(rng.choice((0, 1, 1, 2, 3)))} if r else set()
        )
        specs[i] = spec(
            f"t{i}",
            *(f"t{d}" for d in sorted(deps)),
            priority=rng.randint(-2, 3),
            estimated_tokens=rng.choice((None, 0, 100, 500, 500, 2000)),
        )
    first = [specs[i] for i in range(n) if i not in late]
    second = [specs[i] for i in range(n) if i in late]
    return first, second


@dataclass
class Trace:
    log: list[tuple[Any, ...]] = field(default_factory=list)
    scheduler: Scheduler | None = None


def simulate(
    first: list[TaskSpec],
    late: list[TaskSpec],
    cfg: SchedulerConfig,
    seed: int,
    *,
    check_order: float = 1.0,
    restore_at: int | None = None,
    p_fail: float = 0.2,
    p_rate: float = 0.05,
) -> Trace:
    """Run a session to the end with random outcomes; assert invariants on the way."""
    rng = random.Random(seed)
    check_rng = random.Random(seed + 1)  # sampling the order check must not change the run
    s = Scheduler(cfg)
    s.add_tasks(first, 0.0)
    trace = Trace()
    now, step = 0.0, 0
    limit = 1 if cfg.strategy is Strategy.SEQUENTIAL else cfg.max_parallel
    pending_late = list(late)
    while not s.is_finished() or pending_late:
        step += 1
        assert step < 20_000, "no progress"
        if restore_at is not None and step == restore_at:
            copies = [Task.model_validate_json(t.json()) for t in s.tasks()]
            aborted = s.aborted
            s = Scheduler(cfg, copies)
            s.aborted = aborted
        if pending_late and (step > len(first) // 2 or s.is_finished()):
            s.add_tasks(pending_late, now)
            trace.log.append(("add", len(pending_late)))
            pending_late = []
        while (task := s.next_task(now)) is not None:
            assert not s.aborted
            tasks = s.tasks()
            by_id = {t.id: t for t in tasks}
            for d in task.dependencies:
                assert by_id[d].state in SATISFIED, f"{task.id} started before {d}"
            if check_order and check_rng.random() < check_order:
                assert task.id == reference_pick(tasks, cfg.strategy)
            attempts = task.attempts
            s.start(task.id, now, agent_id=f"agent-{step}")
            assert task.state is S.IN_PROGRESS and task.attempts == attempts + 1
            trace.log.append(("start", task.id, now))
            running = sum(1 for t in tasks if t.state is S.IN_PROGRESS)
            assert running == s.counts()[S.IN_PROGRESS] <= limit
        running_tasks = s.in_progress()
        if not running_tasks:
            if s.is_finished() and not pending_late:
                break
            wake = s.next_wakeup()
            if wake is None:
                assert pending_late, f"stuck with nothing running or waiting: {s!r}"
                continue
            assert wake > now
            now = wake
            continue
        victim = rng.choice(running_tasks)
        now += rng.choice((0.5, 1.0, 2.0))
        roll = rng.random()
        if roll < p_fail:
            changed = s.fail(victim.id, now, "boom", ErrorCategory.CRASH)
            trace.log.append(("fail", victim.id, victim.state))
        elif roll < p_fail + p_rate:
            reset = rng.choice((None, now + 3.0))
            attempts = victim.attempts
            changed = s.rate_limited(victim.id, now, reset)
            assert victim.attempts == attempts - 1
            trace.log.append(("rate", victim.id))
        else:
            changed = s.complete(victim.id, now)
            trace.log.append(("done", victim.id))
        assert changed[0] is victim
        assert Counter(t.state for t in s.tasks()) == +Counter(s.counts())
    trace.scheduler = s
    return trace


def check_final(s: Scheduler, cfg: SchedulerConfig) -> None:
    """Every task ends in exactly one terminal state that its history explains."""
    tasks = {t.id: t for t in s.tasks()}
    assert s.is_finished()
    assert not s.in_progress()
    if not s.aborted:
        assert all(t.state in TERMINAL_TASK_STATES for t in tasks.values())
    for t in tasks.values():
        if t.state in SATISFIED:
            assert all(tasks[d].state in SATISFIED for d in t.dependencies)
        if t.state is S.FAILED and cfg.error_strategy is ErrorStrategy.RETRY:
            assert t.attempts == cfg.max_retries + 1
        if t.state is S.BLOCKED:
            assert t.attempts == 0 and t.error_category is ErrorCategory.DEPENDENCY
            root = tasks[t.blocked_by or ""]
            assert root.state in (S.FAILED, S.CANCELLED)
            assert reaches(tasks, t.id, root.id)
        if t.state is S.SKIPPED:
            assert cfg.error_strategy is ErrorStrategy.SKIP
    counts = s.counts()
    assert sum(counts.values()) == len(tasks)
    assert counts == {st_: sum(1 for t in tasks.values() if t.state is st_) for st_ in S}


def reaches(tasks: dict[str, TaskRow], start: str, target: str) -> bool:
    """Does ``start`` transitively depend on ``target``?"""
    stack, seen = list(tasks[start].dependencies), set()
    while stack:
        d = stack.pop()
        if d == target:
            return True
        if d not in seen:
            seen.add(d)
            stack.extend(tasks[d].dependencies)
    return False


sessions = st.fixed_dictionaries(
    {
        # Plain integers(1, 300) mostly yields tiny graphs; weight towards big ones.
        "n": st.integers(1, 12) | st.integers(50, 300) | st.integers(250, 300),
        "seed": st.integers(0, 2**32),
        "strategy": st.sampled_from(list(Strategy)),
        "max_parallel": st.integers(1, 6),
        "max_retries": st.integers(0, 2),
        "error_strategy": st.sampled_from(
            [ErrorStrategy.RETRY, ErrorStrategy.RETRY, ErrorStrategy.SKIP, ErrorStrategy.ABORT]
        ),
        "p_fail": st.sampled_from([0.0, 0.05, 0.15, 0.3]),
    }
)


def capped(d: dict[str, Any], cap: int) -> dict[str, Any]:
    """The same session with at most ``cap`` tasks (for the costlier checks)."""
    return {**d, "n": int(d["n"]) % cap + 1}


def session_config(d: dict[str, Any]) -> SchedulerConfig:
    return config(
        strategy=d["strategy"],
        max_parallel=d["max_parallel"],
        max_retries=d["max_retries"],
        error_strategy=d["error_strategy"],
        fallback_agent="codex",
    )


# --- property tests ------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(sessions)
def test_random_sessions_keep_every_invariant(d: dict[str, Any]) -> None:
    """Up to 300 tasks: dependencies, the slot limit, the order and the end states hold."""
    cfg = session_config(d)
    first, late = random_dag(random.Random(d["seed"]), d["n"])
    # The dependency_first reference is a BFS per ready task: sample it on big graphs.
    sample = 1.0 if d["strategy"] is not Strategy.DEPENDENCY_FIRST else min(1.0, 100 / d["n"])
    trace = simulate(first, late, cfg, d["seed"], check_order=sample, p_fail=d["p_fail"])
    assert trace.scheduler is not None
    check_final(trace.scheduler, cfg)
    started = {entry[1] for entry in trace.log if entry[0] == "start"}
    for t in trace.scheduler.tasks():
        assert (t.id in started) == (t.started_at is not None or t.state is S.COMPLETED)


@settings(max_examples=120, deadline=None)
@given(sessions.map(lambda d: capped(d, 100)))
def test_every_start_follows_the_strategy(d: dict[str, Any]) -> None:
    """Each start is the reference pick among the ready tasks at that moment."""
    cfg = session_config(d)
    first, late = random_dag(random.Random(d["seed"]), d["n"])
    trace = simulate(first, late, cfg, d["seed"], check_order=1.0, p_fail=d["p_fail"])
    assert trace.scheduler is not None
    check_final(trace.scheduler, cfg)


@settings(max_examples=80, deadline=None)
@given(sessions.map(lambda d: capped(d, 150)), st.integers(1, 200))
def test_same_inputs_same_schedule_even_across_a_restore(d: dict[str, Any], when: int) -> None:
    """Determinism: a rerun, and a run restored from copies of its tasks mid-way, match."""
    cfg = session_config(d)
    first, late = random_dag(random.Random(d["seed"]), d["n"])
    kw: dict[str, Any] = {"check_order": 0.0, "p_fail": d["p_fail"]}
    a = simulate(first, late, cfg, d["seed"], **kw)
    b = simulate(first, late, cfg, d["seed"], **kw)
    c = simulate(first, late, cfg, d["seed"], restore_at=when, **kw)
    assert a.log == b.log == c.log
    assert a.scheduler is not None and c.scheduler is not None
    assert [t.json() for t in a.scheduler.tasks()] == [t.json() for t in c.scheduler.tasks()]


# --- adding: validation --------------------------------------------------------


def test_cycle_rejects_the_whole_batch_and_names_it_in_order() -> None:
    s = Scheduler(config())
    s.add_tasks([spec("base")], 0)
    before = statuses(s), s.counts()
    with pytest.raises(errors.DependencyCycle) as exc:
        s.add_tasks([spec("ok", "base"), spec("a", "b"), spec("b", "c"), spec("c", "a", "base")], 0)
    assert exc.value.data == {"cycle": ["a", "b", "c", "a"]}  # each depends on the next
    assert (statuses(s), s.counts()) == before
    with pytest.raises(errors.TaskNotFound):
        s.get("ok")
    # The ids are free again, and a fixed batch goes in.
    added = s.add_tasks([spec("ok", "base"), spec("a", "b"), spec("b", "c"), spec("c")], 0)
    assert [t.id for t in added] == ["ok", "a", "b", "c"]


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(errors.DependencyCycle) as exc:
        Scheduler(config()).add_tasks([spec("x", "x")], 0)
    assert exc.value.data == {"cycle": ["x", "x"]}


def test_duplicate_ids_in_batch_and_against_existing() -> None:
    s = Scheduler(config())
    s.add_tasks([spec("a")], 0)
    with pytest.raises(errors.DuplicateTaskId) as exc:
        s.add_tasks([spec("b"), spec("a"), spec("b"), spec("c")], 0)
    assert exc.value.data == {"ids": ["a", "b"]}
    assert [t.id for t in s.tasks()] == ["a"]


def test_unknown_dependencies_are_listed_per_task() -> None:
    s = Scheduler(config())
    s.add_tasks([spec("a")], 0)
    with pytest.raises(errors.UnknownDependency) as exc:
        s.add_tasks([spec("b", "a", "nope"), spec("c", "b"), spec("d", "x", "y")], 0)
    assert exc.value.data == {"missing": {"b": ["nope"], "d": ["x", "y"]}}
    assert len(s.tasks()) == 1


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "x.lock", ".hidden", "a..b", "", "a" * 65])
def test_unsafe_task_ids_are_rejected_by_the_spec(bad: str) -> None:
    with pytest.raises(ValidationError):
        TaskSpec(id=bad, title="t")
    with pytest.raises(ValidationError):
        TaskSpec(id="fine", title="t", dependencies=[bad])


def test_new_tasks_start_ready_pending_or_blocked() -> None:
    s = Scheduler(config(max_retries=0))
    s.add_tasks([spec("a"), spec("b"), spec("c", "a")], 0)
    s.start("a", 0)
    s.start("b", 0)
    s.complete("a", 1)
    s.fail("b", 1, "boom")
    added = s.add_tasks([spec("x", "a"), spec("y", "c"), spec("z", "a", "b"), spec("w", "z")], 2)
    assert [t.state for t in added] == [S.READY, S.PENDING, S.BLOCKED, S.BLOCKED]
    assert added[2].blocked_by == "b" and added[3].blocked_by == "b"  # the root cause
    assert added[3].error_category is ErrorCategory.DEPENDENCY
    assert added[3].error == "dependency b failed"


def test_duplicate_dependency_entries_count_once() -> None:
    s = Scheduler(config())
    s.add_tasks([spec("a"), spec("b", "a", "a")], 0)
    assert s.get("b").dependencies == ("a",)
    run_one(s)
    assert [t.id for t in s.complete("a", 1)] == ["a", "b"]


# --- strategies ----------------------------------------------------------------


def start_order(strategy: Strategy, specs: list[TaskSpec], **kw: Any) -> list[str]:
    s = Scheduler(config(strategy=strategy, max_parallel=100, **kw))
    s.add_tasks(specs, 0)
    order = []
    while (t := s.next_task(0)) is not None:
        order.append(s.start(t.id, 0).id)
    return order


def test_strategies_order_ties_by_insertion() -> None:
    specs = [
        spec("a", priority=2, estimated_tokens=10),
        spec("b", priority=1),
        spec("c", priority=1, estimated_tokens=500),
        spec("d", priority=0, estimated_tokens=500),
    ]
    assert start_order(Strategy.FIFO, specs) == ["a", "b", "c", "d"]
    assert start_order(Strategy.PRIORITY, specs) == ["d", "b", "c", "a"]
    assert start_order(Strategy.COST_FIRST, specs) == ["d", "c", "a", "b"]


def test_dependency_first_counts_distinct_remaining_dependents() -> None:
    # a <- b, a <- c, (b, c) <- d: a unblocks 3 tasks (d once), e unblocks 2 in a chain.
    s = Scheduler(config(strategy=Strategy.DEPENDENCY_FIRST, max_parallel=10))
    s.add_tasks(
        [
            spec("e", priority=-5),
            spec("f", "e"),
            spec("g", "f"),
            spec("a"),
            spec("b", "a"),
            spec("c", "a"),
            spec("d", "b", "c"),
        ],
        0,
    )
    assert [s.dependents_count(x) for x in "abcdefg"] == [3, 1, 1, 0, 2, 1, 0]
    assert run_one(s).id == "a"
    assert run_one(s).id == "e"
    # Cancelling d leaves a fewer remaining dependents, so it no longer wins.
    s.add_tasks([spec("h"), spec("i", "h"), spec("j", "h")], 0)
    assert s.dependents_count("h") == 2
    s.cancel("i", 1)
    assert s.dependents_count("h") == 1


def test_dependency_first_reorders_when_later_tasks_raise_a_count() -> None:
    s = Scheduler(config(strategy=Strategy.DEPENDENCY_FIRST, max_parallel=10))
    s.add_tasks([spec(f"r{i}") for i in range(100)], 0)
    first = s.next_task(0)
    assert first is not None and first.id == "r0"
    s.add_tasks([spec("x", "r7"), spec("y", "x")], 0)  # r7 now unblocks two tasks
    s.add_tasks([spec("z", "r3")], 0)
    assert [run_one(s).id for _ in range(3)] == ["r7", "r3", "r0"]


def test_sequential_runs_one_at_a_time() -> None:
    s = Scheduler(config(strategy=Strategy.SEQUENTIAL, max_parallel=5))
    s.add_tasks([spec("a"), spec("b"), spec("c")], 0)
    assert run_one(s).id == "a"
    assert s.next_task(0) is None
    with pytest.raises(errors.NoCapacity):
        s.start("b", 0)
    s.complete("a", 1)
    assert run_one(s).id == "b"


def test_max_parallel_caps_starts() -> None:
    s = Scheduler(config(strategy=Strategy.FIFO, max_parallel=2))
    s.add_tasks([spec(f"t{i}") for i in range(5)], 0)
    assert [run_one(s).id for _ in range(2)] == ["t0", "t1"]
    assert s.next_task(0) is None
    with pytest.raises(errors.NoCapacity):
        s.start("t4", 0)
    s.complete("t0", 1)
    assert run_one(s).id == "t2"  # one slot came free
    assert s.next_task(1) is None


def test_replacing_the_config_switches_strategy() -> None:
    s = Scheduler(config(strategy=Strategy.FIFO, max_parallel=10))
    s.add_tasks([spec("a", priority=5), spec("b", priority=1), spec("c", priority=3)], 0)
    first = s.next_task(0)
    assert first is not None and first.id == "a"
    s.config = config(strategy=Strategy.PRIORITY, max_parallel=10)
    assert [run_one(s).id for _ in range(3)] == ["b", "c", "a"]


# --- failures, retries, rate limits ------------------------------------------------


def test_backoff_grows_by_the_multiplier_and_caps() -> None:
    assert [Backoff().delay(n) for n in range(1, 7)] == [5, 15, 45, 135, 300, 300]
    s = Scheduler(config(max_retries=5))
    s.add_tasks([spec("a")], 0)
    now, waits = 0.0, []
    for _ in range(5):
        s.start("a", now)
        (task,) = s.fail("a", now, "boom", ErrorCategory.CRASH)
        assert task.state is S.RETRY_WAIT and task.error == "boom"
        assert task.retry_at is not None and s.next_wakeup() == task.retry_at
        waits.append(task.retry_at - now)
        assert s.next_task(task.retry_at - 0.01) is None  # not due yet
        now = task.retry_at
        assert s.next_task(now) is task
    assert waits == [5, 15, 45, 135, 300]
    s.start("a", now)
    assert s.fail("a", now, "boom")[0].state is S.FAILED  # 6th attempt, retries spent


def test_failing_for_good_blocks_every_transitive_dependent() -> None:
    s = Scheduler(config(max_retries=1))
    s.add_tasks([spec("a"), spec("b", "a"), spec("c", "b"), spec("d"), spec("e", "c", "d")], 0)
    run_one(s)
    assert s.fail("a", 1, "x")[0].state is S.RETRY_WAIT
    s.promote_due(100)
    s.start("a", 100)
    changed = s.fail("a", 101, "again", ErrorCategory.TIMEOUT)
    assert [t.id for t in changed] == ["a", "b", "c", "e"]
    assert [t.state for t in changed] == [S.FAILED, S.BLOCKED, S.BLOCKED, S.BLOCKED]
    assert all(t.blocked_by == "a" and t.error == "dependency a failed" for t in changed[1:])
    assert s.get("a").error_category is ErrorCategory.TIMEOUT and s.get("a").attempts == 2
    assert s.get("d").state is S.READY
    assert not s.is_finished()
    run_one(s)
    s.complete("d", 102)
    assert s.is_finished()


def test_a_missing_executable_is_not_retried() -> None:
    s = Scheduler(config(max_retries=3))
    s.add_tasks([spec("a")], 0)
    run_one(s)
    assert s.fail("a", 1, "no such file", ErrorCategory.MISSING_EXECUTABLE)[0].state is S.FAILED


def test_rate_limit_keeps_the_retry_and_switches_to_the_fallback_agent() -> None:
    s = Scheduler(config(max_retries=0, fallback_agent="codex"))
    s.add_tasks([spec("a", agent_type="claude"), spec("b")], 0)
    run_one(s)
    (task,) = s.rate_limited("a", 10, reset_at=70)
    assert task.state is S.RATE_LIMITED and task.attempts == 0
    assert task.retry_at == 70 and task.agent_type == "codex"
    assert task.error_category is ErrorCategory.RATE_LIMIT
    assert s.next_wakeup() == 70
    assert s.promote_due(69) == []
    assert s.promote_due(70) == [task]
    assert s.get("a").state is S.READY and s.get("a").retry_at is None
    # Without a reset time the backoff for the second limit in a row applies
    # (5 * 3); it still is not a retry.
    s.start("a", 70)
    (task,) = s.rate_limited("a", 80, reset_at=None)
    assert task.retry_at == 95 and task.attempts == 0 and task.rate_limits == 2
    s.promote_due(95)
    s.start("a", 95)
    assert s.fail("a", 100, "x")[0].state is S.FAILED  # max_retries=0: the only real try


def test_rate_limit_waits_without_a_reset_time_grow_and_spend_no_retry() -> None:
    s = Scheduler(config(max_retries=1))
    s.add_tasks([spec("a")], 0)
    now, waits = 0.0, []
    for _ in range(5):
        s.start("a", now)
        (task,) = s.rate_limited("a", now, reset_at=None)
        assert task.attempts == 0 and task.state is S.RATE_LIMITED
        assert task.retry_at is not None
        waits.append(task.retry_at - now)
        now = task.retry_at
        s.promote_due(now)
    assert waits == [5, 15, 45, 135, 300]  # base 5, multiplier 3, cap 300
    # an attempt that gets through starts the count again
    s.start("a", now)
    (task,) = s.fail("a", now, "boom")
    assert task.state is S.RETRY_WAIT and task.rate_limits == 0 and task.attempts == 1
    s.promote_due(now + 100)
    s.start("a", now + 100)
    (task,) = s.rate_limited("a", now + 100, reset_at=None)
    assert task.retry_at == now + 105 and task.attempts == 1


def test_skip_lets_dependents_proceed() -> None:
    s = Scheduler(config(error_strategy=ErrorStrategy.SKIP))
    s.add_tasks([spec("a"), spec("b", "a"), spec("c", "b")], 0)
    run_one(s)
    changed = s.fail("a", 1, "boom")
    assert [(t.id, t.state) for t in changed] == [("a", S.SKIPPED), ("b", S.READY)]
    assert changed[0].error == "boom"
    assert run_one(s).id == "b"
    s.complete("b", 2)
    run_one(s)
    s.complete("c", 3)
    assert s.is_finished()
    assert s.counts()[S.SKIPPED] == 1 and s.counts()[S.COMPLETED] == 2


def test_abort_stops_new_starts_but_running_tasks_finish() -> None:
    s = Scheduler(config(error_strategy=ErrorStrategy.ABORT, max_parallel=2))
    s.add_tasks([spec("a"), spec("b"), spec("c"), spec("d", "a")], 0)
    run_one(s)
    run_one(s)
    changed = s.fail("a", 1, "boom")
    assert [(t.id, t.state) for t in changed] == [("a", S.FAILED), ("d", S.BLOCKED)]
    assert s.aborted
    assert s.next_task(1) is None
    with pytest.raises(errors.SessionAborted):
        s.start("c", 1)
    assert not s.is_finished()  # b still runs
    s.complete("b", 2)
    assert s.is_finished()
    assert s.get("c").state is S.READY  # never started
    assert "aborted" in repr(s)


def test_cancel_blocks_dependents_and_refuses_terminal_tasks() -> None:
    s = Scheduler(config())
    s.add_tasks([spec("a"), spec("b", "a"), spec("c", "b"), spec("d")], 0)
    run_one(s)
    changed = s.cancel("a", 5)
    assert [(t.id, t.state) for t in changed] == [
        ("a", S.CANCELLED),
        ("b", S.BLOCKED),
        ("c", S.BLOCKED),
    ]
    assert changed[0].error_category is ErrorCategory.CANCELLED
    assert changed[2].blocked_by == "a" and changed[2].error == "dependency a was cancelled"
    assert s.counts()[S.IN_PROGRESS] == 0
    with pytest.raises(errors.InvalidStateTransition) as exc:
        s.cancel("b", 6)
    assert exc.value.data == {"taskId": "b", "from": "blocked", "to": "cancelled"}
    assert s.cancel("d", 6)[0].state is S.CANCELLED  # a ready task can be cancelled too
    assert s.is_finished()


def test_invalid_transitions_and_unknown_ids() -> None:
    s = Scheduler(config())
    s.add_tasks([spec("a"), spec("b", "a")], 0)
    with pytest.raises(errors.InvalidStateTransition) as exc:
        s.start("b", 0)
    assert exc.value.data == {"taskId": "b", "from": "pending", "to": "in_progress"}
    with pytest.raises(errors.InvalidStateTransition) as exc:
        s.complete("a", 0)
    assert exc.value.data == {"taskId": "a", "from": "ready", "to": "completed"}
    for call in (s.requeue, lambda t: s.fail(t, 0, "x"), lambda t: s.rate_limited(t, 0, None)):
        with pytest.raises(errors.InvalidStateTransition):
            call("a")
    with pytest.raises(errors.TaskNotFound) as nf:
        s.get("zz")
    assert nf.value.data == {"taskId": "zz"} and nf.value.code == 1003


def test_stop_all_requeues_keeping_work_and_retries() -> None:
    s = Scheduler(config(strategy=Strategy.FIFO, max_parallel=3))
    s.add_tasks([spec("a"), spec("b"), spec("c")], 0)
    for _ in range(2):
        task = run_one(s)
        task.branch = f"corral/{task.id}"
        task.worktree_path = f"/wt/{task.id}"
    changed = [s.requeue(t.id) for t in s.in_progress()]
    assert [t.id for t in changed] == ["a", "b"]
    for t in changed:
        assert t.state is S.READY and t.attempts == 0 and t.assigned_agent is None
        assert t.branch == f"corral/{t.id}" and t.worktree_path == f"/wt/{t.id}"
    assert s.counts()[S.IN_PROGRESS] == 0
    assert run_one(s).id == "a"  # back at its place in the order


def test_manual_retry_revives_the_task_and_what_it_blocked() -> None:
    s = Scheduler(config(max_retries=0, strategy=Strategy.DEPENDENCY_FIRST))
    s.add_tasks(
        [
            spec("a"),
            spec("b", "a"),
            spec("c", "a", "b"),
            spec("x"),
            spec("y", "x"),
            spec("z", "c", "y"),
        ],
        0,
    )
    s.start("x", 0)
    s.fail("x", 1, "boom")  # blocks y, z
    s.start("a", 1)
    s.fail("a", 2, "boom")  # blocks b, c (z already blocked)
    with pytest.raises(errors.InvalidStateTransition):
        s.retry("b")  # a is still failed
    assert [t.id for t in s.retry("x")] == ["x", "y"]  # z also waits on c, blocked by a
    with pytest.raises(errors.InvalidStateTransition):
        s.retry("x")  # now ready
    assert s.get("x").state is S.READY and s.get("y").state is S.PENDING
    changed = s.retry("a")
    assert [(t.id, t.state) for t in changed] == [
        ("a", S.READY),
        ("b", S.PENDING),
        ("c", S.PENDING),
        ("z", S.PENDING),
    ]
    assert all(t.blocked_by is None and t.error is None for t in changed)
    assert s.dependents_count("a") == 3 and s.dependents_count("x") == 2
    assert run_one(s).id == "a"
    s.complete("a", 3)
    assert s.get("b").state is S.READY


def test_retry_of_a_ready_or_completed_task_is_refused() -> None:
    s = Scheduler(config())
    s.add_tasks([spec("a")], 0)
    with pytest.raises(errors.InvalidStateTransition):
        s.retry("a")
    run_one(s)
    s.complete("a", 1)
    with pytest.raises(errors.InvalidStateTransition):
        s.retry("a")


# --- restore, introspection ---------------------------------------------------------


def test_restore_rebuilds_indexes_from_persisted_tasks() -> None:
    s = Scheduler(config(max_parallel=5))
    s.add_tasks([spec("a"), spec("b", "a"), spec("c"), spec("d"), spec("e", "b")], 0)
    run_one(s)
    run_one(s)
    run_one(s)
    s.complete("a", 1)
    s.fail(s.in_progress()[0].id, 2, "boom")
    persisted = [Task.model_validate_json(t.json()) for t in s.tasks()]
    # A crash between writes could leave a pending task whose deps are all done.
    persisted[1].state = S.PENDING
    r = Scheduler(config(max_parallel=5), persisted)
    assert [t.id for t in r.tasks()] == ["a", "b", "c", "d", "e"]
    assert statuses(r) == statuses(s)
    assert r.counts() == s.counts()
    assert r.next_wakeup() == s.next_wakeup() == 7
    assert [t.id for t in r.in_progress()] == [t.id for t in s.in_progress()]
    assert r.dependents_count("b") == 1
    assert [r.requeue(t.id).id for t in r.in_progress()] == [t.id for t in s.in_progress()]
    assert r.next_task(3) is not None


def test_counts_and_repr_summarise_state() -> None:
    s = Scheduler(config(strategy=Strategy.FIFO))
    assert s.is_finished()
    assert "tasks=0" in repr(s)
    s.add_tasks([spec("a"), spec("b", "a")], 0)
    counts = s.counts()
    assert counts[S.READY] == 1 and counts[S.PENDING] == 1 and set(counts) == set(S)
    assert repr(s) == "<Scheduler strategy=fifo max_parallel=3 tasks=2 (pending=1, ready=1)>"
    assert s.tasks(S.PENDING)[0].id == "b"
