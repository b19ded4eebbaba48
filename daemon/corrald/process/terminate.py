"""The termination ladder of one agent tree, and waiting for processes to die.

However a run ends (exit, limit, cancel, the caller's cancellation) the same
ladder runs, shielded by the caller:

1. `TERM`: SIGTERM to the process group and every tracked descendant, then
   up to the grace for them to go (skipped for memory breaches: memory keeps
   growing during a grace, so those die at once);
2. `KILL`: SIGKILL to the group, to every descendant ever seen (pid + start
   time), `cgroup.kill` when the agent has a cgroup, and to any process
   still carrying the run's token in its environment (setsid escapers);
3. `DONE`: every one of them is dead and the cgroup is removed.

Step 2 always runs, also after a normal exit: cleanup that stops at the
direct child leaves grandchildren that ignore SIGTERM or escaped the group.

Death is awaited on pidfds (`os.pidfd_open`, Linux 5.3+): a pidfd becomes
readable when its process exits, so nothing polls. On a kernel without
pidfds the wait returns at once: the SIGKILL was sent, it is only not
confirmed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from enum import StrEnum

import psutil
import trio

from corrald.process import proctree
from corrald.process.cgroups import AgentCgroup
from corrald.process.spec import MARK_ENV

#: How long each wait after the SIGKILL sweep may take before we move on.
_AFTER_KILL_SECS = 2.0


class TerminationStage(StrEnum):
    """Where a run's ladder is (`AgentRun.stage`)."""

    RUNNING = "running"
    TERM = "term"
    KILL = "kill"
    DONE = "done"


def _pidfd(pid: int) -> int | None:
    """A pidfd for `pid`; None if it is gone or the kernel has no pidfds."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


async def wait_gone(procs: Iterable[psutil.Process]) -> None:
    """Return once every process in `procs` has exited (zombies count as gone)."""
    for proc in procs:
        fd = _pidfd(proc.pid)
        if fd is None:
            continue
        try:
            # Checked after opening: if the pid now names another process, ours is gone.
            if proctree.is_alive(proc):
                await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)


async def _wait_pids(pids: Iterable[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    await wait_gone(procs)


class Ladder:
    """Runs the ladder once for one tree; `stage` says how far it got."""

    def __init__(
        self,
        proc: trio.Process,
        sampler: proctree.TreeSampler,
        cgroup: AgentCgroup | None,
        token: str,
        note: Callable[[str], None],
    ) -> None:
        self.proc = proc
        self.sampler = sampler
        self.cgroup = cgroup
        self.token = token
        self.note = note
        self.stage = TerminationStage.RUNNING

    async def run(self, *, grace: float, hard: bool) -> None:
        """SIGTERM and the grace (unless `hard`), then the SIGKILL sweep, then wait for death."""
        proc, sampler = self.proc, self.sampler
        sampler.refresh()
        if not hard and grace > 0 and (proc.poll() is None or sampler.alive()):
            self.stage = TerminationStage.TERM
            proctree.killpg(proc.pid, signal.SIGTERM)
            proctree.kill_procs(sampler.alive(), signal.SIGTERM)
            self.note(f"SIGTERM sent; grace {grace:g}s")
            with trio.move_on_after(grace):
                await proc.wait()
                await wait_gone(sampler.alive())
        self.stage = TerminationStage.KILL
        survivors = [p.pid for p in sampler.alive()]
        sampler.kill_all(signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()
        escaped = await trio.to_thread.run_sync(proctree.find_marked, MARK_ENV, self.token)
        escaped = [p for p in escaped if p.pid != os.getpid()]
        proctree.kill_procs(escaped, signal.SIGKILL)
        if survivors or escaped:
            self.note(f"SIGKILL sent to {sorted({*survivors, *(p.pid for p in escaped)})}")
        with trio.move_on_after(_AFTER_KILL_SECS):
            await proc.wait()
        # Wait for the killed processes to be gone, so "ended" means "dead".
        with trio.move_on_after(_AFTER_KILL_SECS):
            await wait_gone([*sampler.tracked(), *escaped])
        if self.cgroup is not None:
            with trio.move_on_after(_AFTER_KILL_SECS):
                await _wait_pids(self.cgroup.pids())
            if not self.cgroup.remove():
                self.note(f"cgroup {self.cgroup.path} not removed (still populated)")
        self.stage = TerminationStage.DONE

    def __repr__(self) -> str:
        return f"<Ladder pid={self.proc.pid} {self.stage.value}>"
