"""Each builtin agent type's real argv, given to the real CLI, is accepted.

The CLI is pointed at the scripted API, which refuses every model call at
once (HTTP 400). A CLI that parsed every flag goes on to call the model: the
server sees that request. One that rejects a flag exits first, with a usage
error, and the server sees nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from corral.models import Permissions
from corrald.agents.types import BUILTIN_TYPES, build_argv, build_prompt, permission_env
from tests.real_cli.conftest import MODELS, cli_env, require
from tests.real_cli.scripted_api import ScriptedApi

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]

_USAGE_RE = re.compile(
    r"unexpected argument|unknown (?:option|argument|flag)|unrecognized arguments"
    r"|invalid (?:value|choice)|Not enough arguments|Usage: ",
    re.I,
)
CASES: list[tuple[str, Permissions]] = [
    *((name, "workspace") for name in ("claude", "codex", "gemini", "qwen", "opencode", "aider")),
    *((name, p) for name in ("claude", "codex") for p in ("full", "ask")),
]


def model_requests(api: ScriptedApi) -> list[str]:
    return [
        path
        for method, path, _ in list(api.requests)
        if method == "POST"
        and re.search(r"messages|responses|completions|generatecontent", path, re.I)
    ]


@pytest.mark.parametrize(("agent_type", "permissions"), CASES)
def test_cli_accepts_corral_argv(
    agent_type: str, permissions: Permissions, api: ScriptedApi, tmp_path: Path
) -> None:
    require(agent_type)
    api.mode = "refuse"
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    argv = build_argv(
        BUILTIN_TYPES[agent_type],
        prompt=build_prompt("Say hello", "Reply with one word.", None),
        task_id="t1",
        worktree=str(work),
        model=MODELS[agent_type],
        permissions=permissions,
    )
    kind = BUILTIN_TYPES[agent_type]
    env = cli_env(agent_type, api, tmp_path / "home")
    env |= permission_env(kind, permissions, root=os.geteuid() == 0)
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 180
        try:
            while not model_requests(api) and proc.poll() is None:
                assert time.monotonic() < deadline, "the CLI neither called the API nor exited"
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    seen = [(m, p) for m, p, _ in api.requests]
    assert model_requests(api), f"{agent_type} never called the API ({seen}):\n{text[-3000:]}"
    assert not _USAGE_RE.search(text), text[-3000:]
