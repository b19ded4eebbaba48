"""An integration gate for the tests: a real program whose verdict is set by its arguments.

It runs in corral's scratch worktree of the merged tree (its cwd) and exits 0
to let the batch in. Every process it creates appends `pid start_ticks role`
to --pidfile (start in clock ticks), so tests can check the whole tree died.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def start_ticks() -> int:
    """When this process started, in clock ticks since boot: its identity with its pid."""
    with open("/proc/self/stat", "rb") as fh:
        data = fh.read()
    return int(data[data.rfind(b")") + 2 :].split()[19])


def record(pidfile: str | None, role: str) -> None:
    if pidfile:
        with open(pidfile, "a") as fh:
            fh.write(f"{os.getpid()} {start_ticks()} {role}\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fail-if-exists", action="append", default=[], metavar="FILE")
    ap.add_argument("--require", action="append", default=[], metavar="FILE")
    ap.add_argument("--slow-while", metavar="PATH", help="sleep while this file exists")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument(
        "--hang", action="store_true", help="never finish (and a child that ignores TERM)"
    )
    ap.add_argument("--hog", type=int, default=0, metavar="MB", help="hold MB of memory, hang")
    ap.add_argument("--pidfile")
    ap.add_argument("--count", metavar="FILE", help="append one line per run")
    args = ap.parse_args()
    record(args.pidfile, "gate")
    if args.count:
        with open(args.count, "a") as fh:
            fh.write(f"{os.getcwd()}\n")
    if args.hang:
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            record(args.pidfile, "gate-child")
            while True:
                time.sleep(3600)
        while True:
            time.sleep(3600)
    if args.hog:
        held = bytearray(b"\x01") * (args.hog * 1024 * 1024)  # touched: real RSS
        print(f"gate: holding {len(held) >> 20} MB", flush=True)
        time.sleep(3600)
    while args.slow_while and Path(args.slow_while).exists():
        time.sleep(0.05)
    if args.sleep:
        time.sleep(args.sleep)
    for name in args.fail_if_exists:
        if Path(name).exists():
            print(f"gate: {name} must not exist", flush=True)
            return 1
    for name in args.require:
        if not Path(name).exists():
            print(f"gate: {name} is missing", flush=True)
            return 1
    print("gate: all good", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
