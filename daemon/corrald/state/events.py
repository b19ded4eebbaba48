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

import bisect
import collections
import itertools
import json
import operator
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from json.encoder import encode_basestring
from typing import Any

import trio

from corral import errors
from corral.events import LogPayload, LogSkippedPayload, Payload, event_type
from corral.models import rfc3339
from corrald.state.store import Store

SEQ_BLOCK = 10_000
UNPERSISTED = frozenset({"log", "log.skipped"})


class LogSpan:
    """Output lines of one run, offsets `first`..`last`: what a `log` or `log.skipped` covers."""

    __slots__ = ("agent_id", "bytes", "first", "last", "lines", "seq", "task_id")

    def __init__(
        self, agent_id: str, task_id: str, first: int, last: int, lines: int, nbytes: int
    ) -> None:
        self.agent_id = agent_id
        self.task_id = task_id
        self.first = first
        self.last = last
        self.lines = lines
        self.bytes = nbytes
        self.seq = 0  # of the last event merged in

    @staticmethod
    def of(payload: Payload) -> LogSpan | None:
        if isinstance(payload, LogPayload):
            return LogSpan(
                payload.agent_id,
                payload.task_id,
                payload.offset,
                payload.offset,
                1,
                len(payload.line),
            )
        if isinstance(payload, LogSkippedPayload):
            return LogSpan(
                payload.agent_id,
                payload.task_id,
                payload.first,
                payload.last,
                payload.lines,
                payload.bytes,
            )
        return None

    def __repr__(self) -> str:
        return f"LogSpan({self.agent_id}, {self.first}..{self.last}, lines={self.lines})"


class _Unknown:
    """Not read yet (an event reloaded from the store: its payload says)."""


_UNKNOWN = _Unknown()


class Record:
    """One event: its filter keys and its encoded JSON (`{seq, type, sessionId, payload, at}`).

    `span` is set for output lines (`log`, `log.skipped`), which a slow
    subscriber may receive summed up instead of one by one.
    """

    __slots__ = ("_agent_id", "data", "seq", "session_id", "span", "type")

    def __init__(
        self,
        seq: int,
        type_: str,
        session_id: str | None,
        data: bytes,
        span: LogSpan | None = None,
        agent_id: str | _Unknown | None = _UNKNOWN,
    ) -> None:
        self.seq = seq
        self.type = type_
        self.session_id = session_id
        self.data = data
        self.span = span
        self._agent_id = agent_id

    @property
    def agent_id(self) -> str | None:
        """The agent the event is about (its payload's `agentId`), if any.

        Events made here know it; one reloaded from the store is read for it
        once, the first time a subscriber filters by agent.
        """
        agent_id = self._agent_id
        if isinstance(agent_id, _Unknown):
            found = self.decoded().get("payload", {}).get("agentId")
            agent_id = self._agent_id = found if isinstance(found, str) else None
        return agent_id

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


#: A str as JSON the way pydantic-core writes it (non-ASCII as it is, control characters escaped).
_text = encode_basestring
_fast_log_lines: bool | None = None  # does `make_log_lines` write what `encode` does? (probed once)


def _log_fields(
    agent_id: str, task_id: str, offset: int, stream: str, line: str, at: float, cap: int
) -> dict[str, Any]:
    cut = line[:cap]
    return {
        "agent_id": agent_id,
        "task_id": task_id,
        "offset": offset,
        "stream": stream,
        "line": cut,
        "at": at,
        "truncated": len(line) > cap,
    }


def _same_as_models() -> bool:
    """True if `make_log_lines` writes what `encode` does (a changed `LogPayload` would not)."""
    global _fast_log_lines
    if _fast_log_lines is None:
        _fast_log_lines = True  # (the probe itself takes the fast way)
        probe = EventBus(None, clock=lambda: 2.5)
        line = 'é\x01\x7f\u2028"\\ \t\n' + "x" * 10
        fast = probe.make_log_lines("s-1", "a-1", "t", 7, "stderr", [line], 1.25, 12)[0]
        payload = LogPayload(**_log_fields("a-1", "t", 7, "stderr", line, 1.25, 12))
        _fast_log_lines = fast.data == encode(fast.seq, "log", "s-1", payload, 2.5)
    return _fast_log_lines


#: A subscriber with this many events (or bytes) queued gets output lines summed up.
HOLD_EVENTS = 1000
HOLD_BYTES = 2 * 1024 * 1024


