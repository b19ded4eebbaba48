"""Hostile and broken input on the daemon's socket: every bad frame gets the
right error (or none), and the daemon keeps answering fresh clients.

Most tests share one real corrald (module scope) started with a small frame
cap and a short frame timeout, so limits are hit quickly.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.client import Client
from corral.models import Params
from corrald.rpc.dispatch import Registry
from corrald.rpc.server import Connection, Server, bind_socket
from tests.daemon_proc import DaemonProcess
from tests.waits import receive_lines

FRAME_CAP = 65536
FRAME_TIMEOUT = 0.5
CAPPED_CONFIG = f"[daemon]\nmax_frame_bytes = {FRAME_CAP}\nframe_timeout_secs = {FRAME_TIMEOUT}\n"


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    # Module scope runs before the function-scoped isolated_env fixture, so the
    # XDG directories are isolated here explicitly.
    home = tmp_path_factory.mktemp("capped-home")
    env = {
        var: str(home / var.lower())
        for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME")
    }
    with DaemonProcess(config=CAPPED_CONFIG, env={**env, "HOME": str(home)}) as d:
        yield d
        assert d.stop() == 0, d.log()
        shutil.rmtree(d.dir, ignore_errors=True)


def assert_alive(d: DaemonProcess) -> None:
    """A fresh client gets an answer: the daemon survived whatever came before."""
    with Client(d.socket, timeout=10) as c:
        assert c.daemon_status().pid == d.pid
    assert d.proc is not None and d.proc.poll() is None


class Raw:
    """A blocking raw connection that sends bytes and reads NDJSON answers."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, message: Any) -> None:
        self.send(json.dumps(message).encode() + b"\n")

    def receive(self) -> Any:
        while (nl := self.buf.find(b"\n")) < 0:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before an answer"
            self.buf += chunk
        line = bytes(self.buf[:nl])
        del self.buf[: nl + 1]
        return json.loads(line)

    def receive_lsp(self) -> Any:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before an answer"
            self.buf += chunk
        head, _, _ = bytes(self.buf).partition(b"\r\n\r\n")
        length = int(head.split(b":", 1)[1])
        del self.buf[: len(head) + 4]
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return json.loads(body)

    def assert_closed_by_peer(self) -> None:
        """The daemon closed the connection (EOF, or a reset for unread input)."""
        assert not self.buf.strip(), self.buf
        try:
            rest = self.sock.recv(65536)
        except ConnectionResetError:
            return
        assert rest == b"", rest

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition the daemon offers no event for, under a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def status(ident: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "daemon_status", "id": ident}


def error_of(answer: Any, code: int) -> dict[str, Any]:
    assert answer["jsonrpc"] == "2.0"
    assert "result" not in answer
    assert answer["error"]["code"] == code, answer
    error: dict[str, Any] = answer["error"]
    return error


# --- malformed and invalid frames -------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [b"{not json", b"\xff\xfe\x00garbage", b'{"jsonrpc": "2.0", "method": "daemon_status"'],
)
def test_malformed_frame_is_a_parse_error(capped: DaemonProcess, frame: bytes) -> None:
    with Raw(capped.socket) as raw:
        raw.send(frame + b"\n")
        answer = raw.receive()
        error_of(answer, -32700)
        assert answer["id"] is None
        # The connection survives a bad frame.
        raw.request(status(2))
        assert raw.receive()["result"]["pid"] == capped.pid
    assert_alive(capped)


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "1.0", "method": "daemon_status", "id": 1},
        {"method": "daemon_status", "id": 1},
        {"jsonrpc": "2.0", "method": "daemon_status", "id": {"an": "object"}},
        {"jsonrpc": "2.0", "method": "daemon_status", "id": True},
        {"jsonrpc": "2.0", "method": "daemon_status", "params": 5, "id": 1},
        {"jsonrpc": "2.0", "method": "daemon_status", "id": 1, "extra": 1},
        "just a string",
        42,
        None,
    ],
)
def test_invalid_request_objects(capped: DaemonProcess, message: Any) -> None:
    with Raw(capped.socket) as raw:
        raw.request(message)
        answer = raw.receive()
        error_of(answer, -32600)
        assert answer["id"] is None
    assert_alive(capped)


