"""`corral watch` idle and busy: its CPU against a bare event subscriber.

One real corrald with a session of `--tasks` queued tasks. Two clients
watch it at the same time, in the same measuring windows:
  * anchor: a bare subscriber (`-c`: connect, `events_subscribe` to the
    topics the view follows, block reading the socket), the least any live
    view can cost;
  * corral: `corral watch --session S` in a real terminal (a pty, 120x40,
    drained by a thread), so its drawing is measured too;
  * with `--ui`, also `corral ui` on its Run screen, in a pty of its own.
CPU is user + system from the kernel's accounting, as a share of one core.

Two cases, one after the other, on the same processes:
  * idle: the session is not started, so no event arrives;
  * busy: `--agents` fake agents (tests/fake_agent.py `--chatter`) each
    print a stream-json step every `--every` seconds (tokens and activity
    events), with the rest of the tasks queued.
Each case is `--reps` windows of `--secs` seconds; each window measures
every side at once. Printed per side: min and median over the windows, and
the ratio corral/anchor per window (min/median). The machine is shared:
quote ratios and medians. Targets (absolute): watch under 1% idle and
under 5% busy.

Run: `python bench/watch.py [--tasks 10000] [--agents 20] [--every 0.075]
[--secs 5] [--reps 5] [--ui]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "client")]

import psutil  # noqa: E402

from bench.scheduler import make_repo  # noqa: E402
from bench.ui import Terminal  # noqa: E402
from corral.watch import VIEW_TOPICS  # noqa: E402
from tests.daemon_proc import DaemonProcess  # noqa: E402

IDLE_TARGET = 1.0  # % of one core
BUSY_TARGET = 5.0
FAKE = ROOT / "tests" / "fake_agent.py"

SUBSCRIBER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
params = {"sessionId": sys.argv[2], "topics": json.loads(sys.argv[3])}
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events_subscribe",
                      "params": params}).encode() + b"\\n")
while s.recv(1 << 16):
    pass
"""


def cpu_of(pid: int) -> Callable[[], float]:
    proc = psutil.Process(pid)

    def read() -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    return read


def measure(
    sides: dict[str, Callable[[], float]], secs: float, reps: int
) -> dict[str, list[float]]:
    """Each side's CPU (% of one core) in `reps` windows of `secs`, all sides in each window."""
    shares: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        before = {name: read() for name, read in sides.items()}
        t0 = time.monotonic()
        time.sleep(secs)
        spent = time.monotonic() - t0
        for name, read in sides.items():
            shares[name].append((read() - before[name]) / spent * 100)
    return shares


def report(case: str, shares: dict[str, list[float]], target: float) -> None:
    print(f"{case}: CPU as % of one core, min / median over {len(shares['anchor'])} windows")
    for name, values in shares.items():
        print(f"  {name:18} {min(values):6.2f} / {statistics.median(values):6.2f} %")
    pairs = zip(shares["corral watch"], shares["anchor"], strict=True)
    ratios = [w / a for w, a in pairs if a > 0]
    if ratios:
        print(f"  ratio watch/anchor {min(ratios):6.1f} / {statistics.median(ratios):6.1f}")
    else:  # nothing to divide by: the absolute share is the figure
        print("  ratio watch/anchor    -  (the anchor used no measurable CPU)")
    median = statistics.median(shares["corral watch"])
    verdict = "ok" if median < target else "ABOVE TARGET"
    print(f"  target: corral watch under {target}% ({case}): {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument(
        "--every", type=float, default=0.075, help="seconds between an agent's steps"
    )
    parser.add_argument("--secs", type=float, default=5.0, help="one measuring window")
    parser.add_argument("--reps", type=int, default=5, help="windows per case")
    parser.add_argument("--ui", action="store_true", help="measure `corral ui` as well")
    args = parser.parse_args()
    repo = make_repo()
    fake = [sys.executable, str(FAKE), "--chatter", str(args.every), "--sleep", "3600"]
    config = f'[agents.fake]\nargv = {json.dumps(fake)}\nparser = "claude-stream-json"\n'
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    procs: list[subprocess.Popen[bytes]] = []
    terms: list[Terminal] = []
    daemon = DaemonProcess(config=config)
    try:
        with daemon as d, d.client(timeout=600) as c:
            limits = {
                "maxAgents": args.agents,
                "maxTotalCpu": 100.0 * args.agents,
                "maxTotalMemoryMb": 1 << 20,
            }
            sid = c.init_parallel_scheduler(
                repo_path=str(repo),
                config={"agentType": "fake", "maxParallel": args.agents, "resourceLimits": limits},
            ).id
            for first in range(0, args.tasks, 1000):
                batch = [
                    {"id": f"t{i}", "title": f"task {i}"}
                    for i in range(first, min(args.tasks, first + 1000))
                ]
                c.call("parallel_add_tasks", session_id=sid, tasks=batch)
            sock = str(d.socket)
            topics = json.dumps(VIEW_TOPICS)
            anchor = [sys.executable, "-c", SUBSCRIBER, sock, sid, topics]
            procs.append(subprocess.Popen(anchor, stdout=subprocess.DEVNULL))
            cli = [sys.executable, "-m", "corral.cli"]
            terms.append(Terminal([*cli, "watch", "--session", sid, "--socket", sock], env))
            sides = {
                "anchor": cpu_of(procs[0].pid),
                "corral watch": cpu_of(terms[0].pid),
            }
            if args.ui:
                terms.append(Terminal([*cli, "ui", "--session", sid, "--socket", sock], env))
                sides["corral ui"] = cpu_of(terms[1].pid)
            assert d.proc is not None
            sides["(corrald)"] = cpu_of(d.proc.pid)
            time.sleep(4.0 + args.tasks / 2500)  # start-up and the first frame are not idle
            print(f"{args.tasks} tasks; windows of {args.secs:.0f} s")
            report("idle", measure(sides, args.secs, args.reps), IDLE_TARGET)

            c.session_start(session_id=sid)
            deadline = time.monotonic() + 120
            while len(c.parallel_list_agents(session_id=sid, live=True)) < args.agents:
                if time.monotonic() > deadline:
                    raise SystemExit("the agents did not all start")
                time.sleep(0.2)
            time.sleep(3.0)  # the start's burst of events is not the steady state
            print(
                f"{args.agents} agents, a step every {args.every} s each"
                f" ({args.agents / args.every:.0f} events/s of tokens and activity)"
            )
            report("busy", measure(sides, args.secs, args.reps), BUSY_TARGET)
            for proc in procs:
                assert proc.poll() is None, "the anchor exited early"
            c.session_pause(session_id=sid)
            c.parallel_stop_all(session_id=sid)
    finally:
        for term in terms:
            term.close()
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(daemon.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
