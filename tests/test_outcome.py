"""The outcome table (core.outcome): every way an attempt ends, decided in one place."""

from __future__ import annotations

import pytest

from corral.models import AgentLifecycle, EndReason, ErrorCategory
from corrald.core.outcome import CATEGORY, Disposition, Stop, decide, lifecycle


def test_a_stop_that_ended_the_run_requeues_or_cancels() -> None:
    requeued = decide(EndReason.CANCELLED, stop=Stop.REQUEUE)
    assert (requeued.disposition, requeued.category, requeued.error) == (
        Disposition.REQUEUE,
        None,
        None,
    )
    assert requeued.lifecycle is AgentLifecycle.KILLED
    cancelled = decide(EndReason.CANCELLED, stop=Stop.CANCEL)
    assert (cancelled.disposition, cancelled.category) == (
        Disposition.CANCEL,
        ErrorCategory.CANCELLED,
    )


def test_a_stop_before_the_run_started_still_counts() -> None:
    assert decide(None, stop=Stop.REQUEUE).disposition is Disposition.REQUEUE
    assert decide(None, stop=Stop.CANCEL).disposition is Disposition.CANCEL


@pytest.mark.parametrize("reason", [EndReason.OK, EndReason.FAILED, EndReason.TIMEOUT])
def test_a_run_that_ended_by_itself_keeps_its_result_over_a_late_stop(reason: EndReason) -> None:
    late = decide(reason, stop=Stop.REQUEUE, error="x")
    alone = decide(reason, error="x")
    assert late == alone
    assert late.disposition is not Disposition.REQUEUE


def test_never_ran() -> None:
    out = decide(None, category=ErrorCategory.UNKNOWN, error="worktree: no base branch")
    assert (out.disposition, out.category, out.error) == (
        Disposition.FAIL,
        ErrorCategory.UNKNOWN,
        "worktree: no base branch",
    )
    assert decide(None).error == "agent did not start"


def test_rate_limited_failure_parks_without_a_retry() -> None:
    out = decide(EndReason.FAILED, rate_limited=True, category=ErrorCategory.CRASH)
    assert (out.disposition, out.end_reason, out.category) == (
        Disposition.RATE_LIMITED,
        EndReason.RATE_LIMIT,
        ErrorCategory.RATE_LIMIT,
    )
    # A success that happened to print a rate-limit line is a success.
    assert decide(EndReason.OK, rate_limited=True).disposition is Disposition.COMPLETE


def test_success() -> None:
    out = decide(EndReason.OK)
    assert out.success and (out.category, out.error) == (None, None)
    assert out.lifecycle is AgentLifecycle.EXITED


def test_a_lost_node_requeues_without_spending_a_retry() -> None:
    # A cluster run whose node died: not the task's fault, so no retry is spent.
    out = decide(EndReason.LOST, error="node lost: ActorDiedError")
    assert (out.disposition, out.end_reason, out.category) == (
        Disposition.REQUEUE,
        EndReason.LOST,
        None,
    )
    assert out.lifecycle is AgentLifecycle.EXITED


@pytest.mark.parametrize(
    "reason", [r for r in EndReason if r not in (EndReason.OK, EndReason.LOST)]
)
def test_failures_take_the_runs_category_or_the_reasons(reason: EndReason) -> None:
    assert decide(reason, category=ErrorCategory.INTERNAL).category is ErrorCategory.INTERNAL
    by_reason = decide(reason)
    if reason is EndReason.RATE_LIMIT:
        assert by_reason.disposition is Disposition.FAIL  # not flagged: nothing to wait for
    assert by_reason.category is CATEGORY[reason]
    assert by_reason.error == f"agent ended: {reason.value}"


def test_lifecycle_by_end_reason() -> None:
    killed = {EndReason.TIMEOUT, EndReason.LIMIT_CPU, EndReason.LIMIT_MEMORY, EndReason.CANCELLED}
    for reason in EndReason:
        expected = AgentLifecycle.KILLED if reason in killed else AgentLifecycle.EXITED
        assert lifecycle(reason) is expected
    assert lifecycle(EndReason.LOST, killed=True) is AgentLifecycle.KILLED
