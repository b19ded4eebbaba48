"""The real agent CLIs: where they are installed, and how to point them at the scripted API.

`python -m tests.real_cli.install` (run by .ci/run) installs them; a CLI that
is not installed makes its tests skip with the reason. They take minutes, so
a plain `python -m pytest` skips them; `-m real_cli` runs them (.ci/run does).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real_cli.install import bin_dirs, failure
from tests.real_cli.scripted_api import ScriptedApi


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "real_cli" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="real agent CLIs: run with -m real_cli (.ci/run does)")
    for item in items:
        if item.get_closest_marker("real_cli") is not None:
            item.add_marker(skip)


#: agent type -> executable
EXECUTABLES = {
    "claude": "claude",
    "codex": "codex",
    "gemini": "gemini",
    "qwen": "qwen",
    "opencode": "opencode",
    "aider": "aider",
}


def cli_path() -> str:
    """PATH with the installed CLIs first."""
    return os.pathsep.join([*map(str, bin_dirs()), os.environ.get("PATH", "")])


def require(agent_type: str) -> str:
    """The CLI's executable, or skip saying why it is not there."""
    exe = EXECUTABLES[agent_type]
    found = shutil.which(exe, path=os.pathsep.join(map(str, bin_dirs())))
    if found is None:
        why = failure(exe) or "not installed: run `python -m tests.real_cli.install`"
        pytest.skip(f"{exe}: {why}")
    return found


def cli_env(agent_type: str, api: ScriptedApi, home: Path) -> dict[str, str]:
    """Environment that points `agent_type` at the scripted API (and away from the network).

    `home` becomes the CLI's HOME: its settings, caches and sessions stay in the test.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "PATH": cli_path(), "NO_COLOR": "1"}
    if agent_type == "claude":
        env |= {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "sk-ant-scripted"}
        env |= {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    elif agent_type == "codex":
        codex_home = home / ".codex"
        codex_home.mkdir(exist_ok=True)
        (codex_home / "config.toml").write_text(
            'model_provider = "scripted"\n'
            "[model_providers.scripted]\n"
            'name = "scripted"\n'
            f'base_url = "{api.url}/v1"\n'
            'env_key = "SCRIPTED_API_KEY"\n'
            'wire_api = "responses"\n'
            "supports_websockets = false\n"
        )
        env |= {"CODEX_HOME": str(codex_home), "SCRIPTED_API_KEY": "sk-scripted"}
    elif agent_type == "gemini":
        settings = home / ".gemini"
        settings.mkdir(exist_ok=True)
        auth = {"security": {"auth": {"selectedType": "gemini-api-key"}}}
        (settings / "settings.json").write_text(json.dumps(auth))
        env |= {"GEMINI_API_KEY": "scripted", "GOOGLE_GEMINI_BASE_URL": api.url}
    elif agent_type in ("qwen", "aider"):
        env |= {"OPENAI_API_KEY": "sk-scripted", "OPENAI_BASE_URL": f"{api.url}/v1"}
        env |= {"OPENAI_API_BASE": f"{api.url}/v1", "OPENAI_MODEL": "scripted"}
    elif agent_type == "opencode":
        provider = {"provider": {"openai": {"options": {"baseURL": f"{api.url}/v1"}}}}
        env |= {"OPENAI_API_KEY": "sk-scripted", "OPENCODE_CONFIG_CONTENT": json.dumps(provider)}
    return env


#: the --model each CLI is given (its own naming scheme)
MODELS = {
    "claude": "claude-sonnet-4-5",
    "codex": "gpt-5",
    "gemini": "gemini-2.5-pro",
    "qwen": "scripted",
    "opencode": "openai/gpt-5",
    "aider": "openai/scripted",
}


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    with ScriptedApi() as server:
        yield server
