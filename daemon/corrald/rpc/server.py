"""The daemon's socket: connections, framing, limits and graceful shutdown.

Each connection runs in the server's connection nursery and contains its own
failures (an exception escaping a `serve_listeners` handler would kill the
server). Requests on one connection are handled concurrently (pipelining),
their writes serialised by a per-connection lock; a request that cannot wait
(`MethodSpec.inline`) is answered by the reader itself. Shutdown follows
hypercorn's shape: stop accepting, give in-flight requests a bounded grace,
then cancel what is left.

A connection ends as soon as its peer is gone, also when it only listens to
pushes: the read side sees the hang-up (EOF or a reset), and every write has
a deadline, so a peer that stops reading is dropped, with what was queued
for it, after `write_timeout_secs`. A peer that only shut down its writing
half (`nc -N`) keeps its subscriptions until it hangs up for good.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
import os
import select
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from corral import errors
from corrald.rpc.dispatch import (
    Ctx,
    Dispatcher,
    Incoming,
    Pieces,
    Registry,
    acquire,
    encode_json,
)
from corrald.rpc.framing import FrameReader, Framing, around, encode, encode_wrapped

#: The per-connection state handlers keep (the server never looks inside it).
S = TypeVar("S")

log = logging.getLogger("corrald.rpc.server")


@dataclass
class Limits:
    max_frame_bytes: int = 8 * 1024 * 1024
    max_connections: int = 512
    frame_timeout_secs: float = 10.0
    shutdown_grace_secs: float = 10.0
    max_inflight_per_connection: int = 64  # requests running at once, batch items included
    max_batch_items: int = 1000
    write_timeout_secs: float = 30.0


#: How long a refused connection is given to read its error and hang up
#: (closing while its request is unread would reset the connection instead).
_LINGER_SECS = 1.0
#: An answer longer than this is written without framing it into a new copy.
BIG_ANSWER = 1 << 16
_LINGER_BYTES = 1 << 20


class AlreadyRunning(RuntimeError):
    """A live daemon answers on the socket; we never replace it."""


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        raise
    finally:
        probe.close()
    return True


def bind_socket(path: Path) -> socket.socket:
    """Bind the daemon's socket: directory 0700, socket 0600, stale file replaced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if path.exists() or path.is_symlink():
        mode = path.lstat().st_mode
        if not stat.S_ISSOCK(mode):
            raise AlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_is_live(path):
            raise AlreadyRunning(f"corrald is already running on {path}")
        log.info("replacing stale socket %s", path)
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def peer_uid(stream: trio.SocketStream) -> tuple[int, int]:
    """(pid, uid) of the process on the other end of a Unix socket."""
    raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


