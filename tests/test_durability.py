"""State survives a SIGKILLed daemon: everything acknowledged is there after restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import errors
from corral.models import TaskStatus
from tests.daemon_proc import DaemonProcess


def _snapshot(d: DaemonProcess, session_id: str) -> list[dict[str, object]]:
    with d.client() as c:
        return [t.to_wire() for t in c.parallel_list_tasks(session_id=session_id)]


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with DaemonProcess(state) as d:
        with d.client() as c:
            session = c.init_parallel_scheduler(
                repo_path=str(repo), session_id="dur", config={"maxParallel": 50}
            )
            for i in range(1000):
                deps = [f"t{i - 1}"] if i % 10 else []
                c.parallel_add_task(session_id="dur", id=f"t{i}", title=f"task {i}",
                                    priority=i % 7, dependencies=deps)
            started = []
            for _ in range(40):
                assignment = c.parallel_schedule_next(session_id="dur")
                assert assignment.task is not None
                started.append(assignment.task.id)
            for task_id in started[:25]:
                c.parallel_complete_task(session_id="dur", task_id=task_id)
            for task_id in started[25:30]:
                c.parallel_fail_task(session_id="dur", task_id=task_id, error="boom")
            before = _snapshot(d, session.id)
        d.kill()  # SIGKILL: no shutdown path runs

    with DaemonProcess(state) as d2:
        after = _snapshot(d2, "dur")
        with d2.client() as c:
            assert [s.id for s in c.session_list()] == ["dur"]
    assert len(after) == 1000
    assert after == before
    statuses = {t["status"] for t in after}
    assert {"completed", "retry_wait", "in_progress", "ready", "pending"} <= statuses


def test_cycle_batch_rejected_whole_over_rpc(daemon: DaemonProcess, repo: Path) -> None:
    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        c.parallel_add_task(id="base", title="base")
        with pytest.raises(errors.DependencyCycle) as caught:
            c.parallel_add_tasks(tasks=[
                {"id": "a", "title": "a", "dependencies": ["base", "c"]},
                {"id": "b", "title": "b", "dependencies": ["a"]},
                {"id": "c", "title": "c", "dependencies": ["b"]},
                {"id": "free", "title": "not in the cycle"},
            ])
        cycle = caught.value.data["cycle"]
        assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
        assert [t.id for t in c.parallel_list_tasks()] == ["base"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "x" * 65, "a..b", "a b"])
def test_path_like_task_ids_rejected(daemon: DaemonProcess, repo: Path, bad: str) -> None:
    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        with pytest.raises(errors.InvalidParams) as caught:
            c.parallel_add_task(id=bad, title="t")
        assert caught.value.data["errors"][0]["loc"] == "id"
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
        c.parallel_add_task(session_id="one", id="t", title="t")
        with pytest.raises(errors.InvalidStateTransition):
            c.parallel_complete_task(session_id="one", task_id="t")
        with pytest.raises(errors.InvalidStateTransition):
            c.session_resume(session_id="one")
        assert c.parallel_get_task(session_id="one", task_id="t").status is TaskStatus.READY
