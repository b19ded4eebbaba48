"""A daemon stopped (SIGSTOP) past its agents' runtime limit does not time them out.

Six agents sleep two seconds and exit 0 with a runtime limit of a few seconds.
The daemon is stopped while they run, for longer than the limit, and then
continued: every agent exited on its own while nobody was looking, so each
task is `completed` after one attempt, and no run is a `timeout`. A run's
end is its process's, not the daemon's loop clock's.

A short stop is part of every test run; `-m chaos` stops it for 20 s.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from corral.models import Agent, EndReason, TaskState
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, finished, wait_for

AGENTS = 6


def _stopped_past_the_limit(tmp_path: Path, repo: Path, stop_secs: float, limit: int) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"*": ["--stream-json", "--tokens", "8", "--sleep", "2"]}))
    with DaemonProcess(config=agent_config(plan, "fake")) as d, d.client(timeout=60) as c:
        c.init_parallel_scheduler(
            repo_path=str(repo),
            session_id="st",
            config={
                "agentType": "fake",
                "maxParallel": AGENTS,
                "maxRetries": 2,
                "integrate": False,
                "resourceLimits": {"maxRuntimeSecs": limit, "maxAgents": AGENTS},
            },
        )
        c.parallel_add_tasks(tasks=[{"id": f"s{i}", "title": "sleep"} for i in range(AGENTS)])
        c.session_start()

        def all_running() -> list[Agent] | None:
            agents = c.parallel_list_agents()
            return agents if len(agents) == AGENTS and all(a.process_id for a in agents) else None

        agents = wait_for(all_running, 30, "every agent to run")
        os.kill(d.pid, signal.SIGSTOP)
        running = [a.process_id for a in agents if psutil.pid_exists(a.process_id or 0)]
        try:
            time.sleep(stop_secs)  # the stop itself: a length of time, not a condition
        finally:
            os.kill(d.pid, signal.SIGCONT)
        wait_for(lambda: finished(c, "st"), 60, "the session to finish")
        tasks = c.parallel_list_tasks()
        agents = c.parallel_list_agents()
        violations = c.call("parallel_check_violations", sessionId="st")
        assert d.running()
    assert {t.id: t.state for t in tasks} == {f"s{i}": TaskState.COMPLETED for i in range(AGENTS)}
    assert [t.attempts for t in tasks] == [1] * AGENTS
    assert len(agents) == AGENTS
    assert [a.end_reason for a in agents] == [EndReason.OK] * AGENTS, agents
    assert violations == [], violations
    assert running, "no agent was running when the daemon stopped: nothing was tested"


def test_sigstop_past_the_runtime_limit_times_out_nothing(tmp_path: Path, repo: Path) -> None:
    _stopped_past_the_limit(tmp_path, repo, stop_secs=5, limit=3)


@pytest.mark.chaos
def test_sigstop_for_20_s_times_out_nothing(tmp_path: Path, repo: Path) -> None:
    _stopped_past_the_limit(tmp_path, repo, stop_secs=20, limit=5)
