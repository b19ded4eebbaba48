"""Daemon start-up: from `exec` to the first answer, corrald against a bare trio server.

  * corral: `python -m corrald.app` on a fresh state dir; the first answer
    is to `daemon_status`.
  * anchor: the same Python running a minimal trio server (this file with
    `--anchor-server PATH`: imports trio and socket, nothing else) that
    answers one JSON line with one JSON line.
The client starts the process, then connects every millisecond until the
socket takes it, sends one request and times the answer. The two alternate
`--runs` times each after a warm-up. Prints min/median of each and the median
of the pairwise ratios (target <= 4).

Run: `python bench/startup.py [--runs 10]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 4.0
REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"daemon_status","params":{}}\n'


def anchor_server(path: str) -> None:
    import trio

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
        await stream.send_all(b'{"jsonrpc":"2.0","id":1,"result":{"pid":%d}}\n' % os.getpid())

    async def main() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(128)
        await trio.serve_listeners(
            handle, [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
        )

    trio.run(main)


def first_answer(argv: list[str], sock_path: Path, env: dict[str, str]) -> float:
    """Seconds from starting `argv` to the answer of its first request."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv} exited {proc.returncode}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(sock_path))
            except OSError:
                s.close()
                time.sleep(0.001)
                continue
            break
        with s:
            s.sendall(REQUEST)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("connection closed before the answer")
                buf += chunk
        secs = time.perf_counter() - start
        assert json.loads(buf)["result"]["pid"] == proc.pid
        return secs
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--anchor-server", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor_server:
        anchor_server(args.anchor_server)
        return 0

    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "daemon"), str(ROOT / "client"), env.get("PYTHONPATH", "")]
    )
    workdir = Path(tempfile.mkdtemp(prefix="bs", dir="/tmp"))
    try:
        n = 0

        def corral() -> float:
            nonlocal n
            n += 1
            sock = workdir / f"c{n}.sock"
            state = str(workdir / f"state{n}")
            argv = [sys.executable, "-m", "corrald.app", "--socket", str(sock),
                    "--state-dir", state, "--log-level", "warning"]  # fmt: skip
            return first_answer(argv, sock, env)

        def anchor() -> float:
            nonlocal n
            n += 1
            sock = workdir / f"a{n}.sock"
            return first_answer([sys.executable, __file__, "--anchor-server", str(sock)], sock, env)

        corral(), anchor()  # warm-up: the page cache, not counted
        a_times: list[float] = []
        c_times: list[float] = []
        for _ in range(args.runs):
            a_times.append(anchor())
            c_times.append(corral())
        ratios = sorted(c / a for c, a in zip(c_times, a_times, strict=True))
        ratio = statistics.median(ratios)
        verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
        print(f"start to first answer, min / median of {args.runs} runs")
        for name, times in (("bare trio server", a_times), ("corrald", c_times)):
            low, mid = min(times) * 1e3, statistics.median(times) * 1e3
            print(f"{name:20} {low:7.1f} / {mid:7.1f} ms")
        print(f"{'ratio corral/anchor':20} {ratio:7.2f}  (range {ratios[0]:.2f}..{ratios[-1]:.2f};"
              f" target <= {TARGET}: {verdict})")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
