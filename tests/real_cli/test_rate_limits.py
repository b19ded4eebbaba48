"""Real claude hitting a rate limit on the scripted API, under corral.

With an API key, claude gives up on a 429 at once ("Request rejected (429)",
no reset time). corral parks the task without spending a retry, and the
wait grows with the backoff on every repeat; once the API lets it through,
the task completes on its first real attempt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.models import Backoff, SchedulerConfig, TaskSpec, TaskState
from tests.conftest import git, make_repo
from tests.daemon_proc import DaemonProcess
from tests.real_cli.conftest import MODELS, cli_env, require
from tests.real_cli.scripted_api import ScriptedApi
from tests.test_pool import wait_for

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]


def test_429_parks_without_spending_a_retry_and_the_wait_grows(
    api: ScriptedApi, tmp_path: Path
) -> None:
    require("claude")
    repo = make_repo(tmp_path / "repo")
    api.mode, api.retry_after = "429", 3600
    script = {"file": "t.txt", "content": "done\n", "test": ["true"]}
    config = SchedulerConfig(
        agent_type="claude",
        model=MODELS["claude"],
        max_retries=0,
        backoff=Backoff(base_secs=1, multiplier=4, cap_secs=60),
    )
    with DaemonProcess(env=cli_env("claude", api, tmp_path / "home")) as d, d.client() as c:
        session = c.init_parallel_scheduler(repo_path=str(repo), config=config)
        c.parallel_add_tasks(
            session_id=session.id,
            tasks=[TaskSpec(id="t", title="T", description=f"SCRIPT {json.dumps(script)}")],
        )
        c.session_start(session_id=session.id)
        waits: dict[int, float] = {}

        def parked(n: int) -> bool:
            task = c.parallel_get_task(session_id=session.id, task_id="t")
            if task.state is TaskState.RATE_LIMITED and task.rate_limits == n:
                assert task.attempts == 0 and task.retry_at is not None
                ended = [a.ended_at for a in c.parallel_list_agents(session_id=session.id)]
                last = max(e for e in ended if e is not None)
                waits[n] = task.retry_at - last
                return True
            return False

        for n in (1, 2):
            wait_for(lambda n=n: parked(n), 120, f"rate limit number {n}")  # type: ignore[misc]
        api.mode = "ok"
        wait_for(
            lambda: (
                c.parallel_get_task(session_id=session.id, task_id="t").state is TaskState.COMPLETED
            ),
            180,
            "completion after the limit lifted",
        )
        task = c.parallel_get_task(session_id=session.id, task_id="t")
        agents = c.parallel_list_agents(session_id=session.id)
    assert waits[1] == pytest.approx(1, abs=0.5) and waits[2] == pytest.approx(4, abs=0.5)
    assert task.attempts == 1 and task.rate_limits == 0  # max_retries=0: no retry was spent
    assert [a.end_reason.value for a in agents if a.end_reason][:2] == ["rate_limit"] * 2
    assert git(repo, "show", "corral/t:t.txt") == "done"
