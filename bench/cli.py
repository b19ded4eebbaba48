"""CLI start-up: `corral status` and `corral tasks --json` against a raw-socket client.

One real corrald on a private socket, with a session of `--tasks` tasks.
Each command runs as a whole new process, as a user runs it:
  * corral: the installed `corral` entry point (`corral status`,
    `corral tasks --json`);
  * anchor: the same Python with a minimal client given as `-c`: connect,
    send one JSON-RPC line, read one back, `json.loads`, print the result.
    It is the floor for a Python CLI on this interpreter and this daemon.
The two alternate, A B A B ..., `--runs` times each after a warm-up, so a
noisy neighbour slows both. Prints wall-clock min/median of each, and the
median of the pairwise ratios corral/anchor (target <= 2).

Run: `python bench/cli.py [--runs 15] [--tasks 200]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "client")]

from bench.scheduler import make_repo  # noqa: E402
from corral.client import Client  # noqa: E402
from corral.launch import LocalDaemon  # noqa: E402

TARGET = 2.0

#: The anchor: what any Python client must do for one call, and nothing else.
RAW_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2],
                      "params": json.loads(sys.argv[3])}).encode() + b"\\n")
buf = b""
while not buf.endswith(b"\\n"):
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    buf += chunk
print(json.dumps(json.loads(buf)["result"], indent=2))
"""


def corral_argv() -> list[str]:
    """The installed entry point beside this Python, else `-m corral.cli`."""
    script = Path(sys.executable).with_name("corral")
    return [str(script)] if script.exists() else [sys.executable, "-m", "corral.cli"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return secs


def compare(name: str, corral: list[str], anchor: list[str], runs: int) -> float:
    for argv in (corral, anchor):  # warm-up: the page cache, not counted
        timed(argv)
    a_times: list[float] = []
    c_times: list[float] = []
    for _ in range(runs):
        a_times.append(timed(anchor))
        c_times.append(timed(corral))
    ratios = sorted(c / a for c, a in zip(c_times, a_times, strict=True))
    ratio = statistics.median(ratios)
    verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
    print(
        f"{name:24} anchor {min(a_times) * 1e3:6.1f} / {statistics.median(a_times) * 1e3:6.1f} ms"
        f"   corral {min(c_times) * 1e3:6.1f} / {statistics.median(c_times) * 1e3:6.1f} ms"
        f"   ratio {ratio:5.2f} (range {ratios[0]:.2f}..{ratios[-1]:.2f};"
        f" target <= {TARGET}: {verdict})"
    )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bc", dir="/tmp"))
    repo = make_repo()
    daemon = LocalDaemon(workdir / "corrald.sock", workdir / "state", log_path=workdir / "log")
    try:
        daemon.start()
        sock = str(daemon.socket)
        with Client(sock) as c:
            session = c.init_parallel_scheduler(repo_path=str(repo)).id
            tasks = [{"id": f"t{i}", "title": f"task {i}"} for i in range(args.tasks)]
            c.call("parallel_add_tasks", session_id=session, tasks=tasks)
        print(f"corral start-up, min / median of {args.runs} runs; {args.tasks} tasks")
        corral = corral_argv()
        at = ["--socket", sock]
        compare(
            "corral status",
            [*corral, "status", *at],
            [sys.executable, "-c", RAW_CLIENT, sock, "daemon_status", "{}"],
            args.runs,
        )
        compare(
            "corral tasks --json",
            [*corral, "tasks", "--json", *at],
            [
                sys.executable,
                "-c",
                RAW_CLIENT,
                sock,
                "parallel_list_tasks",
                json.dumps({"sessionId": session}),
            ],
            args.runs,
        )
    finally:
        if daemon.running():
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
