"""`corral doctor` (RPC agents_check) against a real daemon with a PATH we control.

The programs on that PATH are real executables that answer `--version` as
the CLIs do; tests/real_cli/ runs doctor against the real CLIs too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess
from tests.test_cli import Cli


def program(bin_dir: Path, name: str, version_line: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(0o755)


def test_doctor_found_missing_and_unknown_version(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program(bin_dir, "codex", "codex-cli 0.171.0")  # the verified release
    program(bin_dir, "gemini", "0.50.1")  # a release corral never ran
    program(bin_dir, "mytool", "mytool 1.0")
    config = '[agents.mine]\nargv = ["mytool", "{prompt}"]\n'
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    with DaemonProcess(config=config, env=env) as d:
        cli = Cli(capsys, d.socket)
        checks = {c["agentType"]: c for c in cli.json("doctor")}
        code, out, _ = cli("doctor")
    assert code == 0 and "codex" in out and "missing" in out
    codex = checks["codex"]
    assert (codex["status"], codex["version"], codex["verified"]) == ("ok", "0.171.0", "0.171.0")
    assert codex["path"] == str(bin_dir / "codex")
    claude = checks["claude"]
    assert claude["status"] == "missing" and claude.get("path") is None
    assert "'claude' is not on the daemon's PATH" in claude["detail"]
    gemini = checks["gemini"]
    assert gemini["status"] == "unknown_version" and gemini["version"] == "0.50.1"
    assert "0.61.0" in gemini["detail"] and "[agents.gemini]" in gemini["detail"]
    assert checks["mine"]["status"] == "unverified" and checks["mine"]["version"] == "1.0"
    assert checks["command"]["status"] == "no_argv"
    assert set(checks) >= {"claude", "codex", "gemini", "qwen", "opencode", "aider", "mine"}
    assert all(os.path.isabs(c["path"]) for c in checks.values() if c.get("path"))


def test_doctor_type_filter(capsys: pytest.CaptureFixture[str]) -> None:
    with DaemonProcess() as d:
        cli = Cli(capsys, d.socket)
        code, out, err = cli("doctor", "--type", "codex", "--json")
    assert code == 0, err
    assert [c["agentType"] for c in json.loads(out)] == ["codex"]
