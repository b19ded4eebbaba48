"""The executor interface: how the pool runs an agent, wherever it runs.

An executor takes a run spec and returns a handle to cancel (with a grace)
and await; the handle's events carry offsets, so a consumer can resume. The
executor deals with runs a previous daemon left behind (`reattach`), says
whether a run fits (`can_place`) and reports its capacity. A remote
executor (`remote = True`) needs the spec's `source` (a bundle and the base
commit) and hands the branch back as `RunResult.artifact`; a local one is
given the daemon's worktree as `cwd`.

The local executor (the default) runs agents as supervised process trees on
this machine, in tasks of the pool's nursery. The Ray executor
(`process.ray_executor`, `corral[ray]`) places each run in a Ray actor on a
node, where the same runner enforces the same limits. Gates always run on
the local executor (`Executor.local`): they need the daemon's scratch
worktree.

Each run is a failure boundary: whatever goes wrong inside one (an agent's
output, a bug of ours while supervising it) ends that run with a result, and
never escapes into the nursery that every other run shares.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import psutil
import trio

from corral.models import AgentLifecycle, EndReason, ErrorCategory, LogEntry, ResourceLimits
from corrald.core.accounting import RunAccounting
from corrald.process import cgroups
from corrald.process.run import AgentRun, kill_leftovers, run_agent
from corrald.process.sampler import SampleHub
from corrald.process.spec import RunEvents, RunResult, RunSpec, RunStats
from corrald.process.terminate import TerminationStage

log = logging.getLogger(__name__)


class RunHandle(Protocol):
    """A submitted run: live figures, its output ring (by offset), cancel and wait.

    `pid`, `create_time` and the tree members are those of a local process
    (None and empty for a run on another node).
    """

    pid: int | None
    create_time: float | None
    lifecycle: AgentLifecycle
    stats: RunStats

    @property
    def stage(self) -> TerminationStage: ...

    def cancel(
        self, reason: EndReason = EndReason.CANCELLED, detail: str = "", grace: float | None = None
    ) -> None: ...
    async def wait(self) -> RunResult: ...
    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[LogEntry]: ...
    def note(self, text: str) -> None: ...
    def new_members(self) -> list[tuple[int, int]]: ...

    @property
    def start_ticks(self) -> int | None: ...


class Executor(Protocol):
    """Runs agents: submit, stream events, cancel with a grace, wait, reattach, capacity."""

    name: str
    hub: SampleHub
    remote: bool  # True: runs need `spec.source` and return the branch as an artifact

    @property
    def local(self) -> LocalExecutor:
        """The executor for runs that must be on this machine (gates)."""
        ...

    async def open(self) -> None:
        """Get ready to run (connect to a cluster); before the first submit."""
        ...

    async def submit(self, spec: RunSpec, events: RunEvents) -> RunHandle:
        """Start a run; what it reports goes to `events`. Raises only if it could not start."""
        ...

    async def reattach(
        self, record: RunAccounting, spec: RunSpec | None = None, events: RunEvents | None = None
    ) -> RunHandle | None:
        """Deal with a run a previous daemon left behind; its handle if it took it back.

        The local executor cannot (the run's pipes died with that daemon):
        it ends every process the record names and answers None. The Ray
        executor finds the run's actor by name and resumes its events after
        the last line `spec.log_path` holds (no gap, no repeat).
        """
        ...

    def can_place(self, limits: ResourceLimits, pending: Sequence[ResourceLimits] = ()) -> bool:
        """True when one more run with these limits fits now (never over-submit).

        `pending` are runs admitted but not submitted yet (their worktree is
        being made): they count as placed.
        """
        ...

    def capacity(self) -> dict[str, Any]:
        """What this executor can take: cores, memory, nodes, isolation features."""
        ...


class LocalExecutor:
    """Agents as supervised process trees on this machine, in the pool's nursery."""

    name = "local"
    remote = False

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

    async def submit(self, spec: RunSpec, events: RunEvents) -> AgentRun:
        run: AgentRun = await self.nursery.start(_bounded_run, spec, events, self.hub)
        return run

    @property
    def local(self) -> LocalExecutor:
        return self

    async def open(self) -> None:
        pass

    async def reattach(
        self, record: RunAccounting, spec: RunSpec | None = None, events: RunEvents | None = None
    ) -> RunHandle | None:
        # A local process cannot be re-adopted (its pipes died with the old
        # daemon), so the old tree is ended and the task runs again.
        await kill_leftovers(record)
        return None

    def can_place(self, limits: ResourceLimits, pending: Sequence[ResourceLimits] = ()) -> bool:
        return True  # admission here is the session's totals (`pool.totals`)

    def capacity(self) -> dict[str, Any]:
        return dict(self._capacity)

    def __repr__(self) -> str:
        return f"LocalExecutor({self.hub!r})"


class _Started:
    """Passes `started(run)` on and keeps the run for `_bounded_run`.

    A module-level class, not one made in `_bounded_run`: a class is a
    reference cycle, and one made per run would hold the run (and its ring)
    until a full garbage collection, which an idle daemon may never make.
    """

    def __init__(self, started: list[AgentRun], task_status: trio.TaskStatus[AgentRun]) -> None:
        self._started = started
        self._task_status = task_status

    def started(self, run: AgentRun) -> None:
        self._started.append(run)
        self._task_status.started(run)


async def _bounded_run(
    spec: RunSpec, events: RunEvents, hub: SampleHub, *, task_status: trio.TaskStatus[AgentRun]
) -> None:
    """`run_agent` as a failure boundary: once started, nothing it raises leaves this task."""
    started: list[AgentRun] = []
    try:
        relay = _Started(started, task_status)
        await run_agent(spec, events=events, hub=hub, task_status=relay)  # type: ignore[arg-type]
    except Exception as exc:
        if not started:
            raise  # nursery.start re-raises it in submit: the caller handles it
        log.exception("agent %s: the run failed inside corral", spec.agent_id)
        run = started[0]
        why = f"internal error: {type(exc).__name__}: {exc}"[:500]
        try:
            run.note(why)
        except Exception:  # the log itself may be what failed
            log.exception("agent %s: could not note the failure", spec.agent_id)
        run.finish(
            run.result
            or RunResult(
                exit_code=None,
                end_reason=EndReason.FAILED,
                error_category=ErrorCategory.INTERNAL,
                error=why,
                tokens=run.stats.tokens,
                cost=run.stats.cost,
                rate_limited=False,
                rate_limit_reset=None,
                ended_at=time.time(),
            )
        )
