"""How an attempt's end is recorded: its result through the outcome table into the engine."""

from __future__ import annotations

from dataclasses import dataclass

from corral.models import Agent, ErrorCategory
from corrald.core.outcome import Outcome, decide
from corrald.pool.records import Run
from corrald.process.spec import RunResult
from corrald.state.engine import Engine


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended: the run's result, or why it never ran."""

    result: RunResult | None
    error: str | None = None
    category: ErrorCategory | None = None

    @classmethod
    def not_started(cls, error: str, category: ErrorCategory) -> AttemptEnd:
        return cls(None, error, category)


def outcome_of(run: Run, end: AttemptEnd) -> Outcome:
    """The outcome table's verdict on this attempt (`core.outcome.decide`)."""
    r = end.result
    if r is None:
        return decide(None, stop=run.stop, category=end.category, error=end.error)
    return decide(
        r.end_reason,
        stop=run.stop,
        rate_limited=r.rate_limited,
        category=r.error_category,
        error=r.error,
    )


def record(engine: Engine, run: Run, end: AttemptEnd) -> tuple[Agent, Outcome]:
    """Write the attempt's end (agent row, task transition, events); return the final row."""
    outcome = outcome_of(run, end)
    r = end.result
    row = engine.finish_attempt(
        run.state,
        run.agent,
        outcome,
        exit_code=r.exit_code if r else None,
        tokens=r.tokens if r else 0,
        cost=r.cost if r else 0.0,
        ended_at=r.ended_at if r else None,
        rate_limit_reset=r.rate_limit_reset if r else None,
    )
    return row, outcome
