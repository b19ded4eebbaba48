"""Running the same plan again on the same repository (issue 14, bug a).

A new session with the same task ids finds the worktrees and branches of the
earlier session. It takes them over: the earlier session's allocation moves
to the new one, and nothing in the worktree is removed. Also here: the
session's usage totals in its stats (bug e), which outlive the daemon.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.models import TaskSpec, TaskState
from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.test_cli import Cli, quick
from tests.test_pool import agent_config, wait_for

CONFIG = '[agents.command]\nargv = ["sh", "-c", "echo hi > out.txt"]\n'


@pytest.fixture
def command_daemon() -> Iterator[DaemonProcess]:
    with DaemonProcess(config=CONFIG) as d:
        yield d


def test_same_plan_twice_on_one_repository(
    capsys: pytest.CaptureFixture[str], command_daemon: DaemonProcess, repo: Path, tmp_path: Path
) -> None:
    cli = Cli(capsys, command_daemon.socket)
    plan = tmp_path / "plan.toml"
    plan.write_text('[[tasks]]\nid = "hello"\ntitle = "Say hi"\n')
    runs = []
    for _ in range(2):
        code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "command", "--json")
        assert code == 0, (out, err)
        runs.append(json.loads(out))
    for summary in runs:
        assert summary["ok"] and summary["counts"] == {"completed": 1}, summary
    first, second = (s["sessionId"] for s in runs)
    assert first != second
    # the second session owns the worktree now; the first keeps none
    allocs = cli.json("worktrees", "--session", second)
    assert [a["taskId"] for a in allocs] == ["hello"]
    assert cli.json("worktrees", "--session", first) == []
    path = Path(allocs[0]["worktreePath"])
    assert (path / "out.txt").read_text() == "hi\n"
    assert git(repo, "show", "corral/hello:out.txt") == "hi"


def test_rerun_keeps_dirty_work_of_the_earlier_session(
    capsys: pytest.CaptureFixture[str], command_daemon: DaemonProcess, repo: Path, tmp_path: Path
) -> None:
    cli = Cli(capsys, command_daemon.socket)
    plan = tmp_path / "plan.toml"
    plan.write_text('[[tasks]]\nid = "hello"\ntitle = "Say hi"\n')
    code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "command", "--json")
    assert code == 0, err
    first = json.loads(out)["sessionId"]
    (wt,) = cli.json("worktrees", "--session", first)
    notes = Path(wt["worktreePath"]) / "notes.txt"
    notes.write_text("uncommitted, precious\n")
    code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "command", "--json")
    assert code == 0, err
    # the earlier file is still there; it was committed with the new attempt's work
    assert notes.read_text() == "uncommitted, precious\n"
    assert git(repo, "show", "corral/hello:notes.txt") == "uncommitted, precious"


def test_session_usage_in_stats_survives_a_restart(
    capsys: pytest.CaptureFixture[str], repo: Path, tmp_path: Path
) -> None:
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({"a": quick("a"), "b": quick("b", "--tokens", "250")}))
    # quick() gives --tokens 100 first; argparse keeps the last value, 250, for b
    plan = tmp_path / "plan.toml"
    plan.write_text('[[tasks]]\nid = "a"\ntitle = "A"\n\n[[tasks]]\nid = "b"\ntitle = "B"\n')
    state = tmp_path / "state"
    config = agent_config(behaviour, "fake")
    with DaemonProcess(state, config=config) as d:
        cli = Cli(capsys, d.socket)
        code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "fake", "--json")
        assert code == 0, err
        sid = json.loads(out)["sessionId"]
        agents = cli.json("agents", "--session", sid)
        assert sorted(a["tokens"] for a in agents) == [100, 250]
        with d.client() as c:
            stats = c.parallel_get_scheduler_stats(session_id=sid)
            pool = c.parallel_get_pool_stats(session_id=sid)
    assert stats.tokens == pool.tokens == 350
    assert stats.cost == pool.cost == pytest.approx(0.02)
    with DaemonProcess(state, config=config) as d2, d2.client() as c:
        again = c.parallel_get_scheduler_stats(session_id=sid)
        assert again.tokens == 350 and again.cost == pytest.approx(0.02)
        assert c.parallel_get_pool_stats(session_id=sid).tokens == 350


def test_rerun_refused_while_the_earlier_session_runs_that_task(repo: Path, tmp_path: Path) -> None:
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({"t": ["--stdout", "busy", "--sleep", "60"]}))
    with DaemonProcess(config=agent_config(behaviour, "fake")) as d, d.client() as c:
        config = {"agentType": "fake", "maxRetries": 0}
        first = c.init_parallel_scheduler(repo_path=str(repo), config=config)
        c.parallel_add_task(session_id=first.id, task=TaskSpec(id="t", title="T"))
        c.session_start(session_id=first.id)
        wait_for(lambda: c.parallel_list_agents(session_id=first.id, live=True), 20, "t to run")
        second = c.init_parallel_scheduler(repo_path=str(repo), config=config)
        c.parallel_add_task(session_id=second.id, task=TaskSpec(id="t", title="T"))
        c.session_start(session_id=second.id)
        failed = wait_for(
            lambda: (
                (t := c.parallel_get_task(session_id=second.id, task_id="t")).state
                is TaskState.FAILED
                and t
            ),
            30,
            "the second session's attempt to be refused",
        )
        assert failed.error is not None and f"of session {first.id}" in failed.error
        # the first session's run and its allocation are untouched
        assert c.parallel_list_agents(session_id=first.id, live=True)
        (alloc,) = c.worktree_get_allocations(session_id=first.id)
        assert alloc.task_id == "t"
        c.parallel_stop_all(session_id=first.id)
