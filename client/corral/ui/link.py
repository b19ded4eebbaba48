"""The dashboard's connection to corrald, on asyncio (Textual's loop).

`Client` and `AsyncClient` block or need trio; Textual runs on asyncio, so
the UI drives the same sans-I/O pieces over asyncio streams: `transport`
frames the messages and `transport.Subscription` decides where an event
stream resumes. The typed methods are the ones `corral.client` declares
(`Client.session_get` and so on), so each call's params and result are the
same models the CLI uses and mypy checks them:

    link = Link(path)
    session = await link.call(Client.session_get, session_id=sid)

    async for event in link.events(["task"], on_state=show):  # resumes by itself
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from corral import errors
from corral.client import _params, _Rpc
from corral.models import Event
from corral.paths import socket_path
from corral.transport import Decoder, Subscription, encode, request

__all__ = ["Link", "LinkState"]

P = ParamSpec("P")
R = TypeVar("R")

#: What `events()` reports through `on_state`: connected, or waiting for the daemon.
LinkState = str  # "connected" | "reconnecting"

_NOT_LISTENING = (FileNotFoundError, ConnectionRefusedError)


class _Conn:
    """One NDJSON connection: a stream pair and the transport's decoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder()

    @classmethod
    async def open(cls, path: Path) -> _Conn:
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
        except _NOT_LISTENING as exc:
            raise errors.DaemonNotRunning(
                f"corrald is not running on {path} ({exc.strerror})", {"socket": str(path)}
            ) from None
        return cls(reader, writer)

    async def send(self, message: dict[str, Any]) -> None:
        try:
            self.writer.write(encode(message))
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise errors.ConnectionLost(f"send failed: {exc}") from exc

    async def receive(self) -> dict[str, Any]:
        while (message := self.decoder.next_message()) is None:
            try:
                chunk = await self.reader.read(1 << 16)
            except ConnectionError as exc:
                raise errors.ConnectionLost(str(exc)) from exc
            if not chunk:
                raise errors.ConnectionLost("corrald closed the connection")
            self.decoder.feed(chunk)
        return message

    @property
    def buffered(self) -> bool:
        """True if bytes read are waiting to be taken as messages."""
        return self.decoder.pending > 0

    def close(self) -> None:
        self.writer.close()


class Link:
    """Requests on one connection (pipelined, reconnected on demand) and event streams.

    A request that meets a dropped connection raises `ConnectionLost`; the
    next one connects afresh, so the UI recovers once the daemon is back.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = socket_path(path)
        self._conn: _Conn | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._connecting = asyncio.Lock()
        self.requests = 0  # sent, over the link's life (the bench reads it)
        self.sent: Counter[str] = Counter()  # the same, by method (tests read it)

    async def call(self, rpc: _Rpc[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call a typed method (`Client.<name>`) and validate its answer as its result."""
        if args:
            raise TypeError(f"{rpc.name}() takes keyword arguments only")
        return rpc.adapter.validate_python(
            await self.raw(rpc.name, _params(dict(kwargs), rpc.aliases))
        )

    async def raw(self, method: str, params: dict[str, Any]) -> Any:
        """Send one request, wait for its answer, return its raw result (or raise its error)."""
        conn = await self._connect()
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        self.requests += 1
        self.sent[method] += 1
        try:
            await conn.send(request(method, params, ident))
            message = await future
        finally:
            self._waiting.pop(ident, None)
        if message.get("error") is not None:
            raise errors.CorralError.from_wire(message["error"])
        return message.get("result")

    async def _connect(self) -> _Conn:
        async with self._connecting:
            if self._conn is None:
                self._conn = await _Conn.open(self.path)
                self._reader = asyncio.create_task(self._read(self._conn))
            return self._conn

    async def _read(self, conn: _Conn) -> None:
        lost: errors.CorralError = errors.ConnectionLost("corrald closed the connection")
        try:
            while True:
                message = await conn.receive()
                ident = message.get("id")
                future = self._waiting.pop(ident, None) if isinstance(ident, int) else None
                if future is not None and not future.done():
                    future.set_result(message)
        except (errors.ConnectionLost, errors.FrameTooLarge) as exc:
            lost = exc
        finally:
            if self._conn is conn:
                self._conn = None
            conn.close()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(type(lost)(lost.message, lost.data))
            self._waiting.clear()

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def events(
        self,
        topics: list[str] | None = None,
        *,
        session_id: str | None = None,
        since_seq: int | None = None,
        agent_id: str | None = None,
        on_state: Callable[[LinkState], None] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Yield events forever on a connection of their own, resuming after a restart."""
        return self.follow(Subscription(topics, session_id, since_seq, agent_id), on_state)

    async def follow(
        self,
        sub: Subscription,
        on_state: Callable[[LinkState], None] | None = None,
        retry_secs: float = 0.2,
        batch_secs: float = 0.0,
    ) -> AsyncGenerator[Event, None]:
        """Yield the events of `sub` on a connection of their own, resuming after a restart.

        While the daemon is away, `on_state("reconnecting")` is called and the
        socket is tried again every `retry_secs`; once subscribed again
        (`sinceSeq` = the last event yielded, so nothing is lost or repeated)
        `on_state("connected")`. `sub.last_seq` says where the stream stands.
        With `batch_secs`, once the events read are all taken it waits that
        long before reading again, so a busy stream costs one read (and one
        wake-up) per batch instead of per event. Errors other than a lost
        connection raise.
        """
        state: LinkState | None = None

        def tell(new: LinkState) -> None:
            nonlocal state
            if new != state:
                state = new
                if on_state is not None:
                    on_state(new)

        while True:
            try:
                conn = await _Conn.open(self.path)
            except errors.DaemonNotRunning:
                if state is None:
                    raise
                await asyncio.sleep(retry_secs)  # the daemon is restarting: try again soon
                continue
            try:
                sub.new_connection()
                while True:
                    if sub.wants_subscribe:
                        await conn.send(sub.subscribe())
                    event = sub.receive(await conn.receive())
                    if sub.active:
                        tell("connected")
                    if event is not None:
                        yield event
                        if batch_secs and not conn.buffered:
                            await asyncio.sleep(batch_secs)
            except errors.ConnectionLost:
                tell("reconnecting")
            finally:
                conn.close()

    def __repr__(self) -> str:
        return f"Link({self.path}, connected={self._conn is not None})"
