"""Process-tree sampling and killing (psutil), guarded against pid reuse.

An agent is a tree: the CLI we spawned, its children (node, language servers,
test runners) and their children. Limits apply to the whole tree, and when the
agent ends every member must die, including grandchildren that ignore SIGTERM
or escaped the process group with ``setsid``. We therefore remember every
descendant ever seen as ``(pid, create_time)`` and kill exactly those.

Listing children goes through ``/proc/<pid>/task/<tid>/children`` when the
kernel has it: that walks only our own tree, whereas psutil's
``children(recursive=True)`` scans every process on the machine, which is
what would dominate the daemon's idle CPU with dozens of agents.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_PROC = Path("/proc")
#: create_time values from psutil are derived from boot time + clock ticks;
#: two readings of the same process agree far better than this.
_CTIME_TOLERANCE = 0.01


def _proc_children_supported() -> bool:
    me = os.getpid()
    return (_PROC / str(me) / "task" / str(me) / "children").exists()


_HAS_PROC_CHILDREN = _proc_children_supported()


def _direct_children(pid: int) -> list[int]:
    """Pids of the direct children of `pid` (empty if it is gone)."""
    if not _HAS_PROC_CHILDREN:
        try:
            return [c.pid for c in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    out: list[int] = []
    try:
        tids = os.listdir(_PROC / str(pid) / "task")
    except OSError:
        return out
    for tid in tids:
        try:
            data = (_PROC / str(pid) / "task" / tid / "children").read_bytes()
        except OSError:
            continue
        out.extend(int(p) for p in data.split())
    return out


def _descendant_pids(pid: int) -> list[int]:
    """`pid` and every process below it, parents before children."""
    seen: list[int] = [pid]
    queue = collections.deque([pid])
    visited = {pid}
    while queue:
        for child in _direct_children(queue.popleft()):
            if child not in visited:
                visited.add(child)
                seen.append(child)
                queue.append(child)
    return seen


def tree(pid: int) -> list[psutil.Process]:
    """The live process `pid` and all its descendants (empty if `pid` is gone)."""
    out: list[psutil.Process] = []
    for p in _descendant_pids(pid):
        try:
            out.append(psutil.Process(p))
        except psutil.Error:
            continue
    return out


def is_alive(proc: psutil.Process) -> bool:
    """True if `proc` (same pid *and* create_time) still runs; zombies count as dead."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process with this pid and start time, or None (gone or pid reused)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > _CTIME_TOLERANCE:
            return None
    except psutil.Error:
        return None
    return proc if is_alive(proc) else None


def _signal(proc: psutil.Process, sig: int) -> bool:
    try:
        # psutil.Process.send_signal checks pid + create_time before signalling.
        proc.send_signal(sig)
    except psutil.Error:
        return False
    return True


def killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if the group is empty.

    Safe after the leader was reaped: Linux does not reuse a pid while any
    process still has it as its process-group id.
    """
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class TreeSampler:
    """Samples one agent's process tree and remembers every member ever seen.

    `sample()` returns the tree's CPU use (percent of one core, averaged over a
    sliding window) and its summed RSS. CPU is accumulated per process, so a
    child that exits does not make the total go backwards.
    """

    def __init__(self, root_pid: int, *, window_secs: float = 10.0) -> None:
        self.root_pid = root_pid
        self.window_secs = window_secs
        self._tracked: dict[int, psutil.Process] = {}
        self._cpu_seen: dict[tuple[int, float], float] = {}
        self._cpu_total = 0.0
        self._history: collections.deque[tuple[float, float]] = collections.deque()
        self.cpu_percent = 0.0
        self.rss_mb = 0.0
        self.samples = 0
        self._root_ctime: float | None = None
        self.refresh()

    @property
    def root_create_time(self) -> float | None:
        """Start time of the root process (for `kill_stale` after a restart)."""
        return self._root_ctime

    def refresh(self) -> list[psutil.Process]:
        """Walk the live tree, add new members to the tracked set, return the tree."""
        current: list[psutil.Process] = []
        for pid in _descendant_pids(self.root_pid):
            known = self._tracked.get(pid)
            if known is not None:
                try:
                    if known.is_running():
                        current.append(known)
                        continue
                except psutil.Error:
                    pass
            try:
                proc = psutil.Process(pid)
                ctime = proc.create_time()
            except psutil.Error:
                continue
            if pid == self.root_pid and self._root_ctime is None:
                self._root_ctime = ctime
            # A reused pid replaces the stale entry in the dict, but the dead
            # one was already dead, so nothing is lost by forgetting it.
            self._tracked[pid] = proc
            current.append(proc)
        return current

    def sample(self) -> tuple[float, float]:
        """Return (cpu % of one core over the window, RSS MB summed over the tree)."""
        now = time.monotonic()
        rss = 0
        for proc in self.refresh():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_info().rss
                    ctime = proc.create_time()
            except psutil.Error:
                continue
            rss += mem
            key = (proc.pid, ctime)
            used = times.user + times.system
            prev = self._cpu_seen.get(key, 0.0)
            if used > prev:
                self._cpu_total += used - prev
                self._cpu_seen[key] = used
        self._history.append((now, self._cpu_total))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_secs:
            self._history.popleft()
        t0, c0 = self._history[0]
        self.cpu_percent = 100.0 * (self._cpu_total - c0) / (now - t0) if now > t0 else 0.0
        self.rss_mb = rss / (1024 * 1024)
        self.samples += 1
        return self.cpu_percent, self.rss_mb

    @property
    def window_full(self) -> bool:
        """True once the CPU average covers a whole window (limits wait for it)."""
        return bool(self._history) and (
            self._history[-1][0] - self._history[0][0] >= self.window_secs * 0.999
        )

    def tracked(self) -> list[psutil.Process]:
        """Every process ever seen in the tree (alive or not)."""
        return list(self._tracked.values())

    def alive(self) -> list[psutil.Process]:
        """Tracked processes that still run (same pid and create_time, not zombies)."""
        return [p for p in self._tracked.values() if is_alive(p)]

    def kill_all(self, sig: int = signal.SIGKILL) -> int:
        """Signal the process group and every tracked descendant still alive.

        Returns how many processes were signalled individually (the group
        signal is not counted).
        """
        with contextlib.suppress(psutil.Error):
            self.refresh()
        killpg(self.root_pid, sig)
        count = 0
        for proc in self.alive():
            if _signal(proc, sig):
                count += 1
        return count

    def __repr__(self) -> str:
        return (
            f"<TreeSampler root={self.root_pid} tracked={len(self._tracked)} "
            f"cpu={self.cpu_percent:.1f}% rss={self.rss_mb:.1f}MB samples={self.samples}>"
        )


def find_marked(name: str, value: str) -> list[psutil.Process]:
    """Processes whose environment has `name=value` (finds escaped descendants).

    Costly (reads every process's environ), so only used once, at the end of
    a run, to catch processes that left both the group and the tree before we
    ever sampled them.
    """
    needle = f"{name}={value}".encode()
    me = os.getpid()
    found: list[psutil.Process] = []
    for entry in os.listdir(_PROC):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            env = (_PROC / entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            try:
                found.append(psutil.Process(int(entry)))
            except psutil.Error:
                continue
    return found


def kill_procs(procs: list[psutil.Process], sig: int = signal.SIGKILL) -> int:
    """Signal each live process (pid + create_time checked); return how many."""
    return sum(1 for p in procs if is_alive(p) and _signal(p, sig))
