"""The pool's record of each live attempt, kept once.

A `Run` holds the agent's row as the engine last committed it (the pool
never edits a row; it replaces it with what the engine returns), the run
handle once the process exists, and why the pool stopped it, if it did.
The wire `Agent` is derived on read: the row plus the handle's live figures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import trio

from corral.models import Agent
from corrald.core.accounting import RunAccounting
from corrald.core.outcome import Stop
from corrald.process.executor import RunHandle
from corrald.state.engine import SessionState


class AttemptStage(StrEnum):
    """Where an attempt is; each stage may be interrupted, and the state stays consistent."""

    ALLOCATING = "allocating"  # creating or reusing the worktree
    SPAWNING = "spawning"  # starting the agent process
    RUNNING = "running"  # the agent runs
    COMMITTING = "committing"  # auto-committing the agent's work
    FINISHING = "finishing"  # recording the outcome


@dataclass(eq=False)
class Run:
    """One live attempt."""

    state: SessionState
    agent: Agent
    started_mono: float = field(default_factory=time.monotonic)
    handle: RunHandle | None = None
    accounting: RunAccounting | None = None  # what a restart needs to end its processes
    stop: Stop | None = None
    stage: AttemptStage = AttemptStage.ALLOCATING
    # (worktree path, branch) once allocated: a first attempt's row has neither.
    placed_at: tuple[str, str] | None = None
    placed: trio.Event = field(default_factory=trio.Event)  # allocated, or ended without

    @property
    def agent_id(self) -> str:
        return self.agent.id

    @property
    def task_id(self) -> str:
        return self.agent.task_id

    def view(self) -> Agent:
        """The wire Agent: the committed row plus what the run measures now."""
        agent = self.agent
        if self.placed_at is not None and not agent.worktree_path:
            path, branch = self.placed_at
            agent = agent.model_copy(update={"worktree_path": path, "branch": branch})
        handle = self.handle
        if handle is None:
            return agent
        stats = handle.stats
        return agent.model_copy(
            update={
                "status": stats.activity,
                "tokens": stats.tokens,
                "cost": stats.cost,
                "cpu_percent": round(stats.cpu_percent, 1),
                "memory_mb": round(stats.memory_mb, 1),
            }
        )

    def __repr__(self) -> str:
        return f"Run({self.agent_id}, task={self.task_id}, {self.stage.value}, stop={self.stop})"


class Runs:
    """The live attempts by agent id, and an event for "one ended"."""

    def __init__(self) -> None:
        self._by_id: dict[str, Run] = {}
        self._ended = trio.Event()

    def add(self, run: Run) -> None:
        self._by_id[run.agent_id] = run

    def remove(self, run: Run) -> None:
        self._by_id.pop(run.agent_id, None)
        self._ended.set()
        self._ended = trio.Event()

    def get(self, agent_id: str) -> Run | None:
        return self._by_id.get(agent_id)

    def of(self, state: SessionState, task_id: str | None = None) -> list[Run]:
        """The session's live runs (only the one on `task_id` if given)."""
        return [
            r
            for r in self._by_id.values()
            if r.state is state and (task_id is None or r.task_id == task_id)
        ]

    async def wait_ended(self) -> None:
        """Return once any run has ended."""
        await self._ended.wait()

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"Runs({len(self._by_id)})"
