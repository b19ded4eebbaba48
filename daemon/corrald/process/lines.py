"""A run's output in memory: a ring bounded by lines and bytes, and a flood gate for events.

Every line of a run goes to its log file (on disk, capped) and its ring (in
memory, bounded here); the ring answers `parallel_get_agent_logs` for
recent lines and the file for the rest. Separately, `FloodGate` decides
which lines are announced as `log` events: up to `rate` lines a second per
run, with bursts of `burst`; beyond that the lines are counted, not
announced, and one `log.skipped` summary says exactly which offsets were
left out, so a subscriber either keeps up or knows what to fetch.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from corral.models import LogEntry

#: What a ring may hold per entry besides the text: the model and its fields.
ENTRY_OVERHEAD = 200


def entry_size(entry: LogEntry) -> int:
    return len(entry.line) + ENTRY_OVERHEAD


class LineRing:
    """The last lines of a run, at most `max_lines` of them and about `max_bytes` in all."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max(1, max_bytes)
        self._entries: collections.deque[LogEntry] = collections.deque()
        self.bytes = 0

    def append(self, entry: LogEntry) -> None:
        self._entries.append(entry)
        self.bytes += entry_size(entry)
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_lines or self.bytes > self.max_bytes
        ):
            self.bytes -= entry_size(self._entries.popleft())

    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[LogEntry]:
        """The last `n` entries, or those at or after `since_offset`, oldest first."""
        entries = self._entries
        if since_offset is not None:
            out = [e for e in entries if e.offset >= since_offset]
            return out if n is None else out[-n:]
        if n is None or n >= len(entries):
            return list(entries)
        return [entries[i] for i in range(len(entries) - n, len(entries))]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self._entries)


def newest_within(entries: list[LogEntry], max_lines: int, max_bytes: int) -> list[LogEntry]:
    """The newest of `entries` within smaller bounds (what a finished run keeps), oldest first."""
    kept: list[LogEntry] = []
    size = 0
    for entry in reversed(entries):
        size += entry_size(entry)
        if kept and (len(kept) >= max_lines or size > max_bytes):
            break
        kept.append(entry)
    kept.reverse()
    return kept


@dataclass
class Skipped:
    """Lines left unannounced: offsets `first`..`last` (inclusive), all of them."""

    first: int
    last: int
    lines: int
    bytes: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.first, self.last, self.lines, self.bytes)


class FloodGate:
    """A token bucket per run: which lines become `log` events, and what was skipped.

    `admit` is asked once per line in offset order. The skipped lines between
    two announced ones are always contiguous, and `flush` hands their summary
    over before the next announced line, at the sampler's tick and at the end.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate  # lines per second; 0 announces every line
        self.burst = max(1, burst)
        self.clock = clock
        self._tokens = float(self.burst)
        self._at = clock()
        self.pending: Skipped | None = None
        self.skipped_total = 0

    def admit(self, entry: LogEntry, *, always: bool = False) -> bool:
        """True to announce `entry`; False when it is counted in `pending` instead.

        `always` lines (the daemon's own notes) are announced regardless, and
        still spend a token.
        """
        if self.rate <= 0:  # no limit
            return True
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1 or always:
            self._tokens = max(0.0, self._tokens - 1)
            return True
        size = len(entry.line)
        if self.pending is None:
            self.pending = Skipped(entry.offset, entry.offset, 1, size)
        else:
            self.pending.last = entry.offset
            self.pending.lines += 1
            self.pending.bytes += size
        self.skipped_total += 1
        return False

    def flush(self) -> Skipped | None:
        """The pending summary, once (None when nothing was skipped since the last one)."""
        pending, self.pending = self.pending, None
        return pending
