"""An agent's output read a block at a time: the same lines, events and file as line by line.

`process.run` decodes each read of a pipe whole and hands its lines over as
one string (`_decode`, `AgentRun._hand_over`); the parsers, the log file
and the flood gate take such blocks. These tests hold the block path to
what reading line by line gives, and run a real process through it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.events import LogPayload
from corral.models import AgentActivity, EndReason, LogEntry, ResourceLimits, Violation
from corrald.agents.output import Found, each_line, feed_block
from corrald.agents.parsers import PARSERS, make_parser
from corrald.process.lines import Skipped
from corrald.process.logfile import LogWriter, make_log_entry, read_log
from corrald.process.run import LINE_CAP, AgentRun, _count_lines, _decode, run_agent
from corrald.process.spec import OutputBounds, RunSpec
from corrald.state.events import EventBus


def _line_by_line(data: bytes) -> list[str]:
    """What reading `data` (lines, no newline after the last) one line at a time gives."""
    out = []
    for raw in data.split(b"\n"):
        text = raw.decode("utf-8", "replace")
        out.append(text[:-1] if text.endswith("\r") else text)
    return out


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), min_size=1))
def test_a_block_decodes_to_the_lines_decoding_each_line_gives(lines: list[bytes]) -> None:
    data = b"\n".join(lines)
    text, count = _decode(data)
    assert count == len(lines)
    assert text.split("\n") == _line_by_line(data)
    assert _decode(memoryview(b"x\n" + data)[2:]) == (text, count)  # from a chunk, no copy


def test_broken_utf8_and_crlf_at_line_ends_read_as_they_would_alone() -> None:
    data = b"caf\xc3\r\n\xe2\x82\nok\xff\r\n\r\n\xf0\x9f\x98\x80\r"
    text, count = _decode(data)
    assert text.split("\n") == _line_by_line(data) == ["caf\ufffd", "\ufffd", "ok\ufffd", "", "😀"]
    assert count == 5


def test_lines_over_the_cap_are_cut_there_and_marked() -> None:
    data = b"a\n" + b"y" * (LINE_CAP + 10) + b"\nb\n" + b"z" * LINE_CAP
    lines = _decode(data)[0].split("\n")
    assert lines[0] == "a" and lines[2] == "b"
    assert lines[1].startswith("y" * LINE_CAP) and "line truncated" in lines[1]
    assert len(lines[1]) < LINE_CAP + 100
    assert lines[3] == "z" * LINE_CAP  # at the cap is not over it


LINES = [
    "plain text",
    "DONE",
    "the task is DONE now",
    "Error: 429 Too Many Requests",
    "rate limited; resets at 2031-01-01T00:00:00Z",
    "usage limit reached|2000000000",
    "error\n429",  # two lines: a phrase across them is no phrase
    '{"type":"assistant","message":{"id":"m1","usage":{"input_tokens":5,"output_tokens":7}}}',
    '{"type":"result","total_cost_usd":0.25,"usage":{"input_tokens":9}}',
    '{"type":"turn.completed","usage":{"input_tokens":3,"output_tokens":4}}',
    "Tokens: 1.2k sent, 30 received. Cost: $0.01 message, $0.02 session.",
    "Applied edit to a.py",
    "Running pytest -q",
    "[stderr] looks like a prefix",
    "\x00\x1b[2J rate_limit_error",
    "",
]


@given(
    st.sampled_from(sorted(PARSERS)),
    st.sampled_from(["stdout", "stderr"]),
    st.lists(st.sampled_from(LINES), min_size=1, max_size=30),
)
def test_every_parser_learns_the_same_from_a_block_as_from_its_lines(
    name: str, stream: Any, picked: list[str]
) -> None:
    text = "\n".join(picked)
    count = text.count("\n") + 1
    by_block = feed_block(make_parser(name, "DONE"), stream, text, count)
    by_line = each_line(make_parser(name, "DONE"), stream, text)
    assert _timeless(by_block) == _timeless(by_line)


def _timeless(found: list[Found]) -> list[Found]:
    """Reset times far ahead are clamped to now + a week: equal only to the clock's tick."""
    return [
        (i, [dataclasses.replace(ev, rate_limit_reset=ev.rate_limit_reset and 1.0) for ev in evs])
        for i, evs in found
    ]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["stdout", "stderr", "daemon"]),
            st.lists(st.sampled_from(["x", "[stderr] y", "[corral] z", "[q", "é", ""]), min_size=1),
        ),
        max_size=12,
    ),
    st.integers(0, 300),
)
def test_the_log_file_is_the_same_written_in_blocks_or_by_line(
    tmp_path_factory: Any, blocks: list[tuple[str, list[str]]], cap: int
) -> None:
    tmp = tmp_path_factory.mktemp("log")
    whole, single = LogWriter(tmp / "a.log", cap), LogWriter(tmp / "b.log", cap)
    for stream, lines in blocks:
        whole.write_lines(stream, "\n".join(lines))
        for line in lines:
            single.write(stream, line)
    whole.close()
    single.close()
    assert (tmp / "a.log").read_bytes() == (tmp / "b.log").read_bytes()
    assert (whole.size, whole.truncated) == (single.size, single.truncated)
    if not whole.truncated:
        written = [(stream, line) for stream, block in blocks for line in block]
        got = [(e.stream, e.line) for e in read_log(tmp / "a.log", 0, 10_000)]
        assert got == written


