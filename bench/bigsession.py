"""Big sessions: `parallel_list_tasks` of 10k and 50k tasks, the daemon's stall, RSS per task.

One real corrald per size, with a session of N tasks (chains of 5, added
1,000 at a time, never started). For each size:
  * list: `parallel_list_tasks` on a raw socket, request to the last byte of
    the answer, against the anchor: a bare trio server (this file with
    `--anchor-server PATH FILE`) that answers any line with the very bytes
    corrald sent. The two alternate `--runs` times. Target: at most 4x.
  * replay: `events_subscribe` with `sinceSeq` before the oldest kept event
    (the session's whole history, one event per task), on a fresh connection,
    request to the last event's newline, against the same bare trio server
    sending the very bytes corrald sent. Target: at most 4x.
  * stall: while corrald answers those lists and replays, a second connection sends
    `daemon_status` every 5 ms; the longest round trip of that ticker is how
    long one request held the event loop. Target: at most 25 ms.
  * RSS per task: the daemon's RSS with the session full, minus its RSS
    with it empty, over N. Target: under 1.5 KB. "Empty" is after a warm-up
    session of 8,000 tasks has been added and listed, so the costs that do not
    grow with the tasks (validators built on first use, SQLite's page cache,
    at most 2 MB) are not counted as the tasks'. Memory the warm-up freed may
    be reused by the tasks, so the cost of the second half alone,
    (full - half full) / (N / 2), is printed too; the verdict is on the larger.
  * full-GC pause: in this process, the daemon's own `Engine` and `Store`
    holding the same session; each full collection is timed with
    `gc.callbacks`, first as the daemon ran before, then after `gc.freeze()`
    as corrald now does once it has started and after each batch of added
    tasks. Target: under 10 ms at 10k.

Run: `python bench/bigsession.py [--sizes 10000 50000] [--runs 7]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "client")]

import psutil  # noqa: E402

from bench.scheduler import make_repo  # noqa: E402
from corral.client import Client  # noqa: E402
from corral.launch import LocalDaemon  # noqa: E402
from corral.models import SchedulerConfig, TaskSpec  # noqa: E402
from corrald.state.engine import Engine  # noqa: E402
from corrald.state.events import EventBus  # noqa: E402
from corrald.state.store import Store  # noqa: E402

#: Tasks of the warm-up session: their rows (~300 bytes each) fill SQLite's 2 MB page cache.
WARM_UP_TASKS = 8000
LIST_TARGET, STALL_TARGET_MS, RSS_TARGET_KB, GC_TARGET_MS = 4.0, 25.0, 1.5, 10.0


def anchor_server(path: str, payload_file: str) -> None:
    import trio

    payload = Path(payload_file).read_bytes()

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                _, buf = buf.split(b"\n", 1)
                await stream.send_all(payload)

    async def main() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(16)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        await trio.serve_listeners(handle, [listener])

    trio.run(main)


def start_anchor(path: Path, payload_file: Path, payload: bytes) -> subprocess.Popen[bytes]:
    """`anchor_server` in its own process, answering any line with `payload`."""
    payload_file.write_bytes(payload)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--anchor-server", str(path), str(payload_file)]
    )
    while not path.exists():
        time.sleep(0.01)
    time.sleep(0.2)  # listening
    return proc


def round_trip(sock: socket.socket, request: bytes) -> bytes:
    """Send one line, read to the answer's newline."""
    sock.sendall(request)
    parts: list[bytes] = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("connection closed")
        parts.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(parts)


def replay_round(path: Path, request: bytes, marker: bytes) -> tuple[float, bytes]:
    """Subscribe on a fresh connection; read until the event holding `marker` has ended."""
    sock = connect(path)
    try:
        start = time.perf_counter()
        sock.sendall(request)
        parts: list[bytes] = []
        tail = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("connection closed")
            parts.append(chunk)
            tail = (tail + chunk)[-4096:]
            if tail.endswith(b"\n") and marker in tail:
                return time.perf_counter() - start, b"".join(parts)
    finally:
        sock.close()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def tick(path: str) -> None:
    """`daemon_status` every 5 ms until stdin closes; print each round trip (ms), one a line.

    Its own process, so that nothing the measuring process does (reading and
    joining 12 MB under the GIL) shows as a stall of the daemon.
    """
    sock = connect(Path(path))
    request = b'{"jsonrpc":"2.0","id":1,"method":"daemon_status","params":{}}\n'
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print("ticking", flush=True)
    times: list[float] = []
    while not stop.wait(0.005):
        start = time.perf_counter()
        round_trip(sock, request)
        times.append(time.perf_counter() - start)
    print("\n".join(f"{t * 1e3:.3f}" for t in times))