class Connection(Generic[S]):
    """One client connection: framing, serialised writes, pushes, the handlers' state."""

    _ids = 0

    def __init__(self, stream: trio.SocketStream, server: Server[Any, S]) -> None:
        Connection._ids += 1
        self.id = Connection._ids
        self.stream = stream
        self.server = server
        self.reader = FrameReader(server.limits.max_frame_bytes)
        self.peer_pid = 0
        self.closed = False
        self.state: S = server.new_state()  # the method handlers' own, opaque here
        self.on_close: list[Callable[[], object]] = []
        self.pushes = 0  # push tasks (subscriptions) running on this connection
        self._send_lock = trio.Lock()
        limit = server.limits.max_inflight_per_connection
        self._frames = trio.Semaphore(limit)  # frames being answered: reading waits beyond
        self._running = trio.CapacityLimiter(limit)  # requests running, batch items included
        self._reading = trio.CancelScope()  # cancelled when the peer is gone
        self._reading_done = False
        self._background: trio.Nursery | None = None  # pushes; they end with the connection

    @property
    def framing(self) -> Framing:
        return self.reader.framing

    @property
    def _out(self) -> Framing:
        """How answers are framed: as the peer frames its messages (NDJSON until known)."""
        framing = self.reader.framing
        return framing if framing is not Framing.UNKNOWN else Framing.NDJSON

    async def send(self, message: Any) -> bool:
        """Write one message; False if the peer is gone (never raises for that)."""
        return await self.send_many([message])

    async def send_many(self, messages: list[Any]) -> bool:
        """Write several messages with one system call (event bursts)."""
        return await self.send_raw([encode_json(m) for m in messages])

    async def _write(self, data: Iterable[bytes]) -> bool:
        await acquire(self._send_lock)
        try:
            if self.closed:
                return False
            # The common case: the socket's buffer takes the whole answer at once,
            # which needs neither a deadline nor a pass through trio's scheduler
            # (a cancel scope per write was a tenth of a small request's cost).
            # The socket is non-blocking; whatever does not fit is sent below.
            pieces = iter(data)
            first = next(pieces, b"")
            try:
                sent = os.write(self.stream.socket.fileno(), first) if first else 0
            except BlockingIOError:
                sent = 0
            following = next(pieces, None)
            if sent == len(first) and following is None:
                return True
            timeout = self.server.limits.write_timeout_secs
            with trio.move_on_after(timeout) as deadline:
                if sent < len(first):
                    await self.stream.send_all(memoryview(first)[sent:])
                if following is not None:
                    for piece in itertools.chain((following,), pieces):
                        if piece:  # a long answer's pieces, made as they are written
                            await self.stream.send_all(piece)
            if deadline.cancelled_caught:
                # Part of a message may be out: nothing more can be written.
                log.info("%r: not reading, a write took over %s s; dropping it", self, timeout)
                self.hang_up()
                return False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.hang_up()
            return False
        finally:
            self._send_lock.release()
        return True

    async def send_raw(self, bodies: list[bytes]) -> bool:
        """Write already-encoded JSON messages (event bursts) with one system call."""
        framing = self._out
        return await self._write((b"".join(encode(framing, body) for body in bodies),))

    async def send_answer(self, answer: bytes | Pieces) -> bool:
        """Write one answer; a long one (`Pieces`, or bytes over `BIG_ANSWER`) in pieces,
        without copying it again to frame it."""
        if isinstance(answer, bytes):
            if len(answer) <= BIG_ANSWER:
                return await self.send_raw([answer])
            answer = Pieces(len(answer), iter((answer,)))
        before, after = around(self._out, answer.length)
        return await self._write(itertools.chain((before,), answer.pieces, (after,)))

    async def send_wrapped(self, head: bytes, bodies: list[bytes], tail: bytes) -> bool:
        """Write `head + body + tail` for each body (event bursts) with one system call."""
        return await self._write((encode_wrapped(self._out, head, bodies, tail),))

    def hang_up(self) -> None:
        """The peer is gone: stop reading and pushing; in-flight requests still finish."""
        self.closed = True
        self._reading.cancel()
        if self._background is not None:
            self._background.cancel_scope.cancel()

    def push(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Run `fn` (a subscription's delivery) for as long as the connection lives."""
        assert self._background is not None, "push() is for handlers of a live connection"

        async def counted() -> None:
            self.pushes += 1
            try:
                await fn()
            finally:
                self.pushes -= 1
                if not self.pushes and self._reading_done:
                    self.hang_up()  # nothing more to read or to push

        self._background.start_soon(counted)

    async def notify(self, method: str, params: Any) -> bool:
        return await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def send_error(self, exc: errors.CorralError) -> None:
        await self.send({"jsonrpc": "2.0", "error": exc.to_wire(), "id": None})

    async def run(self) -> None:
        # Pushes (subscriptions) live in the outer nursery so they outlive the
        # requests that create them; requests always run to completion (their
        # answers are dropped if the peer left).
        async with trio.open_nursery() as background:
            self._background = background
            async with trio.open_nursery() as requests:
                half_closed = False
                with self._reading:
                    half_closed = await self._read_loop(requests)
            self._reading_done = True
            if half_closed and self.pushes and not self.closed:
                # The peer shut down only its writing half: it may still read
                # its subscriptions, until it hangs up for good.
                background.start_soon(self._wait_hang_up)
            else:
                self.hang_up()

    async def _wait_hang_up(self) -> None:
        """Return once the peer has closed its end (POLLHUP), without polling.

        A half-closed socket is always readable, so trio cannot wait for the
        hang-up itself; an epoll set that watches only this socket (for no
        event: EPOLLHUP and EPOLLERR are always reported) becomes readable
        exactly then.
        """
        watch = select.epoll()
        try:
            watch.register(self.stream.socket.fileno(), 0)
            await trio.lowlevel.wait_readable(watch.fileno())
        finally:
            watch.close()
        self.hang_up()

    def _peer_hung_up(self) -> bool:
        """After an EOF: True if the peer closed its end, False if it only shut down writing."""
        poll = select.poll()
        poll.register(self.stream.socket.fileno(), select.POLLIN)
        return any(events & select.POLLHUP for _, events in poll.poll(0))

    async def _read_loop(self, requests: trio.Nursery) -> bool:
        """Read frames until the peer stops; True for a half-close (EOF, the peer still reads).

        A partial frame is on the clock from its first byte: the deadline is set
        once per frame, so a peer dripping bytes cannot hold the connection.
        """
        limits = self.server.limits
        deadline = math.inf
        while not self.closed:
            try:
                if deadline == math.inf:
                    data = await self.stream.receive_some(65536)
                else:
                    data = b""
                    with trio.move_on_at(deadline):
                        data = await self.stream.receive_some(65536)
                    if trio.current_time() >= deadline:
                        await self.send_error(
                            errors.FrameTimeout(data={"timeoutSecs": limits.frame_timeout_secs})
                        )
                        return False
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
            if not data:
                return not self.reader.pending and not self._peer_hung_up()
            try:
                frames = self.reader.feed(data)
            except errors.CorralError as exc:
                await self.send_error(exc)
                return False
            if not self.reader.pending:
                deadline = math.inf
            elif frames or deadline == math.inf:  # a new frame has begun
                deadline = trio.current_time() + limits.frame_timeout_secs
            for frame in frames:
                await acquire(self._frames)
                incoming = self.server.dispatcher.decode(frame)
                if incoming.inline:
                    # It runs to its end in one step (only its answer may wait for
                    # the peer to read): answering it here saves starting a task,
                    # a fifth of a small request's cost.
                    await self._answer(incoming)
                else:
                    requests.start_soon(self._answer, incoming)
        return False

    async def _answer(self, incoming: Incoming) -> None:
        server = self.server
        server.inflight += 1
        try:
            if server.shutting_down:
                message = incoming.message
                await self.send(
                    {
                        "jsonrpc": "2.0",
                        "error": errors.ShuttingDown().to_wire(),
                        "id": message.get("id") if isinstance(message, dict) else None,
                    }
                )
                return
            # An inline request takes no slot of the in-flight cap: it runs alone, in
            # the reader, so it adds nothing to bound (and is not held up by the cap).
            limiter = None if incoming.inline else self._running
            response = await server.dispatcher.answer(server.make_ctx(self), incoming, limiter)
            if response is not None:
                await self.send_answer(response)
        finally:
            self._frames.release()
            server.inflight -= 1
            if server.inflight == 0:
                server.idle.set()

    async def refuse(self, exc: errors.CorralError) -> None:
        """Send `exc` to a connection we will not serve, then let the peer hang up first.

        Closing a socket whose input is unread makes the peer see a reset, not
        our error: so we stop writing, read and drop what it sent (bounded in
        bytes and time) until it closes, and only then close.
        """
        await self.send_error(exc)
        with trio.move_on_after(_LINGER_SECS):
            try:
                await self.stream.send_eof()
                drained = 0
                while drained < _LINGER_BYTES:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        break
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def aclose(self) -> None:
        self.closed = True
        for callback in self.on_close:
            try:
                callback()
            except Exception:
                log.exception("connection close callback failed")
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()

    def __repr__(self) -> str:
        return f"Connection(#{self.id}, pid={self.peer_pid}, {self.framing.value})"


class Server(Generic[Ctx, S]):
    """Accepts connections and answers JSON-RPC on them until shut down.

    `make_ctx(conn)` builds what a handler gets for one request;
    `new_state()` builds each connection's handler state.
    """

    def __init__(
        self,
        registry: Registry[Ctx],
        make_ctx: Callable[[Connection[S]], Ctx],
        new_state: Callable[[], S],
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.dispatcher = Dispatcher(registry, max_batch=self.limits.max_batch_items)
        self.make_ctx = make_ctx
        self.new_state = new_state
        self.connections: set[Connection[S]] = set()
        self.inflight = 0
        self.idle = trio.Event()
        self.shutting_down = False
        self._shutdown = trio.Event()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def serve(
        self,
        sock: socket.socket,
        *,
        before_drain: Callable[[], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a bound, listening socket until `request_shutdown()`.

        `before_drain` runs after accepting stops and before in-flight requests
        are awaited (the app stops its agents there).
        """
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as connections:
            accept_scope = trio.CancelScope()

            async def accept(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
                with accept_scope:
                    await trio.serve_listeners(
                        self._handle,
                        [listener],
                        handler_nursery=connections,
                        task_status=task_status,
                    )

            await connections.start(accept)
            task_status.started()
            await self._shutdown.wait()
            log.info("shutting down: no longer accepting connections")
            self.shutting_down = True
            accept_scope.cancel()
            with trio.move_on_after(self.limits.shutdown_grace_secs) as grace:
                if before_drain is not None:
                    await before_drain()
                if self.inflight:
                    self.idle = trio.Event()
                    await self.idle.wait()
            if grace.cancelled_caught:
                log.warning("shutdown grace over with %d requests in flight", self.inflight)
            connections.cancel_scope.cancel()
        with contextlib.suppress(OSError):
            await listener.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn: Connection[S] = Connection(stream, self)
        try:
            conn.peer_pid, uid = peer_uid(stream)
            if uid != os.getuid():
                await conn.refuse(errors.PermissionDenied(data={"peerUid": uid}))
            elif self.shutting_down:
                await conn.refuse(errors.ShuttingDown())
            elif len(self.connections) >= self.limits.max_connections:
                await conn.refuse(
                    errors.TooManyConnections(data={"limit": self.limits.max_connections})
                )
            else:
                self.connections.add(conn)
                await conn.run()
        except Exception:
            log.exception("connection %r failed", conn)
        finally:
            self.connections.discard(conn)
            await conn.aclose()

    def __repr__(self) -> str:
        return (
            f"Server(connections={len(self.connections)}, inflight={self.inflight},"
            f" shutting_down={self.shutting_down})"
        )
