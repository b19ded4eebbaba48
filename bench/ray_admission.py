"""Admission across a cluster: 500 agents over 20 nodes, never over-placed, and the daemon's CPU.

This machine cannot hold 20 raylets nor 500 agents of 100 MB, so the nodes
and the runs are simulated, and everything else is real: a real corrald
(its own process, real store, engine, scheduler, pool, admission through
`Executor.can_place` and `core.placement`, real git worktrees and source
bundles per task) driven over its socket by `corral.Client`. The executor
is `SimExecutor` below: 20 nodes of 8 CPUs and 16 GB (fake capacities),
each run a timer on its "node" that holds `num_cpus` 0.5 and `memory`
100 MB (the task's limits), prints a few lines, reports 100 MB and tokens,
and ends ok after `--run-secs`. 20 x 8 / 0.5 = 320 runs fit at once, so
the other 180 wait for room: admission decides at every start.

The executor checks every submit against the nodes (`core.placement.assign`
must find a node for every run held): the count of over-placed submits is
printed, and must be 0. The daemon's CPU (user + system of its process,
from /proc) is measured over the whole plan and over the steady part (all
admitted, waiting on runs), against a target of 25 % of one core.

Run: ``python bench/ray_admission.py [--agents 500] [--nodes 20] [--run-secs 20]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds ray.py: it must not shadow the `ray` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path[:0] = [str(ROOT / d) for d in ("daemon", "client")] + [str(ROOT)]

from corral.client import Client  # noqa: E402
from corral.models import AgentLifecycle, EndReason, LogEntry, ResourceLimits  # noqa: E402
from corrald.core.accounting import RunAccounting  # noqa: E402
from corrald.core.placement import Demand, NodeCapacity, assign, fits  # noqa: E402
from corrald.process.executor import LocalExecutor, RunHandle  # noqa: E402
from corrald.process.lines import LineRing  # noqa: E402
from corrald.process.logfile import make_log_entry  # noqa: E402
from corrald.process.ray_executor import demand  # noqa: E402
from corrald.process.spec import RunEvents, RunResult, RunSpec, RunStats  # noqa: E402
from corrald.process.terminate import TerminationStage  # noqa: E402


class SimRun:
    """One simulated run on a fake node: a timer that prints, reports 100 MB, ends ok."""

    pid: int | None = None
    create_time: float | None = None
    start_ticks: int | None = None

    def __init__(self, spec: RunSpec, events: RunEvents, secs: float) -> None:
        self.spec, self.events, self.secs = spec, events, secs
        self.lifecycle = AgentLifecycle.RUNNING
        self.stats = RunStats(memory_mb=100.0)
        self.ring = LineRing(100, 64 * 1024)
        self.result: RunResult | None = None
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._offset = 0

    @property
    def stage(self) -> TerminationStage:
        return TerminationStage.DONE if self.result else TerminationStage.RUNNING

    def cancel(
        self, reason: EndReason = EndReason.CANCELLED, detail: str = "", grace: float | None = None
    ) -> None:
        self._scope.cancel()

    async def wait(self) -> RunResult:
        await self._done.wait()
        assert self.result is not None
        return self.result

    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[LogEntry]:
        return self.ring.tail(n, since_offset)

    def note(self, text: str) -> None:
        self._line("daemon", text)

    def new_members(self) -> list[tuple[int, int]]:
        return []

    def _line(self, stream: str, text: str) -> None:
        entry = make_log_entry(self._offset, stream, text, time.time())
        self._offset += 1
        self.ring.append(entry)
        self.events.log(entry)

    async def run(self) -> None:
        reason = EndReason.CANCELLED
        with self._scope:
            for i in range(4):
                self._line("stdout", f"step {i}")
                await trio.sleep(self.secs / 4)
            self.stats.tokens, self.stats.cost = 1000, 0.01
            self.events.tokens(1000, 0.01)
            reason = EndReason.OK
        self.result = RunResult(
            exit_code=0 if reason is EndReason.OK else None,
            end_reason=reason,
            error_category=None,
            error=None if reason is EndReason.OK else "cancelled",
            tokens=self.stats.tokens,
            cost=self.stats.cost,
            rate_limited=False,
            rate_limit_reset=None,
            ended_at=time.time(),
        )
        self.lifecycle = AgentLifecycle.EXITED
        self._done.set()


class SimExecutor:
    """A remote executor over fake nodes: places by `core.placement`, checks every submit."""

    name = "sim"
    remote = True

    def __init__(self, nursery: trio.Nursery, nodes: int, run_secs: float) -> None:
        self.nursery = nursery
        self._local = LocalExecutor(nursery)
        self.hub = self._local.hub
        self.nodes = [NodeCapacity(f"n{i}", "127.0.0.1", 8.0, 16384.0) for i in range(nodes)]
        self.run_secs = run_secs
        self.placed: dict[str, Demand] = {}
        self.overplaced = 0
        self.submitted = 0
        self.most = 0

    @property
    def local(self) -> LocalExecutor:
        return self._local

    async def open(self) -> None:
        pass

    def can_place(self, limits: ResourceLimits, pending: Sequence[ResourceLimits] = ()) -> bool:
        held = [*self.placed.values(), *(demand(p) for p in pending)]
        return fits(self.nodes, held, demand(limits))

    async def submit(self, spec: RunSpec, events: RunEvents) -> RunHandle:
        if spec.source is None:
            raise ValueError("a remote run needs a source")
        need = demand(spec.limits)
        if assign(self.nodes, [*self.placed.values(), need]) is None:
            self.overplaced += 1
        self.placed[spec.agent_id] = need
        self.submitted += 1
        self.most = max(self.most, len(self.placed))
        run = SimRun(spec, events, self.run_secs)

        async def go() -> None:
            try:
                await run.run()
            finally:
                self.placed.pop(spec.agent_id, None)

        self.nursery.start_soon(go)
        return run

    async def reattach(
        self, record: RunAccounting, spec: RunSpec | None = None, events: RunEvents | None = None
    ) -> RunHandle | None:
        return None

    def capacity(self) -> dict[str, Any]:
        return {
            "executor": self.name,
            "nodes": len(self.nodes),
            "cores": sum(n.cpus for n in self.nodes),
            "submitted": self.submitted,
            "overplaced": self.overplaced,
            "mostAtOnce": self.most,
            "placed": len(self.placed),
        }


def serve(state: Path, sock: Path, nodes: int, run_secs: float) -> None:
    """The daemon under test: corrald's own `Daemon`, with the simulated cluster."""
    import logging

    from corrald.app import Daemon
    from corrald.config import Config

    logging.basicConfig(level=logging.WARNING)
    daemon = Daemon(Config(), sock, state)
    daemon.pool.executor_factory = lambda nursery: SimExecutor(nursery, nodes, run_secs)
    trio.run(daemon.run)


