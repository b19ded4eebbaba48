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

#: The furthest a reported reset is believed: providers' longest windows are
#: weekly. A later (or non-finite) time is clamped to this, so a hostile
#: `Retry-After: 999…` parks a task for a week, not forever, and never
#: becomes an `inf` that JSON cannot carry.
MAX_RESET_SECS = 8 * 24 * 3600.0


def clamp_reset(when: float | None, *, now: float | None = None) -> float | None:
    """`when` (epoch secs) if it is a finite time at most `MAX_RESET_SECS` ahead, else clamped.

    NaN or a time before 1970 says nothing: None (the scheduler then uses
    its backoff).
    """
    if when is None or not when >= 0:
        return None
    horizon = (time.time() if now is None else now) + MAX_RESET_SECS
    return min(when, horizon)


def reset_from_value(value: object, *, now: float | None = None) -> float | None:
    """A reset time from a JSON value: epoch seconds or milliseconds, or an ISO string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        # (an int too big for a float is infinitely far; a float may be NaN or inf)
        when = value if isinstance(value, float) else float(min(value, 10**300))
        return clamp_reset(when / 1000 if when > 1e12 else when, now=now)
    if isinstance(value, str):
        return clamp_reset(_parse_time(value), now=now)
    return None


def _parse_time(text: str) -> float | None:
    if text.isdigit():
        value = float(text)
        return value / 1000 if value > 1e12 else value
    try:
        stamp = datetime.fromisoformat(text.replace(" ", "T", 1))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    except (ValueError, OverflowError):
        return None


def parse_reset(text: str, *, now: float | None = None) -> float | None:
    """A reset time (epoch secs) from `Retry-After: N`, `resets at <time>`, etc.

    Never more than `MAX_RESET_SECS` ahead, never infinite.
    """
    now = time.time() if now is None else now
    m = _CLAUDE_LIMIT_RE.search(text) or _RESETS_AT_RE.search(text)
    if m:
        return clamp_reset(_parse_time(m.group(1)), now=now)
    m = _RETRY_AFTER_RE.search(text)
    if m:
        secs = float(m.group(1) or m.group(2))  # digits only: finite or inf, never NaN
        return clamp_reset(now + secs, now=now)
    return None


def rate_limit_from_text(text: str) -> ParsedEvent | None:
    """A rate-limit event if `text` reads like one (with a reset time if given)."""
    if not any(r.search(text) for r in _RATE_LIMIT_RES) and not _CLAUDE_LIMIT_RE.search(text):
        return None
    return ParsedEvent(rate_limited=True, rate_limit_reset=parse_reset(text), detail=text[:500])
