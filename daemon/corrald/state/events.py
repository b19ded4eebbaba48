"""Numbered events, a bounded replay window, and subscribers that cannot slow us.

An event is encoded to JSON once, when it is made (`Record`), and kept as
those bytes: the window, the subscribers' queues and a replay from SQLite
all hold the same bytes, and delivery writes them as they are.

Publishing is in two steps so that nothing is announced before it is
durable: `make` numbers and encodes an event (and, for state events, writes
it into the store's current transaction); `fan_out` appends it to the window
and offers it to subscribers, which the engine does once the transaction has
committed. Log lines are not state: they are never stored, only fanned out.

Seq numbers are reserved in blocks in the store's meta table, so they never
repeat across restarts (they may skip). Each subscriber has a bounded queue;
one that falls behind gets a final `lagged` notice and is dropped.
"""

from __future__ import annotations

import collections
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from corral import errors
from corral.events import Payload, event_type
from corral.models import rfc3339
from corrald.state.store import Store

SEQ_BLOCK = 10_000
UNPERSISTED = frozenset({"log"})


class Record:
    """One event: its filter keys and its encoded JSON (`{seq, type, sessionId, payload, at}`)."""

    __slots__ = ("data", "seq", "session_id", "type")

    def __init__(self, seq: int, type_: str, session_id: str | None, data: bytes) -> None:
        self.seq = seq
        self.type = type_
        self.session_id = session_id
        self.data = data

    def decoded(self) -> dict[str, Any]:
        """The event as a JSON object (tests and the rare consumer that needs one)."""
        value: dict[str, Any] = json.loads(self.data)
        return value

    def __repr__(self) -> str:
        return f"Record({self.seq}, {self.type}, {self.session_id})"


def encode(seq: int, type_: str, session_id: str | None, payload: Payload, at: float) -> bytes:
    """The wire form of an event, built around the payload's own JSON."""
    head = json.dumps({"seq": seq, "type": type_, "sessionId": session_id}, separators=(",", ":"))
    body = payload.model_dump_json(by_alias=True, exclude_none=True)
    return f'{head[:-1]},"payload":{body},"at":"{rfc3339(at)}"}}'.encode()


class Subscription:
    """One subscriber's filter and bounded queue."""

    _ids = itertools.count(1)

    def __init__(self, topics: set[str] | None, session_id: str | None, capacity: int) -> None:
        self.id = f"sub-{next(self._ids)}"
        self.topics = topics
        self.session_id = session_id
        self.send, self.receive = trio.open_memory_channel[Record](capacity)
        self.lagged = False

    def wants(self, event: Record) -> bool:
        if self.topics is not None and not _topic_match(self.topics, event.type):
            return False
        return self.session_id is None or event.session_id in (None, self.session_id)

    def __repr__(self) -> str:
        stats = self.send.statistics()
        return f"Subscription({self.id}, queued={stats.current_buffer_used}, lagged={self.lagged})"


def _topic_match(topics: set[str], event_type_: str) -> bool:
    # "task" matches "task.status"; exact names match themselves.
    return event_type_ in topics or event_type_.split(".", 1)[0] in topics


