"""The executor interface: how the pool runs an agent, wherever it runs.

An executor takes a run spec and returns a handle to cancel and await; it can
deal with runs a previous daemon left behind, and reports its capacity. The
local executor (the default) runs agents as supervised process trees on this
machine; a remote one (e.g. Ray) would implement the same protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import psutil
import trio

from corral.models import AgentLifecycle, EndReason, LogEntry
from corrald.process import cgroups
from corrald.process.run import (
    AgentRun,
    RunResult,
    RunSpec,
    RunStats,
    SampleHub,
    kill_stale,
    run_agent,
)

EventCallback = Callable[[str, dict[str, Any]], None]


class RunHandle(Protocol):
    """A submitted run: live figures, its output ring, cancel and wait."""

    pid: int | None
    create_time: float | None
    lifecycle: AgentLifecycle
    stats: RunStats

    def cancel(self, reason: EndReason = EndReason.CANCELLED, detail: str = "") -> None: ...
    async def wait(self) -> RunResult: ...
    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[LogEntry]: ...
    def note(self, text: str) -> None: ...


class Executor(Protocol):
    """Runs agents: submit, stream events, cancel with a grace, wait, reattach, capacity."""

    name: str

    async def submit(self, spec: RunSpec, on_event: EventCallback) -> RunHandle:
        """Start a run; events (log, activity, tokens, rate_limit, violation) go to `on_event`."""
        ...

    def reattach(self, pid: int, create_time: float) -> bool:
        """Handle a run a previous daemon left behind; True if it was found (and ended)."""
        ...

    def capacity(self) -> dict[str, Any]:
        """What this executor can take: cores, memory, isolation features."""
        ...


class LocalExecutor:
    """Agents as supervised process trees on this machine, in the pool's nursery."""

    name = "local"

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        # One sampling task for all runs (not one per run): the daemon's idle
        # cost with many sleeping agents. Lives in the pool's nursery.
        self.hub = SampleHub()
        nursery.start_soon(self.hub.run)
        # Fixed for the daemon's life; computed once (daemon_status is a hot path).
        self._capacity = {
            "executor": self.name,
            "cores": os.cpu_count() or 1,
            "memoryMb": psutil.virtual_memory().total // (1024 * 1024),
            "cgroup": cgroups.detect().to_wire(),
        }

    async def submit(self, spec: RunSpec, on_event: EventCallback) -> AgentRun:
        run: AgentRun = await self.nursery.start(_run, spec, on_event, self.hub)
        return run

    def reattach(self, pid: int, create_time: float) -> bool:
        # A local process cannot be re-adopted (its pipes died with the old
        # daemon), so the old tree is ended and the task runs again.
        return kill_stale(pid, create_time)

    def capacity(self) -> dict[str, Any]:
        return dict(self._capacity)

    def __repr__(self) -> str:
        return f"LocalExecutor({self.hub!r})"


async def _run(spec: RunSpec, on_event: EventCallback, hub: SampleHub, *, task_status: Any) -> None:
    # run_agent hands its AgentRun back through `started`; its return value is
    # the same result `AgentRun.wait()` gives.
    await run_agent(spec, on_event=on_event, hub=hub, task_status=task_status)