def test_unknown_method(capped: DaemonProcess) -> None:
    with Raw(capped.socket) as raw:
        raw.request({"jsonrpc": "2.0", "method": "no_such_method", "id": "u1"})
        answer = raw.receive()
        error = error_of(answer, -32601)
        assert answer["id"] == "u1"
        assert error["message"] == "Method not found"
        assert error["data"]["method"] == "no_such_method"
    assert_alive(capped)


def test_wrong_param_type(capped: DaemonProcess) -> None:
    with Raw(capped.socket) as raw:
        raw.request({"jsonrpc": "2.0", "method": "session_get", "params": {"sessionId": 12},
                     "id": 5})  # fmt: skip
        answer = raw.receive()
        error = error_of(answer, -32602)
        assert answer["id"] == 5
        [item] = error["data"]["errors"]
        assert item["loc"] == "sessionId"
        assert item["type"] == "string_type"
        assert "string" in item["msg"]
    assert_alive(capped)


def test_unknown_param_names(capped: DaemonProcess) -> None:
    with Raw(capped.socket) as raw:
        raw.request({"jsonrpc": "2.0", "method": "session_get",
                     "params": {"sesionId": "s", "also": 1}, "id": 6})  # fmt: skip
        error = error_of(raw.receive(), -32602)
        by_loc = {e["loc"]: e for e in error["data"]["errors"]}
        assert set(by_loc) == {"sesionId", "also"}
        assert {e["type"] for e in by_loc.values()} == {"extra_forbidden"}
        assert all(e["msg"] for e in by_loc.values())
    assert_alive(capped)


def test_missing_required_param_and_nested_error(capped: DaemonProcess) -> None:
    with Raw(capped.socket) as raw:
        raw.request({"jsonrpc": "2.0", "method": "parallel_get_task", "params": {}, "id": 7})
        [missing] = error_of(raw.receive(), -32602)["data"]["errors"]
        assert (missing["loc"], missing["type"]) == ("taskId", "missing")
        raw.request({"jsonrpc": "2.0", "method": "init_parallel_scheduler",
                     "params": {"repoPath": "/nonexistent", "config": {"maxParallel": "x"}},
                     "id": 8})  # fmt: skip
        errs = error_of(raw.receive(), -32602)["data"]["errors"]
        assert [(e["loc"], e["type"]) for e in errs] == [("config.maxParallel", "int_parsing")]
    assert_alive(capped)


def test_too_many_positional_params(capped: DaemonProcess) -> None:
    with Raw(capped.socket) as raw:
        raw.request({"jsonrpc": "2.0", "method": "daemon_status", "params": [1], "id": 9})
        answer = raw.receive()
        error_of(answer, -32602)
        assert answer["id"] == 9
    assert_alive(capped)


# --- limits -----------------------------------------------------------------------------


def test_oversize_ndjson_frame_is_refused_and_closed(capped: DaemonProcess) -> None:
    with Raw(capped.socket) as raw:
        raw.request(status(1))
        assert raw.receive()["id"] == 1
        big = {"jsonrpc": "2.0", "method": "daemon_status", "params": {"x": "a" * FRAME_CAP},
               "id": 2}  # fmt: skip
        # The daemon may close before it has read all of it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            raw.request(big)
        error = error_of(raw.receive(), -32003)
        assert error["data"]["limit"] == FRAME_CAP
        raw.assert_closed_by_peer()
    assert_alive(capped)


def test_oversize_lsp_frame_is_refused_and_closed(capped: DaemonProcess) -> None:
    with Raw(capped.socket) as raw:
        raw.send(b"Content-Length: %d\r\n\r\n" % (FRAME_CAP + 1))
        answer = raw.receive_lsp()  # the error comes in the peer's framing
        error = error_of(answer, -32003)
        assert error["data"] == {"limit": FRAME_CAP, "size": FRAME_CAP + 1}
        raw.assert_closed_by_peer()
    assert_alive(capped)


