"""One task that samples every supervised run, instead of one task per run.

With dozens of sleeping agents, a sampler task per run spent more of the
daemon's idle CPU on trio bookkeeping (fifty deadlines, fifty task wakeups
per tick) than on reading /proc. The hub wakes once per tick and runs each
due run's `check()` synchronously, so a breach is handled exactly as with a
task per run. Runs keep their own sampling interval: each has its own next
due time, aligned to its interval, and the hub sleeps until the earliest.
With no run registered it sleeps until one is added: an idle daemon does no
work at all.

After each tick that sampled something, `after_tick` callbacks run: the
pool enforces session totals there and wakes sessions waiting for
resources, so neither needs a loop of its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio

log = logging.getLogger(__name__)


class Sampled(Protocol):
    """A run the hub can supervise."""

    @property
    def agent_id(self) -> str: ...
    @property
    def sample_interval(self) -> float: ...
    @property
    def ending(self) -> bool: ...

    def check(self) -> bool:
        """Sample once and enforce the limits; False once no more samples are needed."""
        ...

    def fail_internal(self, why: str) -> None:
        """End the run: its supervision itself failed."""
        ...


def next_tick(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now`.

    Every run with the same interval then wakes at the same instant: one
    scheduler tick (one task wakeup) for all.
    """
    return (math.floor(now / interval) + 1) * interval


class SampleHub:
    """Samples every registered run on its interval; owned by the executor's nursery.

    Start it with ``await nursery.start(hub.run)``.
    """

    def __init__(self) -> None:
        self._due: dict[Sampled, float] = {}  # run -> trio time of its next sample
        self._wakeup = trio.Event()
        self.after_tick: list[Callable[[], None]] = []
        self.ticks = 0
        self.samples = 0

    def add(self, run: Sampled) -> None:
        """Supervise `run`; its first sample is taken at once."""
        self._due[run] = -math.inf
        self._wakeup.set()

    def discard(self, run: Sampled) -> None:
        """Stop supervising `run` (no-op if it is not registered)."""
        self._due.pop(run, None)

    def __len__(self) -> int:
        return len(self._due)

    def tick(self) -> float:
        """Check every run that is due; return the trio time of the next due sample."""
        now = trio.current_time()
        self.ticks += 1
        sampled = 0
        for run, due in list(self._due.items()):
            if due > now:
                continue
            if run.ending:
                del self._due[run]
                continue
            sampled += 1
            try:
                keep = run.check()
            except Exception:
                # One run's failure must not stop the sampling of every other run:
                # it ends that run (its limits can no longer be enforced).
                log.exception("sampling agent %s failed; stopping it", run.agent_id)
                run.fail_internal("internal error while sampling its process tree")
                keep = False
            if keep:
                self._due[run] = next_tick(now, run.sample_interval)
            else:
                del self._due[run]
        self.samples += sampled
        if sampled:
            for callback in self.after_tick:
                try:
                    callback()
                except Exception:
                    log.exception("after-tick callback failed")
        return min(self._due.values(), default=math.inf)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample registered runs until cancelled; idle (no wakeups) while there are none."""
        task_status.started()
        while True:
            next_due = self.tick()
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            # Wake at the earliest due sample, or at once when a run is added.
            with trio.move_on_at(next_due):
                await self._wakeup.wait()

    def statistics(self) -> dict[str, int]:
        return {"runs": len(self._due), "ticks": self.ticks, "samples": self.samples}

    def __repr__(self) -> str:
        return f"<SampleHub runs={len(self._due)} ticks={self.ticks} samples={self.samples}>"