class Ticker:
    """The `tick` process on a daemon; `stop()` returns its round trips in seconds."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--tick", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ticking\n"

    def stop(self) -> list[float]:
        out, _ = self.proc.communicate(b"")
        return [float(line) / 1e3 for line in out.split()]


def ms(times: list[float]) -> str:
    return f"{min(times) * 1e3:7.1f} / {statistics.median(times) * 1e3:7.1f} ms"


def verdict(ok: bool) -> str:
    return "ok" if ok else "ABOVE TARGET"


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def measure(size: int, runs: int, workdir: Path) -> None:
    repo = make_repo()
    daemon = LocalDaemon(
        workdir / f"d{size}.sock",
        workdir / f"state{size}",
        log_path=workdir / f"d{size}.log",
        args=("--log-level", "warning"),
    )
    anchor: subprocess.Popen[bytes] | None = None
    try:
        daemon.start()
        with Client(daemon.socket, timeout=600) as c:

            def add(session: str, first: int, last: int, prefix: str = "t") -> None:
                batch = [
                    {
                        "id": f"{prefix}{i}",
                        "title": f"task {i}",
                        "priority": i % 10,
                        "dependencies": [f"{prefix}{i - 1}"] if i % 5 else [],
                    }
                    for i in range(first, last)
                ]
                c.call("parallel_add_tasks", session_id=session, tasks=batch)

            warm_up = c.init_parallel_scheduler(repo_path=str(repo)).id
            add(warm_up, 0, WARM_UP_TASKS, "w")
            c.call("parallel_list_tasks", session_id=warm_up)
            session = c.init_parallel_scheduler(repo_path=str(repo)).id
            c.daemon_status()
            empty_rss = half_rss = rss(daemon.pid)
            for first in range(0, size, 1000):
                add(session, first, min(size, first + 1000))
                if first + 1000 == size // 2:
                    half_rss = rss(daemon.pid)
            full_rss = rss(daemon.pid)
        request = (
            b'{"jsonrpc":"2.0","id":7,"method":"parallel_list_tasks","params":{"sessionId":"'
            + session.encode()
            + b'"}}\n'
        )
        corral_sock = connect(daemon.socket)
        payload = round_trip(corral_sock, request)
        anchor_path = workdir / f"a{size}.sock"
        anchor = start_anchor(anchor_path, workdir / "payload", payload)
        anchor_sock = connect(anchor_path)
        round_trip(anchor_sock, request)  # warm-up
        # The replay: everything kept, up to the newest event (one per task at least).
        probe = connect(daemon.socket)
        head = json.loads(
            round_trip(probe, b'{"jsonrpc":"2.0","id":1,"method":"events_subscribe"}\n')
        )
        probe.close()
        newest, oldest = head["result"]["seq"], head["result"]["oldest"]
        replay_request = (
            b'{"jsonrpc":"2.0","id":8,"method":"events_subscribe","params":{"sinceSeq":%d}}\n'
            % (oldest - 1)
        )
        marker = b'{"seq":%d,' % newest
        _, replay_payload = replay_round(daemon.socket, replay_request, marker)
        events = replay_payload.count(b'"method":"event"')
        replay_anchor_path = workdir / f"r{size}.sock"
        replay_anchor = start_anchor(replay_anchor_path, workdir / "replay", replay_payload)
        ticker = Ticker(daemon.socket)
        a_times: list[float] = []
        c_times: list[float] = []
        ra_times: list[float] = []
        rc_times: list[float] = []
        for _ in range(runs):
            start = time.perf_counter()
            assert round_trip(anchor_sock, request) == payload
            a_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            got = round_trip(corral_sock, request)
            c_times.append(time.perf_counter() - start)
            assert len(got) == len(payload)
        for _ in range(runs):
            took, got = replay_round(replay_anchor_path, replay_request, marker)
            ra_times.append(took)
            took, got = replay_round(daemon.socket, replay_request, marker)
            rc_times.append(took)
            assert got.count(b'"method":"event"') == events
        ticks = ticker.stop()
        replay_anchor.kill()
        replay_anchor.wait()
        ratios = sorted(c / a for c, a in zip(c_times, a_times, strict=True))
        ratio = statistics.median(ratios)
        replay_ratio = statistics.median(c / a for c, a in zip(rc_times, ra_times, strict=True))
        stall = max(ticks) * 1e3
        per_task = (full_rss - empty_rss) / size / 1024
        second_half = (full_rss - half_rss) / (size - size // 2) / 1024
        print(f"{size} tasks, answer {len(payload) / 1e6:.1f} MB, min / median of {runs} runs")
        print(
            f"  list   bare trio {ms(a_times)}   corral {ms(c_times)}   ratio {ratio:5.2f}"
            f" (target <= {LIST_TARGET}: {verdict(ratio <= LIST_TARGET)})"
        )
        print(
            f"  replay {events} events, {len(replay_payload) / 1e6:.1f} MB:"
            f" bare trio {ms(ra_times)}   corral {ms(rc_times)}   ratio {replay_ratio:5.2f}"
            f" (target <= {LIST_TARGET}: {verdict(replay_ratio <= LIST_TARGET)})"
        )
        print(
            f"  stall  longest daemon_status round trip meanwhile {stall:6.1f} ms"
            f" (p50 {statistics.median(ticks) * 1e3:.1f} ms;"
            f" target <= {STALL_TARGET_MS}: {verdict(stall <= STALL_TARGET_MS)})"
        )
        print(
            f"  RSS    {per_task:5.2f} KB per task; the second half alone {second_half:5.2f} KB"
            f" (target < {RSS_TARGET_KB}: {verdict(max(per_task, second_half) < RSS_TARGET_KB)})"
        )
        corral_sock.close()
        anchor_sock.close()
    finally:
        if anchor is not None:
            anchor.kill()
            anchor.wait()
        if daemon.running():
            daemon.stop()
        shutil.rmtree(repo, ignore_errors=True)


def full_gc_ms(times: int = 5) -> float:
    """The longest of `times` full collections, as `gc.callbacks` sees them."""
    pauses: list[float] = []
    started = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if info["generation"] != 2:
            return
        if phase == "start":
            started = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started)

    gc.callbacks.append(callback)
    try:
        for _ in range(times):
            gc.collect()
    finally:
        gc.callbacks.remove(callback)
    return max(pauses) * 1e3


def measure_gc(size: int, workdir: Path) -> None:
    repo = make_repo()
    store = Store(workdir / f"gc{size}" / "corral.db")
    try:
        engine = Engine(store, EventBus(store))
        config = SchedulerConfig(integrate=False)
        sid = engine.init_session(config, str(repo), None).id
        gc.freeze()  # what corrald freezes once it has started
        for first in range(0, size, 1000):
            engine.add_tasks(
                sid,
                [
                    TaskSpec(
                        id=f"t{i}",
                        title=f"task {i}",
                        priority=i % 10,
                        dependencies=[f"t{i - 1}"] if i % 5 else [],
                    )
                    for i in range(first, min(size, first + 1000))
                ],
            )
        startup = full_gc_ms()
        gc.unfreeze()
        unfrozen = full_gc_ms()
        gc.freeze()
        everything = full_gc_ms()
        gc.unfreeze()
        print(
            f"  GC     full collection, longest of 5: nothing frozen {unfrozen:6.1f} ms;"
            f" start-up frozen {startup:6.1f} ms; tasks frozen too {everything:6.1f} ms"
            f" (target < {GC_TARGET_MS})"
        )
    finally:
        store.close()
        shutil.rmtree(repo, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--anchor-server", nargs=2, metavar=("PATH", "FILE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--tick", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tick:
        tick(args.tick)
        return 0
    if args.anchor_server:
        anchor_server(*args.anchor_server)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bb", dir="/tmp"))
    os.environ.pop("NOTIFY_SOCKET", None)
    try:
        for size in args.sizes:
            measure(size, args.runs, workdir)
            measure_gc(size, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
