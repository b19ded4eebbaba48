"""Session totals: admission (`maxAgents`, total CPU and memory) and the total-memory breach.

Pure functions over a session's live runs, called by the pool when it wants
to start an agent and after each sampling tick. CPU is % of one core per
agent, summed; `maxTotalCpu` is % of the whole machine (100 = every core).
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.models import PoolStats, ResourceLimits
from corrald.pool.records import Run


def cpu_and_memory(runs: Sequence[Run]) -> tuple[float, float]:
    """Summed CPU (% of one core) and memory (MB) of the runs that have a process."""
    cpu = mem = 0.0
    for run in runs:
        if run.handle is not None:
            cpu += run.handle.stats.cpu_percent
            mem += run.handle.stats.memory_mb
    return cpu, mem


def gated(runs: Sequence[Run], limits: ResourceLimits, cores: int) -> bool:
    """True when no new agent may start: maxAgents reached, or total CPU or memory."""
    if len(runs) >= limits.max_agents:
        return True
    cpu, mem = cpu_and_memory(runs)
    return cpu / max(1, cores) >= limits.max_total_cpu or mem >= limits.max_total_memory_mb


def memory_victim(runs: Sequence[Run], limits: ResourceLimits) -> tuple[Run, float] | None:
    """The newest run to stop when the session is over its total memory, and the total.

    None when within the limit, or when the newest run is already being stopped
    (its memory is on its way out).
    """
    _, total = cpu_and_memory(runs)
    if total <= limits.max_total_memory_mb:
        return None
    candidates = [r for r in runs if r.handle is not None]
    if not candidates:
        return None
    victim = max(candidates, key=lambda r: r.started_mono)
    return None if victim.stop is not None else (victim, total)


def pool_stats(
    runs: Sequence[Run], limits: ResourceLimits, completed: int, failed: int
) -> PoolStats:
    cpu, mem = cpu_and_memory(runs)
    return PoolStats(
        active_agents=len(runs),
        max_agents=limits.max_agents,
        total_cpu_percent=round(cpu, 1),
        total_memory_mb=round(mem, 1),
        max_total_cpu=limits.max_total_cpu,
        max_total_memory_mb=limits.max_total_memory_mb,
        completed_agents=completed,
        failed_agents=failed,
    )
