"""Scheduler core: one start decision with 10,000 ready tasks, against a naive scan.

For each strategy, a session holds 10,000 ready tasks (random priorities and
token estimates) plus 5,000 pending dependents, so ``dependency_first`` has
real counts to order by. One decision is ``next_task`` + ``start``; the task is
then requeued outside the timing so every decision sees 10,000 ready tasks.
The anchor is the naive way, ``min()`` over the same tasks with the same key,
in the same run; the ratio naive/corral is printed (higher is better).

Also measured: the cost of adding one task to a session of 100 and of 10,000
tasks (target: within 1.5x), with and without the ``next_task`` that follows.

Run: ``python bench/scheduler_core.py [--ready N] [--decisions N]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("daemon", "client")]

from corral.models import SchedulerConfig, Strategy, TaskSpec, TaskState  # noqa: E402
from corrald.core.scheduler import Scheduler  # noqa: E402
from corrald.core.taskrow import TaskRow  # noqa: E402


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _session(strategy: Strategy, ready: int, seed: int = 7) -> Scheduler:
    rng = random.Random(seed)
    s = Scheduler(SchedulerConfig(strategy=strategy, max_parallel=ready + 1))
    roots = [
        TaskSpec(
            id=f"r{i}",
            title="root",
            priority=rng.randint(0, 9),
            estimated_tokens=rng.choice((None, rng.randrange(100_000))),
        )
        for i in range(ready)
    ]
    s.add_tasks(roots, 0.0)
    dependents = [
        TaskSpec(
            id=f"d{i}",
            title="dependent",
            dependencies=sorted({f"r{rng.randrange(ready)}" for _ in range(rng.randint(1, 3))}),
        )
        for i in range(ready // 2)
    ]
    s.add_tasks(dependents, 0.0)
    s.next_task(0.0)  # settle derived state once, as a running daemon would have
    return s


def _naive_key(s: Scheduler, strategy: Strategy) -> Callable[[TaskRow], tuple[int, ...]]:
    index = {t.id: i for i, t in enumerate(s.tasks())}
    if strategy is Strategy.PRIORITY:
        return lambda t: (t.priority, index[t.id])
    if strategy is Strategy.COST_FIRST:
        return lambda t: (-(t.estimated_tokens or 0), t.priority, index[t.id])
    if strategy is Strategy.DEPENDENCY_FIRST:
        # Counts given for free: the naive side only pays for the scan.
        counts = {t.id: s.dependents_count(t.id) for t in s.tasks(TaskState.READY)}
        return lambda t: (-counts[t.id], t.priority, index[t.id])
    return lambda t: (index[t.id],)


def core_latency(
    ready: int = 10_000, decisions: int = 5_000, naive_decisions: int = 300
) -> dict[str, Any]:
    """Per strategy: p50/p99 of one decision (seconds), the naive scan's, and ratios."""
    results: dict[str, Any] = {"ready": ready}
    for strategy in Strategy:
        s = _session(strategy, ready)
        tasks = s.tasks()
        gc.collect()
        ours: list[float] = []
        clock = time.perf_counter
        for _ in range(decisions):
            t0 = clock()
            task = s.next_task(1.0)
            assert task is not None
            s.start(task.id, 1.0)
            ours.append(clock() - t0)
            s.requeue(task.id)
        key = _naive_key(s, strategy)
        naive: list[float] = []
        for _ in range(naive_decisions):
            t0 = clock()
            min((t for t in tasks if t.state is TaskState.READY), key=key)
            naive.append(clock() - t0)
        p50, p99 = _pct(ours, 0.5), _pct(ours, 0.99)
        n50, n99 = _pct(naive, 0.5), _pct(naive, 0.99)
        results[strategy.value] = {
            "p50": p50,
            "p99": p99,
            "naive_p50": n50,
            "naive_p99": n99,
            "ratio_p50": n50 / p50,
            "ratio_p99": n99 / p99,
        }
    return results


def add_scaling(sizes: tuple[int, int] = (100, 10_000), adds: int = 300) -> dict[str, Any]:
    """Median cost of adding one task (two random dependencies) at two session sizes.

    Existing tasks form a random DAG (each depends on up to two earlier ones),
    nothing started, under the default ``dependency_first`` strategy. Measured
    alone and followed by ``next_task`` (which settles the dependent counts).
    """
    out: dict[str, Any] = {}
    for size in sizes:
        rng = random.Random(size)
        s = Scheduler(SchedulerConfig(strategy=Strategy.DEPENDENCY_FIRST))
        specs = []
        for i in range(size):
            deps = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
            specs.append(TaskSpec(id=f"t{i}", title="t", dependencies=deps))
        s.add_tasks(specs, 0.0)
        s.next_task(0.0)
        gc.collect()
        alone: list[float] = []
        cycle: list[float] = []
        for j in range(adds):
            deps = sorted({f"t{rng.randrange(size)}" for _ in range(2)})
            new = [TaskSpec(id=f"n{j}", title="new", dependencies=deps)]
            t0 = time.perf_counter()
            s.add_tasks(new, 0.0)
            t1 = time.perf_counter()
            s.next_task(0.0)
            t2 = time.perf_counter()
            alone.append(t1 - t0)
            cycle.append(t2 - t0)
        out[str(size)] = {"add": statistics.median(alone), "add_next": statistics.median(cycle)}
    small, big = (out[str(n)] for n in sizes)
    out["ratio_add"] = big["add"] / small["add"]
    out["ratio_add_next"] = big["add_next"] / small["add_next"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=5_000)
    args = parser.parse_args()
    res = core_latency(args.ready, args.decisions)
    print(f"next_task+start with {res['ready']:,} ready tasks (us); naive = min() scan")
    head = ("p50", "p99", "naive p50", "naive p99", "x p50", "x p99")
    print(f"{'strategy':<18}" + "".join(f"{h:>11}" for h in head))
    for strategy in Strategy:
        r = res[strategy.value]
        print(
            f"{strategy.value:<18}{r['p50'] * 1e6:>11.1f}{r['p99'] * 1e6:>11.1f}"
            f"{r['naive_p50'] * 1e6:>11.0f}{r['naive_p99'] * 1e6:>11.0f}"
            f"{r['ratio_p50']:>11.0f}{r['ratio_p99']:>11.0f}"
        )
    add = add_scaling()
    print("add one task (median us): session of 100 vs 10,000 tasks (target ratio <= 1.5)")
    for label, field in (("add_tasks", "add"), ("add_tasks + next_task", "add_next")):
        a, b = add["100"][field] * 1e6, add["10000"][field] * 1e6
        print(f"  {label:<24}{a:>8.1f}{b:>8.1f}   ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
