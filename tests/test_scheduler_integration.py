"""The scheduler with integration on (pure): dependents wait for integration; the policies."""

from __future__ import annotations

from typing import Any

import pytest

from corral import errors
from corral.models import (
    ErrorCategory,
    IntegrationPolicy,
    IntegrationStatus,
    SchedulerConfig,
    Strategy,
    Task,
    TaskSpec,
)
from corral.models import TaskState as S
from corrald.core.paths import any_overlap, globs_overlap
from corrald.core.scheduler import Scheduler


def scheduler(**kw: Any) -> Scheduler:
    return Scheduler(SchedulerConfig(**{"strategy": Strategy.FIFO, "max_parallel": 4, **kw}))


def spec(task_id: str, *deps: str, paths: list[str] | None = None) -> TaskSpec:
    return TaskSpec(id=task_id, title=task_id, dependencies=list(deps), paths=paths or [])


def run(s: Scheduler, task_id: str) -> None:
    s.start(task_id, 0, f"agent-{task_id}")
    s.complete(task_id, 1)


def test_a_dependent_waits_until_its_dependency_is_integrated() -> None:
    s = scheduler()
    s.add_tasks([spec("a"), spec("b", "a")], 0)
    run(s, "a")
    a = s.get("a")
    assert (a.state, a.integration_status) == (S.COMPLETED, IntegrationStatus.QUEUED)
    assert s.get("b").state is S.PENDING and not s.is_finished()
    assert [t.id for t in s.awaiting_integration()] == ["a"]
    s.gating(["a"])
    assert s.get("a").integration_status is IntegrationStatus.GATING
    changed = s.integrated("a")
    assert [(t.id, t.state) for t in changed] == [("a", S.COMPLETED), ("b", S.READY)]
    run(s, "b")
    s.integrated("b")
    assert s.is_finished()


def test_added_tasks_see_integration_too() -> None:
    s = scheduler()
    s.add_tasks([spec("a")], 0)
    run(s, "a")
    (late,) = s.add_tasks([spec("late", "a")], 2)
    assert late.state is S.PENDING  # a is completed but not integrated yet
    s.integrated("a")
    assert s.get("late").state is S.READY


def test_integration_off_keeps_the_old_behaviour() -> None:
    s = scheduler(integrate=False)
    s.add_tasks([spec("a"), spec("b", "a")], 0)
    run(s, "a")
    assert s.get("a").integration_status is None and s.get("b").state is S.READY
    with pytest.raises(errors.InvalidStateTransition):
        s.integrated("a")


def test_a_conflict_goes_back_to_the_agent_without_spending_a_retry() -> None:
    s = scheduler(max_retries=0, max_integration_attempts=2)
    s.add_tasks([spec("a"), spec("dep", "a")], 0)
    run(s, "a")
    assert s.get("a").attempts == 1
    s.integration_setback("a", 2, gate=False, files=["x.txt"])
    a = s.get("a")
    assert (a.state, a.resolving, a.integration_status, a.conflict_files) == (
        S.READY,
        "conflict",
        IntegrationStatus.CONFLICT,
        ("x.txt",),
    )
    s.start("a", 3, "resolver-1")
    assert (s.get("a").attempts, s.get("a").integration_attempts) == (1, 1)
    # The resolution attempt crashes: it may try again within its own budget.
    assert s.fail("a", 4, "boom", ErrorCategory.CRASH)[0].state is S.RETRY_WAIT
    s.promote_due(10_000)
    s.start("a", 10_001, "resolver-2")
    s.complete("a", 10_002)
    assert s.get("a").integration_status is IntegrationStatus.QUEUED
    assert s.get("a").resolving is None
    # Past the cap it fails for good, category conflict, dependents blocked.
    changed = s.integration_setback("a", 10_003, gate=False, files=["x.txt"])
    assert [(t.id, t.state) for t in changed] == [("a", S.FAILED), ("dep", S.BLOCKED)]
    assert s.get("a").error_category is ErrorCategory.CONFLICT
    assert s.get("dep").blocked_by == "a"


