"""`corral demo` end to end, in a real process: the story it tells, and what it leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import git


@pytest.mark.slow
def test_demo_json_shows_every_outcome_and_leaves_nothing_running() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "corral.cli", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    session = result["session"]
    assert session["status"] == "completed" and session["counts"] == {"completed": 8}
    assert session["tokens"] > 0 and session["cost"] > 0
    tasks = {t["id"]: t for t in session["tasks"]}

    # parallel, with dependencies respected
    assert result["peakParallel"] == 3
    changelog = tasks["changelog"]
    assert len(changelog["dependencies"]) == 4
    assert changelog["startedAt"] >= max(tasks[d]["completedAt"] for d in changelog["dependencies"])
    # memory limit: killed, retried, completed
    (killed,) = result["memoryKilled"]
    assert killed["taskId"] == "search-index" and killed["memoryMb"] > killed["limitMb"]
    assert tasks["search-index"]["endReasons"] == ["limit_memory", "ok"]
    assert "retry_wait" in result["statusHistory"]["search-index"]
    # rate limit: parked until the reset, resumed, no retry consumed
    (limited,) = result["rateLimited"]
    assert limited["taskId"] == "api-docs" and limited["resumed"] and limited["parkedSecs"] > 1
    assert "rate_limited" in result["statusHistory"]["api-docs"]
    assert tasks["api-docs"]["endReasons"][-1] == "ok"
    # a conflicting pair and a clean overlap
    assert result["conflicts"] == [
        {"branches": ["corral/greeting-en", "corral/greeting-fr"], "files": ["app/greeting.py"]}
    ]
    assert result["overlaps"] == [
        {"branches": ["corral/config-timeout", "corral/config-retries"], "files": ["app/config.py"]}
    ]
    # merged what merges; the second of the conflicting pair is skipped
    merge = result["merge"]
    assert set(merge["merged"]) == {f"corral/{t}" for t in tasks} - {"corral/greeting-fr"}
    assert [(n["branch"], n["status"]) for n in merge["notMerged"]] == [
        ("corral/greeting-fr", "conflict")
    ]
    repo = Path(result["repoPath"])
    assert git(repo, "rev-parse", "main") == merge["targetCommit"]
    config = (repo / "app" / "config.py").read_text()
    assert "TIMEOUT = 30" in config and "RETRIES = 5" in config  # the overlap merged cleanly
    assert (repo / "app" / "greeting.py").read_text().startswith('GREETING = "hello there"')
    assert result["wallSecs"] < 30

    # nothing left: the daemon is gone, no process mentions the demo dir, no socket
    assert (
        not psutil.pid_exists(result["daemonPid"])
        or psutil.Process(result["daemonPid"]).status() == psutil.STATUS_ZOMBIE
    )
    demo_dir = result["demoDir"]
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(demo_dir in arg for arg in p.info["cmdline"] or []):
            leftovers.append(p.info)
    assert leftovers == []
    assert not Path(result["socket"]).exists()
