"""A run's output in memory (`LineRing`) and the flood gate on its events (`FloodGate`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corral.models import LogEntry
from corrald.process.lines import ENTRY_OVERHEAD, FloodGate, LineRing, Skipped, newest_within
from corrald.process.logfile import make_log_entry


def entry(offset: int, size: int = 10, stream: str = "stdout") -> LogEntry:
    return make_log_entry(offset, stream, "x" * size, 0.0)


def test_ring_keeps_the_newest_lines_within_its_line_bound() -> None:
    ring = LineRing(max_lines=3, max_bytes=1 << 20)
    for i in range(10):
        ring.append(entry(i))
    assert [e.offset for e in ring] == [7, 8, 9]
    assert [e.offset for e in ring.tail(2)] == [8, 9]
    assert [e.offset for e in ring.tail(since_offset=8)] == [8, 9]
    assert [e.offset for e in ring.tail(5)] == [7, 8, 9]


def test_ring_keeps_the_newest_lines_within_its_byte_bound() -> None:
    ring = LineRing(max_lines=1000, max_bytes=10 * (1000 + ENTRY_OVERHEAD))
    for i in range(100):
        ring.append(entry(i, 1000))
    assert len(ring) == 10 and ring.bytes <= ring.max_bytes
    assert [e.offset for e in ring][-1] == 99


def test_ring_always_keeps_the_last_line_even_if_it_alone_is_over() -> None:
    ring = LineRing(max_lines=10, max_bytes=100)
    ring.append(entry(0, 50))
    ring.append(entry(1, 5000))
    assert [e.offset for e in ring] == [1]


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=60), st.integers(1, 20))
def test_ring_bytes_are_the_sum_of_what_it_holds(sizes: list[int], lines: int) -> None:
    ring = LineRing(max_lines=lines, max_bytes=20_000)
    for i, size in enumerate(sizes):
        ring.append(entry(i, size))
        assert ring.bytes == sum(len(e.line) + ENTRY_OVERHEAD for e in ring)
        assert len(ring) <= lines
        assert len(ring) == 1 or ring.bytes <= 20_000


def test_newest_within_bounds() -> None:
    entries = [entry(i, 100) for i in range(50)]
    kept = newest_within(entries, 10, 1 << 20)
    assert [e.offset for e in kept] == list(range(40, 50))
    kept = newest_within(entries, 100, 3 * (100 + ENTRY_OVERHEAD))
    assert [e.offset for e in kept] == [47, 48, 49]
    assert [e.offset for e in newest_within([entry(0, 10_000)], 5, 10)] == [0]
    assert newest_within([], 5, 10) == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gate_admits_a_burst_then_the_rate_and_sums_up_the_rest() -> None:
    clock = Clock()
    gate = FloodGate(rate=10, burst=5, clock=clock)
    admitted = [i for i in range(20) if gate.admit(entry(i, 3))]
    assert admitted == [0, 1, 2, 3, 4]
    skipped = gate.flush()
    assert skipped is not None
    assert (skipped.first, skipped.last, skipped.lines, skipped.bytes) == (5, 19, 15, 45)
    assert gate.flush() is None  # handed over once
    clock.now += 0.35  # 3.5 tokens back
    admitted = [i for i in range(20, 30) if gate.admit(entry(i))]
    assert admitted == [20, 21, 22]
    assert gate.skipped_total == 15 + 7


def test_gate_lets_daemon_notes_through_and_zero_rate_means_no_limit() -> None:
    clock = Clock()
    gate = FloodGate(rate=1, burst=1, clock=clock)
    assert gate.admit(entry(0))
    assert not gate.admit(entry(1))
    assert gate.admit(entry(2, stream="daemon"), always=True)
    unlimited = FloodGate(rate=0, burst=1, clock=clock)
    assert all(unlimited.admit(entry(i)) for i in range(10_000))


@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.05), st.booleans()), min_size=1, max_size=300
    )
)
def test_announced_and_skipped_offsets_cover_every_line_exactly_once(
    steps: list[tuple[float, bool]],
) -> None:
    """What a subscriber sees (lines and summaries) accounts for every offset, in order."""
    clock = Clock()
    gate = FloodGate(rate=50, burst=4, clock=clock)
    seen: list[int] = []

    def flush() -> None:
        if (s := gate.flush()) is not None:
            assert s.lines == s.last - s.first + 1
            seen.extend(range(s.first, s.last + 1))

    for offset, (dt, tick) in enumerate(steps):
        clock.now += dt
        if gate.admit(entry(offset)):
            flush()
            seen.append(offset)
        if tick:
            flush()
    flush()
    assert seen == list(range(len(steps)))


def test_ring_holds_blocks_and_makes_entries_only_when_asked() -> None:
    ring = LineRing(max_lines=5, max_bytes=1 << 20)
    ring.extend(0, "stdout", 1.0, "a\nb\nc", 3)
    ring.extend(3, "stderr", 2.0, "d\ne\nf\ng", 4)
    assert len(ring) == 5
    got = [(e.offset, e.stream, e.line, e.at) for e in ring]
    assert got == [
        (2, "stdout", "c", 1.0),
        (3, "stderr", "d", 2.0),
        (4, "stderr", "e", 2.0),
        (5, "stderr", "f", 2.0),
        (6, "stderr", "g", 2.0),
    ]
    assert [e.line for e in ring.tail(2)] == ["f", "g"]
    assert [e.offset for e in ring.tail(since_offset=4)] == [4, 5, 6]
    assert [e.offset for e in ring.tail(2, since_offset=1)] == [5, 6]
    assert ring.tail(since_offset=7) == []
    ring.extend(7, "stdout", 3.0, "h\ni\nj\nk\nl", 5)  # the first two blocks are all hidden now
    assert [e.line for e in ring] == ["h", "i", "j", "k", "l"]
    assert ring.bytes == 5 + ENTRY_OVERHEAD  # one block: its characters and one object


def test_a_single_line_may_hold_a_newline_and_stays_one_line() -> None:
    ring = LineRing(max_lines=5, max_bytes=1 << 20)
    ring.append(make_log_entry(0, "daemon", "cannot start:\nno such file", 0.0))
    assert [e.line for e in ring] == ["cannot start:\nno such file"]


@given(st.lists(st.lists(st.text(alphabet="xy\r", max_size=30), min_size=1, max_size=40)))
def test_blocks_keep_the_newest_lines_as_lines_appended_one_by_one_would(
    blocks: list[list[str]],
) -> None:
    """Within the line bound, reading a run's output in blocks changes nothing a reader sees."""
    ring = LineRing(max_lines=25, max_bytes=1 << 30)
    every: list[str] = []
    for lines in blocks:
        ring.extend(len(every), "stdout", 0.0, "\n".join(lines), len(lines))
        every += lines
        kept = every[-25:]
        assert [e.line for e in ring] == kept
        assert [e.offset for e in ring] == list(range(len(every) - len(kept), len(every)))
        assert len(ring) == len(kept)
        assert ring.bytes >= sum(map(len, kept))  # (and the hidden rest of the oldest block)


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30))
def test_blocks_stay_within_the_byte_bound_but_the_newest(sizes: list[int]) -> None:
    ring = LineRing(max_lines=1000, max_bytes=5000)
    offset = 0
    for size in sizes:
        lines = ["z" * 9] * (size // 10 + 1)
        ring.extend(offset, "stdout", 0.0, "\n".join(lines), len(lines))
        offset += len(lines)
        assert ring.bytes <= max(5000, 9 * len(lines) + ENTRY_OVERHEAD)
        assert [e.offset for e in ring][-1] == offset - 1


def test_many_short_lines_do_not_push_the_newest_lines_out() -> None:
    """A read of 20,000 short lines is one block of ~200 KB, not 20,000 entries' worth."""
    ring = LineRing(max_lines=2000, max_bytes=4 * 1024 * 1024)
    short = ["s" * 9] * 20_000
    ring.extend(0, "stdout", 0.0, "\n".join(short), len(short))
    ring.extend(20_000, "stdout", 0.0, "a\nb", 2)
    assert len(ring) == 2000
    assert [e.offset for e in ring.tail(3)] == [19_999, 20_000, 20_001]


def test_gate_takes_the_first_lines_of_a_block_and_counts_the_rest() -> None:
    clock = Clock()
    gate = FloodGate(rate=10, burst=5, clock=clock)
    assert gate.take(3) == 3
    assert gate.take(4) == 2  # two tokens left
    gate.skip(5, 2, 30)
    gate.skip(7, 10, 100)
    assert gate.flush() == Skipped(5, 16, 12, 130)
    assert gate.take(3, always=True) == 3  # the daemon's notes pass, and spend
    clock.now += 0.2
    assert gate.take(10) == 2
    assert FloodGate(rate=0, burst=1, clock=clock).take(10**6) == 10**6
