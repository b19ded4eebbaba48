"""The daemon's socket: one daemon per path, stale files replaced, permissions,
concurrency, pipelining, both framings, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from corral import errors
from corral.client import AsyncClient, Client
from tests.daemon_proc import DaemonProcess
from tests.test_rpc_bad_input import Raw


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sk", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def corrald_cmd(sock: Path, state_dir: Path) -> list[str]:
    return [sys.executable, "-m", "corrald.app", "--socket", str(sock),
            "--state-dir", str(state_dir)]  # fmt: skip


def status_request(ident: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": "daemon_status", "id": ident}).encode()


async def read_ndjson(stream: trio.SocketStream, count: int) -> list[dict[str, Any]]:
    buf = bytearray()
    out: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while len(out) < count:
            chunk = await stream.receive_some(65536)
            assert chunk, "the daemon closed the connection"
            buf += chunk
            while (nl := buf.find(b"\n")) >= 0:
                out.append(json.loads(bytes(buf[:nl])))
                del buf[: nl + 1]
    return out


# --- one daemon per socket --------------------------------------------------------------


def test_second_daemon_refuses_to_start(daemon: DaemonProcess, short_dir: Path) -> None:
    result = subprocess.run(
        corrald_cmd(daemon.socket, short_dir / "state"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "already running" in result.stderr
    assert str(daemon.socket) in result.stderr
    assert "Traceback" not in result.stderr
    # The first daemon is untouched and still answers on its socket.
    with daemon.client() as c:
        assert c.daemon_status().pid == daemon.pid


def test_stale_socket_file_is_replaced() -> None:
    d = DaemonProcess()
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(d.socket))
    leftover.close()  # the file stays, nobody listens: ECONNREFUSED
    assert d.socket.is_socket()
    with d:
        with d.client() as c:
            assert c.daemon_status().pid == d.pid
        assert d.stop() == 0


def test_socket_of_a_killed_daemon_is_replaced() -> None:
    with DaemonProcess() as first:
        first.kill()  # SIGKILL: no cleanup, the socket file is left behind
        assert first.socket.is_socket()
        second = DaemonProcess(state_dir=first.state_dir)
        second.socket = first.socket
        with second:
            with second.client() as c:
                assert c.daemon_status().pid == second.pid
            assert second.stop() == 0
        assert not first.socket.exists()


def test_regular_file_at_the_socket_path_is_refused(short_dir: Path) -> None:
    path = short_dir / "corrald.sock"
    path.write_text("not a socket")
    result = subprocess.run(
        corrald_cmd(path, short_dir / "state"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "not a socket" in result.stderr
    assert path.read_text() == "not a socket"  # never replaced


def test_directory_0700_and_socket_0600(short_dir: Path) -> None:
    d = DaemonProcess()
    d.socket = short_dir / "corral" / "corrald.sock"  # the directory does not exist yet
    with d:
        assert stat.S_IMODE(d.socket.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(d.socket.lstat().st_mode)
        assert stat.S_IMODE(d.socket.lstat().st_mode) == 0o600
        assert d.socket.lstat().st_uid == os.getuid()
        assert d.stop() == 0


def test_existing_open_directory_is_tightened(short_dir: Path) -> None:
    parent = short_dir / "corral"
    parent.mkdir(mode=0o755)
    parent.chmod(0o755)
    d = DaemonProcess()
    d.socket = parent / "corrald.sock"
    with d:
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700
        assert d.stop() == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a system python")
def test_peer_with_another_uid_is_refused(daemon: DaemonProcess) -> None:
    # Open the file permissions so only SO_PEERCRED stands in the way.
    daemon.socket.parent.chmod(0o755)
    daemon.socket.chmod(0o666)
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(10)\n"
        "s.connect(sys.argv[1])\n"
        "data = b''\n"
        "while chunk := s.recv(65536):\n"
        "    data += chunk\n"
        "s.close()\n"
        "sys.stdout.write(data.decode())\n"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-c", probe, str(daemon.socket)],
        user="nobody", capture_output=True, text=True, timeout=30, cwd="/",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Refused at once, before any request: the error, then the connection is closed.
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) == 1, answers
    assert answers[0]["error"]["code"] == errors.PermissionDenied.code
    assert answers[0]["error"]["data"]["peerUid"] != os.getuid()
    assert "result" not in answers[0]
    with daemon.client() as c:
        assert c.daemon_status().pid == daemon.pid


# --- many clients, pipelining, framings ---------------------------------------------------


async def test_200_concurrent_clients(daemon: DaemonProcess) -> None:
    count = 200
    connected = 0
    all_connected = trio.Event()
    all_answered = trio.Event()
    answered = 0
    seen_connections: list[int] = []

    async def one(i: int) -> None:
        nonlocal connected, answered
        async with AsyncClient(daemon.socket) as c:
            # A connect returns once the socket is queued; an answer means accepted.
            await c.daemon_status()
            connected += 1
            if connected == count:
                # connect() returns once the kernel queued us; wait until the
                # daemon has accepted every one of them.
                while (await c.daemon_status()).connections < count:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                all_connected.set()
            await all_connected.wait()
            status = await c.daemon_status()
            assert status.pid == daemon.pid
            seen_connections.append(status.connections)
            with pytest.raises(errors.SessionNotFound):
                await c.session_get(session_id=f"nope-{i}")
            answered += 1
            if answered == count:
                all_answered.set()
            await all_answered.wait()  # keep every connection open until all are done

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    assert answered == count
    # Every call was made while all 200 connections were open.
    assert min(seen_connections) >= count


async def test_pipelined_requests_on_one_connection(daemon: DaemonProcess) -> None:
    n = 100
    lines = []
    for i in range(n):
        if i % 2:
            lines.append(status_request(i))
        else:
            lines.append(
                json.dumps(
                    {"jsonrpc": "2.0", "method": "session_get",
                     "params": {"sessionId": f"s{i}"}, "id": f"g{i}"}
                ).encode()
            )  # fmt: skip
    stream = await trio.open_unix_socket(str(daemon.socket))
    async with stream:
        await stream.send_all(b"\n".join(lines) + b"\n")  # all at once, before any answer
        answers = await read_ndjson(stream, n)
    by_id = {a["id"]: a for a in answers}
    assert len(by_id) == n
    for i in range(n):
        if i % 2:
            assert by_id[i]["result"]["pid"] == daemon.pid
        else:
            assert by_id[f"g{i}"]["error"]["code"] == errors.SessionNotFound.code


async def test_lsp_framing_round_trip(daemon: DaemonProcess) -> None:
    stream = await trio.open_unix_socket(str(daemon.socket))
    async with stream:
        for ident in (1, 2):
            body = status_request(ident)
            await stream.send_all(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            buf = bytearray()
            with trio.fail_after(10):
                while True:
                    head, sep, rest = bytes(buf).partition(b"\r\n\r\n")
                    if sep and len(rest) >= int(head.split(b":")[1]):
                        break
                    buf += await stream.receive_some(65536)
            assert head.lower().startswith(b"content-length:")
            length = int(head.split(b":")[1])
            assert len(rest) == length  # nothing else was sent
            answer = json.loads(rest)
            assert answer["id"] == ident
            assert answer["result"]["pid"] == daemon.pid


def test_sync_client_many_calls_on_one_connection(daemon: DaemonProcess) -> None:
    with Client(daemon.socket, timeout=10) as c:
        pids = {c.daemon_status().pid for _ in range(200)}
    assert pids == {daemon.pid}


# --- shutdown ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_and_removes_the_socket(signum: int) -> None:
    with DaemonProcess() as d:
        client = d.client(timeout=10)
        assert client.daemon_status().pid == d.pid
        assert d.proc is not None
        d.proc.send_signal(signum)
        assert d.proc.wait(30) == 0, d.log()
        assert not d.socket.exists()
        # The open connection was closed by the daemon, not left hanging.
        with pytest.raises(errors.ConnectionLost):
            client.daemon_status()
        client.close()
        with pytest.raises(errors.DaemonNotRunning):
            Client(d.socket, timeout=5).connect()


def test_daemon_shutdown_answers_then_exits(daemon: DaemonProcess) -> None:
    # The only request that is in flight while shutdown begins: its own answer
    # must still be delivered before the daemon exits.
    with daemon.client(timeout=10) as c:
        assert c.daemon_shutdown() is True
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 0
    assert not daemon.socket.exists()


PLAN_AGENT = Path(__file__).with_name("plan_agent.py")


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a condition the daemon offers no event for, under a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def agent_daemon(tmp_path: Path, behaviour: list[str], extra: str = "") -> DaemonProcess:
    """A daemon whose agent type `fake` runs tests/fake_agent.py with `behaviour`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"*": behaviour}))
    argv = json.dumps([sys.executable, str(PLAN_AGENT), str(plan)])
    return DaemonProcess(config=f"{extra}[agents.fake]\nargv = {argv}\n")


