"""corrald's TOML config: a bad file stops it with exit 2 and a message naming file and key."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cf", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_corrald(directory: Path, config: str | None) -> subprocess.CompletedProcess[str]:
    """Run corrald to completion: a bad config must make it exit, not serve."""
    cmd = [sys.executable, "-m", "corrald.app", "--socket", str(directory / "s.sock"),
           "--state-dir", str(directory / "state")]  # fmt: skip
    if config is not None:
        (directory / "config.toml").write_text(config)
        cmd += ["--config", str(directory / "config.toml")]
    else:
        cmd += ["--config", str(directory / "missing.toml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_unknown_key_exits_2_naming_file_and_key(short_dir: Path) -> None:
    result = run_corrald(short_dir, "[daemon]\nmax_conections = 3\n")
    assert result.returncode == 2, result.stderr
    assert str(short_dir / "config.toml") in result.stderr
    assert "daemon.max_conections" in result.stderr
    assert "unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (short_dir / "s.sock").exists()  # it never started serving


def test_unknown_section_is_an_error(short_dir: Path) -> None:
    result = run_corrald(short_dir, "[deamon]\nlog_level = 'debug'\n")
    assert result.returncode == 2
    assert "deamon" in result.stderr and "unknown key" in result.stderr


def test_unknown_key_in_scheduler_defaults(short_dir: Path) -> None:
    result = run_corrald(short_dir, "[defaults]\nmaxParalel = 2\n")
    assert result.returncode == 2
    assert "maxParalel" in result.stderr


def test_wrong_type_names_the_key(short_dir: Path) -> None:
    result = run_corrald(short_dir, '[daemon]\nmax_connections = "lots"\n')
    assert result.returncode == 2
    assert "daemon.max_connections" in result.stderr
    assert str(short_dir / "config.toml") in result.stderr
    assert "Traceback" not in result.stderr


def test_out_of_range_value_names_the_key(short_dir: Path) -> None:
    result = run_corrald(short_dir, "[daemon]\nmax_frame_bytes = 10\n")
    assert result.returncode == 2
    assert "daemon.max_frame_bytes" in result.stderr


def test_invalid_toml_is_a_clear_error(short_dir: Path) -> None:
    result = run_corrald(short_dir, "[daemon\nmax_connections = 3\n")
    assert result.returncode == 2
    assert str(short_dir / "config.toml") in result.stderr
    assert "not valid TOML" in result.stderr
    assert "line 1" in result.stderr  # tomllib says where
    assert "Traceback" not in result.stderr


def test_missing_explicit_config_is_an_error(short_dir: Path) -> None:
    result = run_corrald(short_dir, None)
    assert result.returncode == 2
    assert "missing.toml" in result.stderr and "does not exist" in result.stderr


def test_agent_table_without_argv_names_the_key(short_dir: Path) -> None:
    result = run_corrald(short_dir, "[agents.mine]\nparser = 'plain'\n")
    assert result.returncode == 2
    assert "agents.mine.argv" in result.stderr


def test_agent_argv_table_is_accepted() -> None:
    config = (
        "[daemon]\nmax_connections = 7\n\n"
        "[agents.mine]\n"
        'argv = ["my-agent", "--print", "{prompt}"]\n'
        'prompt_via = "argv"\n'
        'env = { MY_AGENT_MODE = "batch" }\n'
    )
    with DaemonProcess(config=config) as d:
        with d.client() as c:
            assert c.daemon_status().pid == d.pid
        assert d.stop() == 0
