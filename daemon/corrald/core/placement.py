"""Admission across nodes: does one more run fit beside the ones already placed?

Pure and deterministic. A cluster executor places each run on one node, so
summing the cluster's free resources is not enough (two half-free nodes do
not hold one run that needs a whole node). `fits` packs the runs already
placed, biggest first, onto the nodes (first fit), then tries the new one.
First-fit-decreasing can leave room unused, never over-place: when it says
yes, an assignment of every run to a node within its capacity exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Rounding slack for fractional CPUs (0.1 + 0.2 must fit in 0.3).
_EPS = 1e-6


@dataclass(frozen=True)
class Demand:
    """What one run holds on its node."""

    cpus: float
    memory_mb: float


@dataclass(frozen=True)
class NodeCapacity:
    """One alive node and what it offers to runs."""

    node_id: str
    address: str
    cpus: float
    memory_mb: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "nodeId": self.node_id,
            "address": self.address,
            "cpus": self.cpus,
            "memoryMb": round(self.memory_mb),
        }


def assign(nodes: Sequence[NodeCapacity], runs: Sequence[Demand]) -> list[int] | None:
    """A node index for each run (first fit, biggest runs first), or None if one does not fit."""
    free = [[n.cpus, n.memory_mb] for n in nodes]
    order = sorted(range(len(runs)), key=lambda i: (-runs[i].cpus, -runs[i].memory_mb, i))
    where = [-1] * len(runs)
    for i in order:
        run = runs[i]
        for k, room in enumerate(free):
            if room[0] + _EPS >= run.cpus and room[1] + _EPS >= run.memory_mb:
                room[0] -= run.cpus
                room[1] -= run.memory_mb
                where[i] = k
                break
        else:
            return None
    return where


def fits(nodes: Sequence[NodeCapacity], placed: Sequence[Demand], new: Demand) -> bool:
    """True when `new` can be placed beside `placed` without over-filling any node."""
    return assign(nodes, [*placed, new]) is not None