def start_one_agent(c: Client, repo: Path, config: dict[str, Any]) -> str:
    """A running session with one task whose agent printed `armed`; returns the agent id."""
    c.init_parallel_scheduler(repo_path=str(repo), session_id="s", config=config)
    c.parallel_add_task(task={"id": "t1", "title": "never finishes"})
    c.session_start()
    wait_for(lambda: any(a.lifecycle.value == "running" for a in c.parallel_list_agents()))
    [agent] = c.parallel_list_agents()
    # "armed" comes after the fake agent set up its signal handling.
    wait_for(lambda: any(e.line == "armed" for e in c.parallel_get_agent_logs(agent_id=agent.id)))
    return agent.id


def test_in_flight_request_finishes_during_graceful_shutdown(tmp_path: Path, repo: Path) -> None:
    # A slow request: parallel_stop_all waits for an agent that ignores SIGTERM
    # (its termination ladder takes killGraceSecs). SIGTERM reaches the daemon
    # while that request is in flight: it must still get its answer, then exit 0.
    behaviour = ["--ignore-sigterm", "--stdout", "armed", "--sleep", "60"]
    with agent_daemon(tmp_path, behaviour) as d, d.client(timeout=20) as c:
        config = {"agentType": "fake", "resourceLimits": {"killGraceSecs": 1.0}}
        agent_id = start_one_agent(c, repo, config)
        c.session_pause()  # the stopped task must not be restarted at once
        with Raw(d.socket) as slow:
            slow.request(
                {"jsonrpc": "2.0", "method": "parallel_stop_all",
                 "params": {"sessionId": "s"}, "id": "stop"}
            )  # fmt: skip
            # In flight: the agent got its SIGTERM and ignores it for killGraceSecs.
            wait_for(
                lambda: any(
                    "SIGTERM" in e.line for e in c.parallel_get_agent_logs(agent_id=agent_id)
                )
            )
            assert d.proc is not None
            started = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            answer = slow.receive()
            assert answer["id"] == "stop"
            assert "error" not in answer, answer
            assert [(t["id"], t["state"]) for t in answer["result"]] == [("t1", "ready")]
            slow.assert_closed_by_peer()
        assert d.proc.wait(30) == 0, d.log()
        assert time.monotonic() - started < 8, d.log()  # the agent's grace, not the daemon's
        assert not d.socket.exists()


def test_sigterm_with_a_running_agent_exits_promptly(tmp_path: Path, repo: Path) -> None:
    # systemctl stop with one agent running: the agent gets SIGTERM and dies at
    # once and its task goes back to ready. The running session must not start
    # a new agent for it while the daemon stops. It once did (a race, about one
    # run in four): pool.shutdown() never cancelled that one, so the daemon sat
    # out the whole shutdown grace (20 s here) with a fresh agent working.
    # Three rounds to give the race a chance.
    for round_ in range(3):
        with agent_daemon(
            tmp_path / str(round_),
            ["--stdout", "armed", "--sleep", "60"],
            "[daemon]\nshutdown_grace_secs = 20\n",
        ) as d:
            with d.client(timeout=20) as c:
                start_one_agent(c, repo, {"agentType": "fake"})
            assert d.proc is not None
            d.proc.send_signal(signal.SIGTERM)
            try:
                assert d.proc.wait(6) == 0
            except subprocess.TimeoutExpired:
                pytest.fail(f"corrald still running 6 s after SIGTERM:\n{d.log()}")
            assert d.log().count("SIGTERM sent") == 1, d.log()  # no agent started meanwhile
