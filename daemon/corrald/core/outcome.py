"""The outcome table: how one attempt's end becomes an agent's lifecycle and a task's next state.

Pure and total: every way an attempt can end goes through `decide`, so the
mapping lives in one place. Rows, first match wins:

=====================================  ==============  ==========================
how the attempt ended                  disposition     error category
=====================================  ==============  ==========================
the pool stopped it to requeue it       requeue         (none; no retry spent)
(stop_all, total memory, shutdown)
the pool stopped it: task cancelled    cancel          cancelled
it never ran (worktree, agent type)    fail            the cause's, else unknown
its node was lost (a cluster run)      requeue         (none; no retry spent)
rate limited and not successful        rate_limited    rate_limit (no retry spent)
end reason ok                          complete        (none)
anything else                          fail            the run's, else by reason
=====================================  ==============  ==========================

A stop counts only if it is what ended the run (the run never started, or
ended `cancelled`): an agent that finished by itself before the stop took
effect keeps its real result, so finished work is never thrown away.

Lifecycle is by end reason: a run we ended (timeout, limits, cancel, lost
after a kill) is `killed`; one that ended by itself is `exited`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from corral.models import AgentLifecycle, EndReason, ErrorCategory


class Stop(StrEnum):
    """Why the pool itself stopped a run (None: it ended on its own)."""

    REQUEUE = "requeue"  # back to ready, no retry spent
    CANCEL = "cancel"  # the task is cancelled


class Disposition(StrEnum):
    """What the scheduler does with the task."""

    COMPLETE = "complete"
    FAIL = "fail"
    RATE_LIMITED = "rate_limited"
    REQUEUE = "requeue"
    CANCEL = "cancel"


#: The error category a failure gets from its end reason alone.
CATEGORY: dict[EndReason, ErrorCategory] = {
    EndReason.TIMEOUT: ErrorCategory.TIMEOUT,
    EndReason.LIMIT_MEMORY: ErrorCategory.LIMIT_MEMORY,
    EndReason.LIMIT_CPU: ErrorCategory.LIMIT_CPU,
    EndReason.CANCELLED: ErrorCategory.CANCELLED,
    EndReason.RATE_LIMIT: ErrorCategory.RATE_LIMIT,
    EndReason.LOST: ErrorCategory.UNKNOWN,
    EndReason.FAILED: ErrorCategory.CRASH,
}

#: End reasons of runs that we ended (the others ended by themselves).
_KILLED = frozenset(
    {EndReason.TIMEOUT, EndReason.LIMIT_CPU, EndReason.LIMIT_MEMORY, EndReason.CANCELLED}
)


def lifecycle(reason: EndReason, *, killed: bool = False) -> AgentLifecycle:
    """`killed` for runs we ended (or a lost run we had to kill), else `exited`."""
    return AgentLifecycle.KILLED if reason in _KILLED or killed else AgentLifecycle.EXITED


@dataclass(frozen=True)
class Outcome:
    """What one attempt's end means, decided once."""

    disposition: Disposition
    end_reason: EndReason
    lifecycle: AgentLifecycle
    category: ErrorCategory | None
    error: str | None

    @property
    def success(self) -> bool:
        return self.disposition is Disposition.COMPLETE


def decide(
    end_reason: EndReason | None,
    *,
    stop: Stop | None = None,
    rate_limited: bool = False,
    category: ErrorCategory | None = None,
    error: str | None = None,
) -> Outcome:
    """The outcome of an attempt that ended with `end_reason` (None: it never ran).

    `category` and `error` are what the run itself reported, if anything.
    """
    reason = end_reason if end_reason is not None else EndReason.FAILED
    life = lifecycle(reason)
    if end_reason not in (None, EndReason.CANCELLED):
        stop = None  # it ended by itself first
    if stop is Stop.REQUEUE:
        return Outcome(Disposition.REQUEUE, reason, life, None, None)
    if stop is Stop.CANCEL:
        return Outcome(Disposition.CANCEL, reason, life, ErrorCategory.CANCELLED, "cancelled")
    if end_reason is None:
        why = error or "agent did not start"
        return Outcome(Disposition.FAIL, reason, life, category or ErrorCategory.UNKNOWN, why)
    if reason is EndReason.LOST:
        # The run's node died under it (a cluster executor): not the task's fault.
        return Outcome(Disposition.REQUEUE, reason, life, None, error)
    if rate_limited and reason is not EndReason.OK:
        return Outcome(
            Disposition.RATE_LIMITED, EndReason.RATE_LIMIT, life, ErrorCategory.RATE_LIMIT, error
        )
    if reason is EndReason.OK:
        return Outcome(Disposition.COMPLETE, reason, life, None, None)
    return Outcome(
        Disposition.FAIL,
        reason,
        life,
        category or CATEGORY.get(reason, ErrorCategory.UNKNOWN),
        error or f"agent ended: {reason.value}",
    )
