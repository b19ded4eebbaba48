"""Rate-limit rules: what reads as a rate limit, and when it resets.

Every parser falls back to these regexes over stderr, with enough context
that a "429" inside an id is not taken for HTTP 429.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from corrald.agents.output import ParsedEvent

_RATE_LIMIT_RES = [
    re.compile(r"\brate[ _-]?limit(?:ed|s|_error|_exceeded)?\b", re.I),
    re.compile(r"\bRateLimitError\b"),
    re.compile(r"\btoo many requests\b", re.I),
    re.compile(r"\busage limit (?:reached|exceeded)\b|\bhit your (?:usage )?limit\b", re.I),
    re.compile(r"\bretry[- ]after:?\s*\d", re.I),
    re.compile(r"\bquota (?:exceeded|exhausted)\b|\bRESOURCE_EXHAUSTED\b", re.I),
    # 429 only as an HTTP status: after HTTP/status/code/error, or before the
    # reason phrase. "abc429def" or a uuid never matches.
    re.compile(
        r"(?:\bHTTP(?:/\d(?:\.\d)?)?|\bstatus(?:[ _]?code)?|\bcode|\berror)\W{0,3}429\b", re.I
    ),
    re.compile(r"\b429\b\W{0,3}(?:too many|rate)", re.I),
]
_RETRY_AFTER_RE = re.compile(
    r"\bretry[- ]after\W{0,3}(\d+(?:\.\d+)?)|\btry again in (\d+(?:\.\d+)?) ?s(?:ec(?:ond)?s?)?\b",
    re.I,
)
_ISO = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"
_RESETS_AT_RE = re.compile(rf"\bresets?(?: at)?\W{{0,3}}({_ISO}|\d{{10}}(?:\d{{3}})?\b)", re.I)
_CLAUDE_LIMIT_RE = re.compile(r"usage limit reached\|(\d{10})\b", re.I)


def _parse_time(text: str) -> float | None:
    if text.isdigit():
        value = float(text)
        return value / 1000 if value > 1e12 else value
    try:
        stamp = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def parse_reset(text: str, *, now: float | None = None) -> float | None:
    """A reset time (epoch secs) from `Retry-After: N`, `resets at <time>`, etc."""
    m = _CLAUDE_LIMIT_RE.search(text) or _RESETS_AT_RE.search(text)
    if m:
        return _parse_time(m.group(1))
    m = _RETRY_AFTER_RE.search(text)
    if m:
        secs = float(m.group(1) or m.group(2))
        return (time.time() if now is None else now) + secs
    return None


def rate_limit_from_text(text: str) -> ParsedEvent | None:
    """A rate-limit event if `text` reads like one (with a reset time if given)."""
    if not any(r.search(text) for r in _RATE_LIMIT_RES) and not _CLAUDE_LIMIT_RE.search(text):
        return None
    return ParsedEvent(rate_limited=True, rate_limit_reset=parse_reset(text), detail=text[:500])
