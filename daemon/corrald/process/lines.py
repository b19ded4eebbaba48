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
from corrald.process.logfile import make_log_entry

#: What a ring may hold per entry besides the text: the model and its fields.
ENTRY_OVERHEAD = 200


def entry_size(entry: LogEntry) -> int:
    return len(entry.line) + ENTRY_OVERHEAD


class _Block:
    """`count` consecutive lines of one stream read at once (offsets `first`..), at `at`.

    Kept as they came: `text` is the lines joined by newlines (one line as
    it is), split only when someone asks for them.
    """

    __slots__ = ("at", "count", "first", "size", "stream", "text")

    def __init__(self, first: int, stream: str, at: float, text: str, count: int) -> None:
        self.first = first
        self.stream = stream
        self.at = at
        self.text = text
        self.count = count
        # What it holds: the lines' characters and one object (as `entry_size` for one line).
        self.size = len(text) - (count - 1) + ENTRY_OVERHEAD

    def lines(self) -> list[str]:
        return [self.text] if self.count == 1 else self.text.split("\n")


class LineRing:
    """The last `max_lines` lines of a run, in about `max_bytes` (`bytes`: what it holds).

    Lines are held as they were read, a block per read of a pipe, and a
    `LogEntry` is made only for the lines someone asks for: a flood costs
    no object per line that passes through (`bytes` counts an object per
    block). Whole blocks are dropped from the old end, so the oldest block
    may hold lines older than the newest `max_lines` (hidden, counted in
    `bytes`); the newest block always stays.
    """

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max(1, max_bytes)
        self._blocks: collections.deque[_Block] = collections.deque()
        self._held = 0  # lines in the blocks, hidden ones included
        self.bytes = 0

    def append(self, entry: LogEntry) -> None:
        self.extend(entry.offset, entry.stream, entry.at, entry.line, 1)

    def extend(self, first: int, stream: str, at: float, text: str, count: int) -> None:
        """Add `count` consecutive lines of one stream (offsets `first`..) read at `at`.

        `text` is those lines joined by newlines (with `count` 1: the line).
        """
        block = _Block(first, stream, at, text, count)
        blocks = self._blocks
        blocks.append(block)
        self._held += count
        self.bytes += block.size
        while len(blocks) > 1 and (
            self._held - blocks[0].count >= self.max_lines or self.bytes > self.max_bytes
        ):
            old = blocks.popleft()
            self._held -= old.count
            self.bytes -= old.size

    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[LogEntry]:
        """The last `n` entries, or those at or after `since_offset`, oldest first."""
        need = len(self) if n is None else max(0, min(n, len(self)))
        parts: list[list[LogEntry]] = []
        for block in reversed(self._blocks):  # newest first, until enough
            take = min(need, block.count)
            if since_offset is not None:
                take = min(take, block.first + block.count - since_offset)
            if take <= 0:
                break
            skip = block.count - take
            first, stream, at = block.first, block.stream, block.at
            lines = block.lines()
            parts.append(
                [make_log_entry(first + i, stream, lines[i], at) for i in range(skip, block.count)]
            )
            need -= take
        return [entry for part in reversed(parts) for entry in part]

    def __len__(self) -> int:
        return min(self._held, self.max_lines)

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.tail())


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

    `take` (or `admit`, for one line) is asked in offset order. The skipped lines between
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

    def take(self, n: int, *, always: bool = False) -> int:
        """How many of the next `n` lines to announce: the first ones, one token each.

        The caller announces those and hands the rest to `skip`. `always`
        lines (the daemon's own notes) are all announced, and still spend
        their tokens.
        """
        if self.rate <= 0:  # no limit
            return n
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        taken = n if always else min(n, int(self._tokens))
        self._tokens = max(0.0, self._tokens - taken)
        return taken

    def skip(self, first: int, lines: int, size: int) -> None:
        """Count `lines` lines (offsets `first`.., `size` characters in all) as left out."""
        if lines <= 0:
            return
        if self.pending is None:
            self.pending = Skipped(first, first + lines - 1, lines, size)
        else:
            self.pending.last = first + lines - 1
            self.pending.lines += lines
            self.pending.bytes += size
        self.skipped_total += lines

    def admit(self, entry: LogEntry, *, always: bool = False) -> bool:
        """True to announce `entry`; False when it is counted in `pending` instead."""
        if self.take(1, always=always):
            return True
        self.skip(entry.offset, 1, len(entry.line))
        return False

    def flush(self) -> Skipped | None:
        """The pending summary, once (None when nothing was skipped since the last one)."""
        pending, self.pending = self.pending, None
        return pending
