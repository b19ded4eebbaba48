"""Clients that come and go every way a client can, then nothing is left open.

Subscribers that close, reset, half-close, or stop reading while events
flood, from several threads at once; afterwards the daemon holds one
connection (the asking one), no subscriber, and no more file descriptors
than before. A short run is part of every test run; `-m chaos` runs 10,000.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_repo
from tests.daemon_proc import DaemonProcess
from tests.test_rpc_bad_input import Raw, wait_until

RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close with a reset


@pytest.fixture
def churned() -> Iterator[tuple[DaemonProcess, Path]]:
    with DaemonProcess(config="[daemon]\nwrite_timeout_secs = 1\n") as d:
        yield d, make_repo(d.dir / "repo")
        assert d.stop() == 0, d.log()[-3000:]


def status(d: DaemonProcess) -> tuple[int, int]:
    with Raw(d.socket) as raw:
        raw.request({"jsonrpc": "2.0", "method": "daemon_status", "id": 1})
        result = raw.receive()["result"]
    return result["connections"], result["subscribers"]


def one_client(path: Path, rng: random.Random) -> None:
    raw = Raw(path, timeout=30)
    try:
        raw.request({"jsonrpc": "2.0", "method": "events_subscribe", "id": 1})
        way = rng.random()
        if way < 0.1:  # never reads its answer or its events, then leaves
            return
        assert "result" in raw.receive()
        if way < 0.3:
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            raw.send(b'{"jsonrpc": "2.0", "method": "daemon_st')  # unread: a reset
        elif way < 0.45:
            raw.sock.shutdown(socket.SHUT_WR)
    finally:
        raw.close()


def churn(d: DaemonProcess, repo: Path, cycles: int, seconds: float, seed: int) -> int:
    deadline = time.monotonic() + seconds
    done = [0]
    lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        while time.monotonic() < deadline:
            with lock:
                if done[0] >= cycles:
                    return
                done[0] += 1
            one_client(d.socket, rng)

    def flood() -> None:  # events for everyone, the stuck ones included
        with d.client(timeout=30) as c:
            c.init_parallel_scheduler(repo_path=str(repo), session_id="churn")
            n = 0
            while time.monotonic() < deadline and done[0] < cycles:
                tasks = [{"id": f"f{n}-{i}", "title": "x" * 100} for i in range(200)]
                c.call("parallel_add_tasks", sessionId="churn", tasks=tasks)
                n += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=flood))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return done[0]


def check_nothing_left(d: DaemonProcess, fds_before: int) -> None:
    wait_until(lambda: status(d) == (1, 0), timeout=15)
    wait_until(lambda: len(os.listdir(f"/proc/{d.pid}/fd")) <= fds_before + 2, timeout=15)
    assert d.running()


def test_connection_churn_default(churned: tuple[DaemonProcess, Path]) -> None:
    d, repo = churned
    fds = len(os.listdir(f"/proc/{d.pid}/fd"))
    started = time.monotonic()
    cycles = churn(d, repo, cycles=600, seconds=60, seed=1)
    check_nothing_left(d, fds)
    print(f"\n{cycles} churned clients in {time.monotonic() - started:.1f} s; nothing left")


@pytest.mark.chaos
def test_connection_churn_long(churned: tuple[DaemonProcess, Path]) -> None:
    d, repo = churned
    fds = len(os.listdir(f"/proc/{d.pid}/fd"))
    started = time.monotonic()
    cycles = churn(d, repo, cycles=10_000, seconds=300, seed=2)
    check_nothing_left(d, fds)
    print(f"\n{cycles} churned clients in {time.monotonic() - started:.1f} s; nothing left")
    assert cycles >= 2_000
