"""Agent types: how to launch each coding CLI headless.

An agent type is an argv template. Placeholders ``{prompt}``, ``{task_id}``,
``{worktree}`` and ``{model}`` are substituted only where an argv element is
exactly the placeholder, so user text is always one argument and never goes
through a shell. ``{permissions}`` becomes the flags of the session's
permission profile (see ``Profile``). When no model is given, a ``{model}`` element is dropped
together with the flag right before it if that element starts with ``-``
(``--model {model}`` and ``-m {model}`` disappear as a pair).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import UnknownAgentType
from corral.models import Permissions
from corrald.agents.parsers import PARSERS

PERMISSIONS: tuple[Permissions, ...] = ("workspace", "full", "ask")


@dataclass(frozen=True)
class Profile:
    """One permission profile of one CLI: flags for ``{permissions}`` and environment."""

    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: added only when corrald runs as root (some CLIs refuse their bypass mode as root)
    root_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentType:
    """How to launch one coding CLI non-interactively."""

    name: str
    argv: tuple[str, ...]
    prompt_via: Literal["argv", "stdin"] = "argv"
    parser: str = "plain"
    env: Mapping[str, str] = field(default_factory=dict)
    #: permission profile -> flags and env; a ``{permissions}`` argv element takes the flags
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    #: the CLI release this argv was run against (`corral doctor` compares), None if never
    verified: str | None = None


class AgentTypeConfig(BaseModel):
    """An ``[agents.NAME]`` table of the TOML config (also overrides a builtin)."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1)
    prompt_via: Literal["argv", "stdin"] = "argv"
    parser: str = "plain"
    env: dict[str, str] = Field(default_factory=dict)


def _t(
    name: str,
    *argv: str,
    parser: str = "plain",
    verified: str | None = None,
    workspace: tuple[str, ...] = (),
    full: tuple[str, ...] = (),
    ask: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    full_root_env: Mapping[str, str] | None = None,
) -> AgentType:
    profiles = {
        "workspace": Profile(workspace),
        "full": Profile(full, root_env=dict(full_root_env or {})),
        "ask": Profile(ask),
    }
    return AgentType(name, tuple(argv), "argv", parser, dict(env or {}), profiles, verified)


