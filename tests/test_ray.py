"""The Ray executor on a real two-node cluster (127.0.0.1, in a private network namespace).

Run with `-m ray` (CI does, in `.ci/run`); skipped otherwise, and when Ray
is not installed. The cluster is two `ray start` nodes of 2 CPUs each
(`tests/raycluster.py`); the daemon is a real corrald with
`[executor] kind = "ray"`, and the agents are tests/fake_agent.py through
tests/plan_agent.py, as in the local tests: the same plans, unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client import Client
from corral.models import EndReason, TaskState
from tests import procs
from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.raycluster import RayCluster, enter_private_netns
from tests.test_pool import agent_config, finished, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


# Module scope: autouse fixtures come first within their scope, so this skips
# before the module's `cluster` fixture tries to start one.
@pytest.fixture(autouse=True, scope="module")
def only_when_asked(request: pytest.FixtureRequest) -> None:
    if "ray" not in (request.config.option.markexpr or ""):
        pytest.skip("Ray cluster tests: run with -m ray")
    pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    enter_private_netns()
    with RayCluster(cpus_per_node=2) as c:
        c.start(nodes=2)
        yield c


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text("{}")
    return path


def ray_config(plan: Path, cluster: RayCluster) -> str:
    return f'[executor]\nkind = "ray"\naddress = "{cluster.address}"\n' + agent_config(plan, "fake")


@pytest.fixture
def daemon(plan: Path, cluster: RayCluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path / "state", config=ray_config(plan, cluster)) as d:
        yield d


def start(c: Client, repo: Path, tasks: list[dict[str, Any]], **config: Any) -> None:
    c.init_parallel_scheduler(
        repo_path=str(repo), session_id="s", config={"agentType": "fake", **config}
    )
    c.parallel_add_tasks(tasks=tasks)
    c.session_start()


def test_a_plan_runs_on_the_cluster_unchanged(
    daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    tasks: list[dict[str, Any]] = []
    behaviour: dict[str, list[str]] = {}
    for i in range(6):
        deps = [f"t{i - 3}"] if i >= 3 else []
        tasks.append({"id": f"t{i}", "title": f"task {i}", "dependencies": deps})
        behaviour[f"t{i}"] = [
            "--stream-json", "--tokens", str(100 + i), "--cost", f"{0.01 * i}",
            "--edit", f"t{i}.txt=work of t{i}",
        ]  # fmt: skip
        if i >= 3:  # the dependency's work is in this task's checkout
            behaviour[f"t{i}"] += ["--require", f"t{i - 3}.txt"]
    plan.write_text(json.dumps(behaviour))
    with daemon.client() as c:
        status = c.daemon_status()
        assert status.executor["executor"] == "ray" and len(status.executor["nodes"]) == 2
        start(c, repo, tasks, maxParallel=4)
        wait_for(lambda: finished(c, "s"), 180, "the plan to finish on the cluster")
        final = {t.id: t for t in c.parallel_list_tasks(session_id="s")}
        agents = c.parallel_list_agents(session_id="s")
        stats = c.parallel_get_pool_stats(session_id="s")
    assert {t.id: t.state for t in final.values()} == dict.fromkeys(final, TaskState.COMPLETED)
    assert all(t.attempts == 1 for t in final.values())
    for i in range(6):
        # the branch came back from the node with its commit
        assert git(repo, "show", f"corral/t{i}:t{i}.txt") == f"work of t{i}"
        assert f"corral task t{i}" in git(repo, "log", "-1", "--format=%B", f"corral/t{i}")
    by_task = {a.task_id: a for a in agents}
    assert {t: a.tokens for t, a in by_task.items()} == {f"t{i}": 100 + i for i in range(6)}
    assert {t: round(a.cost, 6) for t, a in by_task.items()} == {
        f"t{i}": round(0.01 * i, 6) for i in range(6)
    }
    assert {a.end_reason for a in agents} == {EndReason.OK}
    assert stats.executor is not None and stats.executor["executor"] == "ray"


def test_a_session_never_submits_more_than_the_cluster_can_place(
    daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    # 2 nodes x 2 CPUs, each run asks for 1 CPU: 4 fit at once, the other 2 wait their turn.
    plan.write_text(json.dumps({"*": ["--sleep", "4"]}))
    limits = {"maxCpuPerAgent": 100.0, "maxAgents": 6}
    with daemon.client() as c:
        start(
            c,
            repo,
            [{"id": f"t{i}", "title": f"t{i}"} for i in range(6)],
            maxParallel=6,
            resourceLimits=limits,
            integrate=False,
        )
        most = 0
        while not finished(c, "s"):
            stats = c.parallel_get_pool_stats(session_id="s")
            assert stats.executor is not None and stats.executor["placedCpus"] <= 4.0
            most = max(most, stats.active_agents)
            time.sleep(0.2)  # sampling the pool, not waiting for a condition
        agents = c.parallel_list_agents(session_id="s")
    spans = [(a.started_at, a.ended_at or 0.0) for a in agents]
    for begin, _ in spans:
        assert sum(1 for s, e in spans if s <= begin < e) <= 4
    assert most == 4 and len(agents) == 6
    assert {a.end_reason for a in agents} == {EndReason.OK}


@pytest.mark.parametrize(
    ("args", "limits", "reason"),
    [
        (
            ["--grandchild-mem", "300", "--sleep", "60"],
            {"maxMemoryMbPerAgent": 150},
            "limit_memory",
        ),
        (["--grandchild-ignore-sigterm", "--sleep", "60"], {"maxRuntimeSecs": 3}, "timeout"),
        (["--setsid-escape", "--sleep", "60"], {"maxRuntimeSecs": 3}, "timeout"),
    ],
    ids=["memory-hog", "runtime-overrun", "setsid-escaper"],
)
def test_limits_are_enforced_on_the_node(
    daemon: DaemonProcess,
    plan: Path,
    repo: Path,
    tmp_path: Path,
    args: list[str],
    limits: dict[str, Any],
    reason: str,
) -> None:
    pidfile = tmp_path / "pids"
    plan.write_text(json.dumps({"x": [*args, "--pidfile", str(pidfile)]}))
    limits = {"sampleIntervalSecs": 0.2, "killGraceSecs": 1, **limits}
    with daemon.client() as c:
        start(c, repo, [{"id": "x", "title": "x"}], maxRetries=0, resourceLimits=limits)
        wait_for(lambda: finished(c, "s"), 120, "the run to be stopped")
        agent = c.parallel_list_agents(session_id="s")[0]
        task = c.parallel_get_task(session_id="s", task_id="x")
    assert agent.end_reason is not None and agent.end_reason.value == reason, agent
    assert task.error_category is not None and task.error_category.value == reason
    procs.assert_all_dead(pidfile)  # the whole tree: setsid escapers and grandchildren too


def test_a_run_is_reattached_after_kill_9_of_the_daemon(
    plan: Path, repo: Path, cluster: RayCluster, tmp_path: Path
) -> None:
    lines = [f"--stdout=line {i}" for i in range(40)]
    # 40 numbered lines, one every 0.1 s, then the edit: the daemon dies in the middle.
    plan.write_text(json.dumps({"x": ["--edit", "x.txt=done", "--line-delay", "0.1", *lines]}))
    state = tmp_path / "state"
    config = ray_config(plan, cluster)
    with DaemonProcess(state, config=config) as first, first.client() as c:
        start(c, repo, [{"id": "x", "title": "x"}])
        wait_for(
            lambda: any(
                e.line == "line 5"
                for a in c.parallel_list_agents(session_id="s")
                for e in c.parallel_get_agent_logs(agent_id=a.id)
            ),
            60,
            "the run to be mid-way",
        )
        agent_id = c.parallel_list_agents(session_id="s")[0].id
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    with DaemonProcess(state, config=config) as second, second.client() as c:
        wait_for(lambda: finished(c, "s"), 120, "the reattached run to finish")
        agents = c.parallel_list_agents(session_id="s")
        logs = c.parallel_get_agent_logs(agent_id=agent_id, limit=1000)
        task = c.parallel_get_task(session_id="s", task_id="x")
    assert [a.id for a in agents] == [agent_id]  # reattached, not re-run
    assert task.state is TaskState.COMPLETED and task.attempts == 1
    printed = [e.line for e in logs if e.stream == "stdout"]
    assert printed == [f"line {i}" for i in range(40)]  # no gap, no repeat
    assert git(repo, "show", "corral/x:x.txt") == "done"


def test_a_lost_node_requeues_without_a_retry_and_completes_elsewhere(
    daemon: DaemonProcess, plan: Path, repo: Path, cluster: RayCluster, tmp_path: Path
) -> None:
    """Last in this module: it kills one of the cluster's two nodes."""
    pidfile = tmp_path / "pids"
    plan.write_text(
        json.dumps(
            {
                "x#1": ["--sleep", "120", "--pidfile", str(pidfile)],
                "x#2": ["--edit", "x.txt=second node"],
            }
        )
    )
    with daemon.client() as c:
        start(c, repo, [{"id": "x", "title": "x"}], maxRetries=0)
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 60, "the agent")
        agent_pid = int(pidfile.read_text().split()[0])
        raylet = wait_for(lambda: cluster.raylet_of(agent_pid), 10, "the agent's node")
        cluster.kill_node(raylet)
        wait_for(lambda: finished(c, "s"), 180, "the task to complete on the other node")
        agents = sorted(c.parallel_list_agents(session_id="s"), key=lambda a: a.started_at)
        task = c.parallel_get_task(session_id="s", task_id="x")
    # the orphaned agent of the dead node (its machine would be gone with it)
    for line in pidfile.read_text().splitlines():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    # Until Ray's GCS marks the node dead (seconds), a new actor may still be sent
    # there and be lost at once too: each loss requeues, none spends a retry.
    reasons = [a.end_reason for a in agents]
    assert reasons[-1] is EndReason.OK and len(reasons) <= 5, reasons
    assert set(reasons[:-1]) == {EndReason.LOST}, reasons
    assert task.state is TaskState.COMPLETED
    assert task.attempts == 1  # the lost attempt spent no retry (maxRetries is 0)
    assert git(repo, "show", "corral/x:x.txt") == "second node"
