"""Agent types, argv building, prompts and output parsers (pure logic)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pydantic import ValidationError

from corral.errors import UnknownAgentType
from corral.models import AgentActivity, Permissions
from corrald.agents.activity import activity_for_command
from corrald.agents.output import OutputParser, ParsedEvent
from corrald.agents.parsers import (
    PARSERS,
    ClaudeStreamJsonParser,
    CodexJsonParser,
    PlainParser,
    make_parser,
)
from corrald.agents.ratelimit import parse_reset, rate_limit_from_text
from corrald.agents.types import (
    BUILTIN_TYPES,
    PERMISSIONS,
    AgentTypeConfig,
    build_argv,
    build_prompt,
    permission_env,
    resolve_type,
)

EVIL = "fix it; echo \"hi\" 'there' $(rm -rf /) `id` && {model}"


def feed_all(parser: OutputParser, lines: list[tuple[str, Any]]) -> list[ParsedEvent]:
    out: list[ParsedEvent] = []
    for stream, obj in lines:
        line = obj if isinstance(obj, str) else json.dumps(obj)
        out += parser.feed("stdout" if stream == "stdout" else "stderr", line)
    return out


# --- types and argv ------------------------------------------------------------


def test_builtin_types_resolve_and_name_known_parsers() -> None:
    for name in ("claude", "codex", "opencode", "gemini", "cursor", "qwen", "droid", "aider"):
        t = resolve_type(name, {})
        assert t.name == name and t.argv and t.parser in PARSERS
        assert "{prompt}" in t.argv
    assert resolve_type("claude", {}).parser == "claude-stream-json"
    assert resolve_type("codex", {}).parser == "codex-json"


def test_prompt_stays_one_argv_element() -> None:
    argv = build_argv(
        resolve_type("claude", {}), prompt=EVIL, task_id="t1", worktree="/w", model="opus"
    )
    assert argv[:3] == ["claude", "-p", EVIL]
    assert argv.count(EVIL) == 1
    assert argv[-2:] == ["--model", "opus"]
    # Placeholders inside a longer element are not substituted.
    custom = AgentTypeConfig(argv=["tool", "--id={task_id}", "{task_id}", "{worktree}", "{prompt}"])
    argv = build_argv(
        resolve_type("mine", {"mine": custom}), prompt=EVIL, task_id="t1", worktree="/w", model=None
    )
    assert argv == ["tool", "--id={task_id}", "t1", "/w", EVIL]


def test_permission_profiles_map_to_each_cli() -> None:
    def argv(name: str, permissions: Permissions) -> list[str]:
        t = resolve_type(name, {})
        return build_argv(
            t, prompt="p", task_id="t", worktree="/w", model="m", permissions=permissions
        )

    # the default lets claude run Bash; acceptEdits alone refuses it headless
    assert "--allowedTools" in argv("claude", "workspace")
    assert argv("claude", "ask")[-4:] == ["--permission-mode", "acceptEdits", "--model", "m"]
    assert "bypassPermissions" in argv("claude", "full")
    claude = resolve_type("claude", {})
    assert permission_env(claude, "full", root=True) == {"IS_SANDBOX": "1"}
    assert permission_env(claude, "full", root=False) == {}
    assert permission_env(claude, "workspace", root=True) == {}
    assert argv("codex", "workspace")[:5] == [
        "codex",
        "exec",
        "--json",
        "--sandbox",
        "workspace-write",
    ]
    assert "--full-auto" not in argv("codex", "full")
    assert "--skip-trust" in argv("gemini", "ask") and "auto_edit" in argv("gemini", "ask")
    assert "-p" not in argv("qwen", "workspace") and argv("qwen", "workspace")[-1] == "p"
    assert "--auto" in argv("opencode", "workspace") and "--auto" not in argv("opencode", "ask")
    for name in ("claude", "codex", "gemini", "qwen", "opencode", "aider", "cursor", "droid"):
        for profile in PERMISSIONS:
            assert "{permissions}" not in argv(name, profile)


def test_model_none_drops_flag_pair() -> None:
    claude = build_argv(
        resolve_type("claude", {}), prompt="p", task_id="t", worktree="/w", model=None
    )
    assert "--model" not in claude and "{model}" not in claude
    gemini = build_argv(
        resolve_type("gemini", {}), prompt="p", task_id="t", worktree="/w", model=None
    )
    assert gemini == [
        *("gemini", "--skip-trust", "--approval-mode", "yolo"),
        *("--output-format", "stream-json", "-p", "p"),
    ]
    bare = AgentTypeConfig(argv=["tool", "{model}", "{prompt}"])
    assert build_argv(
        resolve_type("x", {"x": bare}), prompt="p", task_id="t", worktree="/w", model=None
    ) == ["tool", "p"]


def test_stdin_prompt_not_in_argv() -> None:
    cfg = AgentTypeConfig(argv=["tool", "{prompt}", "--x"], prompt_via="stdin", env={"A": "1"})
    t = resolve_type("s", {"s": cfg})
    assert t.prompt_via == "stdin" and dict(t.env) == {"A": "1"}
    assert build_argv(t, prompt="p", task_id="t", worktree="/w", model=None) == ["tool", "--x"]


def test_unknown_type_error() -> None:
    with pytest.raises(UnknownAgentType) as info:
        resolve_type("nope", {})
    assert info.value.code == 2002 and "claude" in info.value.data["known"]
    with pytest.raises(UnknownAgentType):
        resolve_type("command", {})  # needs an [agents.command] table
    with pytest.raises(UnknownAgentType):
        make_parser("no-such-parser")


def test_custom_type_from_config_overrides_builtin() -> None:
    cfg = AgentTypeConfig.model_validate({"argv": ["my-claude", "{prompt}"], "parser": "plain"})
    t = resolve_type("claude", {"claude": cfg})
    assert t.argv == ("my-claude", "{prompt}") and t.parser == "plain"
    cmd = resolve_type("command", {"command": AgentTypeConfig(argv=["./run.sh", "{task_id}"])})
    assert build_argv(cmd, prompt="p", task_id="t9", worktree="/w", model=None) == [
        "./run.sh",
        "t9",
    ]
    with pytest.raises(ValidationError):
        AgentTypeConfig.model_validate({"argv": ["x"], "shell": True})
    with pytest.raises(ValidationError):
        AgentTypeConfig.model_validate({"argv": []})
    assert BUILTIN_TYPES["command"].argv == ()


def test_build_prompt() -> None:
    assert (
        build_prompt("Add tests", "For the parser.", None) == "Task: Add tests\n\nFor the parser.\n"
    )
    with_marker = build_prompt("T", "D", "DONE_42")
    assert with_marker.startswith("Task: T\n\nD\n") and with_marker.rstrip().endswith("DONE_42")


# --- claude stream-json ----------------------------------------------------------

SESSION = "9a3e4290-1429-4c2d-8429-0e1f2a3b4429"
CLAUDE_LINES: list[tuple[str, Any]] = [
    (
        "stdout",
        {
            "type": "system",
            "subtype": "init",
            "session_id": SESSION,
            "cwd": "/w",
            "tools": ["Read", "Edit", "Bash"],
            "model": "claude-sonnet-4-5-20250929",
            "permissionMode": "acceptEdits",
        },
    ),
    (
        "stdout",
        {
            "type": "assistant",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "thinking", "thinking": "Let me look.", "signature": "x"}],
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 5,
                    "cache_read_input_tokens": 9000,
                    "output_tokens": 2,
                },
            },
            "parent_tool_use_id": None,
            "session_id": SESSION,
        },
    ),
    (
        "stdout",
        {
            "type": "assistant",
            "message": {
                "id": "msg_01",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Read",
                        "input": {"file_path": "/w/app.py"},
                    }
                ],
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 5,
                    "output_tokens": 20,
                },
            },
            "session_id": SESSION,
        },
    ),
    (
        "stdout",
        {
            "type": "user",
            "message": {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rate limit = 429"}
                ],
            },
        },
    ),
    (
        "stdout",
        {
            "type": "assistant",
            "message": {
                "id": "msg_02",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "Edit",
                        "input": {"file_path": "/w/app.py", "old_string": "a", "new_string": "b"},
                    }
                ],
                "usage": {"input_tokens": 30, "output_tokens": 10},
            },
        },
    ),
    (
        "stdout",
        {
            "type": "assistant",
            "message": {
                "id": "msg_03",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_3",
                        "name": "Bash",
                        "input": {"command": "cd /w && python -m pytest -q tests/"},
                    }
                ],
                "usage": {"input_tokens": 40, "output_tokens": 10},
            },
        },
    ),
    (
        "stdout",
        {
            "type": "assistant",
            "message": {
                "id": "msg_04",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_4",
                        "name": "Bash",
                        "input": {"command": "git add -A && git commit -m 'fix'"},
                    }
                ],
            },
        },
    ),
    (
        "stdout",
        {
            "type": "rate_limit_event",
            "rate_limit_info": {
                "status": "allowed",
                "resetsAt": 1767225600,
                "rateLimitType": "five_hour",
            },
        },
    ),
    (
        "stdout",
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "duration_ms": 48210,
            "num_turns": 6,
            "result": "Done. ALL_DONE_1",
            "session_id": SESSION,
            "total_cost_usd": 0.0731,
            "usage": {
                "input_tokens": 90,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 20000,
                "output_tokens": 45,
            },
        },
    ),
]


def test_claude_stream_json() -> None:
    parser = make_parser("claude-stream-json", completion_marker="ALL_DONE_1")
    assert isinstance(parser, ClaudeStreamJsonParser)
    events = feed_all(parser, CLAUDE_LINES)
    activities = [e.activity for e in events if e.activity]
    assert activities == [
        AgentActivity.THINKING,
        AgentActivity.READING,
        AgentActivity.IMPLEMENTING,
        AgentActivity.TESTING,
        AgentActivity.COMMITTING,
        AgentActivity.IDLE,
    ]
    # msg_01 streamed twice: counted once, at its latest usage (35).
    deltas = [e.tokens_delta for e in events if e.tokens_delta]
    assert deltas == [17, 18, 40, 50]
    (total,) = [e for e in events if e.tokens_total is not None]
    assert total.tokens_total == 140 and total.cost_total == pytest.approx(0.0731)
    assert any(e.completion_marker_seen for e in events)
    # "allowed" rate_limit_event and "429" in ids / tool output: not rate limits.
    assert not any(e.rate_limited for e in events)


def test_claude_rate_limit_event_rejected() -> None:
    parser = ClaudeStreamJsonParser()
    events = feed_all(
        parser,
        [
            (
                "stdout",
                {
                    "type": "rate_limit_event",
                    "rate_limit_info": {
                        "status": "rejected",
                        "resetsAt": 1778565600,
                        "rateLimitType": "five_hour",
                    },
                },
            )
        ],
    )
    assert [(e.rate_limited, e.rate_limit_reset) for e in events] == [(True, 1778565600.0)]


def test_claude_usage_limit_result_text() -> None:
    events = feed_all(
        ClaudeStreamJsonParser(),
        [
            (
                "stdout",
                {
                    "type": "result",
                    "subtype": "success",
                    "is_error": True,
                    "result": "Claude AI usage limit reached|1749924000",
                    "total_cost_usd": 0,
                },
            )
        ],
    )
    limited = [e for e in events if e.rate_limited]
    assert limited and limited[0].rate_limit_reset == 1749924000.0


def test_claude_non_json_and_stderr_fallback() -> None:
    parser = ClaudeStreamJsonParser()
    assert parser.feed("stdout", "not json {") == []
    (ev,) = parser.feed("stderr", "API Error: 429 Too Many Requests; Retry-After: 30")
    assert ev.rate_limited and ev.rate_limit_reset is not None
    assert ev.rate_limit_reset == pytest.approx(time.time() + 30, abs=5)


# --- codex json ----------------------------------------------------------------

CODEX_LINES: list[tuple[str, Any]] = [
    ("stdout", {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035429"}),
    ("stdout", {"type": "turn.started"}),
    (
        "stdout",
        {
            "type": "item.completed",
            "item": {"id": "item_0", "type": "reasoning", "text": "**Scanning the repo**"},
        },
    ),
    (
        "stdout",
        {
            "type": "item.started",
            "item": {
                "id": "item_1",
                "type": "command_execution",
                "command": "bash -lc 'rg --files'",
                "aggregated_output": "",
                "status": "in_progress",
            },
        },
    ),
    (
        "stdout",
        {
            "type": "item.completed",
            "item": {
                "id": "item_2",
                "type": "file_change",
                "changes": [{"path": "a.py", "kind": "update"}],
                "status": "completed",
            },
        },
    ),
    (
        "stdout",
        {
            "type": "item.started",
            "item": {
                "id": "item_3",
                "type": "command_execution",
                "command": "bash -lc 'cargo test'",
                "status": "in_progress",
            },
        },
    ),
    (
        "stdout",
        {
            "type": "item.completed",
            "item": {"id": "item_4", "type": "agent_message", "text": "Finished. CODEX_DONE"},
        },
    ),
    (
        "stdout",
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122},
        },
    ),
]


def test_codex_json() -> None:
    parser = make_parser("codex-json", completion_marker="CODEX_DONE")
    assert isinstance(parser, CodexJsonParser)
    events = feed_all(parser, CODEX_LINES)
    assert [e.activity for e in events if e.activity] == [
        AgentActivity.THINKING,
        AgentActivity.READING,
        AgentActivity.IMPLEMENTING,
        AgentActivity.TESTING,
        AgentActivity.THINKING,
        AgentActivity.IDLE,
    ]
    assert sum(e.tokens_delta for e in events) == 24763 + 122
    assert any(e.completion_marker_seen for e in events)
    assert not any(e.rate_limited for e in events)


def test_codex_error_rate_limit() -> None:
    events = feed_all(
        CodexJsonParser(),
        [
            (
                "stdout",
                {
                    "type": "error",
                    "message": "exceeded retry limit, last status: 429 Too Many Requests",
                },
            ),
            (
                "stdout",
                {
                    "type": "turn.failed",
                    "error": {"message": "You've hit your usage limit. Try again in 120 seconds."},
                },
            ),
        ],
    )
    assert [e.rate_limited for e in events] == [True, True]
    assert events[1].rate_limit_reset == pytest.approx(time.time() + 120, abs=5)


# --- plain parser and the stderr regexes ---------------------------------------


@pytest.mark.parametrize(
    ("line", "reset"),
    [
        ("Error: rate limit exceeded", None),
        ("HTTP/1.1 429 Too Many Requests", None),
        ("status code 429", None),
        ("anthropic.RateLimitError: Error code: 429", None),
        ("Retry-After: 17", "+17"),
        ("rate limited; resets at 2026-01-01T00:00:00Z", 1767225600.0),
        ("Rate limit reached, resets at 1767225600", 1767225600.0),
        ("rate_limit_error, resets at 1767225600000", 1767225600.0),
    ],
)
def test_stderr_rate_limit_regexes(line: str, reset: float | str | None) -> None:
    (ev,) = PlainParser().feed("stderr", line)
    assert ev.rate_limited
    if isinstance(reset, str):
        assert ev.rate_limit_reset == pytest.approx(time.time() + float(reset), abs=5)
    else:
        assert ev.rate_limit_reset == reset


@pytest.mark.parametrize(
    "line",
    [
        "session id abc429def",
        "uuid 123e4567-e89b-429d-a456-426614174290",
        "request 7f3a0429-0000-4429-a429-000000000429 done",
        "processed 4290 files in 429ms",
        "wrote 429 lines",
        "limit the rate of change",
    ],
)
def test_429_in_ids_is_not_a_rate_limit(line: str) -> None:
    assert rate_limit_from_text(line) is None
    assert PlainParser().feed("stderr", line) == []


def test_plain_parser_marker_and_stdout_not_scanned_for_rate_limits() -> None:
    parser = make_parser("plain", completion_marker="MARK")
    assert parser.feed("stdout", "I will add a rate limit of 429 Too Many Requests") == []
    assert parser.feed("stdout", "MARK") == [ParsedEvent(completion_marker_seen=True)]


def test_parse_reset_and_commands() -> None:
    assert parse_reset("resets at 2026-01-01 00:00:00+00:00") == 1767225600.0
    assert parse_reset("nothing here") is None
    assert activity_for_command("npm test") is AgentActivity.TESTING
    assert activity_for_command("cat tests/test_a.py") is AgentActivity.READING
    assert activity_for_command("git -C /w commit -m x") is AgentActivity.COMMITTING
    assert activity_for_command("mkdir -p src") is AgentActivity.IMPLEMENTING
