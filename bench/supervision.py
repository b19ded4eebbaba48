"""Supervision costs: idle overhead, kill latency, spawn latency, output throughput.

Supervisors run in this process (one trio run), so the idle figure is the
daemon-side cost of watching agents: our own CPU time (time.process_time,
which includes worker threads) while 50 fake agents sleep, sampled every
0.5 s by one `SampleHub`, as the daemon's local executor does. Anchors:

- idle overhead: < 3 % of one core for 50 agents, against the obvious way
  (psutil: the tree's children, then cpu_times and memory_info of each, at
  the same interval, on the same kind of 50 sleeping agents) in the same run;
- kill latency (memory breach -> every process of the tree dead):
  <= sample interval + 0.2 s;
- spawn latency: spawn -> first output line (python fake agent, and /bin/echo);
- throughput: a supervised ``cat`` of a 100 MB file vs ``cat`` to /dev/null, as
  the daemon runs an agent (local executor, engine, a subscriber), and the
  floor under it: the same ``cat`` into a pipe that bare trio reads and drops.

Run: ``python bench/supervision.py [--quick]`` (--quick: 5 s idle run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / d) for d in ("daemon", "client")] + [str(ROOT)]

from corral.models import (  # noqa: E402
    EndReason,
    LogEntry,
    ResourceLimits,
    SchedulerConfig,
    TaskSpec,
)
from corrald.agents.parsers import make_parser  # noqa: E402
from corrald.agents.types import AgentTypeConfig, resolve_type  # noqa: E402
from corrald.pool.attempt import RunSink  # noqa: E402
from corrald.pool.records import Run  # noqa: E402
from corrald.process.cgroups import detect  # noqa: E402
from corrald.process.executor import LocalExecutor  # noqa: E402
from corrald.process.run import AgentRun, run_agent  # noqa: E402
from corrald.process.sampler import SampleHub  # noqa: E402
from corrald.process.spec import NoEvents, RunSpec  # noqa: E402
from corrald.state.engine import Engine  # noqa: E402
from corrald.state.events import EventBus, Record, pump  # noqa: E402
from corrald.state.store import Store  # noqa: E402
from tests import procs  # noqa: E402
from tests.waits import wait_until  # noqa: E402

FAKE = ROOT / "tests" / "fake_agent.py"
#: The agent type the throughput row runs, as a `[agents.cat]` config table would define it.
CAT_TYPE = AgentTypeConfig(argv=["cat"])


def limits(**kw: Any) -> ResourceLimits:
    base: dict[str, Any] = {
        "sample_interval_secs": 0.5,
        "kill_grace_secs": 1.0,
        "cpu_window_secs": 10.0,
        "max_runtime_secs": 600,
        "max_cpu_per_agent": 400.0,
        "max_memory_mb_per_agent": 2048,
    }
    return ResourceLimits(**{**base, **kw})


def spec(tmp: Path, name: str, argv: list[str], lim: ResourceLimits) -> RunSpec:
    return RunSpec(
        agent_id=name,
        argv=argv,
        cwd=str(tmp),
        env=dict(os.environ),
        stdin_data=None,
        limits=lim,
        log_path=tmp / f"{name}.log",
        parser=make_parser("plain"),
    )


def read_roles(pidfile: Path) -> list[tuple[int, int, str]]:
    return procs.recorded(pidfile)


def all_dead(pidfile: Path) -> bool:
    return procs.survivors(pidfile) == []


async def idle_overhead(tmp: Path, agents: int, secs: float) -> None:
    runs: list[AgentRun] = []
    hub = SampleHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        for i in range(agents):
            s = spec(tmp, f"idle-{i}", [sys.executable, str(FAKE), "--sleep", "3600"], limits())
            runs.append(await nursery.start(_start, s, hub))
        # Let every agent finish starting (python startup) before measuring.
        await trio.sleep(2.0)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await trio.sleep(secs)
        cpu1, wall1 = time.process_time(), time.monotonic()
        samples = sum(r.sampler.samples for r in runs if r.sampler)
        for r in runs:
            r.cancel(EndReason.CANCELLED, "bench over")
        for r in runs:
            await r.wait()
        nursery.cancel_scope.cancel()  # the hub runs until cancelled
    pct = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
    anchor = await trio.to_thread.run_sync(psutil_sampling, agents, secs)
    verdict = "OK" if pct < 3.0 else "OVER TARGET"
    print(
        f"idle overhead: {pct:.2f}% of one core supervising {agents} sleeping agents for "
        f"{wall1 - wall0:.1f}s at 0.5s sampling ({samples} tree samples in total) "
        f"[target < 3%: {verdict}]"
    )
    print(
        f"  anchor, psutil sampling of the same trees: {anchor:.2f}% of one core;"
        f" ratio corral/psutil {pct / anchor:.2f}"
    )


def psutil_sampling(agents: int, secs: float, interval: float = 0.5) -> float:
    """CPU % of one core for sampling `agents` trees with psutil every `interval`.

    Runs in a worker thread; time.process_time counts every thread of the process.
    """
    import psutil

    procs = [
        subprocess.Popen([sys.executable, str(FAKE), "--sleep", "3600"], start_new_session=True)
        for _ in range(agents)
    ]
    try:
        time.sleep(2.0)  # let them finish starting, as above
        roots = [psutil.Process(p.pid) for p in procs]
        cpu0, wall0 = time.process_time(), time.monotonic()
        while time.monotonic() - wall0 < secs:
            for root in roots:
                for proc in [root, *root.children(recursive=True)]:
                    proc.cpu_times()
                    proc.memory_info()
            time.sleep(interval)
        cpu1, wall1 = time.process_time(), time.monotonic()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return 100.0 * (cpu1 - cpu0) / (wall1 - wall0)


async def _start(
    s: RunSpec, hub: SampleHub | None = None, *, task_status: trio.TaskStatus[AgentRun]
) -> None:
    await run_agent(s, hub=hub, task_status=task_status)


async def kill_latency(tmp: Path, reps: int) -> None:
    interval = 0.5
    lat: list[float] = []
    for i in range(reps):
        pidfile = tmp / f"kill-{i}.pids"
        argv = [sys.executable, str(FAKE), "--pidfile", str(pidfile)]
        argv += ["--grandchild-mem", "300", "--sleep", "600"]
        s = spec(tmp, f"kill-{i}", argv, limits(max_memory_mb_per_agent=200))
        async with trio.open_nursery() as nursery:
            run: AgentRun = await nursery.start(_start, s)
            # The breach happens once the hog has allocated past the limit:
            # measure from "hog-full" (allocation done), or from "hog"
            # (allocation started; an upper bound) when the sampler was faster.
            seen: dict[str, float] = {}

            def hog_seen(
                pf: Path = pidfile, seen: dict[str, float] = seen, run: AgentRun = run
            ) -> bool:
                for *_, role in read_roles(pf):
                    seen.setdefault(role, time.monotonic())
                return "hog-full" in seen or run.result is not None

            with trio.fail_after(30):
                await wait_until(hog_seen, 0.002)
            t_ref = seen.get("hog-full", seen.get("hog"))
            assert t_ref is not None
            res = await run.wait()
            with trio.fail_after(5):
                await wait_until(partial(all_dead, pidfile), 0.002)
            lat.append(time.monotonic() - t_ref)
            assert res.end_reason is EndReason.LIMIT_MEMORY, res
    verdict = "OK" if max(lat) <= interval + 0.2 else "OVER TARGET"
    print(
        f"kill latency (memory breach -> whole tree dead, {reps} runs, sampling {interval}s): "
        f"median {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
        f"[target <= {(interval + 0.2) * 1000:.0f} ms: {verdict}]"
    )


async def spawn_latency(tmp: Path, reps: int) -> None:
    for label, argv in (
        ("python fake agent", [sys.executable, str(FAKE), "--stdout", "hello"]),
        ("/bin/echo", ["/bin/echo", "hello"]),
    ):
        lat: list[float] = []
        for i in range(reps):
            first: list[float] = []

            class FirstLine(NoEvents):
                def log(self, entry: LogEntry, first: list[float] = first) -> None:
                    if not first and entry.stream == "stdout":
                        first.append(time.monotonic())

            t0 = time.monotonic()
            await run_agent(spec(tmp, f"spawn-{i}", argv, limits()), events=FirstLine())
            lat.append(first[0] - t0)
        print(
            f"spawn latency ({label}, spawn -> first output line, {reps} runs): "
            f"median {statistics.median(lat) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms"
        )


def _cat_to_null(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


async def _supervised_cat(tmp: Path, path: Path, rep: int) -> tuple[float, int, int]:
    """One supervised `cat` the way the daemon runs an agent; (seconds, lines, events).

    The pool's path: the engine announces what the run reports (`RunSink`,
    with a subscriber taking events through the connections' delivery loop), the
    local executor runs it in a nursery with the `SampleHub`, the plain
    parser (a custom agent type's default) reads every line, and the log
    file and ring get every line.
    """
    store = Store(tmp / f"state-{rep + 1}" / "corral.db")
    engine = Engine(store, EventBus(store))
    try:
        config = SchedulerConfig(agent_type="cat", integrate=False)
        state = engine.session(engine.init_session(config, str(tmp), f"s{rep + 1}").id)
        engine.add_tasks(state.id, [TaskSpec(id="t", title="flood")])
        run = Run(state, engine.start_attempt(state, "t", f"a{rep + 1}"))
        sub = engine.subscribe(None, state.id, None)
        seen = [0]

        async def deliver(burst: list[Record]) -> bool:  # a connection writes them here
            seen[0] += len(burst)
            return True

        async def lagged() -> None:
            raise AssertionError("the subscriber was dropped")

        s = spec(tmp, f"flood-{rep + 1}", ["cat", str(path)], limits())
        s.parser = make_parser(resolve_type("cat", {"cat": CAT_TYPE}).parser)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, sub, deliver, lagged)  # the delivery loop connections run
            executor = LocalExecutor(nursery)
            t0 = time.perf_counter()
            handle = await executor.submit(s, RunSink(engine, run))
            run.handle = handle
            res = await handle.wait()
            elapsed = time.perf_counter() - t0
            assert res.end_reason is EndReason.OK, res
            await trio.lowlevel.checkpoint()  # the subscriber takes what is queued
            engine.unsubscribe(sub.id)
            nursery.cancel_scope.cancel()
        return elapsed, handle.stats.lines, seen[0]
    finally:
        store.close()


async def _bare_reader(path: Path) -> float:
    """`cat` into a pipe that trio reads and drops: the floor under any supervised reader."""
    t0 = time.perf_counter()
    proc = await trio.lowlevel.open_process(["cat", str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    async with proc.stdout:
        while await proc.stdout.receive_some(1 << 20):
            pass
    await proc.wait()
    return time.perf_counter() - t0


async def throughput(tmp: Path, mb: int, reps: int) -> None:
    data = tmp / "flood.txt"
    line = b"x" * 1023 + b"\n"
    with open(data, "wb") as fh:  # noqa: ASYNC230 - setup, before timing
        fh.write(line * 1024 * mb)
    raw: list[float] = []
    bare: list[float] = []
    sup: list[float] = []
    _cat_to_null(data)  # warm the page cache for both sides
    # ... and the daemon's side: models are built on first use, once a daemon's life.
    warm = tmp / "warm.txt"
    warm.write_bytes(line * 4096)
    await _supervised_cat(tmp, warm, -1)
    for rep in range(reps):  # interleaved: every side sees the same load
        raw.append(await trio.to_thread.run_sync(_cat_to_null, data))
        bare.append(await _bare_reader(data))
        elapsed, lines, events = await _supervised_cat(tmp, data, rep)
        sup.append(elapsed)
        assert lines == 1024 * mb, lines

    def fig(xs: list[float]) -> str:
        return f"{min(xs):.3f}/{statistics.median(xs):.3f}s"

    def ratio(xs: list[float]) -> str:
        return f"{min(xs) / min(raw):.1f}/{statistics.median(xs) / statistics.median(raw):.1f}x"

    verdict = "OK" if min(sup) / min(raw) <= 5 else "OVER TARGET"
    print(
        f"output throughput ({mb} MB, 1 KiB lines, {reps} interleaved runs, min/median): "
        f"supervised cat {fig(sup)} ({mb / min(sup):.0f} MB/s, {events} events to a "
        f"subscriber in the last run) vs cat>/dev/null {fig(raw)}; "
        f"ratio {ratio(sup)} [target <= 5x: {verdict}]"
    )
    print(
        f"  floor: cat into a pipe that bare trio reads and drops {fig(bare)}, "
        f"ratio {ratio(bare)} of cat>/dev/null; supervised/bare "
        f"{min(sup) / min(bare):.1f}/{statistics.median(sup) / statistics.median(bare):.1f}x"
    )


async def main(quick: bool) -> None:
    features = detect()
    print(
        f"cgroup v2: available={features.available} kill={features.kill} "
        f"controllers={features.controllers} path={features.path} ({features.reason})"
    )
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as d:
        tmp = Path(d)
        await idle_overhead(tmp, 50, 5.0 if quick else 30.0)
        await kill_latency(tmp, 5)
        await spawn_latency(tmp, 10)
        await throughput(tmp, 100, 3 if quick else 5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 s idle run instead of 30 s")
    trio.run(main, ap.parse_args().quick)
