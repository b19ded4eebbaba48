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

    # parallel, with dependencies respected: each dependent started once its
    # dependencies were integrated, and read their files (it fails without them)
    assert result["peakParallel"] == 3
    changelog = tasks["changelog"]
    assert len(changelog["dependencies"]) == 6
    assert changelog["startedAt"] >= max(tasks[d]["completedAt"] for d in changelog["dependencies"])
    dependents = {d["taskId"]: d for d in result["dependents"]}
    assert set(dependents) == {"api-docs", "changelog"}
    assert all(d["startedAfterIntegration"] for d in dependents.values())
    assert tasks["changelog"]["endReasons"] == ["ok"]  # its required files were there
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
    # one conflict, resolved by a new attempt of the agent (policy `agent`), keeping both sides
    (conflict,) = result["conflicts"]
    assert conflict["taskId"] == "greeting-fr" and conflict["files"] == ["app/greeting.py"]
    assert (conflict["agentRuns"], conflict["integrationAttempts"]) == (2, 1)
    assert conflict["finalIntegrationStatus"] == "integrated"
    # one gate failure, fixed on the second try; the gate's output reached the report
    (gate,) = result["gateFailures"]
    assert gate["taskId"] == "config-timeout" and "TIMEOUT must be an integer" in gate["detail"]
    assert (gate["agentRuns"], gate["integrationAttempts"]) == (2, 1)
    assert gate["finalIntegrationStatus"] == "integrated"
    # every task integrated exactly once, one batch at least, gate runs counted
    integration = result["integration"]
    assert sorted(integration["integrated"]) == sorted(tasks)
    assert integration["integrated"].index("scaffold") < integration["integrated"].index("api-docs")
    assert integration["integrated"][-1] == "changelog"
    assert integration["gateRuns"] >= len(integration["batches"]) - 1
    assert all(t["integrationStatus"] == "integrated" for t in tasks.values())
    # landed on main, which now holds everyone's work
    landing = result["landing"]
    assert landing["target"] == "main" and landing["status"] == "fast_forward"
    assert landing["branch"] == integration["branch"] == "corral-integration/demo"
    repo = Path(result["repoPath"])
    assert git(repo, "rev-parse", "main") == landing["targetCommit"] == integration["head"]
    greeting = (repo / "app" / "greeting.py").read_text()
    assert '"en-gb": "hiya"' in greeting and '"fr": "bonjour"' in greeting
    assert "<<<<<<<" not in greeting
    config = (repo / "app" / "config.py").read_text()
    assert "TIMEOUT = 30\n" in config and "RETRIES = 5" in config  # fixed; a clean overlap
    for name in ("app/version.py", "data/index.txt", "docs/api.md", "CHANGELOG.md"):
        assert (repo / name).is_file(), name
    first_parent = git(repo, "log", "--first-parent", "--format=%s", "main").splitlines()
    assert sum(line.startswith("Integrate") for line in first_parent) == len(tasks)
    assert result["wallSecs"] < 40

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
