"""Parsers on transcripts captured from the real CLIs (tests/fixtures/agents/).

Each ``*.jsonl`` file is the stdout of one real run, captured against the
scripted API of tests/real_cli/scripted_api.py (or a closed port, for the
error paths): see tests/fixtures/agents/README.md for how and which version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.models import AgentActivity as A
from corrald.agents.output import ParsedEvent, telling_line
from corrald.agents.parsers import make_parser

FIXTURES = Path(__file__).parent / "fixtures" / "agents"


def replay(parser_name: str, fixture: str) -> list[ParsedEvent]:
    parser = make_parser(parser_name)
    events: list[ParsedEvent] = []
    for line in (FIXTURES / fixture).read_text().splitlines():
        events += parser.feed("stdout", line)
    return events


def activities(events: list[ParsedEvent]) -> list[A]:
    """The activity as a run shows it: consecutive repeats collapse."""
    out: list[A] = []
    for ev in events:
        if ev.activity is not None and (not out or out[-1] is not ev.activity):
            out.append(ev.activity)
    return out


def result_event(fixture: str) -> dict[str, object]:
    lines = (FIXTURES / fixture).read_text().splitlines()
    (result,) = [json.loads(x) for x in lines if '"type":"result"' in x]
    assert isinstance(result, dict)
    return result


def test_claude_real_run_tokens_cost_activity() -> None:
    events = replay("claude-stream-json", "claude-ok.jsonl")
    assert activities(events) == [A.THINKING, A.IMPLEMENTING, A.TESTING, A.THINKING, A.IDLE]
    result = result_event("claude-ok.jsonl")
    usage = result["usage"]
    assert isinstance(usage, dict)
    expected = usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["output_tokens"]
    (total,) = [e for e in events if e.tokens_total is not None]
    assert total.tokens_total == expected == 450
    assert total.cost_total == pytest.approx(result["total_cost_usd"])
    assert not any(e.rate_limited for e in events)


def test_claude_denied_tool_use_is_not_activity() -> None:
    # acceptEdits, headless: Write is done, Bash is refused ("requires approval")
    events = replay("claude-stream-json", "claude-denied.jsonl")
    seq = activities(events)
    assert seq == [A.THINKING, A.IMPLEMENTING, A.TESTING, A.IMPLEMENTING, A.THINKING, A.IDLE]
    (denial,) = [e for e in events if "denied" in e.detail]
    assert denial.activity is A.IMPLEMENTING and "toolu_test" in denial.detail
    assert result_event("claude-denied.jsonl")["permission_denials"]


def test_codex_real_run_tokens_and_activity() -> None:
    events = replay("codex-json", "codex-ok.jsonl")
    assert activities(events) == [A.THINKING, A.IMPLEMENTING, A.TESTING, A.THINKING, A.IDLE]
    assert sum(e.tokens_delta for e in events) == 360 + 90  # turn.completed usage
    # codex's "Reconnecting..." and model-metadata notices are not rate limits
    assert not any(e.rate_limited for e in events)


def test_codex_declined_command_is_not_activity() -> None:
    parser = make_parser("codex-json")
    lines = [
        {"type": "item.completed", "item": {"id": "i0", "type": "agent_message", "text": "hm"}},
        {
            "type": "item.started",
            "item": {"id": "i1", "type": "command_execution", "command": "pytest -q"},
        },
        {
            "type": "item.completed",
            "item": {
                "id": "i1",
                "type": "command_execution",
                "command": "pytest -q",
                "status": "declined",
            },
        },
    ]
    events = [ev for line in lines for ev in parser.feed("stdout", json.dumps(line))]
    assert activities(events) == [A.THINKING, A.TESTING, A.THINKING]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [
                "error: unexpected argument '--full-auto' found",
                "",
                "  tip: to pass '--full-auto' as a value, use '-- --full-auto'",
                "Usage: codex exec [OPTIONS] [PROMPT]",
                "For more information, try '--help'.",
            ],
            "error: unexpected argument '--full-auto' found",
        ),
        (
            [
                "Error: not running in a trusted directory. Use --skip-trust.",
                "    at main (file:///x/gemini.js:10:3)",
                "    at async run (node:internal/process:1:1)",
            ],
            "Error: not running in a trusted directory. Use --skip-trust.",
        ),
        (["working...", "still working"], "still working"),
        (["For more information, try '--help'."], "For more information, try '--help'."),
    ],
)
def test_telling_line(lines: list[str], expected: str) -> None:
    assert telling_line(lines) == expected


def test_gemini_real_run_tokens_and_activity() -> None:
    events = replay("gemini-stream-json", "gemini-ok.jsonl")
    assert activities(events) == [A.THINKING, A.IMPLEMENTING, A.TESTING, A.THINKING, A.IDLE]
    stats = result_event_typed("gemini-ok.jsonl")["stats"]
    assert isinstance(stats, dict)
    (total,) = [e for e in events if e.tokens_total is not None]
    assert total.tokens_total == stats["total_tokens"] == 450


def test_gemini_refused_shell_is_not_activity() -> None:
    # --approval-mode auto_edit, headless: run_shell_command is not registered
    events = replay("gemini-stream-json", "gemini-denied.jsonl")
    assert activities(events) == [
        A.THINKING,
        A.IMPLEMENTING,
        A.TESTING,
        A.IMPLEMENTING,
        A.THINKING,
        A.IDLE,
    ]
    assert any("denied" in e.detail for e in events)


def result_event_typed(fixture: str) -> dict[str, object]:
    lines = (FIXTURES / fixture).read_text().splitlines()
    (result,) = [json.loads(x) for x in lines if json.loads(x).get("type") == "result"]
    assert isinstance(result, dict)
    return result


def test_opencode_real_run_tokens_and_cost() -> None:
    # a one-step run of real opencode 1.18.33 (the scripted API answered with text)
    events = replay("opencode-json", "opencode-text.jsonl")
    assert activities(events) == [A.THINKING]
    lines = (FIXTURES / "opencode-text.jsonl").read_text().splitlines()
    finishes = [json.loads(x)["part"] for x in lines if json.loads(x)["type"] == "step_finish"]
    assert sum(e.tokens_delta for e in events) == sum(f["tokens"]["total"] for f in finishes)
    (cost,) = [e.cost_total for e in events if e.cost_total is not None]
    assert cost == pytest.approx(sum(f["cost"] for f in finishes))


def test_claude_api_key_429_is_a_rate_limit_without_reset() -> None:
    # real claude with an API key, the API answering 429 with retry-after 3600:
    # it gives up at once ("Request rejected (429)", api_error_status 429)
    events = replay("claude-stream-json", "claude-429.jsonl")
    limits = [e for e in events if e.rate_limited]
    assert limits and all(e.rate_limit_reset is None for e in limits)
    assert result_event("claude-429.jsonl")["api_error_status"] == 429


def test_qwen_real_run_is_read_by_the_claude_parser() -> None:
    # qwen 0.24.4's stream-json is claude's; its tools are gemini's names
    events = replay("claude-stream-json", "qwen-ok.jsonl")
    assert activities(events) == [A.THINKING, A.IMPLEMENTING, A.TESTING, A.THINKING, A.IDLE]
    usage = result_event("qwen-ok.jsonl")["usage"]
    assert isinstance(usage, dict)
    (total,) = [e for e in events if e.tokens_total is not None]
    assert total.tokens_total == usage["input_tokens"] + usage["output_tokens"] == 450
    assert total.cost_total is None  # qwen reports no cost


def test_aider_real_run_tokens() -> None:
    parser = make_parser("aider")
    events: list[ParsedEvent] = []
    for line in (FIXTURES / "aider-text.txt").read_text().splitlines():
        events += parser.feed("stdout", line)
    (total,) = [e for e in events if e.tokens_total is not None]
    assert total.tokens_total == 120 + 30 and total.cost_total is None


def test_aider_cost_and_edits() -> None:
    parser = make_parser("aider")
    lines = [
        "Applied edit to hello.txt",
        "Running python -m pytest -q",
        "Tokens: 2.5k sent, 1.2k cache write, 310 received. Cost: $0.01 message, $0.03 session.",
    ]
    events = [ev for line in lines for ev in parser.feed("stdout", line)]
    assert activities(events) == [A.IMPLEMENTING, A.TESTING, A.THINKING]
    (total,) = [e for e in events if e.tokens_total is not None]
    assert total.tokens_total == 2500 + 310 and total.cost_total == pytest.approx(0.03)