class EventBus:
    """Numbers events, keeps the replay window, fans out to subscribers."""

    def __init__(
        self,
        store: Store | None,
        *,
        window: int = 50_000,
        queue_size: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.window: collections.deque[Record] = collections.deque(maxlen=window)
        self.queue_size = queue_size
        self.clock = clock
        self.subscribers: dict[str, Subscription] = {}
        self._seq = 0
        self._reserved = 0
        if store is not None:
            self._seq = int(store.get_meta("event_seq_reserved") or 0)
            self._reserved = self._seq
            # Replay what survived the restart (state events only).
            for seq, type_, session_id, data in store.events_after(self._seq - window, window):
                self.window.append(Record(seq, type_, session_id, data.encode()))

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def oldest(self) -> int:
        """The oldest seq a client may resume after (sinceSeq >= oldest - 1)."""
        return self.window[0].seq if self.window else self._seq + 1

    def mark(self) -> tuple[int, int]:
        """Where numbering stands, for `rewind` if the transaction being built fails."""
        return (self._seq, self._reserved)

    def rewind(self, mark: tuple[int, int]) -> None:
        """Forget seqs made since `mark`: their transaction (and its reservation) rolled back."""
        self._seq, self._reserved = mark

    def make(self, session_id: str | None, payload: Payload) -> Record:
        """Number and encode an event; a state event is also written to the store.

        Call inside the store transaction that makes the change, then
        `fan_out` once it has committed.
        """
        self._seq += 1
        if self.store is not None and self._seq > self._reserved:
            self._reserved = self._seq + SEQ_BLOCK
            self.store.set_meta("event_seq_reserved", str(self._reserved))
        type_ = event_type(payload)
        record = Record(
            self._seq,
            type_,
            session_id,
            encode(self._seq, type_, session_id, payload, self.clock()),
        )
        if self.store is not None and type_ not in UNPERSISTED:
            self.store.put_event(record.seq, type_, session_id, record.data.decode())
            if record.seq % 1000 == 0:
                self.store.prune_events(self.window.maxlen or 50_000)
        return record

    def fan_out(self, records: Iterable[Record]) -> None:
        """Retain `records` in the window and offer them to every subscriber. Never blocks."""
        subscribers = self.subscribers
        for record in records:
            self.window.append(record)
            for sub in list(subscribers.values()):
                if sub.wants(record):
                    self._offer(sub, record)

    def _offer(self, sub: Subscription, event: Record) -> None:
        try:
            sub.send.send_nowait(event)
        except trio.WouldBlock:
            sub.lagged = True
            self.unsubscribe(sub.id)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.unsubscribe(sub.id)

    def subscribe(
        self, topics: list[str] | None, session_id: str | None, since_seq: int | None
    ) -> Subscription:
        """Register a subscriber, pre-filled with what it missed after `since_seq`."""
        sub = Subscription(set(topics) if topics else None, session_id, self.queue_size)
        if since_seq is not None:
            if since_seq > self._seq:
                raise errors.EventsExpired(
                    f"sinceSeq {since_seq} is ahead of the newest event {self._seq}",
                    {"sinceSeq": since_seq, "newest": self._seq, "oldest": self.oldest},
                )
            if since_seq < self.oldest - 1:
                raise errors.EventsExpired(
                    f"sinceSeq {since_seq} is older than the window, which starts at seq"
                    f" {self.oldest} (the last {self.window.maxlen} events are kept)",
                    {"sinceSeq": since_seq, "oldest": self.oldest, "newest": self._seq},
                )
            backlog = [e for e in self.window if e.seq > since_seq and sub.wants(e)]
            if len(backlog) > self.queue_size:
                raise errors.EventsExpired(
                    f"{len(backlog)} events to replay exceed the subscriber queue"
                    f" ({self.queue_size}); resume from a later seq",
                    {"sinceSeq": since_seq, "oldest": self.oldest, "newest": self._seq},
                )
            for event in backlog:
                sub.send.send_nowait(event)
        self.subscribers[sub.id] = sub
        return sub

    def unsubscribe(self, sub_id: str) -> bool:
        sub = self.subscribers.pop(sub_id, None)
        if sub is None:
            return False
        sub.send.close()
        return True

    def __repr__(self) -> str:
        return f"EventBus(seq={self._seq}, window={len(self.window)}, subs={len(self.subscribers)})"


#: Most events written to a subscriber in one system call.
BURST = 512


async def pump(
    sub: Subscription,
    deliver: Callable[[list[Record]], Awaitable[bool]],
    on_lag: Callable[[], Awaitable[Any]],
) -> None:
    """Deliver a subscription's events until it ends; tell the client if it lagged.

    Whatever is queued goes out in one write, so a subscriber keeps up with
    bursts (a 1,000-task batch) even when handlers leave it few turns.
    """
    async with sub.receive:
        async for event in sub.receive:
            burst = [event]
            while len(burst) < BURST:
                try:
                    burst.append(sub.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if not await deliver(burst):
                return
    if sub.lagged:
        await on_lag()
