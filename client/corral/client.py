"""Thin clients for corrald: `Client` (blocking) and `AsyncClient` (trio).

Both speak newline-delimited JSON-RPC 2.0 over the daemon's Unix socket,
return the wire models, and raise the `corral.errors` class of each error
code. Typed methods are declared once (`_Methods`) and shared by both.

    with Client() as c:
        print(c.daemon_status().pid)

    async with AsyncClient() as c:
        session = await c.init_parallel_scheduler(repo_path=".")
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import socket
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import trio
from pydantic import BaseModel, TypeAdapter

from corral import errors
from corral.models import (
    Agent,
    Assignment,
    CleanupReport,
    CompletedAgent,
    ConflictMatrix,
    ConflictResolutionResult,
    ConflictSummary,
    DaemonStatus,
    Event,
    LogEntry,
    MergeConflict,
    MergeReport,
    PoolStats,
    SchedulerStats,
    Session,
    Task,
    Violation,
    WorktreeAllocation,
)

R = TypeVar("R")

MAX_FRAME = 64 * 1024 * 1024


def socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else `$CORRAL_SOCKET`, else `$XDG_RUNTIME_DIR/corral/corrald.sock`."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("CORRAL_SOCKET")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/corral-{os.getuid()}"
    return Path(runtime) / "corral" / "corrald.sock"


def _params(kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        elif isinstance(value, list):
            value = [
                v.model_dump(mode="json", by_alias=True, exclude_none=True)
                if isinstance(v, BaseModel)
                else v
                for v in value
            ]
        out[key] = value
    return out


def _result(message: dict[str, Any]) -> Any:
    if "error" in message and message["error"] is not None:
        raise errors.CorralError.from_wire(message["error"])
    return message.get("result")


def _not_running(path: Path, exc: OSError) -> errors.DaemonNotRunning:
    return errors.DaemonNotRunning(
        f"corrald is not running on {path} ({exc.strerror}). Start it with `corral daemon`"
        " (foreground) or `systemctl --user enable --now corrald.socket`.",
        {"socket": str(path)},
    )


class _Resume:
    """Where an event stream is: the last seq delivered, so a reconnect resumes there."""

    def __init__(self, since_seq: int | None) -> None:
        self.last = since_seq

    def subscribed(self, answer: dict[str, Any]) -> None:
        if self.last is None:
            self.last = int(answer["seq"])

    def accept(self, message: dict[str, Any]) -> Event | None:
        """The new event in `message`, if any; a `lagged` notice ends the stream."""
        if message.get("method") == "event":
            event = Event.model_validate(message["params"])
            if event.seq > (self.last or 0):
                self.last = event.seq
                return event
        elif message.get("method") == "lagged":
            raise errors.ConnectionLost(
                "the daemon dropped this subscriber: it fell behind",
                message.get("params") or {},
            )
        return None


class _Rpc(Generic[R]):
    """A typed RPC method usable on both clients (a descriptor)."""

    def __init__(self, name: str, result: Any) -> None:
        self.name = name
        self.adapter: TypeAdapter[R] = TypeAdapter(result)

    @overload
    def __get__(self, obj: Client, owner: Any) -> Callable[..., R]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: Any) -> Callable[..., Awaitable[R]]: ...
    @overload
    def __get__(self, obj: None, owner: Any) -> _Rpc[R]: ...

    def __get__(self, obj: Any, owner: Any) -> Any:
        if obj is None:
            return self
        name, adapter = self.name, self.adapter
        if isinstance(obj, AsyncClient):

            async def call_async(**kwargs: Any) -> R:
                return adapter.validate_python(await obj.call(name, **kwargs))

            return call_async

        def call_sync(**kwargs: Any) -> R:
            return adapter.validate_python(obj.call(name, **kwargs))

        return call_sync


class _Methods:
    """Every daemon method with its result type. Params are keyword arguments."""

    daemon_status = _Rpc[DaemonStatus]("daemon_status", DaemonStatus)
    daemon_shutdown = _Rpc[bool]("daemon_shutdown", bool)
    rpc_discover = _Rpc[dict[str, Any]]("rpc.discover", dict[str, Any])
    init_parallel_scheduler = _Rpc[Session]("init_parallel_scheduler", Session)
    session_list = _Rpc[list[Session]]("session_list", list[Session])
    session_get = _Rpc[Session]("session_get", Session)
    session_start = _Rpc[Session]("session_start", Session)
    session_pause = _Rpc[Session]("session_pause", Session)
    session_resume = _Rpc[Session]("session_resume", Session)
    parallel_add_task = _Rpc[Task]("parallel_add_task", Task)
    parallel_add_tasks = _Rpc[list[Task]]("parallel_add_tasks", list[Task])
    parallel_list_tasks = _Rpc[list[Task]]("parallel_list_tasks", list[Task])
    parallel_get_task = _Rpc[Task]("parallel_get_task", Task)
    parallel_complete_task = _Rpc[list[Task]]("parallel_complete_task", list[Task])
    parallel_fail_task = _Rpc[list[Task]]("parallel_fail_task", list[Task])
    parallel_cancel_task = _Rpc[list[Task]]("parallel_cancel_task", list[Task])
    parallel_schedule_next = _Rpc[Assignment]("parallel_schedule_next", Assignment)
    parallel_stop_all = _Rpc[list[Task]]("parallel_stop_all", list[Task])
    parallel_get_scheduler_stats = _Rpc[SchedulerStats](
        "parallel_get_scheduler_stats", SchedulerStats
    )
    parallel_get_pool_stats = _Rpc[PoolStats]("parallel_get_pool_stats", PoolStats)
    parallel_check_violations = _Rpc[list[Violation]]("parallel_check_violations", list[Violation])
    parallel_get_agent_logs = _Rpc[list[LogEntry]]("parallel_get_agent_logs", list[LogEntry])
    parallel_poll_completed = _Rpc[list[CompletedAgent]](
        "parallel_poll_completed", list[CompletedAgent]
    )
    parallel_list_agents = _Rpc[list[Agent]]("parallel_list_agents", list[Agent])
    parallel_get_agent = _Rpc[Agent]("parallel_get_agent", Agent)
    worktree_allocate = _Rpc[WorktreeAllocation]("worktree_allocate", WorktreeAllocation)
    worktree_deallocate = _Rpc[bool]("worktree_deallocate", bool)
    worktree_deallocate_by_agent = _Rpc[bool]("worktree_deallocate_by_agent", bool)
    worktree_get_allocations = _Rpc[list[WorktreeAllocation]](
        "worktree_get_allocations", list[WorktreeAllocation]
    )
    worktree_cleanup_orphaned = _Rpc[CleanupReport]("worktree_cleanup_orphaned", CleanupReport)
    conflicts_detect = _Rpc[list[MergeConflict]]("conflicts_detect", list[MergeConflict])
    conflicts_can_merge_safely = _Rpc[bool]("conflicts_can_merge_safely", bool)
    conflicts_get_summary = _Rpc[ConflictSummary]("conflicts_get_summary", ConflictSummary)
    conflicts_matrix = _Rpc[ConflictMatrix]("conflicts_matrix", ConflictMatrix)
    conflicts_resolve = _Rpc[ConflictResolutionResult](
        "conflicts_resolve", ConflictResolutionResult
    )
    merge_completed_branches = _Rpc[MergeReport]("merge_completed_branches", MergeReport)
    events_unsubscribe = _Rpc[bool]("events_unsubscribe", bool)


class Client(_Methods):
    """Blocking client; one request at a time per instance (thread-safe)."""

    def __init__(
        self, socket: str | os.PathLike[str] | None = None, *, timeout: float | None = 60.0
    ) -> None:
        self.path = socket_path(socket)
        self.timeout = timeout
        self._sock: _Socket | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.notifications: list[dict[str, Any]] = []  # pushes that arrived between answers

    def connect(self) -> Client:
        if self._sock is None:
            self._sock = _Socket.open(self.path, self.timeout)
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` with named params and return its raw JSON result."""
        with self._lock:
            sock = self.connect()._sock
            assert sock is not None
            request_id = next(self._ids)
            sock.send(
                {"jsonrpc": "2.0", "method": method, "params": _params(params), "id": request_id}
            )
            while True:
                message = sock.receive()
                if message.get("id") == request_id:
                    return _result(message)
                if "method" in message:
                    self.notifications.append(message)
                elif message.get("id") is None and "error" in message:
                    raise errors.CorralError.from_wire(message["error"])

    def events(
        self,
        topics: list[str] | None = None,
        *,
        session_id: str | None = None,
        since_seq: int | None = None,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """Subscribe and yield events forever, resuming after reconnects.

        Uses a connection of its own. After a dropped connection (daemon
        restart) it reconnects and resumes from the last seq it yielded, so
        nothing is missed or repeated.
        """
        where = _Resume(since_seq)
        while True:
            try:
                with Client(self.path, timeout=None) as sub:
                    where.subscribed(
                        sub.call(
                            "events_subscribe",
                            topics=topics,
                            session_id=session_id,
                            since_seq=where.last,
                        )
                    )
                    assert sub._sock is not None
                    while True:
                        event = where.accept(sub._sock.receive())
                        if event is not None:
                            yield event
            except (errors.ConnectionLost, errors.DaemonNotRunning):
                if not reconnect:
                    raise
                _wait_for_socket(self.path)

    def __repr__(self) -> str:
        return f"Client({self.path}, connected={self._sock is not None})"


def _wait_for_socket(path: Path, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _Socket.open(path, 1.0).close()
            return
        except errors.DaemonNotRunning:
            time.sleep(0.1)
    raise errors.DaemonNotRunning(data={"socket": str(path)})


class _Socket:
    """A blocking NDJSON connection."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self.sock = sock
        self.path = path
        self.buf = bytearray()

    @classmethod
    def open(cls, path: Path, timeout: float | None) -> _Socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise _not_running(path, exc) from None
            raise
        return cls(sock, path)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            raise errors.ConnectionLost(f"send failed: {exc}") from exc

    def receive(self) -> dict[str, Any]:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                if line.strip():
                    decoded: dict[str, Any] = json.loads(line)
                    return decoded
                continue
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError as exc:
                raise errors.ConnectionLost("timed out waiting for corrald") from exc
            except OSError as exc:
                raise errors.ConnectionLost(str(exc)) from exc
            if not chunk:
                raise errors.ConnectionLost("corrald closed the connection")
            self.buf += chunk
            if len(self.buf) > MAX_FRAME:
                raise errors.FrameTooLarge("answer larger than the client's frame limit")

    def close(self) -> None:
        self.sock.close()


class AsyncClient(_Methods):
    """trio client; requests may be issued concurrently (pipelined)."""

    def __init__(self, socket: str | os.PathLike[str] | None = None) -> None:
        self.path = socket_path(socket)
        self._stream: trio.SocketStream | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._send_lock = trio.Lock()
        self._nursery_cm: Any = None
        self._push_send, self.pushes = trio.open_memory_channel[dict[str, Any]](10_000)
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        try:
            self._stream = await trio.open_unix_socket(str(self.path))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise _not_running(self.path, exc) from None
            raise
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._reader)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        if self._stream is not None:
            await self._stream.aclose()
        await self._nursery_cm.__aexit__(None, None, None)

    async def _reader(self) -> None:
        assert self._stream is not None
        buf = bytearray()
        try:
            while True:
                try:
                    chunk = await self._stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not chunk:
                    break
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if line.strip():
                        self._route(json.loads(line))
        finally:
            for waiter in self._waiting.values():
                waiter.close()
            self._push_send.close()

    def _route(self, message: dict[str, Any]) -> None:
        ident = message.get("id")
        if "method" in message and ident is None:
            # Full queue: the daemon will drop us with `lagged` as well.
            with contextlib.suppress(trio.WouldBlock):
                self._push_send.send_nowait(message)
            return
        waiter = self._waiting.pop(ident, None) if isinstance(ident, int) else None
        if waiter is not None:
            waiter.send_nowait(message)
        elif "error" in message:
            # A connection-level error (frame too large, timeout): fail everyone.
            for pending in list(self._waiting.values()):
                pending.send_nowait(message)
            self._waiting.clear()

    async def call(self, method: str, **params: Any) -> Any:
        """Call `method` with named params and return its raw JSON result."""
        if self._stream is None:
            raise errors.ConnectionLost("AsyncClient is not connected; use `async with`")
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[request_id] = send
        body = (
            json.dumps(
                {"jsonrpc": "2.0", "method": method, "params": _params(params), "id": request_id},
                separators=(",", ":"),
            ).encode()
            + b"\n"
        )
        try:
            async with self._send_lock:
                await self._stream.send_all(body)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._waiting.pop(request_id, None)
            raise errors.ConnectionLost(str(exc)) from exc
        try:
            message = await receive.receive()
        except trio.EndOfChannel:
            raise errors.ConnectionLost("corrald closed the connection") from None
        return _result(message)

    async def events(
        self,
        topics: list[str] | None = None,
        *,
        session_id: str | None = None,
        since_seq: int | None = None,
        reconnect: bool = True,
    ) -> AsyncGenerator[Event, None]:
        """Subscribe and yield events, resuming after reconnects (own connection).

        Use it as `async with contextlib.aclosing(client.events()) as stream:`
        so the connection closes as soon as you stop. It holds no nursery or
        cancel scope across a `yield` (trio forbids that in generators).
        """
        where = _Resume(since_seq)
        while True:
            stream: trio.SocketStream | None = None
            try:
                try:
                    stream = await trio.open_unix_socket(str(self.path))
                except OSError as exc:
                    raise _not_running(self.path, exc) from None
                params = _params(
                    {"topics": topics, "session_id": session_id, "since_seq": where.last}
                )
                request = {
                    "jsonrpc": "2.0",
                    "method": "events_subscribe",
                    "params": params,
                    "id": 0,
                }
                await stream.send_all(json.dumps(request).encode() + b"\n")
                buf = bytearray()
                while True:
                    try:
                        chunk = await stream.receive_some(1 << 16)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise errors.ConnectionLost(str(exc)) from exc
                    if not chunk:
                        raise errors.ConnectionLost("corrald closed the connection")
                    buf += chunk
                    while (nl := buf.find(b"\n")) >= 0:
                        message = json.loads(bytes(buf[:nl]) or b"{}")
                        del buf[: nl + 1]
                        if message.get("id") == 0:
                            where.subscribed(_result(message))
                            continue
                        event = where.accept(message)
                        if event is not None:
                            yield event
            except (errors.ConnectionLost, errors.DaemonNotRunning):
                if not reconnect:
                    raise
                await _await_socket(self.path)
            finally:
                if stream is not None:
                    await stream.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.path}, connected={self._stream is not None})"


async def _await_socket(path: Path) -> None:
    with trio.fail_after(30.0):
        while True:
            try:
                stream = await trio.open_unix_socket(str(path))
            except OSError:
                await trio.sleep(0.1)
                continue
            await stream.aclose()
            return
