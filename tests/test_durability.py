"""State survives a SIGKILLed daemon: everything acknowledged is there after restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from corral import errors
from corral.models import TaskState
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, assert_all_dead, wait_for


def _snapshot(d: DaemonProcess, session_id: str) -> list[dict[str, Any]]:
    with d.client() as c:
        return [t.to_wire() for t in c.parallel_list_tasks(session_id=session_id)]


def test_kill_9_loses_nothing_acknowledged(repo: Path, tmp_path: Path) -> None:
    plan, pidfile = tmp_path / "plan.json", tmp_path / "pids"
    plan.write_text(json.dumps({"*": ["--sleep", "60", "--pidfile", str(pidfile)]}))
    state = tmp_path / "state"
    config = agent_config(plan, "fake")
    # Durability, not admission: twenty Python start-ups at once on a busy machine
    # would otherwise trip the default total-CPU gate and refuse a start.
    limits = {"maxAgents": 25, "maxTotalCpu": 100_000.0}
    with DaemonProcess(state, config=config) as d:
        with d.client() as c:
            c.init_parallel_scheduler(
                repo_path=str(repo),
                session_id="dur",
                # Integration off: the queue would go on changing tasks after the snapshot.
                config={
                    "maxParallel": 25,
                    "agentType": "fake",
                    "resourceLimits": limits,
                    "integrate": False,
                },
            )
            for i in range(1000):
                deps = [f"t{i - 1}"] if i % 10 else []
                c.parallel_add_task(
                    session_id="dur",
                    task={
                        "id": f"t{i}",
                        "title": f"task {i}",
                        "priority": i % 7,
                        "dependencies": deps,
                    },
                )
            started = []
            for _ in range(20):
                assignment = c.parallel_start_next(session_id="dur")
                assert assignment.task is not None and assignment.agent is not None
                started.append(assignment.task.id)
            wait_for(lambda: pidfile.exists() and len(pidfile.read_text().splitlines()) == 20)
            for task_id in started[:12]:  # work finished elsewhere, reported over RPC
                c.parallel_complete_task(session_id="dur", task_id=task_id)
            for task_id in started[12:16]:
                c.parallel_fail_task(session_id="dur", task_id=task_id, error="boom")
            running = set(started[16:])
            before = {t["id"]: t for t in _snapshot(d, "dur")}
        d.kill()  # SIGKILL: no shutdown path runs; the agents outlive it

    with DaemonProcess(state, config=config) as d2:
        after = {t["id"]: t for t in _snapshot(d2, "dur")}
        with d2.client() as c:
            assert [s.id for s in c.session_list()] == ["dur"]
    assert_all_dead(pidfile)  # the restarted daemon killed the old agents
    assert after.keys() == before.keys() and len(after) == 1000
    for task_id, task in before.items():
        if task_id in running:
            # Its agent died with the daemon: back to ready, the attempt not
            # counted, worktree and branch kept.
            assert after[task_id]["state"] == "ready"
            assert after[task_id]["attempts"] == task["attempts"] - 1
            assert after[task_id]["branch"] == task["branch"]
            assert after[task_id]["worktreePath"] == task["worktreePath"]
        else:
            assert after[task_id] == task
    statuses = {t["state"] for t in after.values()}
    assert {"completed", "retry_wait", "ready", "pending"} <= statuses


def test_cycle_batch_rejected_whole_over_rpc(daemon: DaemonProcess, repo: Path) -> None:
    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        c.parallel_add_task(task={"id": "base", "title": "base"})
        with pytest.raises(errors.DependencyCycle) as caught:
            c.parallel_add_tasks(
                tasks=[
                    {"id": "a", "title": "a", "dependencies": ["base", "c"]},
                    {"id": "b", "title": "b", "dependencies": ["a"]},
                    {"id": "c", "title": "c", "dependencies": ["b"]},
                    {"id": "free", "title": "not in the cycle"},
                ]
            )
        cycle = caught.value.data["cycle"]
        assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
        assert [t.id for t in c.parallel_list_tasks()] == ["base"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "x" * 65, "a..b", "a b"])
def test_path_like_task_ids_rejected(daemon: DaemonProcess, repo: Path, bad: str) -> None:
    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        with pytest.raises(errors.InvalidParams) as caught:
            c.parallel_add_task(task={"id": bad, "title": "t"})
        assert caught.value.data["errors"][0]["loc"] == "task.id"
        assert c.parallel_list_tasks() == []


def test_session_errors(daemon: DaemonProcess, repo: Path, tmp_path: Path) -> None:
    with daemon.client() as c:
        with pytest.raises(errors.NotAGitRepository):
            c.init_parallel_scheduler(repo_path=str(tmp_path))
        with pytest.raises(errors.SessionRequired):
            c.parallel_list_tasks()
        c.init_parallel_scheduler(repo_path=str(repo), session_id="one")
        c.init_parallel_scheduler(repo_path=str(repo), session_id="two")
        with pytest.raises(errors.SessionRequired):
            c.parallel_list_tasks()
        with pytest.raises(errors.SessionNotFound):
            c.session_get(session_id="three")
        with pytest.raises(errors.TaskNotFound):
            c.parallel_get_task(session_id="one", task_id="nope")
        c.parallel_add_task(session_id="one", task={"id": "t", "title": "t"})
        with pytest.raises(errors.InvalidStateTransition):
            c.parallel_complete_task(session_id="one", task_id="t")
        with pytest.raises(errors.InvalidStateTransition):
            c.session_resume(session_id="one")
        assert c.parallel_get_task(session_id="one", task_id="t").state is TaskState.READY