def cpu_secs(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--run-secs", type=float, default=20.0)
    ap.add_argument("--serve", nargs=2, metavar=("STATE", "SOCKET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]), args.nodes, args.run_secs)
        return
    tmp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))
    repo = tmp / "repo"
    repo.mkdir()
    for cmd in (
        ["init", "-q", "-b", "main"],
        ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "i"],
    ):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    sock = tmp / "d.sock"
    env_home = {"XDG_DATA_HOME": str(tmp / "data"), "XDG_RUNTIME_DIR": str(tmp)}
    import os

    daemon = subprocess.Popen(
        [sys.executable, __file__, "--nodes", str(args.nodes), "--run-secs", str(args.run_secs),
         "--serve", str(tmp / "state"), str(sock)],
        env={**os.environ, **env_home},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("the daemon did not start")
            time.sleep(0.1)
        proc = psutil.Process(daemon.pid)
        limits = {
            "maxAgents": args.agents, "maxCpuPerAgent": 50.0, "maxMemoryMbPerAgent": 100,
            "maxTotalCpu": 100000.0, "maxTotalMemoryMb": 10_000_000, "maxRuntimeSecs": 0,
        }  # fmt: skip
        with Client(sock).connect() as c:
            c.init_parallel_scheduler(
                repo_path=str(repo),
                session_id="sim",
                config={"maxParallel": args.agents, "integrate": False, "resourceLimits": limits},
            )
            c.parallel_add_tasks(
                tasks=[{"id": f"t{i}", "title": f"t{i}"} for i in range(args.agents)]
            )
            cpu0, t0 = cpu_secs(proc), time.monotonic()
            c.session_start()
            steady: tuple[float, float] | None = None
            while True:
                time.sleep(1.0)
                stats = c.parallel_get_pool_stats(session_id="sim")
                ex = c.daemon_status().executor
                if (
                    steady is None
                    and ex["placed"] >= ex["mostAtOnce"] > 0
                    and (ex["submitted"] >= min(args.agents, ex["mostAtOnce"]))
                ):
                    steady = (cpu_secs(proc), time.monotonic())
                if stats.completed_agents >= args.agents:
                    break
            cpu1, t1 = cpu_secs(proc), time.monotonic()
            ex = c.daemon_status().executor
        whole = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        print(f"{args.agents} agents over {args.nodes} fake nodes (8 CPUs, 16 GB each),")
        print(f"  each holding 0.5 CPU and 100 MB for {args.run_secs:g}s: {json.dumps(ex)}")
        most, hold = ex["mostAtOnce"], args.nodes * 16
        print(f"  over-placed submits: {ex['overplaced']} (target 0); most at once: {most}/{hold}")
        wall = t1 - t0
        print(
            f"  daemon CPU over the whole plan ({wall:.0f}s): {whole:.1f}% of one core"
            " (worktrees, bundles, admission, store, events; target < 25%)"
        )
        if steady is not None:
            s_cpu, s_t = steady
            pct = 100.0 * (cpu1 - s_cpu) / max(1e-9, t1 - s_t)
            print(
                f"  from the first full wave to the end ({t1 - s_t:.0f}s): {pct:.1f}% of one core"
            )
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
