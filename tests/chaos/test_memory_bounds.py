"""Twenty agents flood 10 MiB each: subscribers keep up, memory comes back.

A real daemon runs 20 agents that each print 10 MiB (10,240 lines of 1 KiB)
as fast as they can, while 10 subscribers read every `log` event. Each
subscriber must stay subscribed (no `lagged`) and learn about every line of
every run, announced or summed up in a `log.skipped`. Once the session is
over, the daemon's RSS must come back to within 50 MB of where it was
before the flood: finished runs keep only a small tail.

Slow on a shared two-core machine (minutes, not seconds): 10 MiB per agent
(the issue's figure) runs with `-m chaos`, 50 MiB with `-m chaos_long`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from corral.models import TaskSpec, TaskState
from tests.conftest import make_repo
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, finished, wait_for
from tests.test_rpc_bad_input import Raw

AGENTS = 20
SUBSCRIBERS = 10
LINES_PER_MIB = 1024
RSS_SLACK_MB = 50


@dataclass
class Subscriber:
    """One raw connection reading `log` events until every line is accounted for."""

    raw: Raw
    expected: int  # lines per run
    seen: dict[str, set[int]] = field(default_factory=dict)  # agent -> offsets announced or skipped
    lagged: list[object] = field(default_factory=list)
    events: int = 0
    skipped_events: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def complete(self) -> bool:
        return len(self.seen) == AGENTS and all(len(v) >= self.expected for v in self.seen.values())

    def read(self) -> None:
        try:
            while not self.complete():
                message = self.raw.receive()
                if message.get("method") == "lagged":
                    self.lagged.append(message)
                    return
                if message.get("method") != "event":
                    continue
                event = message["params"]
                payload = event["payload"]
                offsets = self.seen.setdefault(payload["agentId"], set())
                self.events += 1
                if event["type"] == "log" and payload["stream"] == "stdout":
                    offsets.add(payload["offset"])
                elif event["type"] == "log.skipped":
                    self.skipped_events += 1
                    offsets.update(range(payload["first"], payload["last"] + 1))
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.done.set()


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def _flood(tmp_path: Path, mib: int) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"warm": ["--stdout", "warm"], "*": ["--flood-mb", str(mib)]}))
    with DaemonProcess(config=agent_config(plan, "fake")) as d, d.client(timeout=60) as c:
        repo = make_repo(tmp_path / "repo")
        config = {
            "agentType": "fake",
            "maxParallel": AGENTS,
            "integrate": False,
            "resourceLimits": {"maxAgents": AGENTS, "maxRuntimeSecs": 600},
        }
        # A first session warms up what any run needs once (imports, worktrees).
        c.init_parallel_scheduler(repo_path=str(repo), session_id="warm", config=config)
        c.parallel_add_task(session_id="warm", task=TaskSpec(id="warm", title="warm"))
        c.session_start(session_id="warm")
        wait_for(lambda: finished(c, "warm"), 60, "the warm-up run")
        c.init_parallel_scheduler(repo_path=str(repo), session_id="fl", config=config)
        before = _rss_mb(d.pid)
        subscribers = []
        for _ in range(SUBSCRIBERS):
            raw = Raw(d.socket, timeout=120)
            raw.request(
                {
                    "jsonrpc": "2.0",
                    "method": "events_subscribe",
                    "params": {"topics": ["log"], "sessionId": "fl"},
                    "id": 1,
                }
            )
            assert "result" in raw.receive()
            subscribers.append(Subscriber(raw, expected=mib * LINES_PER_MIB))
        threads = [threading.Thread(target=s.read, daemon=True) for s in subscribers]
        for t in threads:
            t.start()
        c.parallel_add_tasks(
            session_id="fl", tasks=[{"id": f"f{i}", "title": "flood"} for i in range(AGENTS)]
        )
        c.session_start(session_id="fl")
        started = time.monotonic()
        peak = before
        while not finished(c, "fl"):
            peak = max(peak, _rss_mb(d.pid))
            time.sleep(0.2)  # the sampling interval of the peak, not a wait for a state
        tasks = c.parallel_list_tasks(session_id="fl")
        ended = time.monotonic()
        for s in subscribers:
            s.done.wait(120)
        subscribed = time.monotonic()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: _rss_mb(d.pid) <= before + RSS_SLACK_MB, 30, "memory to come back")
        after = _rss_mb(d.pid)
        for s in subscribers:
            s.raw.sock.close()
        assert d.running()
    print(
        f"\n{AGENTS} agents x {mib} MiB, {SUBSCRIBERS} subscribers:"
        f" RSS {before:.0f} MiB before, {peak:.0f} peak, {after:.0f} after;"
        f" {subscribers[0].events} events per subscriber,"
        f" {subscribers[0].skipped_events} of them log.skipped;"
        f" {time.monotonic() - started:.0f} s in all, {subscribed - ended:.0f} s for the"
        " subscribers to catch up"
    )
    assert all(t.state is TaskState.COMPLETED for t in tasks), tasks
    for n, s in enumerate(subscribers):
        assert s.error is None, (n, s.error)
        assert s.lagged == [], (n, s.lagged)
        assert s.complete(), (n, {a: len(v) for a, v in s.seen.items()})
    assert after <= before + RSS_SLACK_MB, (before, peak, after)


@pytest.mark.chaos
def test_twenty_agents_flooding_10_mib_each(tmp_path: Path) -> None:
    _flood(tmp_path, 10)


@pytest.mark.chaos_long
def test_twenty_agents_flooding_50_mib_each(tmp_path: Path) -> None:
    _flood(tmp_path, 50)
