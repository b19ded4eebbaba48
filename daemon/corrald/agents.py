"""Agent types (how to launch each coding CLI headless) and their output parsers.

An agent type is an argv template. Placeholders ``{prompt}``, ``{task_id}``,
``{worktree}`` and ``{model}`` are substituted only where an argv element is
exactly the placeholder, so user text is always one argument and never goes
through a shell. When no model is given, a ``{model}`` element is dropped
together with the flag right before it if that element starts with ``-``
(``--model {model}`` and ``-m {model}`` disappear as a pair).

Parsers turn output lines into `ParsedEvent`s: tokens, cost, activity,
rate limits, completion marker. Structured parsers read the JSON lines of
CLIs that have them; every parser falls back to regexes over stderr for rate
limits, with enough context that a "429" inside an id is not taken for HTTP 429.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import UnknownAgentType
from corral.models import AgentActivity

Stream = Literal["stdout", "stderr"]

# --- agent types -------------------------------------------------------------


@dataclass(frozen=True)
class AgentType:
    """How to launch one coding CLI non-interactively."""

    name: str
    argv: tuple[str, ...]
    prompt_via: Literal["argv", "stdin"] = "argv"
    parser: str = "plain"
    env: Mapping[str, str] = field(default_factory=dict)


class AgentTypeConfig(BaseModel):
    """An ``[agents.NAME]`` table of the TOML config (also overrides a builtin)."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1)
    prompt_via: Literal["argv", "stdin"] = "argv"
    parser: str = "plain"
    env: dict[str, str] = Field(default_factory=dict)


def _t(name: str, *argv: str, parser: str = "plain") -> AgentType:
    return AgentType(name, tuple(argv), "argv", parser, {})


#: Headless invocations, as documented by each CLI. Permission flags are the
#: documented "edit files without asking" modes: agents run unattended in a
#: throwaway worktree. Override any of these with an ``[agents.NAME]`` table.
BUILTIN_TYPES: dict[str, AgentType] = {
    t.name: t
    for t in (
        # claude -p: print mode; stream-json needs --verbose. acceptEdits lets it
        # edit without prompting; Bash still needs an allow rule in the project.
        _t(
            "claude",
            *("claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose"),
            *("--permission-mode", "acceptEdits", "--model", "{model}"),
            parser="claude-stream-json",
        ),
        # codex exec: non-interactive; --json prints JSONL events; --full-auto =
        # workspace-write sandbox without approval prompts.
        _t(
            "codex",
            *("codex", "exec", "--json", "--full-auto", "--model", "{model}", "{prompt}"),
            parser="codex-json",
        ),
        # opencode run: one-shot; --format json prints JSON events (parsed as plain).
        _t("opencode", "opencode", "run", "--model", "{model}", "{prompt}"),
        # gemini -p: non-interactive; --yolo auto-approves tools.
        _t("gemini", "gemini", "--yolo", "--model", "{model}", "-p", "{prompt}"),
        # cursor-agent -p: print mode; --force allows edits; stream-json is
        # close to claude's (system/assistant/result), so its parser is reused.
        _t(
            "cursor",
            *("cursor-agent", "-p", "--force", "--output-format", "stream-json"),
            *("--model", "{model}", "{prompt}"),
            parser="claude-stream-json",
        ),
        # qwen (a gemini-cli fork): same flags as gemini.
        _t("qwen", "qwen", "--yolo", "--model", "{model}", "-p", "{prompt}"),
        # droid exec: Factory's headless mode; --auto medium allows edits and
        # reversible commands.
        _t("droid", "droid", "exec", "--auto", "medium", "--model", "{model}", "{prompt}"),
        # aider --message: run one instruction and exit; --yes-always answers
        # prompts; corral commits itself, so aider's own auto-commits are off.
        _t(
            "aider",
            *("aider", "--yes-always", "--no-pretty", "--no-stream", "--no-auto-commits"),
            *("--model", "{model}", "--message", "{prompt}"),
        ),
    )
}
#: "command" has no builtin argv: it must come from an ``[agents.command]`` table.
BUILTIN_TYPES["command"] = AgentType("command", (), "argv", "plain", {})


def resolve_type(name: str, custom: Mapping[str, AgentTypeConfig]) -> AgentType:
    """The agent type `name`: a config table wins over a builtin of the same name."""
    cfg = custom.get(name)
    if cfg is not None:
        return AgentType(name, tuple(cfg.argv), cfg.prompt_via, cfg.parser, dict(cfg.env))
    builtin = BUILTIN_TYPES.get(name)
    if builtin is None or not builtin.argv:
        known = sorted({*BUILTIN_TYPES, *custom} - ({"command"} - set(custom)))
        hint = " ([agents.command] needs an argv)" if name == "command" else ""
        raise UnknownAgentType(
            f"unknown agent type {name!r}{hint}", {"agentType": name, "known": known}
        )
    if builtin.parser not in PARSERS:  # pragma: no cover - table consistency
        raise UnknownAgentType(f"agent type {name!r} names unknown parser {builtin.parser!r}")
    return builtin


