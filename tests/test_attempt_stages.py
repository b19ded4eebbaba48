"""One attempt, interrupted at each of its stages: the state stays consistent.

httpcore's style: run a real attempt (a real agent process in a real
worktree of a real repository, an in-process engine and pool on a real
SQLite file) and interrupt it exactly when it enters a stage, either by
stopping it (what `corral stop`, a total-memory breach or a graceful
shutdown do) or by cancelling the whole pool (the daemon going down hard).
Then check:

- no process of the agent is alive (pid and start time);
- no task is stuck `in_progress` and no agent row is left open, in memory
  and in a fresh engine built from the file;
- no retry was spent: a task that did not finish is `ready` with no
  attempt counted; one whose agent had already ended keeps that result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from corral.models import ErrorCategory, SchedulerConfig, TaskSpec, TaskState
from corrald.agents.types import AgentTypeConfig
from corrald.pool.pool import AgentPool
from corrald.pool.records import AttemptStage, Run
from corrald.state.engine import Engine
from corrald.state.events import EventBus
from corrald.state.store import Store
from tests import procs
from tests.conftest import git

PLAN_AGENT = Path(__file__).with_name("plan_agent.py")


@dataclass
class Harness:
    store_path: Path
    engine: Engine
    pool: AgentPool
    nursery: trio.Nursery
    pidfile: Path

    def alive(self) -> list[int]:
        return [pid for pid, _ in procs.survivors(self.pidfile)]


@asynccontextmanager
async def harness(tmp_path: Path, repo: Path) -> AsyncIterator[Harness]:
    pidfile = tmp_path / "pids"
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"t": ["--pidfile", str(pidfile), "--edit", "out.txt=done", "--sleep", "1"]})
    )
    store_path = tmp_path / "state" / "corral.db"
    store = Store(store_path)
    engine = Engine(store, EventBus(store))
    pool = AgentPool(
        engine,
        logs_dir=tmp_path / "logs",
        worktree_base=tmp_path / "worktrees",
        custom_types={"fake": AgentTypeConfig(argv=[sys.executable, str(PLAN_AGENT), str(plan)])},
    )
    config = SchedulerConfig(agent_type="fake", max_retries=3, integrate=False)
    config.resource_limits.kill_grace_secs = 0.5
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            root = await _root(repo)
            engine.init_session(config, root, "s")
            engine.add_tasks("s", [TaskSpec(id="t", title="write out.txt")])
            yield Harness(store_path, engine, pool, nursery, pidfile)
    finally:
        store.close()


async def _root(repo: Path) -> str:
    from corrald.git.repo import repo_root

    return await repo_root(str(repo))


def _consistent(h: Harness) -> None:
    """Memory and the file agree, nothing runs, nothing is open."""
    assert h.alive() == []
    assert len(h.pool.runs) == 0
    memory = {t.id: (t.state, t.attempts) for t in h.engine.list_tasks("s", None)}
    fresh = Engine(Store(h.store_path), EventBus(None))
    on_disk = {t.id: (t.state, t.attempts) for t in fresh.list_tasks("s", None)}
    assert memory == on_disk
    assert all(status is not TaskState.IN_PROGRESS for status, _ in on_disk.values())
    assert fresh.store.live_agents("s") == []
    fresh.store.close()


STAGES = list(AttemptStage)


@pytest.mark.parametrize("stage", STAGES, ids=[s.value for s in STAGES])
async def test_stop_at_each_stage(tmp_path: Path, repo: Path, stage: AttemptStage) -> None:
    async with harness(tmp_path, repo) as h:
        state = h.engine.session("s")
        stopped = trio.Event()

        async def stop_here(run: Run, reached: AttemptStage) -> None:
            if reached is stage and not stopped.is_set():
                h.pool.stop(state, run.task_id, cancel=False)
                stopped.set()

        h.pool.stage_hooks.append(stop_here)
        await h.pool.schedule_next(state)  # by hand: the session is not running
        with trio.fail_after(30):
            await stopped.wait()
            await h.pool.wait_stopped(state)
        task = h.engine.get_task("s", "t")
        if stage in (AttemptStage.COMMITTING, AttemptStage.FINISHING):
            # The agent had ended by itself: its work is kept, not redone.
            assert (task.state, task.attempts) == (TaskState.COMPLETED, 1)
            assert git(repo, "show", "corral/t:out.txt") == "done"
        else:
            assert (task.state, task.attempts) == (TaskState.READY, 0)
        (agent,) = h.engine.agents("s")
        assert agent.ended_at is not None and agent.end_reason is not None
        _consistent(h)
        h.nursery.cancel_scope.cancel()


@pytest.mark.parametrize("stage", STAGES, ids=[s.value for s in STAGES])
async def test_hard_cancel_at_each_stage(tmp_path: Path, repo: Path, stage: AttemptStage) -> None:
    async with harness(tmp_path, repo) as h:
        state = h.engine.session("s")

        async def cancel_here(run: Run, reached: AttemptStage) -> None:
            if reached is stage:
                h.nursery.cancel_scope.cancel()
                await trio.lowlevel.checkpoint()

        h.pool.stage_hooks.append(cancel_here)
        await h.pool.schedule_next(state)
        with trio.fail_after(30):
            await trio.sleep_forever()  # until the hook cancels everything
    task = h.engine.get_task("s", "t")
    if stage is AttemptStage.FINISHING:
        assert (task.state, task.attempts) == (TaskState.COMPLETED, 1)
    else:
        assert (task.state, task.attempts) == (TaskState.READY, 0)
    h.engine.store = Store(h.store_path)  # the harness closed its store on the way out
    _consistent(h)
    h.engine.store.close()


@pytest.mark.parametrize("stage", STAGES, ids=[s.value for s in STAGES])
async def test_a_bug_of_ours_at_each_stage_fails_the_task_internal_after_one_try(
    tmp_path: Path, repo: Path, stage: AttemptStage
) -> None:
    """corral's own code raising mid-attempt: category internal, never retried, nothing left."""
    async with harness(tmp_path, repo) as h:
        state = h.engine.session("s")

        async def bug_here(run: Run, reached: AttemptStage) -> None:
            if reached is stage:
                raise RuntimeError(f"a bug of ours at {stage.value}")

        h.pool.stage_hooks.append(bug_here)
        await h.pool.schedule_next(state)
        with trio.fail_after(30):
            while h.engine.get_task("s", "t").state is not TaskState.FAILED:
                await h.pool.runs.wait_ended()
        task = h.engine.get_task("s", "t")  # maxRetries is 3: none is spent on a bug of ours
        assert (task.state, task.attempts, task.error_category) == (
            TaskState.FAILED,
            1,
            ErrorCategory.INTERNAL,
        ), task
        assert task.error is not None and "a bug of ours" in task.error
        assert h.engine.agents("s")[0].end_reason is not None
        assert await h.pool.schedule_next(state) == (None, None, "no task is ready")
        _consistent(h)
        h.nursery.cancel_scope.cancel()
