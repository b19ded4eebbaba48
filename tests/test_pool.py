"""The agent pool end to end: a real daemon runs real (fake) agents in real worktrees."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from corral import errors
from corral.client import Client
from corral.models import ErrorCategory, TaskState
from tests import procs
from tests.conftest import git
from tests.daemon_proc import DaemonProcess

PLAN_AGENT = Path(__file__).with_name("plan_agent.py")
T = TypeVar("T")


def agent_config(plan: Path, *names: str) -> str:
    """Config with agent types that run tests/plan_agent.py on `plan`."""
    argv = json.dumps([sys.executable, str(PLAN_AGENT), str(plan)])
    return "".join(
        f'[agents.{name}]\nargv = {argv}\nparser = "claude-stream-json"\n'
        f'env = {{ CORRAL_FAKE_TYPE = "{name}" }}\n'
        for name in names
    )


def wait_for(
    fn: Callable[[], T | Literal[False] | None], timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll `fn` until it returns something truthy (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def finished(c: Client, session_id: str) -> bool:
    status = c.session_get(session_id=session_id).status.value
    return status in ("completed", "failed")


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    return tmp_path / "plan.json"


@pytest.fixture
def pool_daemon(plan: Path) -> Iterator[DaemonProcess]:
    plan.write_text("{}")
    with DaemonProcess(config=agent_config(plan, "fake", "backup")) as d:
        yield d


def test_dag_of_20_tasks_runs_in_order_with_commits_and_totals(
    pool_daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    tasks: list[dict[str, Any]] = []
    behaviour: dict[str, list[str]] = {}
    for i in range(20):
        deps = [f"t{j}" for j in (i - 1, i - 5) if j >= 0 and (i % 3 or j == i - 5)]
        tasks.append({"id": f"t{i}", "title": f"task {i}", "dependencies": deps, "priority": i % 4})
        behaviour[f"t{i}"] = [
            "--stream-json",
            "--tokens",
            str(100 + i),
            "--cost",
            f"{0.01 * i}",
            "--edit",
            f"t{i}.txt=work of t{i}",
            "--sleep",
            "0.2",
        ]
    plan.write_text(json.dumps(behaviour))
    with pool_daemon.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo), session_id="dag", config={"agentType": "fake", "maxParallel": 4}
        )
        c.parallel_add_tasks(tasks=tasks)
        c.session_start()
        wait_for(lambda: finished(c, "dag"), 90, "the DAG to finish")
        final = {t.id: t for t in c.parallel_list_tasks()}
        agents = c.parallel_list_agents()
    assert all(t.state is TaskState.COMPLETED for t in final.values()), final
    for spec in tasks:
        task = final[spec["id"]]
        for dep in spec["dependencies"]:
            done_at = final[dep].completed_at
            assert task.started_at is not None and done_at is not None
            assert task.started_at >= done_at
        # each branch holds its agent's commit with the file it wrote
        assert git(repo, "show", f"corral/{task.id}:{task.id}.txt") == f"work of {task.id}"
    # never more than maxParallel agents at once
    spans = sorted((a.started_at, a.ended_at or 0.0) for a in agents)
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 4
    assert sum(a.tokens for a in agents) == sum(100 + i for i in range(20))
    assert round(sum(a.cost for a in agents), 6) == round(sum(0.01 * i for i in range(20)), 6)
    assert {a.end_reason.value for a in agents if a.end_reason} == {"ok"}


def test_rate_limited_task_parks_until_reset_then_runs_on_fallback(
    pool_daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    resets_at = float(int(time.time()) + 3)  # claude reports whole epoch seconds
    plan.write_text(
        json.dumps(
            {
                "rl#1": ["--stream-json", "--rate-limit-resets-at", str(resets_at), "--exit", "1"],
                "rl#2": ["--stream-json", "--tokens", "10"],
            }
        )
    )
    with pool_daemon.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo),
            config={"agentType": "fake", "fallbackAgent": "backup", "maxRetries": 0},
        )
        c.parallel_add_task(task={"id": "rl", "title": "rate limited"})
        c.session_start()
        parked = wait_for(
            lambda: (t := c.parallel_get_task(task_id="rl")).state is TaskState.RATE_LIMITED and t,
            20,
            "the task to be parked",
        )
        assert parked.retry_at == pytest.approx(resets_at, abs=0.01)
        assert parked.attempts == 0  # a rate limit consumes no retry
        assert parked.agent_type == "backup"
        wait_for(lambda: finished(c, c.session_list()[0].id), 30, "the session to finish")
        task = c.parallel_get_task(task_id="rl")
        agents = c.parallel_list_agents()
    assert task.state is TaskState.COMPLETED  # maxRetries 0, yet it ran again
    assert [a.agent_type for a in agents] == ["fake", "backup"]
    assert agents[1].started_at >= resets_at


def test_missing_executable_fails_the_task_with_a_clear_category(
    repo: Path, tmp_path: Path
) -> None:
    config = '[agents.ghost]\nargv = ["/nonexistent/agent-cli", "{prompt}"]\n'
    with DaemonProcess(config=config) as d, d.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo), config={"agentType": "ghost", "maxRetries": 0}
        )
        c.parallel_add_task(task={"id": "x", "title": "x"})
        c.session_start()
        wait_for(lambda: finished(c, c.session_list()[0].id), 20)
        task = c.parallel_get_task(task_id="x")
        assert task.state is TaskState.FAILED
        assert task.error_category is ErrorCategory.MISSING_EXECUTABLE
        assert "/nonexistent/agent-cli" in (task.error or "")


def test_stop_all_requeues_without_losing_work(
    pool_daemon: DaemonProcess, plan: Path, repo: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    plan.write_text(
        json.dumps(
            {"*": ["--edit", "draft.txt=half done", "--sleep", "60", "--pidfile", str(pidfile)]}
        )
    )
    with pool_daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"})
        c.parallel_add_tasks(tasks=[{"id": "a", "title": "a"}, {"id": "b", "title": "b"}])
        c.session_start()
        wait_for(
            lambda: (
                len(c.parallel_list_agents(live=True)) == 2
                and pidfile.exists()
                and len(pidfile.read_text().splitlines()) == 2
            )
        )
        c.session_pause()
        stopped = c.parallel_stop_all()
        assert {t.id for t in stopped} == {"a", "b"}
        assert all(t.state is TaskState.READY and t.attempts == 0 for t in stopped)
        for task in stopped:
            assert task.worktree_path is not None
            assert (Path(task.worktree_path) / "draft.txt").read_text() == "half done"
        assert c.parallel_list_agents(live=True) == []
    assert_all_dead(pidfile)


def test_total_memory_breach_requeues_the_newest_agent(
    pool_daemon: DaemonProcess, plan: Path, repo: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    plan.write_text(
        json.dumps({"*": ["--grandchild-mem", "120", "--sleep", "60", "--pidfile", str(pidfile)]})
    )
    limits = {"maxTotalMemoryMb": 180, "maxMemoryMbPerAgent": 1000, "sampleIntervalSecs": 0.1}
    with pool_daemon.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo), config={"agentType": "fake", "resourceLimits": limits}
        )
        c.parallel_add_tasks(
            tasks=[
                {"id": "old", "title": "old", "priority": 0},
                {"id": "new", "title": "new", "priority": 1},
            ]
        )
        first = c.parallel_schedule_next()
        assert first is not None and first.task_id == "old" and first.worktree_path
        wait_for(lambda: c.parallel_get_pool_stats().total_memory_mb > 100, 20, "hog memory")
        second = c.parallel_start_next()
        assert second.task is not None and second.task.id == "new"
        requeued = wait_for(
            lambda: (t := c.parallel_get_task(task_id="new")).state is TaskState.READY and t,
            20,
            "the newest agent to be requeued",
        )
        assert requeued.attempts == 0
        assert c.parallel_get_task(task_id="old").state is TaskState.IN_PROGRESS
        kinds = [v.kind for v in c.parallel_list_violations()]
        assert "total_memory" in kinds
        assert any("total memory limit" in s for s in c.parallel_check_violations())
        c.parallel_cancel_task(task_id="old")
    assert_all_dead(pidfile)


def assert_all_dead(pidfile: Path) -> None:
    """Every process the fake agents recorded is gone (pid + start ticks)."""
    procs.assert_all_dead(pidfile)


def test_daemon_killed_mid_run_recovers_everything(plan: Path, repo: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    plan.write_text(
        json.dumps(
            {
                "*#1": [
                    "--edit",
                    "first.txt=from attempt 1",
                    "--sleep",
                    "60",
                    "--grandchild-ignore-sigterm",
                    "--pidfile",
                    str(pidfile),
                ],
                "*#2": ["--edit", "second.txt=from attempt 2"],
            }
        )
    )
    # plan_agent looks up "<task>#<attempt>" then "<task>" then "*": give each task both.
    tasks = ["w1", "w2", "w3"]
    entries = json.loads(plan.read_text())
    plan.write_text(json.dumps({f"{t}#{n}": entries[f"*#{n}"] for t in tasks for n in (1, 2)}))
    state = tmp_path / "state"
    config = agent_config(plan, "fake")
    with DaemonProcess(state, config=config) as d:
        with d.client() as c:
            c.init_parallel_scheduler(
                repo_path=str(repo), session_id="crash", config={"agentType": "fake"}
            )
            c.parallel_add_tasks(tasks=[{"id": t, "title": t} for t in tasks])
            c.session_start()
            wait_for(
                lambda: pidfile.exists() and len(pidfile.read_text().splitlines()) == 6,
                30,
                "agents and grandchildren to start",
            )
        d.kill()
    survivors = pidfile.read_text()  # the old agents outlive a SIGKILLed daemon...
    with DaemonProcess(state, config=config) as d2, d2.client() as c:
        wait_for(lambda: finished(c, "crash"), 60, "the session to finish after restart")
        final = c.parallel_list_tasks(session_id="crash")
    assert_all_dead(tmp_path / "pids")  # ...until the new daemon kills them
    assert survivors
    for task in final:
        assert task.state is TaskState.COMPLETED
        assert task.attempts == 1  # the killed attempt did not count
        for name, text in (("first.txt", "from attempt 1"), ("second.txt", "from attempt 2")):
            assert git(repo, "show", f"corral/{task.id}:{name}") == text


def test_worktree_allocations_survive_restart_and_are_not_orphans(
    repo: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with DaemonProcess(state) as d, d.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo), session_id="wt")
        alloc = c.worktree_allocate(agent_id="manual", task_id="keep")
        Path(alloc.worktree_path, "note.txt").write_text("uncommitted")
        d.stop()
    with DaemonProcess(state) as d, d.client() as c:
        assert [a.task_id for a in c.worktree_get_allocations()] == ["keep"]
        report = c.worktree_cleanup_report()
        assert report.removed == [] and report.kept_dirty == []
        assert c.worktree_cleanup_orphaned() == []
        assert Path(alloc.worktree_path, "note.txt").read_text() == "uncommitted"
        with pytest.raises(errors.WorktreeDirty) as dirty:
            c.worktree_deallocate(worktree_path=alloc.worktree_path)
        assert "note.txt" in dirty.value.data["files"]
        with pytest.raises(errors.PathOutsideBase):
            c.worktree_deallocate(worktree_path=str(repo))
        assert c.worktree_deallocate(worktree_path=alloc.worktree_path, force=True)
        assert c.worktree_get_allocations() == []
        assert git(repo, "branch", "--list", "corral/keep")  # the branch is kept
    assert not os.path.exists(alloc.worktree_path)


def test_config_defaults_apply_under_what_the_client_sends(repo: Path) -> None:
    config = (
        "[defaults]\nmax_parallel = 7\nmax_retries = 4\n"
        "[defaults.resource_limits]\nmax_agents = 2\n"
    )
    with DaemonProcess(config=config) as d, d.client() as c:
        session = c.init_parallel_scheduler(
            repo_path=str(repo), config={"maxRetries": 1, "resourceLimits": {"maxTotalCpu": 50}}
        )
    assert session.config.max_parallel == 7  # from [defaults]
    assert session.config.max_retries == 1  # the client's value wins
    assert session.config.resource_limits.max_agents == 2  # nested defaults kept
    assert session.config.resource_limits.max_total_cpu == 50


def test_sigterm_stops_agents_without_starting_new_ones(
    plan: Path, repo: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    plan.write_text(
        json.dumps({"*": ["--sleep", "60", "--ignore-sigterm", "--pidfile", str(pidfile)]})
    )
    state = tmp_path / "state"
    config = agent_config(plan, "fake")
    limits = {"killGraceSecs": 0.5}
    with DaemonProcess(state, config=config) as d:
        with d.client() as c:
            c.init_parallel_scheduler(
                repo_path=str(repo),
                session_id="s",
                config={"agentType": "fake", "resourceLimits": limits},
            )
            c.parallel_add_tasks(tasks=[{"id": "a", "title": "a"}, {"id": "b", "title": "b"}])
            c.session_start()
            first = wait_for(
                lambda: (
                    c.parallel_list_agents(live=True)
                    if pidfile.exists() and len(pidfile.read_text().splitlines()) == 2
                    else None
                )
            )
        assert d.stop() == 0
    assert_all_dead(pidfile)
    restarted = time.time()
    with DaemonProcess(state, config=config) as d, d.client() as c:
        c.session_pause(session_id="s")  # (the restarted daemon resumes the session)
        before = [a for a in c.parallel_list_agents(session_id="s") if a.started_at < restarted]
        tasks = c.parallel_list_tasks(session_id="s")
        one = c.parallel_get_agent(agent_id=first[0].id)
        c.parallel_stop_all(session_id="s")
    assert {a.id for a in before} == {a.id for a in first}  # nothing new started while stopping
    assert {a.end_reason.value for a in before if a.end_reason} == {"cancelled"}
    assert all(t.attempts <= 1 for t in tasks)  # the stopped attempts did not count
    assert one.task_id in {"a", "b"} and one.end_reason is not None