def test_gate_failures_fail_with_category_gate_past_the_cap() -> None:
    s = scheduler(max_integration_attempts=0)
    s.add_tasks([spec("a")], 0)
    run(s, "a")
    (a,) = s.integration_setback("a", 2, gate=True, error="tests failed")
    assert (a.state, a.error_category) == (S.FAILED, ErrorCategory.GATE)
    assert a.error is not None and "tests failed" in a.error


def test_manual_parks_until_requeued() -> None:
    s = scheduler(on_conflict=IntegrationPolicy.MANUAL)
    s.add_tasks([spec("a"), spec("b", "a")], 0)
    run(s, "a")
    s.integration_setback("a", 2, gate=False, files=["x.txt"])
    a = s.get("a")
    assert (a.state, a.integration_status, a.resolving) == (
        S.COMPLETED,
        IntegrationStatus.CONFLICT,
        None,
    )
    assert s.is_finished()  # nothing moves without a person
    with pytest.raises(errors.InvalidStateTransition):
        s.requeue_parked("b")  # not parked
    s.requeue_parked("a")
    assert s.get("a").integration_status is IntegrationStatus.QUEUED
    with pytest.raises(errors.InvalidStateTransition):
        s.requeue_parked("a")  # queued already
    s.integrated("a")
    assert s.get("b").state is S.READY


def test_gating_survives_a_restart_as_queued() -> None:
    s = scheduler()
    s.add_tasks([spec("a"), spec("b", "a")], 0)
    run(s, "a")
    s.gating(["a"])
    restored = Scheduler(s.config, [Task.model_validate_json(t.json()) for t in s.tasks()])
    a = restored.get("a")
    assert a.integration_status is IntegrationStatus.QUEUED
    assert [t.id for t in restored.awaiting_integration()] == ["a"]
    assert restored.get("b").state is S.PENDING


def test_overlapping_paths_never_run_together() -> None:
    s = scheduler()
    s.add_tasks(
        [
            spec("api-1", paths=["src/api/**"]),
            spec("api-2", paths=["src/api/users.py"]),
            spec("docs", paths=["docs/**"]),
            spec("free"),
        ],
        0,
    )
    first = s.next_task(0)
    assert first is not None and first.id == "api-1"
    s.start("api-1", 0)
    second = s.next_task(0)
    assert second is not None and second.id == "docs"  # api-2 waits for api-1
    assert s.held_for_paths == 1 and s.waiting_for_paths() == 1
    s.start("docs", 0)
    third = s.next_task(0)
    assert third is not None and third.id == "free"
    s.start("free", 0)
    assert s.next_task(0) is None  # api-2 is still held
    s.complete("api-1", 1)
    after = s.next_task(1)
    assert after is not None and after.id == "api-2" and s.held_for_paths == 0
    assert s.waiting_for_paths() == 0  # api-1 is done: nothing holds api-2 back


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("src/api/**", "src/api/users.py", True),
        ("src/*.py", "src/main.py", True),
        ("docs/**", "src/**", False),
        ("src/*.py", "src/*.md", False),
        ("src", "src/a/b.c", True),
        ("a/*/c", "a/b/*", True),
        ("a/**/z.py", "a/z.py", True),
        ("**/*.md", "README.md", True),
        ("app/config.py", "app/greeting.py", False),
        ("*.py", "test_*", True),
    ],
)
def test_glob_overlap(a: str, b: str, overlap: bool) -> None:
    assert globs_overlap(a, b) is overlap
    assert globs_overlap(b, a) is overlap
    assert any_overlap([a], [b]) is overlap
    assert not any_overlap([], [b])


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "a/../../b", ""])
def test_paths_must_stay_inside_the_repository(bad: str) -> None:
    with pytest.raises(ValueError, match="path glob"):
        TaskSpec(id="t", title="t", paths=[bad])
