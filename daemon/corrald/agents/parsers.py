"""Output parsers: turn an agent's output lines into `ParsedEvent`s.

Structured parsers read the JSON lines of CLIs that have them (tokens,
cost, activity, rate limits, completion marker); every parser falls back to
the rate-limit regexes over stderr.

A parser never raises, whatever a line holds: JSON of the wrong shape or
nested too deep is no event, and numbers are taken only when finite and in
range (token counts in [0, `MAX_TOKENS`], costs in [0, `MAX_COST`], reset
times at most a week ahead), so nothing an agent prints becomes an `inf`
that the wire cannot carry.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Callable
from typing import Any

from corral.errors import UnknownAgentType
from corral.models import AgentActivity
from corrald.agents.activity import activity_for_command, activity_for_tool
from corrald.agents.output import OutputParser, ParsedEvent, Stream
from corrald.agents.ratelimit import (
    _CLAUDE_LIMIT_RE,
    parse_reset,
    rate_limit_from_text,
    reset_from_value,
)

#: More tokens than any run spends; a larger count is clamped to it.
MAX_TOKENS = 10**12
#: More dollars than any run costs; a larger cost is clamped to it.
MAX_COST = 1e9
#: Message ids whose usage is remembered (a message streams in a few lines).
_MESSAGE_IDS = 256


class _Base:
    """Shared behaviour: completion marker, stderr rate-limit fallback."""

    def __init__(self, completion_marker: str | None = None) -> None:
        self.completion_marker = completion_marker
        self.lines = 0

    def _marker(self, text: str) -> list[ParsedEvent]:
        if self.completion_marker and self.completion_marker in text:
            return [ParsedEvent(completion_marker_seen=True)]
        return []

    def _fallback(self, stream: Stream, line: str) -> list[ParsedEvent]:
        if stream == "stderr":
            ev = rate_limit_from_text(line)
            return [ev] if ev else []
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} lines={self.lines} marker={self.completion_marker!r}>"


class PlainParser(_Base):
    """No structure: marker anywhere in the output, rate limits from stderr."""

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        self.lines += 1
        return self._marker(line) + self._fallback(stream, line)


def _as_dict(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json follows
        return None
    return obj if isinstance(obj, dict) else None


def _int(value: Any) -> int:
    """A token count: a finite number in [0, MAX_TOKENS], anything else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return MAX_TOKENS if value > 0 else 0
    return int(min(max(value, 0), MAX_TOKENS))


