"""What survives a daemon about each of its runs, so a restart can end them all.

A supervisor's record of a process must outlive the supervisor (containerd's
shims work this way): after a `kill -9` of corrald, its agents and their
descendants are still running, and memory is gone. So before a run is
spawned, its token (an environment variable every descendant inherits) and
its planned cgroup are stored with the agent's row; the root's pid and start
time once it exists; and each descendant the sampler sees, as it is seen.
On restart the record, not memory, says what to kill: the cgroup
(`cgroup.kill`), every process carrying the token (also ones that called
`setsid`), and every recorded (pid, start time) pair (also ones that
cleared their environment). A pid reused by another process never matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class RunAccounting:
    """One run's process bookkeeping, as stored."""

    token: str
    cgroup: str | None = None  # the cgroup directory the run uses (or will), if any
    pid: int | None = None
    start: int | None = None  # the root's start, in clock ticks since boot
    descendants: list[tuple[int, int]] = field(default_factory=list)  # (pid, start ticks)

    def to_json(self) -> str:
        return json.dumps(
            {
                "token": self.token,
                "cgroup": self.cgroup,
                "pid": self.pid,
                "start": self.start,
                "descendants": self.descendants,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> RunAccounting:
        data = json.loads(text)
        return cls(
            token=str(data["token"]),
            cgroup=data.get("cgroup"),
            pid=data.get("pid"),
            start=data.get("start"),
            descendants=[(int(p), int(t)) for p, t in data.get("descendants", [])],
        )

    def processes(self) -> list[tuple[int, int]]:
        """Every recorded (pid, start ticks): the root first."""
        root: list[tuple[int, int]] = []
        if self.pid is not None and self.start is not None:
            root.append((self.pid, self.start))
        return [*root, *self.descendants]
