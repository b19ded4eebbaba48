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
import re
from collections.abc import Callable
from typing import Any

from corral.errors import UnknownAgentType
from corral.models import AgentActivity
from corrald.agents.activity import activity_for_command, activity_for_tool
from corrald.agents.output import Found, OutputParser, ParsedEvent, Stream, each_line
from corrald.agents.ratelimit import (
    _CLAUDE_LIMIT_RE,
    _RATE_LIMIT_RES,
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

    def feed_block(self, stream: Stream, text: str, count: int) -> list[Found]:
        """`feed` for `count` lines joined by newlines: (index, events) of those with events.

        Most blocks hold neither the marker nor (on stderr) a rate-limit
        phrase: one search over the whole block says so. Only a block that
        might goes line by line. (Over the block the regexes find every
        phrase a line holds, since `\\b` and `\\W` take a newline as they take
        the end of a line; at worst they also find one across two lines.)
        """
        marker = self.completion_marker
        if not (marker and marker in text) and not (stream == "stderr" and _might_limit(text)):
            self.lines += count
            return []
        return each_line(self, stream, text)


def _might_limit(text: str) -> bool:
    """True if some line of `text` may read as a rate limit (`rate_limit_from_text`)."""
    return any(r.search(text) for r in _RATE_LIMIT_RES) or bool(_CLAUDE_LIMIT_RE.search(text))


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
        self._activity = AgentActivity.IDLE
        # tool_use id -> the activity before it, restored if the CLI denies the tool
        self._before_tool: dict[str, AgentActivity] = {}

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
            return self._seen(self._assistant(obj))
        if kind == "user":
            return self._seen(self._tool_results(obj))
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
                self._before_tool[str(block.get("id", ""))] = self._activity
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

    def _seen(self, events: list[ParsedEvent]) -> list[ParsedEvent]:
        for ev in events:
            if ev.activity is not None:
                self._activity = ev.activity
        return events

    def _tool_results(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        """A tool the CLI denied (a permission rule, no approval) was not done:
        the activity goes back to what it was before the tool was asked for."""
        msg = obj.get("message")
        content = msg.get("content") if isinstance(msg, dict) else None
        denied: list[str] = []
        meta = obj.get("tool_result_meta")
        for entry in meta if isinstance(meta, list) else []:
            if isinstance(entry, dict) and _denied_meta(entry):
                denied.append(str(entry.get("id", "")))
        for block in content if isinstance(content, list) else []:
            if (
                isinstance(block, dict)
                and block.get("type") == "tool_result"
                and block.get("is_error")
                and _DENIED_RE.search(_block_text(block.get("content")))
            ):
                denied.append(str(block.get("tool_use_id", "")))
        out: list[ParsedEvent] = []
        for tool_id in dict.fromkeys(denied):
            before = self._before_tool.pop(tool_id, None)
            if before is not None:
                out.append(ParsedEvent(activity=before, detail=f"tool use {tool_id} denied"))
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
            if ev is None and obj.get("api_error_status") == 429:
                # an API-key claude gives up on a 429 at once, without a reset time
                ev = ParsedEvent(rate_limited=True, detail=text[:500])
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


#: What claude says in a tool_result when it did not run the tool for lack of permission.
_DENIED_RE = re.compile(
    r"requires approval|haven't granted|permission (?:to use|denied)|was (?:denied|rejected)"
    r"|user (?:rejected|denied)|not allowed",
    re.I,
)


def _denied_meta(entry: dict[str, Any]) -> bool:
    decision = entry.get("permission_decision")
    if isinstance(decision, dict) and decision.get("decision") in ("reject", "deny", "denied"):
        return True
    return str(entry.get("non_execution_kind", "")).endswith(("rejected", "denied"))


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(c.get("text", ""))
            for c in content
            if isinstance(c, dict) and c.get("type") == "text"
        )
    return ""


class CodexJsonParser(_Base):
    """``codex exec --json``: thread/turn/item events; usage per completed turn.

    A command or file change whose item ends ``declined`` (not approved) was
    not done: the activity goes back to what it was before that item.
    """

    def __init__(self, completion_marker: str | None = None) -> None:
        super().__init__(completion_marker)
        self._activity = AgentActivity.IDLE
        self._before_item: dict[str, AgentActivity] = {}

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
            events = self._item(obj.get("item"))
            for ev in events:
                self._activity = ev.activity or self._activity
            return events
        return []

    def _item(self, item: Any) -> list[ParsedEvent]:
        if not isinstance(item, dict):
            return []
        itype = item.get("type") or item.get("item_type")
        item_id = str(item.get("id", ""))
        if itype in ("command_execution", "file_change"):
            if item.get("status") == "declined":
                before = self._before_item.pop(item_id, self._activity)
                return [ParsedEvent(activity=before, detail=f"{itype} {item_id} declined")]
            self._before_item.setdefault(item_id, self._activity)
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


class GeminiStreamJsonParser(_Base):
    """``gemini --output-format stream-json``: init/message/tool_use/tool_result/error/result.

    The ``result`` event's ``stats`` carry the run's tokens (gemini reports no
    cost). A ``tool_result`` with an error status whose message says the tool
    was not allowed (or not registered: headless, a tool the approval mode
    would have to ask for is left out) restores the activity from before
    that ``tool_use``.
    """

    def __init__(self, completion_marker: str | None = None) -> None:
        super().__init__(completion_marker)
        self._activity = AgentActivity.IDLE
        self._before_tool: dict[str, AgentActivity] = {}

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        self.lines += 1
        obj = _as_dict(line) if stream == "stdout" else None
        if obj is None:
            return self._marker(line) + self._fallback(stream, line)
        events = self._event(obj)
        for ev in events:
            self._activity = ev.activity or self._activity
        return events

    def _event(self, obj: dict[str, Any]) -> list[ParsedEvent]:
        kind = obj.get("type")
        if kind == "message" and obj.get("role") == "assistant":
            text = str(obj.get("content") or "")
            return [ParsedEvent(activity=AgentActivity.THINKING), *self._marker(text)]
        if kind == "tool_use":
            params = obj.get("parameters")
            activity = activity_for_tool(
                _GEMINI_TOOLS.get(str(obj.get("tool_name", "")), str(obj.get("tool_name", ""))),
                params if isinstance(params, dict) else None,
            )
            self._before_tool[str(obj.get("tool_id", ""))] = self._activity
            return [ParsedEvent(activity=activity)]
        if kind == "tool_result":
            tool_id = str(obj.get("tool_id", ""))
            before = self._before_tool.pop(tool_id, None)
            error = obj.get("error")
            err = error if isinstance(error, dict) else {"message": str(error or "")}
            # headless, a tool the approval mode does not allow is not even registered
            refused = _GEMINI_REFUSED_RE.search(str(err.get("type", ""))) or _DENIED_RE.search(
                str(err.get("message", ""))
            )
            if obj.get("status") == "error" and before is not None and refused:
                return [ParsedEvent(activity=before, detail=f"tool use {tool_id} denied")]
            return []
        if kind == "error":
            ev = rate_limit_from_text(str(obj.get("message", "")))
            return [ev] if ev else []
        if kind == "result":
            stats = obj.get("stats")
            total = _int(stats.get("total_tokens")) if isinstance(stats, dict) else None
            out = [ParsedEvent(tokens_total=total, activity=AgentActivity.IDLE)]
            error = obj.get("error")
            if isinstance(error, dict):
                ev = rate_limit_from_text(str(error.get("message", "")))
                if ev:
                    out.append(ev)
            return out
        return []


_GEMINI_REFUSED_RE = re.compile(r"not_registered|denied|permission|not_allowed|rejected")

#: gemini's tool names, mapped onto the names activity_for_tool knows.
_GEMINI_TOOLS = {
    "read_file": "read",
    "read_many_files": "read",
    "list_directory": "ls",
    "glob": "glob",
    "search_file_content": "grep",
    "grep_search": "grep",
    "write_file": "write",
    "replace": "edit",
    "run_shell_command": "bash",
    "web_fetch": "webfetch",
    "google_web_search": "websearch",
}


class OpencodeJsonParser(_Base):
    """``opencode run --format json``: one event per part (step_start, text, tool_use,
    step_finish). Each ``step_finish`` carries that step's tokens and cost; the
    run's figures are their sums. A tool part whose state is an error saying
    the permission was denied restores the activity from before it.
    """

    def __init__(self, completion_marker: str | None = None) -> None:
        super().__init__(completion_marker)
        self._cost = 0.0
        self._activity = AgentActivity.IDLE
        self._before_tool: dict[str, AgentActivity] = {}

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        self.lines += 1
        obj = _as_dict(line) if stream == "stdout" else None
        if obj is None:
            return self._marker(line) + self._fallback(stream, line)
        part = obj.get("part")
        part = part if isinstance(part, dict) else {}
        events = self._event(str(obj.get("type", "")), part, obj)
        for ev in events:
            self._activity = ev.activity or self._activity
        return events

    def _event(self, kind: str, part: dict[str, Any], obj: dict[str, Any]) -> list[ParsedEvent]:
        if kind in ("text", "reasoning"):
            text = str(part.get("text") or "")
            return [ParsedEvent(activity=AgentActivity.THINKING), *self._marker(text)]
        if kind == "tool_use":
            state = part.get("state")
            state = state if isinstance(state, dict) else {}
            call = str(part.get("callID") or part.get("id") or "")
            if state.get("status") == "error" and _DENIED_RE.search(str(state.get("error", ""))):
                before = self._before_tool.pop(call, self._activity)
                return [ParsedEvent(activity=before, detail=f"tool use {call} denied")]
            tool_input = state.get("input")
            self._before_tool.setdefault(call, self._activity)
            name = str(part.get("tool", ""))
            return [
                ParsedEvent(
                    activity=activity_for_tool(
                        name, tool_input if isinstance(tool_input, dict) else None
                    )
                )
            ]
        if kind == "step_finish":
            tokens = part.get("tokens")
            total = 0
            if isinstance(tokens, dict):
                total = _int(tokens.get("total")) or (
                    _int(tokens.get("input")) + _int(tokens.get("output"))
                )
            cost = part.get("cost")
            if isinstance(cost, int | float) and not isinstance(cost, bool):
                self._cost += float(cost)
            return [ParsedEvent(tokens_delta=total, cost_total=self._cost)]
        if kind == "error":
            error = obj.get("error")
            ev = rate_limit_from_text(json.dumps(error) if error is not None else "")
            return [ev] if ev else []
        return []


_AIDER_TOKENS_RE = re.compile(
    r"^Tokens: ([\d.]+)(k?) sent(?:, ([\d.]+)(k?) cache \w+)*, ([\d.]+)(k?) received"
)
_AIDER_COST_RE = re.compile(r"Cost: \$[\d.]+ message, \$([\d.]+) session")


def _aider_count(number: str, k: str) -> int:
    return round(float(number) * (1000 if k else 1))


class AiderParser(PlainParser):
    """aider's plain output: "Tokens: 1.2k sent, 30 received. Cost: $0.01 message,
    $0.02 session." after each reply (the session cost is the run's), plus
    "Applied edit to FILE" (implementing) and "Running CMD" (the command's activity).
    """

    def __init__(self, completion_marker: str | None = None) -> None:
        super().__init__(completion_marker)
        self._tokens = 0

    def feed_block(self, stream: Stream, text: str, count: int) -> list[Found]:
        return each_line(self, stream, text)  # (not the plain shortcut: stdout lines count here)

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        out = super().feed(stream, line)
        if stream != "stdout":
            return out
        m = _AIDER_TOKENS_RE.match(line)
        if m:
            sent = _aider_count(m.group(1), m.group(2))
            received = _aider_count(m.group(5), m.group(6))
            self._tokens += sent + received
            cost = _AIDER_COST_RE.search(line)
            out.append(
                ParsedEvent(
                    tokens_total=self._tokens,
                    cost_total=float(cost.group(1)) if cost else None,
                    activity=AgentActivity.THINKING,
                )
            )
        elif line.startswith("Applied edit to "):
            out.append(ParsedEvent(activity=AgentActivity.IMPLEMENTING))
        elif line.startswith("Running "):
            out.append(ParsedEvent(activity=activity_for_command(line[len("Running ") :])))
        return out


#: parser name -> factory (each run gets a fresh parser; pass the marker by keyword).
PARSERS: dict[str, Callable[..., OutputParser]] = {
    "plain": PlainParser,
    "claude-stream-json": ClaudeStreamJsonParser,
    "codex-json": CodexJsonParser,
    "gemini-stream-json": GeminiStreamJsonParser,
    "opencode-json": OpencodeJsonParser,
    "aider": AiderParser,
}


def make_parser(name: str, completion_marker: str | None = None) -> OutputParser:
    """A fresh parser for one run; unknown names raise UnknownAgentType."""
    factory = PARSERS.get(name)
    if factory is None:
        raise UnknownAgentType(
            f"unknown output parser {name!r}", {"parser": name, "known": sorted(PARSERS)}
        )
    return factory(completion_marker=completion_marker)