def build_argv(
    t: AgentType, *, prompt: str, task_id: str, worktree: str, model: str | None
) -> list[str]:
    """Substitute placeholders in whole argv elements (never inside a string).

    With ``prompt_via="stdin"`` a ``{prompt}`` element is dropped (the prompt
    goes to stdin). With no model, ``{model}`` is dropped along with a
    preceding flag element (one starting with ``-``).
    """
    values: dict[str, str | None] = {
        "{prompt}": None if t.prompt_via == "stdin" else prompt,
        "{task_id}": task_id,
        "{worktree}": worktree,
        "{model}": model,
    }
    out: list[str] = []
    for elem in t.argv:
        if elem in values:
            value = values[elem]
            if value is None:
                if elem == "{model}" and out and out[-1].startswith("-") and len(out) > 1:
                    out.pop()
                continue
            out.append(value)
        else:
            out.append(elem)
    return out


def build_prompt(title: str, description: str, completion_marker: str | None) -> str:
    """The agent's prompt: the task, plus how to signal completion if required."""
    prompt = f"Task: {title}\n\n{description}".rstrip() + "\n"
    if completion_marker:
        prompt += (
            "\nWhen the task is completely done, output the following marker on a line"
            f" by itself:\n{completion_marker}\n"
        )
    return prompt


# --- parsed events -----------------------------------------------------------


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


# --- rate-limit regexes (fallback for every parser) ---------------------------

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


# --- activity from tool use ---------------------------------------------------

_READ_TOOLS = {"read", "grep", "glob", "ls", "webfetch", "websearch", "notebookread", "view"}
_WRITE_TOOLS = {"edit", "write", "multiedit", "notebookedit", "str_replace", "apply_patch"}
_TEST_RUNNER_RE = re.compile(
    r"\b(?:py\.?test|pytest|tox|nox|unittest|jest|vitest|mocha|rspec|phpunit|ctest)\b"
    r"|\b(?:cargo|go|npm|pnpm|yarn|bun|make|mvn|gradle|dotnet|mix|deno)\s+(?:run\s+)?test"
)
_TEST_WORD_RE = re.compile(r"\btests?\b|\btest_\w+|\w+_test\b")
_COMMIT_RE = re.compile(r"\bgit\b[^|;&\n]*?\bcommit\b")
_READ_CMD_RE = re.compile(
    r"^\s*(?:cat|less|head|tail|grep|rg|find|fd|ls|tree|wc|sed -n|git (?:log|diff|show|status))\b"
)
_SHELL_WRAP_RE = re.compile(r"^\s*(?:/\S*/)?(?:ba|z)?sh\s+-\w*c\s+(['\"]?)(.*)\1\s*$", re.S)
_SEGMENT_RE = re.compile(r"&&|\|\||[;|\n]")


def activity_for_command(command: str) -> AgentActivity:
    """Activity of a shell command an agent runs."""
    wrapped = _SHELL_WRAP_RE.match(command)
    if wrapped:
        command = wrapped.group(2)
    if _COMMIT_RE.search(command):
        return AgentActivity.COMMITTING
    if _TEST_RUNNER_RE.search(command):
        return AgentActivity.TESTING
    segments = [seg for seg in _SEGMENT_RE.split(command) if seg.strip()]
    work = [seg for seg in segments if not seg.strip().startswith("cd ")]
    if work and all(_READ_CMD_RE.search(seg) for seg in work):
        return AgentActivity.READING
    if _TEST_WORD_RE.search(command):
        return AgentActivity.TESTING
    return AgentActivity.IMPLEMENTING


def activity_for_tool(name: str, tool_input: Mapping[str, Any] | None) -> AgentActivity:
    """Activity of a tool call (claude names; others map onto them)."""
    lowered = name.lower()
    if lowered in _READ_TOOLS:
        return AgentActivity.READING
    if lowered in _WRITE_TOOLS:
        return AgentActivity.IMPLEMENTING
    if lowered in {"bash", "shell", "run_shell_command", "exec", "command"}:
        command = (tool_input or {}).get("command", "")
        if isinstance(command, list):
            command = " ".join(str(c) for c in command)
        return activity_for_command(str(command))
    return AgentActivity.THINKING


# --- parsers -----------------------------------------------------------------


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
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


class ClaudeStreamJsonParser(_Base):
    """``claude -p --output-format stream-json --verbose`` (one JSON object per line).

    Tokens count input + cache-creation + output tokens (cache reads are
    excluded: they are cheap and would dwarf the rest). Per-message usage is
    tracked by message id so a message streamed in several lines counts once;
    the final ``result`` carries the authoritative total and the cost.
    """

    def __init__(self, completion_marker: str | None = None) -> None:
        super().__init__(completion_marker)
        self._msg_tokens: dict[str, int] = {}

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
        for block in msg.get("content") or []:
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
        mid = str(msg.get("id", ""))
        delta = tokens - self._msg_tokens.get(mid, 0)
        if delta > 0:
            self._msg_tokens[mid] = tokens
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
                cost_total=float(cost) if isinstance(cost, int | float) else None,
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
        reset = info.get("resetsAt", info.get("reset"))
        when = _parse_time(str(int(reset))) if isinstance(reset, int | float) else None
        if isinstance(reset, str):
            when = _parse_time(reset)
        return [ParsedEvent(rate_limited=True, rate_limit_reset=when, detail=json.dumps(info))]


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
