"""The processes a test program recorded, and which of them are still alive.

tests/fake_agent.py and tests/gate.py append `pid start_ticks role` to a
pidfile for every process they create. A process is the recorded one only if
its pid *and* its start (clock ticks since boot) match, so a reused pid can
never pass for a survivor, nor hide one.
"""

from __future__ import annotations

from pathlib import Path

from corrald.process import proctree


def recorded(pidfile: Path) -> list[tuple[int, int, str]]:
    """(pid, start ticks, role) for every process recorded in `pidfile` (none if missing)."""
    if not pidfile.exists():
        return []
    rows = []
    for line in pidfile.read_text().splitlines():
        pid, start, role = line.split()
        rows.append((int(pid), int(start), role))
    return rows


def survivors(pidfile: Path) -> list[tuple[int, str]]:
    """(pid, role) of the recorded processes that still run (zombies count as dead)."""
    return [(p, r) for p, s, r in recorded(pidfile) if proctree.same_process(p, s) is not None]


def assert_all_dead(pidfile: Path, *roles: str) -> None:
    """Every recorded process is gone; and each of `roles` was recorded at all."""
    seen = {r for _, _, r in recorded(pidfile)}
    assert set(roles) <= seen, f"expected roles {roles}, the pidfile has {seen}"
    assert survivors(pidfile) == [], f"survivors: {survivors(pidfile)}"


def same_start(pid: int, start: int) -> bool:
    """True while the process with this pid is still the one that started at `start`."""
    return proctree.same_process(pid, start) is not None
