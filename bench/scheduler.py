"""Scheduler benchmarks: per-add cost vs state size, batch throughput, decision latency.

1. Per-add cost: `parallel_add_task` over RPC to a real daemon while a
   session holds 100 tasks, and while another holds 10,000, interleaved in
   one run; the ratio (target <= 1.5) says whether cost grows with state.
2. Batch throughput: tasks per second through `parallel_add_tasks` in
   batches of 1,000 (absolute figure; noted, not a target), against the
   same batch's bare `daemon_status` round trip as the anchor.
3. Decision latency: p50/p99 of one scheduling decision in the core with
   10,000 ready tasks under each strategy (bench/scheduler_core.py), against
   a naive `min()` scan in the same run.

Run: `python bench/scheduler.py [--adds N]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "client")]

from bench.scheduler_core import core_latency  # noqa: E402
from corral.client import Client  # noqa: E402
from tests.daemon_proc import DaemonProcess  # noqa: E402


def make_repo() -> Path:
    path = Path(tempfile.mkdtemp(prefix="bench-sched-"))
    env = {
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@x",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    (path / "README").write_text("bench\n")
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "init"], check=True, env=env)
    return path


def fill(c: Client, session: str, count: int, prefix: str) -> None:
    for start in range(0, count, 1000):
        batch = [
            {
                "id": f"{prefix}{i}",
                "title": f"task {i}",
                "priority": i % 10,
                "dependencies": [f"{prefix}{i - 1}"] if i % 5 else [],
            }
            for i in range(start, min(count, start + 1000))
        ]
        c.parallel_add_tasks(session_id=session, tasks=batch)


def per_add(c: Client, adds: int) -> tuple[float, float]:
    small: list[float] = []
    big: list[float] = []
    for i in range(adds):
        for session, samples in (("small", small), ("big", big)):
            t0 = time.perf_counter()
            c.parallel_add_task(
                session_id=session,
                task={"id": f"x{i}", "title": "added", "dependencies": [f"{session[0]}{i % 100}"]},
            )
            samples.append(time.perf_counter() - t0)
    return statistics.median(small), statistics.median(big)


def batch_throughput(c: Client, batches: int) -> tuple[float, float]:
    times = []
    rtt = []
    for b in range(batches):
        tasks = [
            {"id": f"t{b}-{i}", "title": "t", "dependencies": [f"t{b}-{i - 1}"] if i else []}
            for i in range(1000)
        ]
        t0 = time.perf_counter()
        c.parallel_add_tasks(session_id="batch", tasks=tasks)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        c.daemon_status()
        rtt.append(time.perf_counter() - t0)
    return 1000 / statistics.median(times), statistics.median(rtt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adds", type=int, default=300)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    repo = make_repo()
    with DaemonProcess() as d, d.client(timeout=600) as c:
        for name in ("small", "big", "batch"):
            c.init_parallel_scheduler(repo_path=str(repo), session_id=name)
        fill(c, "small", 100, "s")
        fill(c, "big", 10_000, "b")
        small, big = per_add(c, args.adds)
        print(f"1. per-add cost over RPC (median of {args.adds}, interleaved)")
        print(f"   session with    100 tasks: {small * 1e6:8.0f} us")
        print(f"   session with 10,000 tasks: {big * 1e6:8.0f} us")
        print(f"   ratio 10,000/100: {big / small:.2f}  (target <= 1.5)")
        rate, rtt = batch_throughput(c, args.batches)
        print("2. batch throughput, parallel_add_tasks x 1,000 tasks")
        print(f"   {rate:,.0f} tasks/s  (anchor: one daemon_status round trip {rtt * 1e6:.0f} us)")
    print("3. one scheduling decision with 10,000 ready tasks (core, no I/O)")
    results = core_latency()
    for strategy, row in results.items():
        if not isinstance(row, dict):
            continue
        print(
            f"   {strategy:17s} p50 {row['p50'] * 1e6:6.1f} us  p99 {row['p99'] * 1e6:6.1f} us"
            f"  | naive min() p50 {row['naive_p50'] * 1e6:7.0f} us"
            f"  ratio naive/corral {row['ratio_p50']:.0f}x"
        )


if __name__ == "__main__":
    main()
