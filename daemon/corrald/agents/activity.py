"""Activity (the seed's agent status) from the tool calls and shell commands an agent makes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from corral.models import AgentActivity

# claude's names, and gemini's and qwen's (read_file, write_file, run_shell_command...)
_READ_TOOLS = {"read", "grep", "glob", "ls", "webfetch", "websearch", "notebookread", "view"}
_READ_TOOLS |= {"read_file", "read_many_files", "list_directory", "grep_search", "web_fetch"}
_WRITE_TOOLS = {"edit", "write", "multiedit", "notebookedit", "str_replace", "apply_patch"}
_WRITE_TOOLS |= {"write_file", "replace", "edit_file"}
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
    if lowered in {"bash", "shell", "run_shell_command", "exec", "exec_command", "command"}:
        command = (tool_input or {}).get("command", "")
        if isinstance(command, list):
            command = " ".join(str(c) for c in command)
        return activity_for_command(str(command))
    return AgentActivity.THINKING