@pytest.mark.parametrize(
    "half",
    [
        b'{"jsonrpc": "2.0", "method": "daem',
        b"Content-Length: 40\r\n",
        b'Content-Length: 40\r\n\r\n{"jsonrpc"',
    ],
    ids=["ndjson", "lsp-headers", "lsp-body"],
)
def test_stalled_half_frame_times_out_and_is_closed(capped: DaemonProcess, half: bytes) -> None:
    with Raw(capped.socket) as raw:
        started = time.monotonic()
        raw.send(half)
        answer = raw.receive_lsp() if half.startswith(b"Content") else raw.receive()
        elapsed = time.monotonic() - started
        error = error_of(answer, -32004)
        assert error["data"]["timeoutSecs"] == FRAME_TIMEOUT
        assert elapsed >= FRAME_TIMEOUT * 0.9
        raw.assert_closed_by_peer()
    assert_alive(capped)


def test_drip_fed_half_frame_times_out(capped: DaemonProcess) -> None:
    # Slowloris: one byte of a frame that never ends, every 0.2 s (under the
    # 0.5 s timeout). Each receive_some() gets a fresh move_on_after, so the
    # connection is held forever; with max_connections clients doing this,
    # nobody else gets in. The timeout should bound the whole frame.
    with Raw(capped.socket) as raw:
        raw.sock.settimeout(0.2)  # the drip's pace, and how long we listen between drops
        answer = b""
        started = time.monotonic()
        for byte in b'{"jsonrpc"':  # 10 drops: 2 s, four times the timeout
            try:
                raw.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                answer = raw.sock.recv(65536)
            except TimeoutError:
                continue
            break
        assert answer, f"no answer after {time.monotonic() - started:.1f} s of dripping"
        error_of(json.loads(answer.splitlines()[0]), -32004)
    assert_alive(capped)


def test_idle_connection_is_not_timed_out(capped: DaemonProcess) -> None:
    # Only a *partial* frame is on the clock; an idle client between frames is fine.
    with Raw(capped.socket) as raw:
        raw.request(status(1))
        assert raw.receive()["id"] == 1
        raw.sock.settimeout(FRAME_TIMEOUT * 3)
        with pytest.raises(TimeoutError):
            raw.sock.recv(1)  # nothing comes: no timeout error is sent while idle
        raw.sock.settimeout(10)
        raw.request(status(2))
        assert raw.receive()["id"] == 2


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: lots\r\n\r\n",
        b"Content-Length: 10\r\nthis line has no colon\r\n\r\n",
        b"Content-Length: -1\r\n\r\n",
        b"Content-Length: 5\r\n" + b"X-Pad: " + b"p" * 5000 + b"\r\n",
    ],
    ids=["not-a-number", "no-colon", "negative", "header-too-long"],
)
def test_content_length_garbage(capped: DaemonProcess, header: bytes) -> None:
    with Raw(capped.socket) as raw:
        raw.send(header)
        answer = raw.receive_lsp()
        error_of(answer, -32600)
        assert answer["id"] is None
        raw.assert_closed_by_peer()
    assert_alive(capped)


def test_connection_cap() -> None:
    with DaemonProcess(config="[daemon]\nmax_connections = 3\n") as d:
        first = d.client(timeout=10)
        try:
            # Wait until the start-up probe's connection is gone: only ours counts.
            wait_until(lambda: first.daemon_status().connections == 1)
            second, third = d.client(timeout=10), d.client(timeout=10)
            try:
                # connect() returns once the kernel queued the connection; the daemon
                # counts it from its accept, which may come after an answer to another.
                wait_until(lambda: second.daemon_status().connections == 3)
                assert third.daemon_status().connections == 3
                with Raw(d.socket) as fourth:
                    answer = fourth.receive()  # refused at once, before any request
                    error = error_of(answer, -32002)
                    assert error["data"] == {"limit": 3}
                    assert answer["id"] is None
                    fourth.assert_closed_by_peer()
                # The refused connection did not disturb the admitted ones.
                assert first.daemon_status().pid == d.pid
            finally:
                third.close()
                second.close()
            wait_until(lambda: first.daemon_status().connections == 1)
        finally:
            first.close()
        assert_alive(d)


