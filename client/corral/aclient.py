"""The trio client: `AsyncClient`, with requests pipelined on one connection.

Kept apart from `corral.client` so that blocking callers (the CLI above all)
never import trio.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import trio

from corral import errors
from corral.client import _Methods, _params
from corral.connection import NOT_LISTENING, answer, not_running
from corral.models import Event
from corral.paths import socket_path
from corral.transport import MAX_FRAME, Decoder, Subscription, encode, request

__all__ = ["AsyncClient"]


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
            if exc.errno in NOT_LISTENING:
                raise not_running(path, exc) from None
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
        return answer(message)

    async def events(
        self,
        topics: list[str] | None = None,
        *,
        session_id: str | None = None,
        since_seq: int | None = None,
        agent_id: str | None = None,
        reconnect: bool = True,
    ) -> AsyncGenerator[Event, None]:
        """Subscribe and yield events, resuming after reconnects (own connection).

        The same rules as `Client.events` (both drive `transport.Subscription`).
        Use it as `async with contextlib.aclosing(client.events()) as stream:`
        so the connection closes as soon as you stop. It holds no nursery or
        cancel scope across a `yield` (trio forbids that in generators).
        """
        sub = Subscription(topics, session_id, since_seq, agent_id)
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
