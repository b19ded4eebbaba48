"""`corral watch` when nothing happens: its CPU against a bare event subscriber.

One real corrald with a session of `--tasks` queued tasks (never started, so
no event arrives). Two processes watch it for `--secs` seconds, at the same
time:
  * corral: `corral watch --session S` (the live view, on a pipe);
  * anchor: a bare subscriber (`-c`: connect, `events_subscribe`, block
    reading the socket), the least any live view can cost.
Prints each one's CPU as a share of one core (user + system, from the
kernel's accounting, after a 2 s settling period). Target: corral under 1%.
The busy case of the issue (20 agents running) is not measured here.

Run: `python bench/watch.py [--tasks 10000] [--secs 10]`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "client")]

import psutil  # noqa: E402

from bench.cli import corral_argv  # noqa: E402
from bench.scheduler import make_repo  # noqa: E402
from corral.client import Client  # noqa: E402
from corral.launch import LocalDaemon  # noqa: E402

IDLE_TARGET = 1.0  # % of one core

SUBSCRIBER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events_subscribe",
                      "params": {"sessionId": sys.argv[2]}}).encode() + b"\\n")
while s.recv(1 << 16):
    pass
"""


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--secs", type=float, default=10.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bw", dir="/tmp"))
    repo = make_repo()
    daemon = LocalDaemon(workdir / "d.sock", workdir / "state", log_path=workdir / "log")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        daemon.start()
        sock = str(daemon.socket)
        with Client(sock, timeout=600) as c:
            sid = c.init_parallel_scheduler(repo_path=str(repo)).id
            for first in range(0, args.tasks, 1000):
                batch = [
                    {"id": f"t{i}", "title": f"task {i}"}
                    for i in range(first, min(args.tasks, first + 1000))
                ]
                c.call("parallel_add_tasks", session_id=sid, tasks=batch)
        sides = {
            "bare subscriber": [sys.executable, "-c", SUBSCRIBER, sock, sid],
            "corral watch": [*corral_argv(), "watch", "--session", sid, "--socket", sock],
        }
        for argv in sides.values():
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        time.sleep(2.0 + args.tasks / 5000)  # start-up and the first frame are not idle
        watched = [psutil.Process(p.pid) for p in procs]
        before = [cpu(p) for p in watched]
        start = time.monotonic()
        time.sleep(args.secs)
        secs = time.monotonic() - start
        used = [cpu(p) - b for p, b in zip(watched, before, strict=True)]
        for p in procs:
            assert p.poll() is None, "a watcher exited early"
        print(f"idle for {secs:.1f} s, {args.tasks} queued tasks, CPU as % of one core")
        for (name, _), spent in zip(sides.items(), used, strict=True):
            print(f"  {name:16} {spent / secs * 100:6.2f} %")
        share = used[1] / secs * 100
        verdict = "ok" if share < IDLE_TARGET else "ABOVE TARGET"
        print(f"  target: corral watch under {IDLE_TARGET}% idle: {verdict}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        if daemon.running():
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
