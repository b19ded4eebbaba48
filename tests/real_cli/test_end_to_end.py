"""Real claude and real codex, run by corral, against the scripted API.

A three-task plan: in each task the scripted model writes ``<task>.txt`` with
the CLI's write tool, runs the project's tests through the CLI's shell tool
(under the default permission profile, ``workspace``) and finishes.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from corral.client import Client
from corral.models import Event
from tests.conftest import git, make_repo
from tests.daemon_proc import DaemonProcess
from tests.real_cli.conftest import MODELS, cli_env, require
from tests.real_cli.scripted_api import ScriptedApi, _texts
from tests.test_cli import Cli

pytestmark = [pytest.mark.real_cli, pytest.mark.slow]

TASKS = ("alpha", "beta", "gamma")
TEST_COMMAND = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_ok.py"]


def plan_text(agent_type: str) -> str:
    out = f'[config]\nmaxRetries = 0\nmodel = "{MODELS[agent_type]}"\n'
    # A real CLI (node) starting up can average over 50 % of a core for the
    # whole 10 s window, so the default per-agent CPU limit would end it.
    out += "[config.resourceLimits]\nmaxCpuPerAgent = 400.0\n"
    for task in TASKS:
        script = {"file": f"{task}.txt", "content": f"work of {task}\n", "test": TEST_COMMAND}
        out += (
            f'\n[[tasks]]\nid = "{task}"\ntitle = "Write {task}"\n'
            f"description = '''SCRIPT {json.dumps(script)}'''\n"
        )
    return out


def collect_activity(client: Client, into: list[object]) -> None:
    try:
        for ev in client.events(["agent"], reconnect=False):
            into.append(ev)
    except Exception as exc:  # the daemon went away at the end of the test
        into.append(exc)


def cli_usage(agent_type: str, lines: list[str]) -> tuple[int, float]:
    """Tokens and cost as the CLI's own result events state them."""
    events = [json.loads(x) for x in lines if x.startswith("{")]
    if agent_type == "claude":
        (result,) = [e for e in events if e.get("type") == "result"]
        u = result["usage"]
        tokens = u["input_tokens"] + u["cache_creation_input_tokens"] + u["output_tokens"]
        return tokens, float(result["total_cost_usd"])
    turns = [e["usage"] for e in events if e.get("type") == "turn.completed"]
    return sum(u["input_tokens"] + u["output_tokens"] for u in turns), 0.0


@pytest.mark.parametrize("agent_type", ["claude", "codex"])
def test_three_task_plan_with_the_real_cli(
    agent_type: str, api: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require(agent_type)
    repo = make_repo(tmp_path / "repo", {"test_ok.py": "def test_ok():\n    assert True\n"})
    plan = tmp_path / "plan.toml"
    plan.write_text(plan_text(agent_type))
    env = cli_env(agent_type, api, tmp_path / "home")
    seen: list[object] = []
    with DaemonProcess(env=env) as d:
        listener = threading.Thread(
            target=collect_activity, args=(Client(d.socket), seen), daemon=True
        )
        listener.start()
        cli = Cli(capsys, d.socket)
        code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", agent_type, "--json")
        summary = json.loads(out)
        assert code == 0 and summary["ok"], json.dumps(summary, indent=1) + err
        sid = summary["sessionId"]
        with d.client() as c:
            agents = c.parallel_list_agents(session_id=sid)
            logs = {
                a.id: [e.line for e in c.parallel_get_agent_logs(agent_id=a.id, limit=10_000)]
                for a in agents
            }
            stats = c.parallel_get_scheduler_stats(session_id=sid)

    # each branch holds its file
    for task in TASKS:
        assert git(repo, "show", f"corral/{task}:{task}.txt") == f"work of {task}"
    # the shell tool ran the tests (the model was sent their output), in every task
    outputs = [t for _, _, body in api.requests for t in _texts(body) if "1 passed" in t]
    assert len(outputs) >= len(TASKS), "\n".join(
        ["no test output reached the model", *(line for lines in logs.values() for line in lines)]
    )
    # tokens and cost: per agent as the CLI's result event says, per task, per session
    assert len(agents) == len(TASKS)
    for agent in agents:
        tokens, cost = cli_usage(agent_type, logs[agent.id])
        assert tokens > 0 and agent.tokens == tokens
        assert agent.cost == pytest.approx(cost)
    by_task = {t["id"]: t["tokens"] for t in summary["tasks"]}
    assert by_task == {a.task_id: a.tokens for a in agents}
    assert stats.tokens == summary["tokens"] == sum(a.tokens for a in agents)
    assert stats.cost == pytest.approx(sum(a.cost for a in agents))
    # activity moved through thinking, implementing and testing in every agent
    for agent in agents:
        mine = [
            e.payload["activity"]
            for e in seen
            if isinstance(e, Event)
            and e.type == "agent.activity"
            and e.payload["agentId"] == agent.id
        ]
        wanted = ["thinking", "implementing", "testing"]
        assert all(a in mine for a in wanted), (agent.task_id, mine)
