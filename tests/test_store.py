"""The state file: a bad one is a clear startup error and is never recreated."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from corral import errors
from corral.models import TaskState
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, wait_for


def _start_fails(state: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "corrald.app",
            "--socket",
            str(state / "s.sock"),
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out
    return out.stderr


def test_corrupt_state_file_is_a_clear_error_and_is_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "corral.db"
    garbage = b"this is not a database" * 100
    db.write_bytes(garbage)
    message = _start_fails(state)
    assert "corrupt or not a SQLite database" in message and str(db) in message
    assert db.read_bytes() == garbage  # never silently recreated


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with DaemonProcess(state) as d:
        d.stop()
    with sqlite3.connect(state / "corral.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    message = _start_fails(state)
    assert "schema version 99" in message and "newer" in message


def test_reinit_with_running_agents_is_refused_and_changes_nothing(
    repo: Path, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"*": ["--sleep", "60"]}))
    with DaemonProcess(config=agent_config(plan, "fake")) as d, d.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo), session_id="s", config={"agentType": "fake", "maxParallel": 2}
        )
        c.parallel_add_task(task={"id": "t", "title": "t"})
        c.session_start()
        wait_for(lambda: c.parallel_list_agents(live=True))
        with pytest.raises(errors.SessionBusy) as busy:
            c.init_parallel_scheduler(
                repo_path=str(repo), session_id="s", config={"maxParallel": 9}
            )
        assert busy.value.data["sessionId"] == "s" and len(busy.value.data["agents"]) == 1
        session = c.session_get(session_id="s")
        assert session.config.max_parallel == 2
        assert c.parallel_get_task(task_id="t").state is TaskState.IN_PROGRESS
        c.parallel_stop_all()
