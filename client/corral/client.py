"""Thin clients for corrald: `Client` (blocking) and `AsyncClient` (trio).

Both speak newline-delimited JSON-RPC 2.0 over the daemon's Unix socket
(framed by `corral.transport`), return the wire models, and raise the
`corral.errors` class of each error code. Typed methods are declared once
(`_Methods`) and shared by both: each takes its keyword arguments from the
method's params model in `corral.params`, so mypy checks their names.
`call(method, **params)` is the untyped way to call anything.

    with Client() as c:
        print(c.daemon_status().pid)

    async with AsyncClient() as c:
        session = await c.init_parallel_scheduler(repo_path=".")
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

import trio
from pydantic import TypeAdapter

from corral import errors
from corral.models import (
    Agent,
    AgentCheck,
    Assignment,
    AutoMergeResult,
    CleanupReport,
    CompletedAgent,
    ConflictMatrix,
    ConflictResolutionResult,
    ConflictSummary,
    DaemonStatus,
    Event,
    IntegrationReport,
    LogEntry,
    MergeableBranch,
    MergeBranchResult,
    MergeConflict,
    MergeReport,
    NoParams,
    Params,
    PoolStats,
    SchedulerStats,
    Session,
    Task,
    Violation,
    WorktreeAllocation,
    to_jsonable,
)
from corral.params import (
    AddTaskParams,
    AddTasksParams,
    AgentRef,
    AgentResultParams,
    AllocateParams,
    AutoMergeParams,
    CompleteParams,
    DeallocateByAgentParams,
    DeallocateParams,
    DetectParams,
    FailParams,
    InitParams,
    ListAgentsParams,
    ListTasksParams,
    LogsParams,
    MatrixParams,
    MergeableParams,
    MergeParams,
    MergeWithAiParams,
    PairParams,
    PathParams,
    ResolveParams,
    ScheduleParams,
    SessionParams,
    SummaryParams,
    TaskRef,
    UnsubscribeParams,
)
from corral.paths import socket_path
from corral.transport import MAX_FRAME, Decoder, Subscription, encode, request

__all__ = ["MAX_FRAME", "AsyncClient", "Client", "socket_path"]

P = ParamSpec("P")
R = TypeVar("R")

#: connect() errors that mean nobody is listening (as opposed to, say, EACCES).
_NOT_LISTENING = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK)


def _params(kwargs: dict[str, Any], aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments as wire params: renamed by `aliases`, None dropped, models dumped."""
    names = aliases or {}
    return {names.get(k, k): to_jsonable(v) for k, v in kwargs.items() if v is not None}


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


class _Rpc(Generic[P, R]):
    """One daemon method on both clients (a descriptor): its params model and result type.

    The method takes the keyword arguments of `params` (a `corral.params`
    model), whose constructor signature `P` captures, so mypy checks their
    names. Values are not validated here; the daemon is the authority and
    answers -32602. Each keyword is sent under its field's wire (camelCase)
    name, None is left out, and models are dumped. The answer is validated
    as `result`.
    """

    def __init__(self, name: str, params: Callable[P, Params], result: type[R]) -> None:
        self.name = name
        self.model = cast("type[Params]", params)
        self.adapter: TypeAdapter[R] = TypeAdapter(result)
        self.aliases = {n: f.alias or n for n, f in self.model.model_fields.items()}

    @overload
    def __get__(self, obj: Client, owner: Any) -> Callable[P, R]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: Any) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __get__(self, obj: None, owner: Any) -> _Rpc[P, R]: ...

    def __get__(self, obj: Any, owner: Any) -> Any:
        if obj is None:
            return self
        name, adapter, aliases = self.name, self.adapter, self.aliases
        if isinstance(obj, AsyncClient):

            async def call_async(*args: P.args, **kwargs: P.kwargs) -> R:
                _keywords_only(name, args)
                return adapter.validate_python(await obj._request(name, _params(kwargs, aliases)))

            return call_async

        def call_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            _keywords_only(name, args)
            return adapter.validate_python(obj._request(name, _params(kwargs, aliases)))

        return call_sync

    def __repr__(self) -> str:
        return f"_Rpc({self.name!r}, {self.model.__name__})"


