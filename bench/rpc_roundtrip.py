"""RPC round trips: `daemon_status` through `corral.Client` against a bare echo.

Two servers, each a subprocess on its own AF_UNIX socket:
  * a real corrald (`python -m corrald.app`);
  * a bare trio newline echo server (this file with `--echo-server PATH`):
    the floor of what any trio server on such a socket can do.
This process is the client of both: one connection each, sequential calls,
`--secs` seconds each in alternating 0.25 s slices, through the same
blocking socket code path (`corral.connection.Connection`: sendall one JSON line,
recv until a newline, json.loads; corral's side goes through the public
`Client.daemon_status`, which adds building the request and validating the
DaemonStatus result). Prints both rates, the server's and the client's CPU
per round trip, and the ratio corral/echo (target >= 0.4).

With `--clients N` it measures latency under load instead: corrald holds a
session of `--tasks` tasks (added 1,000 at a time, never started), and N
connections each send `daemon_status` in a loop, the next as soon as the
answer is in (raw bytes, the same trio client code for both servers, all in
this process). p50 and p99 of the round trips of corrald and of the echo,
in alternating `ROUND_SECS`-long turns, and their ratio (target: p99 at
most 3x). `--gc-thresholds` repeats it for each `gc.set_threshold` setting
given (through `CORRALD_GC_THRESHOLD`), which is how corrald's are chosen.

Run: `python bench/rpc_roundtrip.py [--secs 3] [--profile]`,
`python bench/rpc_roundtrip.py --clients 100 --tasks 10000 [--gc-thresholds 700,10,10 ...]`.
`--profile` runs corrald under cProfile and prints its top functions.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / d) for d in ("daemon", "client"))]

import psutil  # noqa: E402

from corral import errors  # noqa: E402
from corral.client import Client  # noqa: E402
from corral.connection import Connection  # noqa: E402

TARGET = 0.4
SLICE_SECS = 0.25
P99_TARGET = 3.0
ROUND_SECS = 0.5  # --clients: each server's turn


# --- the echo server (runs in its own process) ------------------------------------------


def echo_server(path: str) -> None:
    import socket

    import trio

    async def handle(stream: trio.SocketStream) -> None:
        buf = bytearray()
        async with stream:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not chunk:
                    return
                buf += chunk
                end = buf.rfind(b"\n")
                if end >= 0:
                    await stream.send_all(bytes(buf[: end + 1]))
                    del buf[: end + 1]

    async def main() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(128)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        await trio.serve_listeners(handle, [listener])

    trio.run(main)  # until SIGKILL: it has nothing to save


# --- driving the servers ----------------------------------------------------------------


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            Connection.open(path, 1.0).close()
            return
        except errors.DaemonNotRunning:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {path}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Side:
    """One server under test and the sequential call that measures it."""

    name: str
    call: Callable[[], object]
    server: psutil.Process
    calls: int = 0
    secs: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    slice_rates: list[float] = field(default_factory=list)

    def run_slice(self, secs: float) -> None:
        cpu0, client0 = self.server.cpu_times(), time.process_time()
        n = 0
        start = time.perf_counter()
        end = start + secs
        while True:
            for _ in range(50):
                self.call()
            n += 50
            now = time.perf_counter()
            if now >= end:
                break
        cpu1, client1 = self.server.cpu_times(), time.process_time()
        self.calls += n
        self.secs += now - start
        self.server_cpu += (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        self.client_cpu += client1 - client0
        self.slice_rates.append(n / (now - start))

    @property
    def rate(self) -> float:
        return self.calls / self.secs

    def line(self) -> str:
        return (
            f"{self.name:26} {self.rate:8.0f} round trips/s   CPU per round trip:"
            f" server {self.server_cpu / self.calls * 1e6:4.0f} us,"
            f" client {self.client_cpu / self.calls * 1e6:4.0f} us"
        )


def start_corrald(
    workdir: Path, profile: Path | None, gc_threshold: str | None = None
) -> subprocess.Popen[bytes]:
    sock = workdir / "corrald.sock"
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "corrald.app", "--socket", str(sock), "--state-dir", str(workdir / "state"),
            "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("daemon", "client"))}
    for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"):
        env.pop(var, None)
    if gc_threshold is not None:
        env["CORRALD_GC_THRESHOLD"] = gc_threshold
    proc = subprocess.Popen(cmd, env=env, cwd=workdir)
    wait_for_socket(sock, proc)
    return proc


def start_echo(workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "--echo-server", str(workdir / "echo.sock")])
    wait_for_socket(workdir / "echo.sock", proc)
    return proc


def measure(workdir: Path, secs: float, profile: Path | None) -> tuple[Side, Side]:
    """Both servers up at once; short slices alternate between them.

    Alternating slices means both see the same machine: a noisy neighbour
    (other test runs on a 2-core box) slows both, not one, so the ratio holds.
    """
    echo_proc = start_echo(workdir)
    corral_proc: subprocess.Popen[bytes] | None = None
    try:
        corral_proc = start_corrald(workdir, profile)
        conn = Connection.open(workdir / "echo.sock", 30.0)
        message = {"jsonrpc": "2.0", "method": "daemon_status", "params": {}, "id": 1}

        def echo_call() -> None:
            # The same work Client.call does per round trip: one JSON line out,
            # one JSON line back, decoded.
            conn.send(message)
            answer = conn.receive()
            assert answer["id"] == 1

        try:
            with Client(workdir / "corrald.sock", timeout=30) as client:
                assert client.daemon_status().pid == corral_proc.pid
                echo = Side("echo (bare trio, newline)", echo_call, psutil.Process(echo_proc.pid))
                corral = Side("corral daemon_status", client.daemon_status,
                              psutil.Process(corral_proc.pid))  # fmt: skip
                for side in (echo, corral):  # warm up
                    for _ in range(300):
                        side.call()
                slices = max(1, round(secs / SLICE_SECS))
                for _ in range(slices):
                    echo.run_slice(secs / slices)
                    corral.run_slice(secs / slices)
        finally:
            conn.close()
    finally:
        stop(echo_proc, signal.SIGKILL)  # a throwaway process with no state to save
        if corral_proc is not None:
            stop(corral_proc)
    return echo, corral


# --- many clients: latency under load ---------------------------------------------------

STATUS = b'{"jsonrpc":"2.0","method":"daemon_status","params":{},"id":1}\n'


async def load(path: Path, clients: int, secs: float) -> list[float]:
    """Round trip times of `clients` connections sending `STATUS` back to back.

    Every connection has had one answer before the clock starts: what is
    measured is a round trip, not how long the server takes to accept 100
    connections at once.
    """
    import trio

    times: list[float] = []

    async def call(stream: trio.SocketStream) -> None:
        await stream.send_all(STATUS)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            assert chunk, "the server closed the connection"
            buf += chunk

    async def one(stream: trio.SocketStream, end: float) -> None:
        while time.perf_counter() < end:
            start = time.perf_counter()
            await call(stream)
            times.append(time.perf_counter() - start)

    streams = [await trio.open_unix_socket(str(path)) for _ in range(clients)]
    try:
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(call, stream)
        end = time.perf_counter() + secs
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(one, stream, end)
    finally:
        for stream in streams:
            await stream.aclose()
    return times


def quantile(times: list[float], q: float) -> float:
    return sorted(times)[min(len(times) - 1, int(q * len(times)))]


def fill_session(sock: Path, tasks: int) -> None:
    from bench.scheduler import fill, make_repo

    repo = make_repo()
    try:
        with Client(sock, timeout=600) as c:
            session = c.init_parallel_scheduler(repo_path=str(repo)).id
            fill(c, session, tasks, "t")
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def measure_load(workdir: Path, clients: int, tasks: int, secs: float, gc: str | None) -> None:
    import trio

    echo_proc = start_echo(workdir)
    corral_proc: subprocess.Popen[bytes] | None = None
    try:
        corral_proc = start_corrald(workdir, None, gc)
        fill_session(workdir / "corrald.sock", tasks)
        sides = {"echo": workdir / "echo.sock", "corral": workdir / "corrald.sock"}
        for path in sides.values():  # warm up
            trio.run(load, path, clients, 0.3)
        times: dict[str, list[float]] = {name: [] for name in sides}
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        rounds_run = max(1, round(secs / (2 * ROUND_SECS)))
        for _ in range(rounds_run):
            for name, path in sides.items():
                got = trio.run(load, path, clients, ROUND_SECS)
                times[name] += got
                rounds[name].append((quantile(got, 0.5), quantile(got, 0.99)))
    finally:
        stop(echo_proc, signal.SIGKILL)
        if corral_proc is not None:
            stop(corral_proc)
    print(
        f"{clients} clients, session of {tasks} tasks, gc thresholds {gc or 'as corrald sets them'}"
    )
    for name, got in times.items():
        print(
            f"  {name:8} {len(got) / (rounds_run * ROUND_SECS):7.0f} calls/s"
            f"   p50 {quantile(got, 0.5) * 1e3:6.2f} ms"
            f"   p99 {quantile(got, 0.99) * 1e3:6.2f} ms   max {max(got) * 1e3:6.1f} ms"
        )
    ratios = {
        q: sorted(c[i] / e[i] for c, e in zip(rounds["corral"], rounds["echo"], strict=True))
        for i, q in ((0, "p50"), (1, "p99"))
    }
    p99 = quantile(times["corral"], 0.99) / quantile(times["echo"], 0.99)
    verdict = "ok" if p99 <= P99_TARGET else "ABOVE TARGET"
    print(
        f"  ratio corral/echo: p99 {p99:.2f} (target <= {P99_TARGET}: {verdict}); per round"
        f" p99 min/median {ratios['p99'][0]:.2f}/{statistics.median(ratios['p99']):.2f},"
        f" p50 min/median {ratios['p50'][0]:.2f}/{statistics.median(ratios['p50']):.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secs", type=float, default=3.0)
    parser.add_argument("--profile", action="store_true", help="cProfile corrald")
    parser.add_argument("--clients", type=int, help="latency with this many connections")
    parser.add_argument("--tasks", type=int, default=10_000, help="with --clients: session size")
    parser.add_argument("--gc-thresholds", nargs="*", metavar="A,B,C", help="with --clients")
    parser.add_argument("--echo-server", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    if args.clients:
        for gc in args.gc_thresholds or [None]:
            workdir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
            try:
                measure_load(workdir, args.clients, args.tasks, args.secs, gc)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    profile = workdir / "corrald.prof" if args.profile else None
    try:
        echo, corral = measure(workdir, args.secs, profile)
        ratio = corral.rate / echo.rate
        pairs = sorted(c / e for c, e in zip(corral.slice_rates, echo.slice_rates, strict=True))
        print(echo.line())
        print(corral.line())
        verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
        print(
            f"{'ratio corral/echo':26} {ratio:8.3f}  (target >= {TARGET}: {verdict});"
            f" per slice: median {statistics.median(pairs):.3f},"
            f" range {pairs[0]:.3f}..{pairs[-1]:.3f}"
        )
        if profile is not None and profile.exists():
            stats = pstats.Stats(str(profile))
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