class Recorder:
    """RunEvents, recorded in the order the run reports them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def log(self, entry: LogEntry) -> None:
        self.events.append(("log", entry))

    def log_skipped(self, skipped: Skipped) -> None:
        self.events.append(("log.skipped", dataclasses.replace(skipped)))

    def activity(self, activity: AgentActivity) -> None:
        self.events.append(("activity", activity))

    def tokens(self, tokens: int, cost: float) -> None:
        self.events.append(("tokens", (tokens, cost)))

    def rate_limit(self, reset_at: float | None, detail: str) -> None:
        self.events.append(("rate_limit", detail))

    def violation(self, violation: Violation) -> None:
        self.events.append(("violation", violation))


class LinesRecorder(Recorder):
    """A sink that takes a read's announced lines together, as the pool's does."""

    def log_lines(self, first: int, stream: str, lines: Sequence[str], at: float) -> None:
        for offset, line in enumerate(lines, first):
            self.log(make_log_entry(offset, stream, line, at))


#: stderr: a rate limit early (announced), then a stdout flood, then another (summed up)
FLOOD = """
import sys, time
for i in range(3):
    print(f"warming up {i}", file=sys.stderr, flush=True)
print("Error: 429 Too Many Requests", file=sys.stderr, flush=True)
time.sleep(0.5)  # read (and announced, within the burst) before the flood
out = sys.stdout.buffer
for i in range(40):
    out.write(b"".join(b"line %d %d\\n" % (i, j) for j in range(1000)))
