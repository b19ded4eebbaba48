"""Dashboard responsiveness: the CPU `corral ui` uses while 20 agents print 500 lines/s.

20 ticker agents print 25 lines/s each (500 lines/s in total) for the whole
run. Each view runs in a real terminal (a pty, 120x40, drained by a thread)
against the same daemon under that load, one after the other, and its CPU
time is read from /proc (psutil) over the same window:

- `corral ui` on its Run screen (the default);
- `corral ui` with one agent's log open (it follows that agent's lines live);
- `corral watch` (the anchor: the existing read-only live view).

Prints each one's share of one core and the ratio to `corral watch`; the
target for `corral ui` is under 25% of one core.

Run: `python bench/ui.py [--seconds N] [--agents N] [--rate LINES_PER_SEC_TOTAL]`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import struct
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "client")]

from bench.events import TICKER  # noqa: E402
from bench.scheduler import make_repo  # noqa: E402
from tests.daemon_proc import DaemonProcess  # noqa: E402


class Terminal:
    """A program in a pty of its own, its output drained so it never blocks on writes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a terminal of 120x40
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.execve(argv[0], argv, env)
        self.output = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(self.fd, 1 << 16):
                self.output += len(chunk)

    def keys(self, data: bytes) -> None:
        os.write(self.fd, data)

    def cpu(self) -> float:
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def measure(argv: list[str], env: dict[str, str], warm: float, secs: float, keys: bytes) -> float:
    """CPU of one view over `secs`, after `warm` seconds to start (and `keys` typed)."""
    term = Terminal(argv, env)
    try:
        time.sleep(warm)
        if keys:
            for key in keys:
                term.keys(bytes([key]))
                time.sleep(0.5)
            time.sleep(1.0)
        before, t0 = term.cpu(), time.monotonic()
        time.sleep(secs)
        return (term.cpu() - before) / (time.monotonic() - t0) * 100
    finally:
        term.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring window per view")
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--rate", type=float, default=500.0, help="lines/s, all agents together")
    ap.add_argument("--warm", type=float, default=6.0, help="seconds for a view to start")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="uibench", dir="/tmp"))
    script = tmp / "ticker.py"
    script.write_text(TICKER)
    total = 3 * (args.warm + args.seconds + 4) + 30
    argv = json.dumps([sys.executable, str(script), str(args.rate / args.agents), str(total)])
    repo = make_repo()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    with DaemonProcess(config=f"[agents.ticker]\nargv = {argv}\n") as d, d.client() as c:
        limits = {"maxAgents": args.agents, "maxTotalCpu": 100 * args.agents}
        c.init_parallel_scheduler(
            repo_path=str(repo),
            config={
                "agentType": "ticker",
                "maxParallel": args.agents,
                "resourceLimits": limits,
                "integrate": False,
            },
        )
        c.parallel_add_tasks(tasks=[{"id": f"t{i}", "title": "tick"} for i in range(args.agents)])
        c.session_start()
        deadline = time.monotonic() + 60
        while len(c.parallel_list_agents(live=True)) < args.agents:
            if time.monotonic() > deadline:
                raise SystemExit("the agents did not all start")
            time.sleep(0.2)
        cli = [sys.executable, "-m", "corral.cli"]
        sock = ["--socket", str(d.socket)]
        results = {
            "ui_run_screen": measure([*cli, "ui", *sock], env, args.warm, args.seconds, b""),
            "ui_agent_log": measure([*cli, "ui", *sock], env, args.warm, args.seconds, b"al"),
            "watch": measure([*cli, "watch", *sock], env, args.warm, args.seconds, b""),
        }
        c.session_pause()
        c.parallel_stop_all()
    watch = results["watch"] or 1e-9
    print(
        json.dumps(
            {
                "agents": args.agents,
                "linesPerSec": args.rate,
                "seconds": args.seconds,
                "cpuPercentOfOneCore": {k: round(v, 1) for k, v in results.items()},
                "ratioToWatch": {
                    k: round(v / watch, 2) for k, v in results.items() if k != "watch"
                },
                "target": "ui under 25% of one core",
                "ok": all(v < 25 for k, v in results.items() if k.startswith("ui")),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