def test_clients_that_leave_mid_request_affect_nobody(capped: DaemonProcess) -> None:
    bystander = capped.client(timeout=10)
    try:
        for i in range(150):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(capped.socket))
            if i % 3 == 0:
                s.sendall(json.dumps(status(i)).encode() + b"\n")
            elif i % 3 == 1:
                # A batch, then gone before the answers.
                s.sendall(json.dumps([status(i), status(i + 1)]).encode() + b"\n")
            else:
                s.sendall(b'{"jsonrpc": "2.0", "method": "daemon_st')  # half a frame
            s.close()
            if i % 25 == 0:
                assert bystander.daemon_status().pid == capped.pid
    finally:
        bystander.close()
    assert_alive(capped)
    assert "Traceback" not in capped.log(), capped.log()[-3000:]


def test_subscribe_then_half_close_is_answered(capped: DaemonProcess) -> None:
    # `printf '{..events_subscribe..}' | nc -U sock` style: the request, then
    # EOF on our side while still reading. The read loop ends, the connection's
    # background nursery closes, and events_subscribe's start_soon raises
    # RuntimeError("Nursery is closed to new arrivals"): the client gets -32603
    # and the daemon logs a traceback. It is a race, so try it many times.
    answers = []
    for i in range(20):
        with Raw(capped.socket) as raw:
            raw.request({"jsonrpc": "2.0", "method": "events_subscribe", "id": i})
            raw.sock.shutdown(socket.SHUT_WR)
            answers.append(raw.receive())
    assert_alive(capped)
    assert [a.get("error") for a in answers] == [None] * 20
    assert all("subscriptionId" in a["result"] for a in answers)


# --- internal errors --------------------------------------------------------------------


class BoomParams(Params):
    what: str = "runtime"