def _cost(value: Any) -> float | None:
    """A cost in dollars: a finite number in [0, MAX_COST], anything else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    cost = float(min(value, MAX_COST))  # (min first: an int may be too big for a float)
    return cost if cost >= 0 else None  # (NaN >= 0 is False)


class ClaudeStreamJsonParser(_Base):
    """``claude -p --output-format stream-json --verbose`` (one JSON object per line).

    Tokens count input + cache-creation + output tokens (cache reads are
    excluded: they are cheap and would dwarf the rest). Per-message usage is
    tracked by message id so a message streamed in several lines counts once;
    the final ``result`` carries the authoritative total and the cost.
    """

    def __init__(self, completion_marker: str | None = None) -> None:
        super().__init__(completion_marker)
        self._msg_tokens: collections.OrderedDict[str, int] = collections.OrderedDict()

    @staticmethod
    def _usage_tokens(usage: Any) -> int:
        if not isinstance(usage, dict):
            return 0
        return (
            _int(usage.get("input_tokens"))
            + _int(usage.get("cache_creation_input_tokens"))
            + _int(usage.get("output_tokens"))
        )

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        self.lines += 1
        obj = _as_dict(line) if stream == "stdout" else None
        if obj is None:
            return self._marker(line) + self._fallback(stream, line)
        kind = obj.get("type")
        if kind == "assistant":
            return self._assistant(obj)
        if kind == "result":
            return self._result(obj)
        if kind == "rate_limit_event":
            return self._rate_limit(obj)
        return []

    def _assistant(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        out: list[ParsedEvent] = []
        msg = obj.get("message")
        if not isinstance(msg, dict):
            return out
        texts: list[str] = []
        activity: AgentActivity | None = None
        content = msg.get("content")
        if isinstance(content, str):  # the API's short form of one text block
            content = [{"type": "text", "text": content}]
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "tool_use":
                tool_input = block.get("input")
                activity = activity_for_tool(
                    str(block.get("name", "")), tool_input if isinstance(tool_input, dict) else None
                )
            elif btype in ("text", "thinking"):
                texts.append(str(block.get("text") or block.get("thinking") or ""))
                activity = activity or AgentActivity.THINKING
        if activity is not None:
            out.append(ParsedEvent(activity=activity))
        tokens = self._usage_tokens(msg.get("usage"))
        mid = str(msg.get("id", ""))[:200]
        delta = tokens - self._msg_tokens.get(mid, 0)
        if delta > 0:
            self._msg_tokens[mid] = tokens
            self._msg_tokens.move_to_end(mid)
            if len(self._msg_tokens) > _MESSAGE_IDS:  # bounded, whatever ids an agent makes up
                self._msg_tokens.popitem(last=False)
            out.append(ParsedEvent(tokens_delta=delta))
        for text in texts:
            out += self._marker(text)
            if _CLAUDE_LIMIT_RE.search(text):
                out.append(ParsedEvent(rate_limited=True, rate_limit_reset=parse_reset(text)))
        return out

    def _result(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        out: list[ParsedEvent] = []
        cost = obj.get("total_cost_usd", obj.get("cost_usd"))
        usage = obj.get("usage")
        total = self._usage_tokens(usage) if isinstance(usage, dict) else None
        out.append(
            ParsedEvent(
                tokens_total=total,
                cost_total=_cost(cost),
                activity=AgentActivity.IDLE,
            )
        )
        text = str(obj.get("result") or "")
        out += self._marker(text)
        if obj.get("is_error"):
            ev = rate_limit_from_text(text)
            if ev:
                out.append(ev)
        return out

    def _rate_limit(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        info = obj.get("rate_limit_info")
        if not isinstance(info, dict):
            return []
        # "allowed" / "allowed_warning" are informational; only "rejected" stops us.
        if info.get("status") not in ("rejected", "blocked", "exceeded"):
            return []
        when = reset_from_value(info.get("resetsAt", info.get("reset")))
        try:
            detail = json.dumps(info)[:500]  # (NaN and Infinity are written as such)
        except (ValueError, RecursionError):
            detail = "rate_limit_event"
        return [ParsedEvent(rate_limited=True, rate_limit_reset=when, detail=detail)]


class CodexJsonParser(_Base):
    """``codex exec --json``: thread/turn/item events; usage per completed turn."""

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        self.lines += 1
        obj = _as_dict(line) if stream == "stdout" else None
        if obj is None:
            return self._marker(line) + self._fallback(stream, line)
        kind = obj.get("type")
        if kind in ("turn.completed", "turn.failed"):
            out: list[ParsedEvent] = []
            usage = obj.get("usage")
            if isinstance(usage, dict):
                tokens = _int(usage.get("input_tokens")) + _int(usage.get("output_tokens"))
                out.append(ParsedEvent(tokens_delta=tokens, activity=AgentActivity.IDLE))
            err = obj.get("error")
            if isinstance(err, dict):
                ev = rate_limit_from_text(str(err.get("message", "")))
                if ev:
                    out.append(ev)
            return out
        if kind == "error":
            ev = rate_limit_from_text(str(obj.get("message", "")))
            return [ev] if ev else []
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(obj.get("item"))
        return []

    def _item(self, item: Any) -> list[ParsedEvent]:
        if not isinstance(item, dict):
            return []
        itype = item.get("type") or item.get("item_type")
        if itype == "command_execution":
            return [ParsedEvent(activity=activity_for_command(str(item.get("command", ""))))]
        if itype == "file_change":
            return [ParsedEvent(activity=AgentActivity.IMPLEMENTING)]
        if itype in ("agent_message", "reasoning"):
            return [
                ParsedEvent(activity=AgentActivity.THINKING),
                *self._marker(str(item.get("text", ""))),
            ]
        if itype in ("web_search", "mcp_tool_call"):
            return [ParsedEvent(activity=AgentActivity.READING)]
        return []


#: parser name -> factory (each run gets a fresh parser; pass the marker by keyword).
PARSERS: dict[str, Callable[..., OutputParser]] = {
    "plain": PlainParser,
    "claude-stream-json": ClaudeStreamJsonParser,
    "codex-json": CodexJsonParser,
}


def make_parser(name: str, completion_marker: str | None = None) -> OutputParser:
    """A fresh parser for one run; unknown names raise UnknownAgentType."""
    factory = PARSERS.get(name)
    if factory is None:
        raise UnknownAgentType(
            f"unknown output parser {name!r}", {"parser": name, "known": sorted(PARSERS)}
        )
    return factory(completion_marker=completion_marker)