#: Headless invocations. Each was run with the real CLI at the version in
#: ``verified`` (tests/real_cli/ checks it parses every flag and reaches the
#: API); ``{permissions}`` takes the session's permission profile. Override
#: any of these with an ``[agents.NAME]`` table (its argv is used as written).
BUILTIN_TYPES: dict[str, AgentType] = {
    t.name: t
    for t in (
        # claude -p: print mode; stream-json needs --verbose. Headless, acceptEdits
        # refuses every Bash command ("requires approval"), so the default profile
        # allows Bash too. bypassPermissions is refused as root without IS_SANDBOX=1.
        _t(
            "claude",
            *("claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose"),
            *("{permissions}", "--model", "{model}"),
            parser="claude-stream-json",
            verified="2.1.332",
            workspace=("--permission-mode", "acceptEdits", "--allowedTools", "Bash"),
            full=("--permission-mode", "bypassPermissions"),
            ask=("--permission-mode", "acceptEdits"),
            full_root_env={"IS_SANDBOX": "1"},
        ),
        # codex exec: --json prints JSONL events. --full-auto is rejected since
        # 0.147; exec never asks, the sandbox decides what commands may do.
        _t(
            "codex",
            *("codex", "exec", "--json", "{permissions}", "--model", "{model}", "{prompt}"),
            parser="codex-json",
            verified="0.171.0",
            workspace=("--sandbox", "workspace-write"),
            full=("--dangerously-bypass-approvals-and-sandbox",),
            ask=("--sandbox", "read-only"),
        ),
        # opencode run: --format json prints JSON events; --auto approves what
        # the config does not deny (without it a permission prompt stalls).
        _t(
            "opencode",
            *("opencode", "run", "--format", "json", "{permissions}", "--model", "{model}"),
            "{prompt}",
            parser="opencode-json",
            verified="1.18.33",
            workspace=("--auto",),
            full=("--auto",),
        ),
        # gemini -p: headless. A corral worktree is a new, untrusted folder:
        # without --skip-trust gemini exits 55. auto_edit refuses shell commands,
        # so the default is yolo (gemini has nothing in between).
        _t(
            "gemini",
            *("gemini", "--skip-trust", "{permissions}", "--output-format", "stream-json"),
            *("--model", "{model}", "-p", "{prompt}"),
            parser="gemini-stream-json",
            verified="0.61.0",
            workspace=("--approval-mode", "yolo"),
            full=("--approval-mode", "yolo"),
            ask=("--approval-mode", "auto_edit"),
        ),
        # cursor-agent -p: print mode; --force allows edits and commands; its
        # stream-json is claude's (system/assistant/result). Not on npm: unverified.
        _t(
            "cursor",
            *("cursor-agent", "-p", "{permissions}", "--output-format", "stream-json"),
            *("--model", "{model}", "{prompt}"),
            parser="claude-stream-json",
            workspace=("--force",),
            full=("--force",),
        ),
        # qwen (a gemini-cli fork): the prompt is positional (-p is deprecated);
        # its stream-json is claude's (system/assistant/user/result).
        _t(
            "qwen",
            *("qwen", "{permissions}", "--output-format", "stream-json", "--model", "{model}"),
            "{prompt}",
            parser="claude-stream-json",
            verified="0.24.4",
            workspace=("--approval-mode", "yolo"),
            full=("--approval-mode", "yolo"),
            ask=("--approval-mode", "auto-edit"),
            env={"QWEN_CODE_SUPPRESS_YOLO_WARNING": "1"},
        ),
        # droid exec: Factory's headless mode; --auto medium allows edits and
        # reversible commands. Not on npm or PyPI: unverified.
        _t(
            "droid",
            *("droid", "exec", "{permissions}", "--model", "{model}", "{prompt}"),
            workspace=("--auto", "medium"),
            full=("--skip-permissions-unsafe",),
            ask=("--auto", "low"),
        ),
        # aider --message: run one instruction and exit; --yes-always answers
        # its prompts (shell commands included); corral commits, so aider's own
        # auto-commits are off; no update check or analytics prompt on a fresh home.
        _t(
            "aider",
            *("aider", "{permissions}", "--no-pretty", "--no-stream", "--no-auto-commits"),
            *("--no-check-update", "--no-show-release-notes", "--analytics-disable"),
            *("--no-show-model-warnings", "--model", "{model}", "--message", "{prompt}"),
            parser="aider",
            verified="0.86.2",
            workspace=("--yes-always",),
            full=("--yes-always",),
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
    t: AgentType,
    *,
    prompt: str,
    task_id: str,
    worktree: str,
    model: str | None,
    permissions: Permissions = "workspace",
) -> list[str]:
    """Substitute placeholders in whole argv elements (never inside a string).

    With ``prompt_via="stdin"`` a ``{prompt}`` element is dropped (the prompt
    goes to stdin). With no model, ``{model}`` is dropped along with a
    preceding flag element (one starting with ``-``). ``{permissions}``
    becomes the profile's flags (none for a type without that profile).
    """
    values: dict[str, str | None] = {
        "{prompt}": None if t.prompt_via == "stdin" else prompt,
        "{task_id}": task_id,
        "{worktree}": worktree,
        "{model}": model,
    }
    out: list[str] = []
    for elem in t.argv:
        if elem == "{permissions}":
            profile = t.profiles.get(permissions)
            out.extend(profile.args if profile is not None else ())
        elif elem in values:
            value = values[elem]
            if value is None:
                if elem == "{model}" and out and out[-1].startswith("-") and len(out) > 1:
                    out.pop()
                continue
            out.append(value)
        else:
            out.append(elem)
    return out


def permission_env(t: AgentType, permissions: Permissions, *, root: bool) -> dict[str, str]:
    """The environment a profile adds (``root``: corrald runs as uid 0)."""
    profile = t.profiles.get(permissions)
    if profile is None:
        return {}
    return {**profile.env, **(profile.root_env if root else {})}


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
