"""Event delivery latency: an agent's log line to 10 subscribers, at 1,000 lines/s.

A ticker agent prints its wall-clock time 1,000 times a second. Through
corral, the line goes agent -> supervisor -> event bus -> 10 subscribers
(each its own connection, `corral.Client.events`), and each subscriber notes
receive time minus the time in the line. The anchor, in the same run, is the
same ticker read straight from its pipe by this process: the floor that any
supervisor pays. Prints p50/p99 for both and the ratio.

Run: `python bench/events.py [--seconds N] [--subscribers N]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "client")]

from bench.scheduler import make_repo  # noqa: E402
from corral.client import Client  # noqa: E402
from tests.daemon_proc import DaemonProcess  # noqa: E402

#: An agent that prints `tick N TIME` `rate` times a second for `seconds` (bench/ui.py too).
TICKER = """
import sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
start = time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    print(f"tick {n} {time.time():.6f}", flush=True)
    n += 1
    delay = start + n / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare(script: Path, rate: float, seconds: float) -> list[float]:
    """The anchor: read the ticker's pipe directly."""
    lat = []
    proc = subprocess.Popen(
        [sys.executable, str(script), str(rate), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        lat.append(time.time() - float(line.split()[-1]))
    proc.wait()
    return lat


def through_corral(script: Path, rate: float, seconds: float, subscribers: int) -> list[float]:
    argv = json.dumps([sys.executable, str(script), str(rate), str(seconds)])
    repo = make_repo()
    lat: list[list[float]] = [[] for _ in range(subscribers)]
    expected = int(rate * seconds * 0.98)
    with DaemonProcess(config=f"[agents.ticker]\nargv = {argv}\n") as d:

        def subscribe(out: list[float], ready: threading.Event) -> None:
            stream = Client(d.socket).events(topics=["log"], reconnect=False)
            ready.set()
            for event in stream:
                line = event.payload.get("line", "")
                if line.startswith("tick "):
                    out.append(time.time() - float(line.split()[-1]))
                    if len(out) >= expected:
                        return

        threads = []
        for out in lat:
            ready = threading.Event()
            t = threading.Thread(target=subscribe, args=(out, ready), daemon=True)
            t.start()
            ready.wait()
            threads.append(t)
        with d.client() as c:
            while c.daemon_status().subscribers < subscribers:
                time.sleep(0.01)
            c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "ticker"})
            c.parallel_add_task(task={"id": "ticker", "title": "ticker"})
            c.session_start()
        for t in threads:
            t.join(seconds + 30)
    return [x for out in lat for x in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--subscribers", type=int, default=10)
    args = parser.parse_args()
    script = Path(tempfile.mkdtemp(prefix="bench-events-")) / "ticker.py"
    script.write_text(TICKER)
    anchor = bare(script, args.rate, args.seconds)
    ours = through_corral(script, args.rate, args.seconds, args.subscribers)
    a50, a99 = pct(anchor, 0.5) * 1e3, pct(anchor, 0.99) * 1e3
    c50, c99 = pct(ours, 0.5) * 1e3, pct(ours, 0.99) * 1e3
    print(
        f"log line -> subscriber, {args.rate:.0f} lines/s, {args.subscribers} subscribers,"
        f" {args.seconds:.0f} s"
    )
    print(f"  bare pipe (anchor): p50 {a50:6.2f} ms  p99 {a99:6.2f} ms  ({len(anchor)} lines)")
    print(f"  through corral:     p50 {c50:6.2f} ms  p99 {c99:6.2f} ms  ({len(ours)} deliveries)")
    print(f"  ratio corral/bare:  p50 {c50 / a50:.1f}x  p99 {c99 / a99:.1f}x")
    print(f"  mean through corral: {statistics.mean(ours) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
