"""Events for many frontends: complete, ordered, resumable, and never slowed by one reader."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corral import errors
from corral.client import Client
from corral.models import Event
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, wait_for


def _collect(
    d: DaemonProcess,
    want: int,
    out: list[Event],
    ready: threading.Event,
    since: int | None = None,
    reconnect: bool = False,
) -> None:
    client = Client(d.socket)
    stream = client.events(topics=["task"], since_seq=since, reconnect=reconnect)
    ready.set()
    for event in stream:
        out.append(event)
        if len(out) >= want:
            return


def _subscribed(d: DaemonProcess, n: int) -> None:
    deadline = time.monotonic() + 20
    with d.client() as c:
        while c.daemon_status().subscribers < n:
            assert time.monotonic() < deadline, "subscribers did not register"
            time.sleep(0.02)


def _tasks(n: int, prefix: str = "t") -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "title": f"task {i}"} for i in range(n)]


@pytest.mark.slow
def test_ten_subscribers_each_get_ten_thousand_events_in_order(
    daemon: DaemonProcess, repo: Path
) -> None:
    n_events = 10_000
    results: list[list[Event]] = [[] for _ in range(10)]
    threads = []
    for out in results:
        ready = threading.Event()
        t = threading.Thread(target=_collect, args=(daemon, n_events, out, ready), daemon=True)
        t.start()
        threads.append(t)
    _subscribed(daemon, 10)
    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        c.parallel_add_tasks(tasks=_tasks(n_events))
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    first = results[0]
    assert [e.payload["taskId"] for e in first] == [f"t{i}" for i in range(n_events)]
    seqs = [e.seq for e in first]
    assert seqs == sorted(seqs) and len(set(seqs)) == n_events
    for other in results[1:]:
        assert [e.seq for e in other] == seqs


def test_resume_with_since_seq_misses_nothing_and_repeats_nothing(
    daemon: DaemonProcess, repo: Path
) -> None:
    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        start = c.daemon_status().event_seq
        c.parallel_add_tasks(tasks=_tasks(50, "a"))
    first: list[Event] = []
    _collect(daemon, 20, first, threading.Event(), since=start)  # read 20, then disconnect
    with daemon.client() as c:
        c.parallel_add_tasks(tasks=_tasks(30, "b"))  # happens while we are away
    rest: list[Event] = []
    _collect(daemon, 60, rest, threading.Event(), since=first[-1].seq)
    ids = [e.payload["taskId"] for e in first + rest]
    assert ids == [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(30)]
    with daemon.client() as c, pytest.raises(errors.EventsExpired) as caught:
        c.call("events_subscribe", since_seq=10**9)
    assert caught.value.data["newest"] >= first[-1].seq


def test_events_survive_a_daemon_restart(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with DaemonProcess(state) as d, d.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo), session_id="s")
        c.parallel_add_tasks(tasks=_tasks(5))
        seen = c.daemon_status().event_seq
        d.kill()
    with DaemonProcess(state) as d:
        with d.client() as c:
            c.parallel_add_task(task={"id": "after", "title": "after restart"})
        events: list[Event] = []
        _collect(d, 6, events, threading.Event(), since=seen - 5)
    assert [e.payload["taskId"] for e in events] == [f"t{i}" for i in range(5)] + ["after"]
    assert events[-1].seq > seen  # seqs never repeat across restarts


def test_stuck_subscriber_is_dropped_with_lagged_others_unaffected(repo: Path) -> None:
    # The queue absorbs a few batches' bursts (250 events each), not the whole run.
    config = "[daemon]\nsubscriber_queue = 1500\n"
    with DaemonProcess(config=config) as d:
        stuck = socket.socket(socket.AF_UNIX)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(d.socket))
        stuck.sendall(b'{"jsonrpc":"2.0","method":"events_subscribe","id":1}\n')
        healthy: list[Event] = []
        # The healthy reader resumes by itself if it ever falls behind (as clients do).
        reader = threading.Thread(
            target=_collect, args=(d, 5_000, healthy, threading.Event(), None, True), daemon=True
        )
        reader.start()
        _subscribed(d, 2)
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo))
            latencies = []
            for batch in range(20):
                c.parallel_add_tasks(tasks=_tasks(250, f"b{batch}-"))
                t0 = time.perf_counter()
                c.daemon_status()
                latencies.append(time.perf_counter() - t0)
        reader.join(60)
        ids = [e.payload["taskId"] for e in healthy]
        assert ids == [f"b{b}-{i}" for b in range(20) for i in range(250)]
        assert max(latencies) < 1.0, latencies  # generous: a blocked reader must not stall us
        # Reading the stuck socket now drains what was queued, then the `lagged` notice.
        stuck.settimeout(10)
        buf = b""
        try:
            while b'"lagged"' not in buf:
                chunk = stuck.recv(1 << 16)
                assert chunk, "connection closed without a lagged notice"
                buf += chunk
        finally:
            stuck.close()
        notice = next(json.loads(line) for line in buf.split(b"\n") if b'"lagged"' in line)
        assert notice["params"]["reason"].startswith("subscriber queue overflowed")


async def test_async_client_streams_events_and_resumes(daemon: DaemonProcess, repo: Path) -> None:
    import contextlib

    import trio

    from corral.client import AsyncClient

    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        start = c.daemon_status().event_seq
        c.parallel_add_tasks(tasks=_tasks(5, "x"))
    seen: list[Event] = []
    stream = AsyncClient(daemon.socket).events(topics=["task"], since_seq=start, reconnect=False)
    with trio.fail_after(20):
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                seen.append(event)
                if len(seen) == 5:
                    break
    assert [e.payload["taskId"] for e in seen] == [f"x{i}" for i in range(5)]


def _read(
    d: DaemonProcess, since: int, done: Callable[[list[Event]], bool], agent_id: str | None = None
) -> list[Event]:
    """The events after `since` (of one agent's, if named), replayed, until `done(events)`."""
    out: list[Event] = []
    for event in Client(d.socket).events(since_seq=since, agent_id=agent_id, reconnect=False):
        out.append(event)
        if done(out):
            break
    return out


def _upto(task_id: str) -> Callable[[list[Event]], bool]:
    """Done at the first event about `task_id` (the last one made, a marker)."""
    return lambda events: events[-1].payload.get("taskId") == task_id


def _count(n: int) -> Callable[[list[Event]], bool]:
    return lambda events: len(events) == n


def test_an_agent_filter_sends_that_agent_s_events_only_live_replayed_and_after_a_restart(
    repo: Path, tmp_path: Path
) -> None:
    """Two agents print at once: a subscriber for one gets its events, and only those."""
    behaviour = tmp_path / "behaviour.json"
    lines = [arg for i in range(40) for arg in ("--stdout", f"line {i}")]
    behaviour.write_text(json.dumps({t: ["--stream-json", *lines] for t in ("a", "b")}))
    state = tmp_path / "state"

    def mine(events: list[Event], agent_id: str) -> list[int]:
        return [e.seq for e in events if e.payload.get("agentId") == agent_id]

    with DaemonProcess(state, config=agent_config(behaviour, "fake")) as d, d.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"})
        start = c.daemon_status().event_seq
        c.parallel_add_tasks(tasks=[{"id": "a", "title": "a"}, {"id": "b", "title": "b"}])
        c.session_start()
        wait_for(
            lambda: {t.state.value for t in c.parallel_list_tasks()} == {"completed"}, 30, "a, b"
        )
        agent_a = next(a.id for a in c.parallel_list_agents() if a.task_id == "a")
        c.parallel_add_task(task={"id": "end", "title": "the last event"})
        everything = _read(d, start, _upto("end"))
        expected = mine(everything, agent_a)
        assert sum(e.type == "log" for e in everything if e.seq in expected) >= 40
        assert any(e.payload.get("agentId") not in (None, agent_a) for e in everything)  # b's
        assert [e.seq for e in _read(d, start, _count(len(expected)), agent_a)] == expected
        d.kill()
    # After a restart the kept events come from the store (output lines are not kept).
    with DaemonProcess(state, config=agent_config(behaviour, "fake")) as d:
        everything = _read(d, start, _upto("end"))
        expected = mine(everything, agent_a)
        assert expected and not any(e.type == "log" for e in everything)
        assert [e.seq for e in _read(d, start, _count(len(expected)), agent_a)] == expected