out.write(b"DONE\\n")
out.flush()
print("rate limited again", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("sink_type", [Recorder, LinesRecorder], ids=["by line", "together"])
async def test_a_flood_is_announced_in_order_every_line_once_with_parser_events_after_it(
    tmp_path: Path, sink_type: type[Recorder]
) -> None:
    sink = sink_type()
    spec = RunSpec(
        agent_id="flood",
        argv=[sys.executable, "-c", FLOOD],
        cwd=str(tmp_path),
        env=dict(os.environ),
        stdin_data=None,
        limits=ResourceLimits(kill_grace_secs=0.5, max_runtime_secs=60),
        log_path=tmp_path / "flood.log",
        parser=make_parser("plain", "DONE"),
        completion_marker="DONE",
        output=OutputBounds(log_events_per_sec=50, log_events_burst=100),
    )
    async with trio.open_nursery() as nursery:
        run = await nursery.start(_start, spec, sink)
        result = await run.wait()
    assert result.end_reason is EndReason.OK  # the marker was seen in a block
    assert result.rate_limited
    total = 3 + 1 + 40 * 1000 + 1 + 1
    assert run.stats.lines == total
    covered: list[int] = []
    for kind, value in sink.events:
        if kind == "log":
            covered.append(value.offset)
        elif kind == "log.skipped":
            assert value.lines == value.last - value.first + 1
            covered.extend(range(value.first, value.last + 1))
    assert covered == list(range(total))  # each offset once, in order
    kinds = [k for k, _ in sink.events]
    first_limit = kinds.index("rate_limit")
    assert sink.events[first_limit - 1][1].line == "Error: 429 Too Many Requests"
    assert kinds.count("rate_limit") == 2
    logged = read_log(spec.log_path, 0, total + 10)
    assert len(logged) == total
    by_stream = {s: [e.line for e in logged if e.stream == s] for s in ("stdout", "stderr")}
    assert by_stream["stdout"][:2] == ["line 0 0", "line 0 1"]
    assert by_stream["stdout"][-1] == "DONE"
    assert by_stream["stderr"][-1] == "rate limited again"
    assert [e.line for e in run.tail(2)][-1] in ("DONE", "rate limited again")


async def _start(spec: RunSpec, sink: Recorder, *, task_status: Any) -> None:
    await run_agent(spec, events=sink, task_status=task_status)


@given(st.text(alphabet="ab\n", max_size=20_000))
def test_lines_are_counted_as_the_newlines_say(text: str) -> None:
    assert _count_lines(text) == text.count("\n") + 1
    assert _count_lines("x" * 200 + "\n" + text) == text.count("\n") + 2


@given(
    st.lists(st.text(max_size=60), min_size=1, max_size=5),
    st.sampled_from(["stdout", "stderr", "daemon"]),
    st.sampled_from([None, "s-1"]),
    st.floats(min_value=0, max_value=4e9),
    st.integers(0, 70),
)
def test_log_lines_are_the_events_the_models_would_give(
    lines: list[str], stream: str, session_id: str | None, at: float, cap: int
) -> None:
    """The bus writes a read's lines without pydantic: the same bytes, seqs and spans."""
    fast, slow = EventBus(None, clock=lambda: 9.5), EventBus(None, clock=lambda: 9.5)
    got = fast.make_log_lines(session_id, "a-1", "t-1", 40, stream, lines, at, cap)
    want = [
        slow.make(
            session_id,
            LogPayload(
                agent_id="a-1",
                task_id="t-1",
                offset=40 + i,
                stream=stream,
                line=line[:cap],
                at=at,
                truncated=len(line) > cap,
            ),
        )
        for i, line in enumerate(lines)
    ]
    assert [(r.seq, r.type, r.session_id, r.data) for r in got] == [
        (r.seq, r.type, r.session_id, r.data) for r in want
    ]
    assert [repr(r.span) for r in got] == [repr(r.span) for r in want]
    assert [(r.span.bytes if r.span else -1) for r in got] == [
        (r.span.bytes if r.span else -1) for r in want
    ]


#: Output whose reads may end anywhere: in a UTF-8 sequence, between CR and LF, in a long line.
PIECES = (
    b"first\r\nsecond caf\xc3\xa9 \xe2\x82\xac\n\n"
    + b"y" * (LINE_CAP + 100)
    + b"\nafter the long one\r\n"
    + b"z" * (LINE_CAP // 2)
    + b"\nbroken \xff\xfe\nlast, no newline"
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, len(PIECES) - 1), max_size=8))
async def test_lines_are_the_same_wherever_the_reads_of_a_pipe_end(cuts: list[int]) -> None:
    edges = [0, *sorted(set(cuts)), len(PIECES)]
    chunks = [PIECES[a:b] for a, b in itertools.pairwise(edges)]
    with tempfile.TemporaryDirectory() as tmp:
        spec = RunSpec(
            agent_id="pump",
            argv=["unused"],
            cwd=tmp,
            env={},
            stdin_data=None,
            limits=ResourceLimits(),
            log_path=Path(tmp) / "pump.log",
            parser=make_parser("plain"),
        )
        run = AgentRun(spec)
        read_end, write_end = os.pipe()

        def write() -> None:
            with os.fdopen(write_end, "wb", buffering=0) as out:
                for chunk in chunks:
                    out.write(chunk)
                    time.sleep(0.002)  # (let the reader take this much alone, most times)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run._pump, trio.lowlevel.FdStream(read_end), "stdout")
            await trio.to_thread.run_sync(write)
        cut = "y" * LINE_CAP + " [corral: line truncated at 65536 bytes]"
        expected = ["first", "second café €", "", cut, "after the long one", "z" * (LINE_CAP // 2)]
        expected += ["broken \ufffd\ufffd", "last, no newline"]
        assert [e.line for e in run.tail()] == expected
        assert [e.offset for e in run.tail()] == list(range(len(expected)))
        run.finish(run._result(0))
        assert [e.line for e in read_log(spec.log_path, 0, 100)] == expected