def _keywords_only(name: str, args: tuple[object, ...]) -> None:
    if args:  # what a params model's constructor says too
        raise TypeError(f"{name}() takes keyword arguments only")


class _Methods:
    """Every daemon method with its params model and result type. Params are keywords."""

    daemon_status = _Rpc("daemon_status", NoParams, DaemonStatus)
    daemon_shutdown = _Rpc("daemon_shutdown", NoParams, bool)
    rpc_discover = _Rpc("rpc.discover", NoParams, dict[str, Any])
    init_parallel_scheduler = _Rpc("init_parallel_scheduler", InitParams, Session)
    session_list = _Rpc("session_list", NoParams, list[Session])
    session_get = _Rpc("session_get", SessionParams, Session)
    session_start = _Rpc("session_start", SessionParams, Session)
    session_pause = _Rpc("session_pause", SessionParams, Session)
    session_resume = _Rpc("session_resume", SessionParams, Session)
    parallel_add_task = _Rpc("parallel_add_task", AddTaskParams, Task)
    parallel_add_tasks = _Rpc("parallel_add_tasks", AddTasksParams, list[Task])
    parallel_list_tasks = _Rpc("parallel_list_tasks", ListTasksParams, list[Task])
    parallel_get_task = _Rpc("parallel_get_task", TaskRef, Task)
    parallel_complete_task = _Rpc("parallel_complete_task", CompleteParams, list[Task])
    parallel_fail_task = _Rpc("parallel_fail_task", FailParams, list[Task])
    parallel_cancel_task = _Rpc("parallel_cancel_task", TaskRef, list[Task])
    parallel_schedule_next = _Rpc(
        "parallel_schedule_next", ScheduleParams, cast("type[Agent | None]", Agent | None)
    )
    parallel_start_next = _Rpc("parallel_start_next", SessionParams, Assignment)
    parallel_handle_agent_result = _Rpc(
        "parallel_handle_agent_result", AgentResultParams, cast("type[Agent | None]", Agent | None)
    )
    parallel_stop_all = _Rpc("parallel_stop_all", SessionParams, list[Task])
    parallel_get_scheduler_stats = _Rpc(
        "parallel_get_scheduler_stats", SessionParams, SchedulerStats
    )
    parallel_get_pool_stats = _Rpc("parallel_get_pool_stats", SessionParams, PoolStats)
    agents_check = _Rpc("agents_check", NoParams, list[AgentCheck])
    parallel_check_violations = _Rpc("parallel_check_violations", SessionParams, list[str])
    parallel_list_violations = _Rpc("parallel_list_violations", SessionParams, list[Violation])
    parallel_get_agent_logs = _Rpc("parallel_get_agent_logs", LogsParams, list[LogEntry])
    parallel_poll_completed = _Rpc("parallel_poll_completed", NoParams, list[CompletedAgent])
    parallel_list_agents = _Rpc("parallel_list_agents", ListAgentsParams, list[Agent])
    parallel_get_agent = _Rpc("parallel_get_agent", AgentRef, Agent)
    worktree_allocate = _Rpc("worktree_allocate", AllocateParams, WorktreeAllocation)
    worktree_deallocate = _Rpc("worktree_deallocate", DeallocateParams, bool)
    worktree_deallocate_by_agent = _Rpc(
        "worktree_deallocate_by_agent", DeallocateByAgentParams, bool
    )
    worktree_get_allocations = _Rpc(
        "worktree_get_allocations", SessionParams, list[WorktreeAllocation]
    )
    worktree_cleanup_orphaned = _Rpc("worktree_cleanup_orphaned", SessionParams, list[str])
    worktree_cleanup_report = _Rpc("worktree_cleanup_report", SessionParams, CleanupReport)
    conflicts_detect = _Rpc("conflicts_detect", DetectParams, list[MergeConflict])
    conflicts_can_merge_safely = _Rpc("conflicts_can_merge_safely", PairParams, bool)
    conflicts_get_summary = _Rpc("conflicts_get_summary", SummaryParams, ConflictSummary)
    conflicts_matrix = _Rpc("conflicts_matrix", MatrixParams, ConflictMatrix)
    conflicts_resolve = _Rpc("conflicts_resolve", ResolveParams, ConflictResolutionResult)
    merge_completed_branches = _Rpc("merge_completed_branches", MergeParams, MergeReport)
    git_is_repository = _Rpc("git_is_repository", PathParams, bool)
    git_init_repository = _Rpc("git_init_repository", PathParams, str)
    get_mergeable_branches = _Rpc("get_mergeable_branches", MergeableParams, list[MergeableBranch])
    auto_merge_completed_branches = _Rpc(
        "auto_merge_completed_branches", AutoMergeParams, AutoMergeResult
    )
    merge_branch_with_ai = _Rpc("merge_branch_with_ai", MergeWithAiParams, MergeBranchResult)
    parallel_retry_task = _Rpc("parallel_retry_task", TaskRef, list[Task])
    integration_status = _Rpc("integration_status", SessionParams, IntegrationReport)
    task_integrate = _Rpc("task_integrate", TaskRef, Task)
    # events_subscribe is not here: it needs a connection of its own (see `events()`).
    events_unsubscribe = _Rpc("events_unsubscribe", UnsubscribeParams, bool)


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
        return self._request(method, _params(params))

    def _request(self, method: str, params: dict[str, Any]) -> Any:
        with self._lock:
            sock = self.connect()._sock
            assert sock is not None
            request_id = next(self._ids)
            try:
                sock.send(request(method, params, request_id))
                while True:
                    message = sock.receive()
                    if message.get("id") == request_id:
                        return _result(message)
                    if "method" in message:
                        self.notifications.append(message)
                    elif message.get("id") is None and "error" in message:
                        raise errors.CorralError.from_wire(message["error"])
            except (errors.ConnectionLost, errors.FrameTooLarge):
                # The stream is out of step or gone: the next call connects afresh.
                self.close()
                raise

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
        nothing is missed or repeated; with `reconnect=False` it raises
        `ConnectionLost` instead. A `lagged` notice (this reader fell behind)
        resubscribes from the last seq on the same connection either way.
        """
        sub = Subscription(topics, session_id, since_seq)
        while True:
            try:
                with _Socket.open(self.path, None) as conn:
                    sub.new_connection()
                    while True:
                        if sub.wants_subscribe:
                            conn.send(sub.subscribe())
                        event = sub.receive(conn.receive())
                        if event is not None:
                            yield event
            except (errors.ConnectionLost, errors.DaemonNotRunning):
                if not reconnect:
                    raise
                _wait_for_socket(self.path)

    def __repr__(self) -> str:
        return f"Client({self.path}, connected={self._sock is not None})"


def _wait_for_socket(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _Socket.open(path, 1.0).close()
            return
        except errors.DaemonNotRunning:
            time.sleep(0.1)
    raise errors.DaemonNotRunning(data={"socket": str(path)})


class _Socket:
    """A blocking NDJSON connection: a Unix socket and the transport's decoder."""

    def __init__(self, sock: socket.socket, path: Path, max_frame: int = MAX_FRAME) -> None:
        self.sock = sock
        self.path = path
        self.timeout = sock.gettimeout()
        self.decoder = Decoder(max_frame)

    @classmethod
    def open(cls, path: Path, timeout: float | None) -> _Socket:
        """Connect; `DaemonNotRunning` when nothing listens on `path`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            if exc.errno in _NOT_LISTENING:
                raise _not_running(path, exc) from None
            raise
        return cls(sock, path)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError as exc:
            raise errors.ConnectionLost(f"send failed: {exc}") from exc

    def receive(self) -> dict[str, Any]:
        """The next message; `ConnectionLost` when the connection ends or times out."""
        while (message := self.decoder.next_message()) is None:
            if not self._fill():
                raise errors.ConnectionLost("timed out waiting for corrald")
        return message

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """The next message if one comes within `timeout`, else None (a read that can stop)."""
        message = self.decoder.next_message()
        if message is None:
            self.sock.settimeout(timeout)
            try:
                if self._fill():
                    message = self.decoder.next_message()
            finally:
                self.sock.settimeout(self.timeout)
        return message

    def _fill(self) -> bool:
        """Read once into the decoder; False if the socket's timeout ran out first."""
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        except OSError as exc:
            raise errors.ConnectionLost(str(exc)) from exc
        if not chunk:
            raise errors.ConnectionLost("corrald closed the connection")
        self.decoder.feed(chunk)
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"_Socket({self.path}, {self.decoder!r})"