class Subscription:
    """One subscriber's filter and bounded queue.

    While its queue is long (`HOLD_EVENTS`, `HOLD_BYTES`), output lines are
    held back as one `LogSpan` per run instead of queued; the spans go out as
    `log.skipped` summaries once the queue has drained by half, or before any
    other event so that seqs stay in order. A subscriber that reads slowly
    thus gets fewer lines, and knows exactly which ones it did not get,
    rather than falling behind until it is dropped.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        topics: set[str] | None,
        session_id: str | None,
        capacity: int,
        capacity_bytes: int = 64 * 1024 * 1024,
        agent_id: str | None = None,
    ) -> None:
        self.id = f"sub-{next(self._ids)}"
        self.topics = topics
        self.session_id = session_id
        self.agent_id = agent_id
        self.capacity_bytes = capacity_bytes
        self.send, self.receive = trio.open_memory_channel[Record](capacity)
        self.lagged = False
        self.queued_bytes = 0  # of the events offered and not yet taken by `pump`
        self.held: dict[str, tuple[str | None, LogSpan]] = {}  # by agent id
        self.summed_lines = 0  # output lines this subscriber got summed up, not one by one
        #: kept events it asked to resume after: `pump` sends them before the queue
        self.backlog: list[Record] = []

    def queued(self) -> int:
        return self.send.statistics().current_buffer_used

    def offer(self, record: Record) -> bool:
        """Queue `record` (or hold it back); False if the queue is full: the subscriber lags."""
        span = record.span
        if span is not None and (self.queued() >= HOLD_EVENTS or self.queued_bytes >= HOLD_BYTES):
            self._hold(record, span)
            return True
        if self.held and not self.release_held():
            return False
        return self._put(record)

    def _hold(self, record: Record, span: LogSpan) -> None:
        self.summed_lines += span.lines
        entry = self.held.get(span.agent_id)
        if entry is None:
            mine = LogSpan(
                span.agent_id, span.task_id, span.first, span.last, span.lines, span.bytes
            )
            self.held[span.agent_id] = (record.session_id, mine)
        else:
            mine = entry[1]
            mine.last = span.last
            mine.lines += span.lines
            mine.bytes += span.bytes
        mine.seq = record.seq

    def release_held(self) -> bool:
        """Queue the held spans as `log.skipped` summaries, in seq order."""
        held = sorted(self.held.values(), key=lambda e: e[1].seq)
        self.held.clear()
        now = time.time()
        for session_id, span in held:
            payload = LogSkippedPayload(
                agent_id=span.agent_id,
                task_id=span.task_id,
                first=span.first,
                last=span.last,
                lines=span.lines,
                bytes=span.bytes,
            )
            data = encode(span.seq, "log.skipped", session_id, payload, now)
            record = Record(span.seq, "log.skipped", session_id, data, agent_id=span.agent_id)
            if not self._put(record):
                return False
        return True

    def _put(self, record: Record) -> bool:
        if self.queued_bytes + len(record.data) > self.capacity_bytes:
            return False
        try:
            self.send.send_nowait(record)
        except trio.WouldBlock:
            return False
        self.queued_bytes += len(record.data)
        return True

    @property
    def wants_all(self) -> bool:
        return self.topics is None and self.session_id is None and self.agent_id is None

    def wants(self, event: Record) -> bool:
        if self.topics is not None and not _topic_match(self.topics, event.type):
            return False
        if self.agent_id is not None and event.agent_id != self.agent_id:
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
        window_bytes: int = 32 * 1024 * 1024,
        window_log_bytes: int = 4 * 1024 * 1024,
        queue_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.window: collections.deque[Record] = collections.deque()
        self.window_size = window
        self.window_bytes = window_bytes
        self._window_used = 0
        # Output lines may take only this much of the window: a flood of them
        # would otherwise fill it with megabytes nobody resumes for (they are
        # in the runs' rings and log files) and keep the daemon's RSS up.
        self.window_log_bytes = window_log_bytes
        self._window_log_used = 0
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.clock = clock
        self.subscribers: dict[str, Subscription] = {}
        self._seq = 0
        self._reserved = 0
        if store is not None:
            self._seq = int(store.get_meta("event_seq_reserved") or 0)
            self._reserved = self._seq
            # Replay what survived the restart (state events only).
            for seq, type_, session_id, data in store.events_after(self._seq - window, window):
                self._retain(Record(seq, type_, session_id, data.encode()))

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
        seq = self._number()
        type_ = event_type(payload)
        record = Record(
            seq,
            type_,
            session_id,
            encode(seq, type_, session_id, payload, self.clock()),
            LogSpan.of(payload),
            getattr(payload, "agent_id", None),
        )
        if self.store is not None and type_ not in UNPERSISTED:
            self.store.put_event(record.seq, type_, session_id, record.data.decode())
            if record.seq % 1000 == 0:
                self.store.prune_events(self.window_size)
        return record

    def _number(self) -> int:
        self._seq += 1
        if self.store is not None and self._seq > self._reserved:
            self._reserved = self._seq + SEQ_BLOCK
            self.store.set_meta("event_seq_reserved", str(self._reserved))
        return self._seq

    def make_log_lines(
        self,
        session_id: str | None,
        agent_id: str,
        task_id: str,
        first: int,
        stream: str,
        lines: Sequence[str],
        at: float,
        cap: int,
    ) -> list[Record]:
        """`log` events for consecutive output lines of a run (offsets `first`..), cut at `cap`.

        The bytes `make` gives for each line's `LogPayload`, written without
        building the models (a flood announces thousands of lines at once):
        used only while a probe shows them equal. Output lines are never
        stored, so `make`'s numbering is all they share.
        """
        if not _same_as_models():
            return [
                self.make(
                    session_id,
                    LogPayload(**_log_fields(agent_id, task_id, first + i, stream, line, at, cap)),
                )
                for i, line in enumerate(lines)
            ]
        sid, now, when = json.dumps(session_id), rfc3339(self.clock()), rfc3339(at)
        ids = f'"agentId":{_text(agent_id)},"taskId":{_text(task_id)},"offset":'
        kind = f',"stream":{_text(stream)},"line":'
        records = []
        for offset, line in enumerate(lines, first):
            seq, cut = self._number(), line[:cap]
            truncated = "true" if len(line) > cap else "false"
            data = (
                f'{{"seq":{seq},"type":"log","sessionId":{sid},"payload":{{{ids}{offset}{kind}'
                f'{_text(cut)},"at":"{when}","truncated":{truncated}}},"at":"{now}"}}'
            ).encode()
            span = LogSpan(agent_id, task_id, offset, offset, 1, len(cut))
            records.append(Record(seq, "log", session_id, data, span, agent_id))
        return records

    def fan_out(self, records: Iterable[Record]) -> None:
        """Retain `records` in the window and offer them to every subscriber. Never blocks."""
        subscribers = self.subscribers
        for record in records:
            self._retain(record)
            for sub in list(subscribers.values()):
                if sub.wants(record):
                    self._offer(sub, record)

    def _retain(self, record: Record) -> None:
        """Keep `record` in the window: the last `window_size` events within `window_bytes`.

        Output lines (`log`, `log.skipped`) count against `window_log_bytes` too.
        """
        window = self.window
        window.append(record)
        self._window_used += len(record.data)
        if record.span is not None:
            self._window_log_used += len(record.data)
        while len(window) > 1 and (
            len(window) > self.window_size
            or self._window_used > self.window_bytes
            or self._window_log_used > self.window_log_bytes
        ):
            old = window.popleft()
            self._window_used -= len(old.data)
            if old.span is not None:
                self._window_log_used -= len(old.data)

    def _offer(self, sub: Subscription, event: Record) -> None:
        try:
            if not sub.offer(event):
                sub.lagged = True
                self.unsubscribe(sub.id)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.unsubscribe(sub.id)

    def subscribe(
        self,
        topics: list[str] | None,
        session_id: str | None,
        since_seq: int | None,
        agent_id: str | None = None,
    ) -> Subscription:
        """Register a subscriber, pre-filled with what it missed after `since_seq`."""
        sub = Subscription(
            set(topics) if topics else None,
            session_id,
            self.queue_size,
            self.queue_bytes,
            agent_id,
        )
        if since_seq is not None:
            if since_seq > self._seq:
                raise errors.EventsExpired(
                    f"sinceSeq {since_seq} is ahead of the newest event {self._seq}",
                    {"sinceSeq": since_seq, "newest": self._seq, "oldest": self.oldest},
                )
            if since_seq < self.oldest - 1:
                raise errors.EventsExpired(
                    f"sinceSeq {since_seq} is older than the window, which starts at seq"
                    f" {self.oldest} (the last {self.window_size} events, at most"
                    f" {self.window_bytes} bytes, are kept)",
                    {"sinceSeq": since_seq, "oldest": self.oldest, "newest": self._seq},
                )
            # The replay is sent by `pump`, in bursts, from this snapshot: it
            # neither holds the loop here nor takes room in the live queue.
            window = list(self.window)
            sub.backlog = window[
                bisect.bisect_right(window, since_seq, key=operator.attrgetter("seq")) :
            ]
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
#: Events of a replay written in one system call (~0.5 MB).
REPLAY_BURST = 2048


async def pump(
    sub: Subscription,
    deliver: Callable[[list[Record]], Awaitable[bool]],
    on_lag: Callable[[], Awaitable[Any]],
) -> None:
    """Deliver a subscription's events until it ends; tell the client if it lagged.

    Whatever is queued goes out in one write, so a subscriber keeps up with
    bursts (a 1,000-task batch) even when handlers leave it few turns. A
    replay (`sinceSeq`) goes first, `REPLAY_BURST` events a write, each write
    a turn for every other connection.
    """
    async with sub.receive:
        backlog, sub.backlog = sub.backlog, []
        for i in range(0, len(backlog), REPLAY_BURST):
            burst = backlog[i : i + REPLAY_BURST]
            if not sub.wants_all:
                burst = [e for e in burst if sub.wants(e)]
            if not burst:
                await trio.lowlevel.checkpoint()
            elif not await deliver(burst):
                return
        del backlog
        async for event in sub.receive:
            burst = [event]
            while len(burst) < BURST:
                try:
                    burst.append(sub.receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            sub.queued_bytes -= sum(len(e.data) for e in burst)
            if not await deliver(burst):
                return
            if sub.held and sub.queued() < HOLD_EVENTS // 2:
                sub.release_held()  # room again: say what was left out, then lines again
    if sub.lagged:
        await on_lag()
