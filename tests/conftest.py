"""Shared fixtures: isolated git config and XDG dirs for every test."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import ConfigLevel

from tests.daemon_proc import DaemonProcess


@pytest.fixture(autouse=True)
def isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """No test sees the developer's git config or XDG directories."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    gitconfig = "[user]\n\tname = corral test\n\temail = test@corral.invalid\n"
    gitconfig += "[init]\n\tdefaultBranch = main\n"
    (home / "gitconfig").write_text(gitconfig)
    (home / ".gitconfig").write_text(gitconfig)  # what libgit2 in a daemon subprocess reads
    # libgit2 fixed its config search path when pygit2 was imported (from the real
    # HOME); point it at the test's home so in-process pygit2 is isolated too.
    empty = home / "empty"
    empty.mkdir()
    levels = {ConfigLevel.SYSTEM: empty, ConfigLevel.XDG: empty, ConfigLevel.GLOBAL: home}
    saved = {level: pygit2.settings.search_path[level] for level in levels}
    for level, path in levels.items():
        pygit2.settings.search_path[level] = str(path)
    for var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(var, str(home / var.lower()))
    runtime = Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("CORRAL_SOCKET", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    yield
    for level, value in saved.items():
        pygit2.settings.search_path[level] = value


def git(cwd: Path, *args: str) -> str:
    """Run real git (used to build fixtures and to check results)."""
    out = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=os.environ.copy()
    )
    return out.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A real repository on branch main with one commit holding `files`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, content in (files or {"README.md": "hello\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    yield make_repo(tmp_path / "repo")


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    """A real corrald on a real socket, killed at the end of the test."""
    with DaemonProcess() as d:
        yield d