class _AsyncSocket:
    """A trio NDJSON connection: a Unix socket stream and the transport's decoder."""

    def __init__(self, stream: trio.SocketStream, path: Path, max_frame: int = MAX_FRAME) -> None:
        self.stream = stream
        self.path = path
        self.decoder = Decoder(max_frame)
        self._send_lock = trio.Lock()  # requests may be sent from several tasks

    @classmethod
    async def open(cls, path: Path) -> _AsyncSocket:
        """Connect; `DaemonNotRunning` when nothing listens on `path`."""
        try:
            stream = await trio.open_unix_socket(str(path))
        except OSError as exc:
            if exc.errno in _NOT_LISTENING:
                raise _not_running(path, exc) from None
            raise
        return cls(stream, path)

    async def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise errors.ConnectionLost(str(exc)) from exc

    async def receive(self) -> dict[str, Any]:
        """The next message; `ConnectionLost` when the connection ends."""
        while (message := self.decoder.next_message()) is None:
            try:
                chunk = await self.stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise errors.ConnectionLost(str(exc)) from exc
            if not chunk:
                raise errors.ConnectionLost("corrald closed the connection")
            self.decoder.feed(chunk)
        return message

    async def aclose(self) -> None:
        await self.stream.aclose()

    def __repr__(self) -> str:
        return f"_AsyncSocket({self.path}, {self.decoder!r})"


