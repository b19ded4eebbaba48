"""The client's side of the wire: NDJSON frames, and where an event subscription resumes.

Sans-I/O, like the daemon's `rpc.framing`: bytes go in and messages come out,
requests come out to be sent, so all of it is tested without sockets.
`Client`, `AsyncClient` and `watch.EventFeed` drive it over their own
sockets; this is the only place the client parses NDJSON and the only place
the rules of resuming an event stream live.

    decoder = Decoder()
    for message in decoder.feed(chunk):
        ...

    sub = Subscription(topics=["task"])
    while True:                       # per connection, after sub.new_connection()
        if sub.wants_subscribe:
            send(sub.subscribe())
        event = sub.receive(read_message())
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from corral import errors

if TYPE_CHECKING:
    from corral.models import Event

__all__ = ["MAX_FRAME", "Decoder", "Subscription", "encode", "request"]

#: The largest message the client accepts (a big task list or log page fits easily).
MAX_FRAME = 64 * 1024 * 1024


#: Built once: `json.dumps` with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(message: dict[str, Any]) -> bytes:
    """One NDJSON frame: compact JSON and a newline."""
    return (_ENCODER.encode(message) + "\n").encode()


def request(method: str, params: dict[str, Any], ident: int) -> dict[str, Any]:
    """A JSON-RPC 2.0 request object with named params."""
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": ident}


class Decoder:
    """Bytes in, JSON-RPC messages out: one JSON object per line, blank lines skipped.

    Messages are decoded as they are taken, in order, so the ones before a
    bad line are all delivered before it raises. A line that is not a JSON
    object raises `ConnectionLost`: the stream is out of step and the
    connection cannot be trusted any more. A line longer than `max_frame`
    raises `FrameTooLarge` as soon as that much is buffered without a
    newline, so a runaway peer cannot grow the buffer without bound.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._partial = 0  # bytes after the last newline in _buf (an incomplete line)

    @property
    def pending(self) -> int:
        """Bytes buffered, complete lines and the incomplete one."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        """Buffer `data` and iterate every complete message now buffered.

        Messages not taken from the iterator stay buffered for the next
        `feed` or `next_message`.
        """
        if data:
            self._buf += data
            nl = data.rfind(b"\n")
            self._partial = self._partial + len(data) if nl < 0 else len(data) - nl - 1
            if self._partial > self.max_frame:
                raise self._too_large(self._partial)
        return self._drain()

    def next_message(self) -> dict[str, Any] | None:
        """The next complete message, or None until more bytes are fed."""
        # Scanning only when a newline is known to be buffered keeps a large
        # frame arriving in many chunks linear: its bytes are searched once.
        while len(self._buf) > self._partial:
            nl = self._buf.find(b"\n")
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if len(line) > self.max_frame:
                raise self._too_large(len(line))
            if line.strip():
                return _decode(line)
        return None

    def _drain(self) -> Iterator[dict[str, Any]]:
        while (message := self.next_message()) is not None:
            yield message

    def _too_large(self, size: int) -> errors.FrameTooLarge:
        return errors.FrameTooLarge(
            f"a message from corrald is larger than the client's limit ({self.max_frame} bytes)",
            {"limit": self.max_frame, "size": size},
        )

    def __repr__(self) -> str:
        return f"Decoder(pending={len(self._buf)}, max_frame={self.max_frame})"


def _decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line.decode())  # NDJSON is UTF-8, never sniffed as UTF-16
    except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 too
        raise errors.ConnectionLost(
            f"corrald sent a line that is not JSON ({exc})",
            {"line": line[:200].decode(errors="replace")},
        ) from None
    if not isinstance(message, dict):
        raise errors.ConnectionLost(
            f"corrald sent a JSON {type(message).__name__}, not a JSON-RPC message",
            {"line": line[:200].decode(errors="replace")},
        )
    return message


class Subscription:
    """One event stream across connections: what to send, what to deliver, where to resume.

    The driver calls `new_connection()` on each connection it opens, sends
    `subscribe()` whenever `wants_subscribe` is true, and hands every message
    it reads to `receive()`, which returns the `Event` in it when the event
    is new. It never returns one at or before `last_seq`, the seq of the last
    event returned, so nothing repeats across reconnects, and every
    `subscribe()` after the first asks for `sinceSeq=last_seq`, so the daemon
    replays what was missed. A `lagged` notice (the daemon dropped this slow
    subscriber; the connection stays open) makes `wants_subscribe` true
    again: the driver resubscribes from `last_seq` on the same connection.

    An error answer to the subscription (e.g. `EventsExpired` when `last_seq`
    is older than the daemon keeps) raises its `CorralError` from
    `receive()`, and so does a connection-level error (`id: null`). Either
    way `ShuttingDown` raises `ConnectionLost` instead: the daemon is going
    away, and a driver that reconnects should.
    """

    def __init__(
        self,
        topics: Sequence[str] | None = None,
        session_id: str | None = None,
        since_seq: int | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.topics = list(topics) if topics is not None else None
        self.session_id = session_id
        self.agent_id = agent_id
        #: The seq of the last event delivered (or the start: `since_seq`, else the
        #: daemon's newest seq when the first subscription was answered).
        self.last_seq = since_seq
        self.subscription_id: str | None = None
        self.subscribed = 0  # subscriptions answered, over all connections
        self.lagged = 0  # `lagged` notices seen
        self._ids = itertools.count(1)
        self._pending: int | None = None  # the id of the events_subscribe in flight
        self._active = False  # the daemon is pushing to us on this connection
        self._lagged_while_pending = False

    @property
    def wants_subscribe(self) -> bool:
        """True when `subscribe()` should be sent now."""
        return self._pending is None and not self._active

    @property
    def active(self) -> bool:
        """True while subscribed on the current connection."""
        return self._active

    def new_connection(self) -> None:
        """Forget the last connection's subscription; the next one resumes after `last_seq`."""
        self._pending = None
        self._active = False
        self._lagged_while_pending = False

    def params(self) -> dict[str, Any]:
        """The `events_subscribe` params now: filters, and `sinceSeq` once there is a seq."""
        params: dict[str, Any] = {}
        if self.topics is not None:
            params["topics"] = self.topics
        if self.session_id is not None:
            params["sessionId"] = self.session_id
        if self.agent_id is not None:
            params["agentId"] = self.agent_id
        if self.last_seq is not None:
            params["sinceSeq"] = self.last_seq
        return params

    def subscribe(self) -> dict[str, Any]:
        """The `events_subscribe` request to send (it is then in flight)."""
        self._pending = next(self._ids)
        self._lagged_while_pending = False
        return request("events_subscribe", self.params(), self._pending)

    def receive(self, message: dict[str, Any]) -> Event | None:
        """Take one message read from the connection; the new event in it, if any."""
        method = message.get("method")
        if method == "event":
            from corral.models import Event  # loaded late: plain requests need no models

            event = Event.model_validate(message.get("params"))
            if self.last_seq is not None and event.seq <= self.last_seq:
                return None  # replayed and already delivered
            self.last_seq = event.seq
            return event
        if method == "lagged":
            self.lagged += 1
            if self._pending is not None:
                # Dropped before its answer came: resubscribe once that arrives.
                self._lagged_while_pending = True
            else:
                self._active = False
            return None
        if method is not None:
            return None  # a notification this client does not know
        ident = message.get("id")
        if ident is not None and ident == self._pending:
            self._answered(message)
        elif ident is None and isinstance(message.get("error"), dict):
            raise _stream_error(message["error"])
        return None

    def _answered(self, message: dict[str, Any]) -> None:
        self._pending = None
        if message.get("error") is not None:
            raise _stream_error(message["error"])
        result = message.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("seq"), int):
            raise errors.ConnectionLost(
                "corrald answered events_subscribe without a seq", {"result": result}
            )
        self.subscription_id = result.get("subscriptionId")
        if self.last_seq is None:
            self.last_seq = result["seq"]  # start from now: nothing before it is wanted
        self.subscribed += 1
        self._active = not self._lagged_while_pending
        self._lagged_while_pending = False

    def __repr__(self) -> str:
        return (
            f"Subscription(topics={self.topics}, session={self.session_id},"
            f" last_seq={self.last_seq}, active={self._active}, lagged={self.lagged})"
        )


def _stream_error(wire: Any) -> errors.CorralError:
    error = errors.CorralError.from_wire(wire if isinstance(wire, dict) else {})
    if isinstance(error, errors.ShuttingDown):
        return errors.ConnectionLost(error.message, {"code": error.code, **error.data})
    return error
