"""What the dashboard knows: one `Board`, kept up to date by events (pure, no I/O).

The app fetches a board once, then applies each event to it with
`watch.model.apply`, the same rules as `corral watch`: a task's state, an
agent's lifecycle, activity and tokens are patched from the payload, and
what an event leaves out (one task, one agent, the stats, the integration
report) is fetched, once per round of events, with one redraw. The figures
that have no event (CPU, memory) are fetched on a slow tick while agents run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from corral.models import (
    Agent,
    ConflictMatrix,
    ConflictSummary,
    IntegrationReport,
    MergeConflict,
    PoolStats,
    SchedulerStats,
    Session,
    Task,
    Violation,
)
from corral.watch.model import Rows

__all__ = ["PARTS", "TOPICS", "Board"]

#: Every part of a board, in the order they are fetched.
PARTS = ("session", "stats", "pool", "agents", "tasks", "violations", "integration", "conflicts")

#: What the dashboard subscribes to. Log lines are not here: only an open log follows them.
TOPICS = ["session", "task", "agent", "violation", "conflicts", "merge", "integration"]


@dataclass
class Board:
    """The daemon's answers for one session, as last fetched."""

    session: Session | None = None
    stats: SchedulerStats | None = None
    pool: PoolStats | None = None
    agents: Rows[Agent] = field(default_factory=Rows)  # every attempt, ended ones too
    tasks: Rows[Task] = field(default_factory=Rows)
    violations: list[Violation] = field(default_factory=list)
    integration: IntegrationReport | None = None
    matrix: ConflictMatrix | None = None
    conflicts: list[MergeConflict] = field(default_factory=list)
    summary: ConflictSummary | None = None
    link: str = "connecting"  # connected | reconnecting | connecting
    last_seq: int | None = None
    events: int = 0  # events seen (what a test waits for)
    at: float = field(default_factory=time.time)

    @property
    def running(self) -> bool:
        """True while some agent runs (its figures change without events)."""
        return any(a.lifecycle.value in ("starting", "running") for a in self.agents)

    def task(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def __repr__(self) -> str:
        sid = self.session.id if self.session else None
        return (
            f"Board({sid}, {self.link}, tasks={len(self.tasks)}, agents={len(self.agents)},"
            f" seq={self.last_seq})"
        )