class AsyncClient(_Methods):
    """trio client; requests may be issued concurrently (pipelined)."""

    def __init__(self, socket: str | os.PathLike[str] | None = None) -> None:
        self.path = socket_path(socket)
        self._conn: _AsyncSocket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._lost: errors.CorralError | None = None  # why the reader stopped
        self._nursery_cm: Any = None
        self._push_send, self.pushes = trio.open_memory_channel[dict[str, Any]](10_000)

    async def __aenter__(self) -> AsyncClient:
        self._conn = await _AsyncSocket.open(self.path)
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._reader)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.aclose()
        await self._nursery_cm.__aexit__(None, None, None)

    async def _reader(self) -> None:
        assert self._conn is not None
        try:
            while True:
                self._route(await self._conn.receive())
        except (errors.ConnectionLost, errors.FrameTooLarge) as exc:
            self._lost = exc  # closed, or out of step: every waiter is told below
        finally:
            if self._lost is None:
                self._lost = errors.ConnectionLost("corrald closed the connection")
            for waiter in self._waiting.values():
                waiter.close()
            self._waiting.clear()
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

    def _gone(self) -> errors.CorralError:
        lost = self._lost or errors.ConnectionLost()
        return type(lost)(lost.message, lost.data)  # a fresh one per caller

    async def call(self, method: str, **params: Any) -> Any:
        """Call `method` with named params and return its raw JSON result."""
        return await self._request(method, _params(params))

    async def _request(self, method: str, params: dict[str, Any]) -> Any:
        if self._conn is None:
            raise errors.ConnectionLost("AsyncClient is not connected; use `async with`")
        if self._lost is not None:
            raise self._gone()
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[request_id] = send
        try:
            await self._conn.send(request(method, params, request_id))
            try:
                message = await receive.receive()
            except trio.EndOfChannel:
                raise self._gone() from None
        finally:
            self._waiting.pop(request_id, None)  # answered, failed or cancelled
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

        The same rules as `Client.events` (both drive `transport.Subscription`).
        Use it as `async with contextlib.aclosing(client.events()) as stream:`
        so the connection closes as soon as you stop. It holds no nursery or
        cancel scope across a `yield` (trio forbids that in generators).
        """
        sub = Subscription(topics, session_id, since_seq)
        while True:
            conn: _AsyncSocket | None = None
            try:
                conn = await _AsyncSocket.open(self.path)
                sub.new_connection()
                while True:
                    if sub.wants_subscribe:
                        await conn.send(sub.subscribe())
                    event = sub.receive(await conn.receive())
                    if event is not None:
                        yield event
            except (errors.ConnectionLost, errors.DaemonNotRunning):
                if not reconnect:
                    raise
                await _await_socket(self.path)
            finally:
                if conn is not None:
                    await conn.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.path}, connected={self._conn is not None})"


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
