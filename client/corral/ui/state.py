"""What the dashboard knows, and which parts of it an event makes stale (pure, no I/O).

The app keeps one `Board`: the daemon's answers for the session it shows.
An event never patches it by hand (derive, don't mirror): `stale_parts`
names the answers the event changes, the app asks for those again, once
per burst of events, and redraws once. The figures that have no event
(CPU, memory, runtimes) go stale on a slow tick while agents run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from corral.models import (
    Agent,
    ConflictMatrix,
    ConflictSummary,
    Event,
    IntegrationReport,
    MergeConflict,
    PoolStats,
    SchedulerStats,
    Session,
    Task,
    Violation,
)

__all__ = ["PARTS", "TOPICS", "Board", "stale_parts"]

#: Every part of a board, in the order they are fetched.
PARTS = ("session", "stats", "pool", "agents", "tasks", "violations", "integration", "conflicts")

#: What the dashboard subscribes to. Log lines are not here: only an open log follows them.
TOPICS = ["session", "task", "agent", "violation", "conflicts", "merge", "integration"]

_BY_PREFIX: dict[str, tuple[str, ...]] = {
    "session": ("session", "stats", "integration"),
    "task": ("stats", "tasks", "integration", "conflicts"),
    "agent.status": ("agents", "pool"),
    "agent.activity": ("agents",),
    "agent.tokens": ("agents",),
    "agent.rate_limit": ("agents", "tasks"),
    "violation": ("violations", "pool"),
    "conflicts": ("conflicts",),
    "merge": ("conflicts", "integration"),
    "integration": ("integration", "tasks"),
}


def stale_parts(event: Event) -> set[str]:
    """The parts of a board that `event` makes stale (none for an event the UI ignores)."""
    parts = _BY_PREFIX.get(event.type) or _BY_PREFIX.get(event.type.split(".", 1)[0])
    if event.type == "task.status" and event.payload.get("state") != "completed":
        # Only a completed task adds a branch: the costly matrix waits for that.
        return {p for p in _BY_PREFIX["task"] if p != "conflicts"}
    return set(parts or ())


@dataclass
class Board:
    """The daemon's answers for one session, as last fetched."""

    session: Session | None = None
    stats: SchedulerStats | None = None
    pool: PoolStats | None = None
    agents: list[Agent] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
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
        return next((t for t in self.tasks if t.id == task_id), None)

    def __repr__(self) -> str:
        sid = self.session.id if self.session else None
        return (
            f"Board({sid}, {self.link}, tasks={len(self.tasks)}, agents={len(self.agents)},"
            f" seq={self.last_seq})"
        )
