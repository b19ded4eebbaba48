"""Every example of the JSON-RPC 2.0 specification (§7), raw bytes on a real socket.

The spec's methods (subtract, sum, update, notify_hello, get_data,
notify_sum) are a test registry served by the real `corrald.rpc.server.Server`
on a real AF_UNIX socket bound with `bind_socket`. Each example is sent in
both framings the daemon speaks (newline-delimited JSON and LSP-style
`Content-Length:` headers) and must get exactly the spec's answer.

On `error.data`: the spec's example answers carry no `data`, but §5.1 says
data "MAY be omitted" — it is optional, so a server may add it (ours adds
e.g. `data.method` to -32601). We compare `jsonrpc`, `id` (value and JSON
type), `result`, `error.code` and `error.message` exactly, and allow a
`data` member in errors and nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from corral.models import NoParams, Params
from corrald.rpc.dispatch import Registry
from corrald.rpc.server import Connection, Server, bind_socket
from tests.daemon_proc import DaemonProcess

# --- the spec's methods ------------------------------------------------------------


class SubtractParams(Params):
    minuend: int
    subtrahend: int


class SumParams(Params):
    a: int = 0
    b: int = 0
    c: int = 0


class UpdateParams(Params):
    a: int | None = None
    b: int | None = None
    c: int | None = None
    d: int | None = None
    e: int | None = None


class HelloParams(Params):
    value: int


@dataclass
class Calls:
    """What the handlers were called with (to see notifications really ran)."""

    seen: list[tuple[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def record(self, name: str, value: Any) -> None:
        self.seen.append((name, value))
        self.changed.set()
        self.changed = trio.Event()

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]

    async def wait_for(self, *names: str) -> None:
        with trio.fail_after(5):
            while not set(names) <= set(self.names()):
                await self.changed.wait()


def spec_registry(calls: Calls) -> Registry[Connection[None]]:
    registry: Registry[Connection[None]] = Registry()

    @registry.method()
    async def subtract(conn: Connection[None], p: SubtractParams) -> int:
        calls.record("subtract", p)
        return p.minuend - p.subtrahend

    @registry.method()
    async def sum(conn: Connection[None], p: SumParams) -> int:
        calls.record("sum", p)
        return p.a + p.b + p.c

    @registry.method()
    async def notify_sum(conn: Connection[None], p: SumParams) -> int:
        calls.record("notify_sum", p)
        return p.a + p.b + p.c

    @registry.method()
    async def update(conn: Connection[None], p: UpdateParams) -> None:
        calls.record("update", [p.a, p.b, p.c, p.d, p.e])

    @registry.method()
    async def notify_hello(conn: Connection[None], p: HelloParams) -> int:
        calls.record("notify_hello", p.value)
        return p.value

    @registry.method()
    async def get_data(conn: Connection[None], p: NoParams) -> list[Any]:
        calls.record("get_data", None)
        return ["hello", 5]

    return registry


@dataclass
class SpecServer:
    path: Path
    calls: Calls


@pytest.fixture
async def spec_server() -> AsyncIterator[SpecServer]:
    tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    calls = Calls()
    server: Server[Connection[None], None] = Server(
        spec_registry(calls), lambda conn: conn, lambda: None
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, bind_socket(tmp / "s.sock"))
            try:
                yield SpecServer(tmp / "s.sock", calls)
            finally:
                server.request_shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- a raw client in either framing ------------------------------------------------


class Raw:
    """Bytes on a socket: frames our requests and parses answers independently."""

    def __init__(self, stream: trio.SocketStream, framing: str) -> None:
        self.stream = stream
        self.framing = framing
        self.buf = bytearray()

    async def send_text(self, text: str) -> None:
        body = text.encode()
        if self.framing == "lsp":
            await self.stream.send_all(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        else:
            # One message per line: the spec's multi-line examples go on one line.
            await self.stream.send_all(b" ".join(body.splitlines()) + b"\n")

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        assert chunk, "the server closed the connection"
        self.buf += chunk

    async def receive(self) -> Any:
        with trio.fail_after(5):
            if self.framing == "lsp":
                while b"\r\n\r\n" not in self.buf:
                    await self._fill()
                head, _, _ = bytes(self.buf).partition(b"\r\n\r\n")
                assert head.startswith(b"Content-Length: "), head
                length = int(head.split(b":", 1)[1])
                del self.buf[: len(head) + 4]
                while len(self.buf) < length:
                    await self._fill()
                body = bytes(self.buf[:length])
                del self.buf[:length]
            else:
                while b"\n" not in self.buf:
                    await self._fill()
                nl = self.buf.index(b"\n")
                body = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
        return json.loads(body)


@pytest.fixture(params=["ndjson", "lsp"])
async def raw(request: pytest.FixtureRequest, spec_server: SpecServer) -> AsyncIterator[Raw]:
    stream = await trio.open_unix_socket(str(spec_server.path))
    async with stream:
        yield Raw(stream, request.param)


# --- comparing with the spec's answers ---------------------------------------------


def assert_spec_answer(actual: Any, expected: dict[str, Any]) -> None:
    assert isinstance(actual, dict), actual
    assert actual.get("jsonrpc") == "2.0"
    assert "id" in actual
    assert actual["id"] == expected["id"]
    assert type(actual["id"]) is type(expected["id"]), (actual["id"], expected["id"])
    if "result" in expected:
        assert set(actual) == {"jsonrpc", "result", "id"}, actual
        assert actual["result"] == expected["result"]
    else:
        assert set(actual) == {"jsonrpc", "error", "id"}, actual
        error = actual["error"]
        assert set(error) <= {"code", "message", "data"}, error  # data MAY be present
        assert error["code"] == expected["error"]["code"]
        assert error["message"] == expected["error"]["message"]


def assert_spec_batch(actual: Any, expected: list[dict[str, Any]]) -> None:
    # The spec: batch answers "can be returned in any order"; match them by id.
    assert isinstance(actual, list), actual
    assert len(actual) == len(expected), actual
    by_id = {json.dumps(a.get("id")): a for a in actual}
    assert len(by_id) == len(actual), "duplicate ids in the answer"
    for want in expected:
        assert_spec_answer(by_id[json.dumps(want["id"])], want)


async def assert_nothing_returned(raw: Raw) -> None:
    """The next frame answers a fresh request: nothing came for what was sent before."""
    await raw.send_text('{"jsonrpc": "2.0", "method": "get_data", "id": "probe"}')
    answer = await raw.receive()
    assert_spec_answer(answer, {"jsonrpc": "2.0", "result": ["hello", 5], "id": "probe"})


# --- §7 examples ---------------------------------------------------------------------


async def test_positional_parameters(raw: Raw) -> None:
    await raw.send_text('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}')
    assert_spec_answer(await raw.receive(), {"jsonrpc": "2.0", "result": 19, "id": 1})
    await raw.send_text('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}')
    assert_spec_answer(await raw.receive(), {"jsonrpc": "2.0", "result": -19, "id": 2})


async def test_named_parameters(raw: Raw) -> None:
    await raw.send_text(
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42},'
        ' "id": 3}'
    )
    assert_spec_answer(await raw.receive(), {"jsonrpc": "2.0", "result": 19, "id": 3})
    await raw.send_text(
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23},'
        ' "id": 4}'
    )
    assert_spec_answer(await raw.receive(), {"jsonrpc": "2.0", "result": 19, "id": 4})


async def test_notification_update(raw: Raw, spec_server: SpecServer) -> None:
    await raw.send_text('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}')
    await spec_server.calls.wait_for("update")
    assert ("update", [1, 2, 3, 4, 5]) in spec_server.calls.seen
    await assert_nothing_returned(raw)


async def test_notification_foobar(raw: Raw) -> None:
    # A notification of an unknown method: still no answer, not even an error.
    await raw.send_text('{"jsonrpc": "2.0", "method": "foobar"}')
    await assert_nothing_returned(raw)


async def test_non_existent_method(raw: Raw) -> None:
    await raw.send_text('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert_spec_answer(
        await raw.receive(),
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"},
    )


async def test_invalid_json(raw: Raw) -> None:
    await raw.send_text('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert_spec_answer(
        await raw.receive(),
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    )
    await assert_nothing_returned(raw)  # the connection survives a parse error


async def test_invalid_request_object(raw: Raw) -> None:
    await raw.send_text('{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert_spec_answer(
        await raw.receive(),
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    )


async def test_batch_invalid_json(raw: Raw) -> None:
    await raw.send_text(
        "[\n"
        '  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n'
        '  {"jsonrpc": "2.0", "method"\n'
        "]"
    )
    assert_spec_answer(
        await raw.receive(),
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    )


async def test_empty_array(raw: Raw) -> None:
    await raw.send_text("[]")
    answer = await raw.receive()
    assert not isinstance(answer, list)  # a single error object, not a batch
    assert_spec_answer(
        answer,
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    )


async def test_invalid_batch_of_one(raw: Raw) -> None:
    await raw.send_text("[1]")
    answer = await raw.receive()
    assert isinstance(answer, list) and len(answer) == 1
    assert_spec_answer(
        answer[0],
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    )


async def test_invalid_batch(raw: Raw) -> None:
    await raw.send_text("[1,2,3]")
    answer = await raw.receive()
    assert isinstance(answer, list) and len(answer) == 3
    for item in answer:
        assert_spec_answer(
            item,
            {
                "jsonrpc": "2.0",
                "error": {"code": -32600, "message": "Invalid Request"},
                "id": None,
            },
        )


async def test_mixed_batch(raw: Raw, spec_server: SpecServer) -> None:
    await raw.send_text(
        "[\n"
        '  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n'
        '  {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},\n'
        '  {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},\n'
        '  {"foo": "boo"},\n'
        '  {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},\n'
        '  {"jsonrpc": "2.0", "method": "get_data", "id": "9"}\n'
        "]"
    )
    assert_spec_batch(
        await raw.receive(),
        [
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {
                "jsonrpc": "2.0",
                "error": {"code": -32600, "message": "Invalid Request"},
                "id": None,
            },
            {
                "jsonrpc": "2.0",
                "error": {"code": -32601, "message": "Method not found"},
                "id": "5",
            },
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
        ],
    )
    # The notification inside the batch ran too (it just got no answer).
    assert ("notify_hello", 7) in spec_server.calls.seen


async def test_batch_of_notifications_returns_nothing(raw: Raw, spec_server: SpecServer) -> None:
    await raw.send_text(
        "[\n"
        '  {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},\n'
        '  {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}\n'
        "]"
    )
    await spec_server.calls.wait_for("notify_sum", "notify_hello")
    await assert_nothing_returned(raw)


# --- a little beyond the examples, same rules ------------------------------------------


async def test_answers_use_the_framing_of_the_request(raw: Raw) -> None:
    # Raw.receive() parses strictly in the framing it sent; a mismatch fails there.
    await raw.send_text('{"jsonrpc": "2.0", "method": "get_data", "id": 0}')
    assert_spec_answer(await raw.receive(), {"jsonrpc": "2.0", "result": ["hello", 5], "id": 0})


async def test_null_id_is_a_request_not_a_notification(raw: Raw) -> None:
    # §4: an id of null is discouraged but it is a request, so it is answered.
    await raw.send_text('{"jsonrpc": "2.0", "method": "get_data", "id": null}')
    assert_spec_answer(await raw.receive(), {"jsonrpc": "2.0", "result": ["hello", 5], "id": None})


async def test_invalid_params_positional_too_many(raw: Raw) -> None:
    # The spec fixes -32602's code, not its wording; ours says what was wrong.
    await raw.send_text('{"jsonrpc": "2.0", "method": "subtract", "params": [1, 2, 3], "id": 8}')
    answer = await raw.receive()
    assert answer["id"] == 8
    assert answer["error"]["code"] == -32602


# --- rpc.discover: the OpenRPC document of the real daemon ---------------------------------

# DESIGN.md §4 "RPC surface": the command names every frontend relies on.
DESIGN_METHODS = {
    "init_parallel_scheduler", "parallel_add_task", "parallel_add_tasks",
    "parallel_schedule_next", "parallel_complete_task", "parallel_fail_task",
    "parallel_stop_all", "parallel_get_scheduler_stats", "parallel_get_pool_stats",
    "parallel_check_violations", "parallel_get_agent_logs", "parallel_poll_completed",
    "worktree_allocate", "worktree_deallocate", "worktree_deallocate_by_agent",
    "worktree_get_allocations", "worktree_cleanup_orphaned", "conflicts_detect",
    "conflicts_can_merge_safely", "conflicts_get_summary", "conflicts_resolve",
    "rpc.discover", "events_subscribe", "daemon_status", "daemon_shutdown",
}  # fmt: skip


def test_rpc_discover_describes_every_method(daemon: DaemonProcess) -> None:
    from corral.client import _Methods, _Rpc
    from corral.errors import ERROR_CLASSES
    from corrald.api import methods

    with daemon.client() as c:
        doc = c.rpc_discover()
    assert doc["openrpc"].startswith("1.2")
    by_name = {m["name"]: m for m in doc["methods"]}
    assert set(by_name) == set(methods.methods)
    assert set(by_name) >= DESIGN_METHODS, DESIGN_METHODS - set(by_name)
    for name, method in by_name.items():
        assert method["description"].strip(), f"{name} has no docstring"
        assert method["paramStructure"] == "by-name"
        for param in method["params"]:
            assert "_" not in param["name"], (name, param["name"])  # camelCase on the wire
    # Every typed client method exists on the daemon.
    client_names = {v.name for v in vars(_Methods).values() if isinstance(v, _Rpc)}
    assert client_names <= set(by_name), client_names - set(by_name)
    # The error table is published as-is.
    published = {e["code"]: e["name"] for e in doc["components"]["x-errors"]}
    assert published == {code: cls.__name__ for code, cls in ERROR_CLASSES.items()}
    # Every $ref resolves inside the document.
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    for ref in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert ref in schemas, ref
