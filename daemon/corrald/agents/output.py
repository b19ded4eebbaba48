"""What a parser learns from one output line, the parser protocol, and the crash line."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from corral.models import AgentActivity

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class ParsedEvent:
    """Something learned from one output line; unset fields mean "nothing new"."""

    tokens_delta: int = 0
    tokens_total: int | None = None
    cost_total: float | None = None
    activity: AgentActivity | None = None
    rate_limited: bool = False
    rate_limit_reset: float | None = None  # epoch seconds
    completion_marker_seen: bool = False
    detail: str = ""


class OutputParser(Protocol):
    """Turns output lines of one agent run into events (one instance per run)."""

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]: ...


#: (index of a line among those fed at once, what the parser learned from it)
Found = tuple[int, list[ParsedEvent]]


def feed_block(parser: OutputParser, stream: Stream, text: str, count: int) -> list[Found]:
    """What `parser` learns from `count` consecutive lines (joined by newlines in `text`).

    A parser with its own `feed_block` (same answer) reads them at once,
    which is faster through a flood; any other is fed line by line.
    """
    own = getattr(parser, "feed_block", None)
    if own is not None:
        found: list[Found] = own(stream, text, count)
        return found
    return each_line(parser, stream, text)


class PartialParse(Exception):
    """`feed` raised on a line of a block: what the lines before it gave, and the error."""

    def __init__(self, found: list[Found], cause: Exception) -> None:
        super().__init__(found, cause)
        self.found = found
        self.cause = cause


def each_line(parser: OutputParser, stream: Stream, text: str) -> list[Found]:
    """`feed_block` the slow way: `feed` once per line; only the lines with events.

    If `feed` raises, `PartialParse` keeps what the lines before that one gave:
    the parser has taken them in, so they count (a run's tokens are not lost
    to a parser bug a few lines later).
    """
    feed = parser.feed
    found: list[Found] = []
    for i, line in enumerate(text.split("\n")):
        try:
            events = feed(stream, line)
        except Exception as exc:
            raise PartialParse(found, exc) from exc
        if events:
            found.append((i, events))
    return found


#: Lines that say what went wrong ("error: unexpected argument", a Python or
#: Node exception, "not running in a trusted directory", an HTTP failure).
_TELLING_RE = re.compile(
    r"\b(?:error|fatal|panic|exception|traceback|failed|failure|denied|refused|invalid"
    r"|unexpected|unknown|not found|no such|cannot|can't|could not|unable|not allowed"
    r"|not running|unauthori[sz]ed|forbidden|missing|required)\b",
    re.I,
)
#: Lines that only point elsewhere (clap's and commander's closing hints, usage).
_HINT_RE = re.compile(
    r"^\s*(?:for more information|run with|try '?-?-?help|see '.*--help'|usage:|tip:"
    r"|at [\w.<>$]+ \(|at (?:async )?[\w./:-]+:\d+|note: run with)",
    re.I,
)


def telling_line(lines: Sequence[str]) -> str:
    """The stderr line that says what went wrong, from the last lines of a crashed run.

    The last line that reads like an error wins; hints such as "For more
    information, try '--help'." and stack frames are passed over. Without
    such a line it is the last line that is not a hint, else the last line.
    """
    candidates = [line.strip() for line in lines if line.strip()]
    for line in reversed(candidates):
        if _TELLING_RE.search(line) and not _HINT_RE.search(line):
            return line
    for line in reversed(candidates):
        if not _HINT_RE.search(line):
            return line
    return candidates[-1] if candidates else ""
