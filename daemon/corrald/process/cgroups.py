"""cgroup v2: detect a writable subtree and give each agent its own cgroup.

Detected at runtime, never assumed. We look for the cgroup2 mount (pure v2 at
/sys/fs/cgroup, or the hybrid layout's /sys/fs/cgroup/unified) in
/proc/self/mountinfo, find our own cgroup from the ``0::`` line of
/proc/self/cgroup, and try to create ``<own cgroup>/corral`` there. That is
what systemd grants with ``Delegate=yes``; as root it also works on the root
cgroup. Agents get ``<own>/corral/<agent>`` so ``cgroup.kill`` ends a whole
tree at once, even processes that escaped with ``setsid``.

Controllers (memory, cpu, pids) are enabled in ``subtree_control`` where the
parent offers them. A non-root cgroup that holds processes cannot delegate
controllers ("no internal processes"), so a daemon that wants them must run
in a leaf below its service cgroup; we report that in ``reason`` instead of
moving the daemon ourselves.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from pathlib import Path

from corral.models import CgroupFeatures

_WANTED = ("memory", "cpu", "pids")
_SUBDIR = "corral"


def _v2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if sep and post.split(" ", 1)[0] == "cgroup2":
            return Path(pre.split(" ")[4])
    return None


def _own_v2_path() -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    except OSError:
        return None
    return None


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _enable(dir_: Path, controllers: list[str]) -> str:
    """Enable `controllers` for the children of `dir_`; return an error note or ''."""
    if not controllers:
        return ""
    try:
        (dir_ / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in controllers))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return f"{dir_} holds processes, so it cannot delegate controllers"
        return f"cannot enable controllers in {dir_}: {exc.strerror}"
    return ""


@functools.cache
def detect() -> CgroupFeatures:
    """Find a writable cgroup v2 directory for agents (cached for the process)."""
    mount = _v2_mount()
    if mount is None:
        return CgroupFeatures(available=False, reason="no cgroup2 filesystem mounted")
    own = _own_v2_path()
    if own is None:
        return CgroupFeatures(available=False, reason="no cgroup v2 entry in /proc/self/cgroup")
    own_dir = mount / own.lstrip("/")
    if not own_dir.is_dir():
        # Typical of containers: /proc/self/cgroup names a path outside the mount.
        return CgroupFeatures(available=False, reason=f"own cgroup {own_dir} is not visible")
    base = own_dir / _SUBDIR
    try:
        base.mkdir(exist_ok=True)
    except OSError as exc:
        return CgroupFeatures(
            available=False, reason=f"cannot create {base}: {exc.strerror} (no delegation)"
        )
    notes: list[str] = []
    offered = [c for c in _WANTED if c in _read_words(own_dir / "cgroup.controllers")]
    note = _enable(
        own_dir, [c for c in offered if c not in _read_words(base / "cgroup.controllers")]
    )
    if note:
        notes.append(note)
    in_base = [c for c in _WANTED if c in _read_words(base / "cgroup.controllers")]
    note = _enable(base, in_base)
    if note:
        notes.append(note)
    enabled = [c for c in _WANTED if c in _read_words(base / "cgroup.subtree_control")]
    kill = (base / "cgroup.kill").exists()
    if not enabled:
        notes.append(f"no controllers available under {base}")
    if not kill:
        notes.append("cgroup.kill not supported (kernel < 5.14)")
    return CgroupFeatures(
        available=True, path=str(base), kill=kill, controllers=enabled, reason="; ".join(notes)
    )


class AgentCgroup:
    """One agent's cgroup: created before spawn, holds the whole tree, removed after."""

    def __init__(self, path: Path, features: CgroupFeatures) -> None:
        self.path = path
        self.features = features
        self.limits: dict[str, str] = {}

    @classmethod
    def create(cls, name: str, features: CgroupFeatures | None = None) -> AgentCgroup:
        """Create `<base>/<name>`; raises OSError if cgroups are unavailable."""
        features = features or detect()
        if not features.available or features.path is None:
            raise OSError(errno.ENOTSUP, f"cgroup v2 unavailable: {features.reason}")
        path = Path(features.path) / _safe(name)
        path.mkdir()
        return cls(path, features)

    def set_limits(
        self, *, memory_max_mb: int | None, cpu_percent: float | None, pids_max: int | None
    ) -> None:
        """Write memory.max / cpu.max / pids.max where those controllers are enabled."""
        wanted: dict[str, tuple[str, str]] = {}
        if memory_max_mb is not None:
            wanted["memory"] = ("memory.max", str(memory_max_mb * 1024 * 1024))
        if cpu_percent is not None:
            period = 100_000
            wanted["cpu"] = ("cpu.max", f"{max(1000, int(period * cpu_percent / 100))} {period}")
        if pids_max is not None:
            wanted["pids"] = ("pids.max", str(pids_max))
        for ctrl, (fname, value) in wanted.items():
            if ctrl in self.features.controllers:
                with contextlib.suppress(OSError):
                    (self.path / fname).write_text(value)
                    self.limits[fname] = value

    def add(self, pid: int) -> None:
        """Move `pid` into this cgroup (its future children follow)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        """Pids currently in the cgroup."""
        return [int(p) for p in _read_words(self.path / "cgroup.procs")]

    def populated(self) -> bool:
        """True while any process is in the cgroup."""
        try:
            for line in (self.path / "cgroup.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() == "1"
        except OSError:
            return False
        return False

    def oom_killed(self) -> bool:
        """True if the kernel OOM-killed something here (memory.max hit)."""
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        except (OSError, ValueError):
            return False
        return False

    def kill(self) -> bool:
        """SIGKILL every process in the cgroup (cgroup.kill); False if unsupported."""
        if self.features.kill:
            try:
                (self.path / "cgroup.kill").write_text("1")
            except OSError:
                return False
            return True
        killed = False
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
                killed = True
        return killed

    def remove(self) -> bool:
        """rmdir the cgroup; False while processes remain (EBUSY): wait, then retry."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<AgentCgroup {self.path} limits={self.limits}>"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:120]


def run_cgroup_name(agent_id: str, token: str) -> str:
    """The name of a run's cgroup (one place, so it can be recorded before it exists)."""
    return f"{agent_id}-{token[:8]}"


def planned_path(name: str) -> str | None:
    """Where `AgentCgroup.create(name)` will put the cgroup; None without cgroup v2."""
    features = detect()
    if not features.available or features.path is None:
        return None
    return str(Path(features.path) / _safe(name))


def remove_stale(min_age_secs: float = 60.0) -> list[str]:
    """rmdir empty agent cgroups left by a previous daemon; return their paths.

    Call at daemon start, after `kill_stale` for the old agents. Populated
    cgroups are left alone (rmdir refuses them anyway), and so are young
    ones: another daemon sharing the base may have just created one and not
    yet moved its agent in.
    """
    features = detect()
    if not features.available or features.path is None:
        return []
    removed: list[str] = []
    for child in Path(features.path).iterdir():
        try:
            young = time.time() - child.stat().st_mtime < min_age_secs
        except OSError:
            continue
        if child.is_dir() and not young and not AgentCgroup(child, features).populated():
            with contextlib.suppress(OSError):
                child.rmdir()
                removed.append(str(child))
    return removed


def cgroup_of(pid: int) -> Path | None:
    """The cgroup v2 directory of `pid`, if it lies under our agents' base."""
    features = detect()
    mount = _v2_mount()
    if not features.available or features.path is None or mount is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                path = mount / line[3:].strip().lstrip("/")
                if path.parent == Path(features.path):
                    return path
    except OSError:
        return None
    return None
