"""Agent types: how to launch each coding CLI headless.

An agent type is an argv template. Placeholders ``{prompt}``, ``{task_id}``,
``{worktree}`` and ``{model}`` are substituted only where an argv element is
exactly the placeholder, so user text is always one argument and never goes
through a shell. When no model is given, a ``{model}`` element is dropped
together with the flag right before it if that element starts with ``-``
(``--model {model}`` and ``-m {model}`` disappear as a pair).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import UnknownAgentType
from corrald.agents.parsers import PARSERS


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


def resolution_note(
    kind: str,
    *,
    branch: str,
    files: list[str],
    gate_argv: list[str] | None,
    detail: str | None,
) -> str:
    """What a resolution attempt is told, after its task's own prompt.

    `kind` is "conflict" (the branch conflicts with the integration head,
    which corral has merged into this worktree, markers left in place) or
    "gate" (the merged result failed the gate command).
    """
    if kind == "conflict":
        listed = "".join(f"- {f}\n" for f in files) or "- (see `git status`)\n"
        return (
            f"\nYour work conflicts with {branch}, where the other tasks' work is"
            " integrated. corral has merged it into this worktree; these files have"
            f" conflict markers:\n{listed}"
            "Resolve every conflict, keeping both sides' intent, remove the markers,"
            " make sure the project still works, and commit.\n"
        )
    command = " && ".join(gate_argv or [])
    tail = (detail or "").strip()[-4000:]
    return (
        f"\nYour work, merged with {branch}, fails the integration check `{command}`."
        f" corral has merged {branch} into this worktree. The check's output ended with:"
        f"\n```\n{tail}\n```\n"
        "Fix the cause, run the check yourself until it passes, and commit.\n"
    )


def build_prompt(title: str, description: str, completion_marker: str | None) -> str:
    """The agent's prompt: the task, plus how to signal completion if required."""
    prompt = f"Task: {title}\n\n{description}".rstrip() + "\n"
    if completion_marker:
        prompt += (
            "\nWhen the task is completely done, output the following marker on a line"
            f" by itself:\n{completion_marker}\n"
        )
    return prompt
