"""Ray executor against the local one: submit-to-first-line latency and per-run overhead.

One run of this script starts a real two-node Ray cluster on 127.0.0.1 in a
private network namespace (as the tests do: `tests/raycluster.py`), then
submits the same 20 short runs, one after another, to the local executor
(the anchor) and to the Ray executor, from one trio run in this process:

- submit -> first line: from `executor.submit` until the agent's first
  stdout line reaches the daemon's event sink;
- per run: from `submit` until `wait()` returns (the agent itself prints
  one line and exits; for Ray this includes the actor's start on a node,
  the checkout from the bundle and the branch bundled back).

Medians are printed with the ratio Ray/local. Needs root (unshare) and
`corral[ray]`.

Run: ``python bench/ray.py [--runs N]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
# This file is named ray.py: its own folder must not shadow the `ray` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path[:0] = [str(ROOT / d) for d in ("daemon", "client")] + [str(ROOT)]

from corral.models import LogEntry, ResourceLimits  # noqa: E402
from corrald.agents.parsers import make_parser  # noqa: E402
from corrald.process.executor import Executor, LocalExecutor  # noqa: E402
from corrald.process.ray_executor import RayExecutor  # noqa: E402
from corrald.process.spec import NoEvents, RepoSource, RunSpec  # noqa: E402
from tests.raycluster import RayCluster, enter_private_netns  # noqa: E402

FAKE = ROOT / "tests" / "fake_agent.py"


class FirstLine(NoEvents):
    """Notes when the first stdout line arrives."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.seen = trio.Event()

    def log(self, entry: LogEntry) -> None:
        if entry.stream == "stdout" and self.at is None:
            self.at = time.monotonic()
            self.seen.set()


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def make_repo(path: Path) -> tuple[bytes, str]:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("hello\n")
    git(path, "add", "-A")
    git(path, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "initial")
    bundle = path.parent / "src.bundle"
    git(path, "bundle", "create", "-q", str(bundle), "refs/heads/main")
    return bundle.read_bytes(), git(path, "rev-parse", "HEAD")


def spec(tmp: Path, i: int, source: RepoSource | None) -> RunSpec:
    return RunSpec(
        agent_id=f"b-{i}",
        argv=[sys.executable, str(FAKE), "--stdout", "first line", "--edit", f"f{i}.txt=x"],
        cwd=str(tmp / "repo"),
        env=dict(os.environ),
        stdin_data=None,
        limits=ResourceLimits(max_runtime_secs=120, kill_grace_secs=1.0),
        log_path=tmp / "logs" / f"b-{i}.log",
        parser=make_parser("plain"),
        token=f"bench{i:04d}{os.getpid()}",
        source=source,
    )


async def measure(
    executor: Executor, tmp: Path, runs: int, source: RepoSource | None
) -> tuple[list[float], list[float]]:
    first: list[float] = []
    whole: list[float] = []
    for i in range(runs):
        sink = FirstLine()
        t0 = time.monotonic()
        handle = await executor.submit(spec(tmp, i, source), sink)
        result = await handle.wait()
        t1 = time.monotonic()
        if not result.success or sink.at is None:
            raise RuntimeError(f"run {i} did not succeed: {result}")
        first.append(sink.at - t0)
        whole.append(t1 - t0)
    return first, whole


async def main_async(runs: int, address: str, tmp: Path) -> dict[str, Any]:
    data, head = make_repo(tmp / "repo")
    source = RepoSource(bundle=data, branch="main", base_commit=head, commit_message="bench")
    async with trio.open_nursery() as nursery:
        local = LocalExecutor(nursery)
        # Warm both (python startup caches, Ray's connection) before timing.
        await measure(local, tmp, 1, None)
        local_first, local_whole = await measure(local, tmp, runs, None)
        ray_exec = RayExecutor(nursery, address=address, local=local)
        t0 = time.monotonic()
        await ray_exec.open()
        connect = time.monotonic() - t0
        await measure(ray_exec, tmp, 1, source)
        ray_first, ray_whole = await measure(ray_exec, tmp, runs, source)
        nursery.cancel_scope.cancel()
    return {
        "connect": connect,
        "local": (statistics.median(local_first), statistics.median(local_whole)),
        "ray": (statistics.median(ray_first), statistics.median(ray_whole)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    enter_private_netns()
    tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    try:
        with RayCluster(cpus_per_node=2) as cluster:
            t0 = time.monotonic()
            cluster.start(nodes=2)
            print(f"two-node cluster up in {time.monotonic() - t0:.1f}s")
            out = trio.run(main_async, args.runs, cluster.address, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lf, lw = out["local"]
    rf, rw = out["ray"]
    print(f"ray.init (the daemon connecting): {out['connect']:.2f}s, once per daemon")
    print(f"{args.runs} short runs, one at a time, medians:")
    first = f"local {lf * 1000:.0f} ms, ray {rf * 1000:.0f} ms, ratio ray/local {rf / lf:.1f}"
    whole = f"local {lw * 1000:.0f} ms, ray {rw * 1000:.0f} ms, ratio ray/local {rw / lw:.1f}"
    print(f"  submit -> first line: {first}")
    print(f"  whole run (submit -> result): {whole}; overhead per run {(rw - lw) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