async def test_internal_error_is_short_and_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No daemon method is known to fail unexpectedly (that would be a bug of its
    # own), so the -32603 path is exercised on the real Server/Dispatcher with a
    # method that raises, on a real socket.
    registry: Registry[Connection[None]] = Registry()

    @registry.method()
    async def boom(conn: Connection[None], p: BoomParams) -> int:
        if p.what == "key":
            raise KeyError("/home/secret/.ssh/id_rsa")
        raise RuntimeError("db password is hunter2 at /var/lib/secret")

    @registry.method()
    async def ok(conn: Connection[None], p: BoomParams) -> str:
        return "fine"

    tmp = Path(tempfile.mkdtemp(prefix="ie", dir="/tmp"))
    server: Server[Connection[None], None] = Server(registry, lambda conn: conn, lambda: None)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, bind_socket(tmp / "s.sock"))
            stream = await trio.open_unix_socket(str(tmp / "s.sock"))
            async with stream:
                requests = [
                    {"jsonrpc": "2.0", "method": "boom", "id": 1},
                    {"jsonrpc": "2.0", "method": "boom", "params": {"what": "key"}, "id": 2},
                    {"jsonrpc": "2.0", "method": "ok", "id": 3},
                ]
                await stream.send_all(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
                buf = bytearray()
                await receive_lines(stream, buf, 3)
            server.request_shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = bytes(buf).decode()
    answers = {a["id"]: a for a in map(json.loads, text.splitlines())}
    for ident in (1, 2):
        error = error_of(answers[ident], -32603)
        assert error["message"] == "Internal error"
        assert error.get("data", {}) == {"method": "boom"}
    assert answers[3]["result"] == "fine"  # the other request on the connection is unharmed
    for secret in ("hunter2", "secret", "Traceback", "RuntimeError", "KeyError", "id_rsa"):
        assert secret not in text
    # ...but the traceback is in the daemon's log, for whoever runs it.
    assert "hunter2" in caplog.text and "Traceback" in caplog.text


def test_deeply_nested_json_is_a_parse_error(capped: DaemonProcess) -> None:
    # 20,000 levels fit in the frame cap; Python's json gives up with a
    # RecursionError, which must be a parse error, not a torn-down connection
    # (that would lose the other request in flight on it). Pipelined answers
    # may come in either order (trio randomises its run batches).
    depth = 20_000
    with Raw(capped.socket) as raw:
        try:
            raw.send(b"[" * depth + b"]" * depth + b"\n")
            raw.request(status("after"))
            answers = [raw.receive(), raw.receive()]
        finally:
            assert_alive(capped)
        by_id = {a["id"]: a for a in answers}
        assert set(by_id) == {None, "after"}
        error_of(by_id[None], -32700)
        assert "result" in by_id["after"]


def test_answers_are_strict_json_even_for_odd_ids(capped: DaemonProcess) -> None:
    # Python's json accepts NaN and turns 1e400 into inf; echoing such an id
    # makes the daemon write `Infinity`, which is not JSON: a strict client
    # (every non-Python one) cannot parse the answer.
    def strict(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    with Raw(capped.socket) as raw:
        raw.send(b'{"jsonrpc": "2.0", "method": "daemon_status", "id": 1e400}\n')
        while b"\n" not in raw.buf:
            raw.buf += raw.sock.recv(65536)
        line = bytes(raw.buf).split(b"\n")[0]
    assert_alive(capped)
    answer = json.loads(line, parse_constant=strict)
    assert answer["error"]["code"] in (-32700, -32600)


# --- random input -----------------------------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
# Real methods that change nothing (never daemon_shutdown or session creation).
SAFE_METHODS = st.sampled_from(
    ["daemon_status", "session_get", "session_list", "parallel_get_task",
     "parallel_list_tasks", "parallel_get_scheduler_stats", "rpc.discover",
     "events_unsubscribe"]
)  # fmt: skip
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0"]) | JSON_VALUES,
        "method": SAFE_METHODS | st.text(max_size=20) | JSON_VALUES,
        "params": st.dictionaries(
            st.sampled_from(["sessionId", "taskId", "status", "x", "session_id"]), JSON_VALUES
        )
        | st.lists(JSON_VALUES, max_size=3)
        | JSON_VALUES,
        "id": st.integers() | st.text(max_size=10) | JSON_VALUES,
    },
)
PAYLOADS = REQUESTS | st.lists(REQUESTS, max_size=5) | JSON_VALUES


def check_response(item: Any) -> None:
    assert isinstance(item, dict), item
    assert item.get("jsonrpc") == "2.0"
    assert "id" in item
    assert ("result" in item) != ("error" in item), item
    if "error" in item:
        assert isinstance(item["error"]["code"], int)
        assert isinstance(item["error"]["message"], str)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=PAYLOADS)
def test_random_json_gets_well_formed_answers(capped: DaemonProcess, payload: Any) -> None:
    with Raw(capped.socket) as raw:
        raw.send(json.dumps(payload).encode() + b"\n")
        raw.request(status("probe"))
        while True:
            answer = raw.receive()
            if isinstance(answer, dict) and answer.get("id") == "probe":
                break
            for item in answer if isinstance(answer, list) else [answer]:
                check_response(item)
    assert_alive(capped)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.binary(max_size=2000)
    | st.builds(lambda b: b"Content-Length: " + b, st.binary(max_size=200))
)
def test_random_bytes_do_not_hurt_the_daemon(capped: DaemonProcess, data: bytes) -> None:
    # The daemon may already have refused the frame and closed.
    with Raw(capped.socket) as raw, contextlib.suppress(BrokenPipeError, ConnectionResetError):
        raw.send(data)
    assert_alive(capped)
