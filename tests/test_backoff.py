"""Backoff as the running pool lives it, on trio's virtual clock (no real waiting).

The engine takes its time from trio's clock, so retry deadlines and the
pool's sleeps are in virtual time: whenever everything waits, the clock jumps
to the next deadline, so a backoff of minutes takes a fraction of a second.
Real work (agent processes, worktree allocation) may let virtual time move
on in the meantime, so the test measures from each failure to the next start,
which is exactly the pool sleeping until the retry is due.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from corral.models import (
    Backoff,
    ResourceLimits,
    SchedulerConfig,
    SessionStatus,
    TaskSpec,
    TaskState,
)
from corrald.agents.types import AgentTypeConfig
from corrald.pool.pool import AgentPool
from corrald.state.engine import Engine, SessionState
from corrald.state.events import EventBus
from corrald.state.store import Store

PLAN_AGENT = Path(__file__).with_name("plan_agent.py")


async def test_retries_wait_out_their_backoff_in_virtual_time(
    mock_clock: trio.testing.MockClock, repo: Path, tmp_path: Path
) -> None:
    # Jump once everything has waited a quarter of a real second. While an agent
    # runs, the sampler's ticks are what the clock jumps to: a lower threshold
    # lets a slow machine (a Python start-up taking seconds) run virtual time
    # so far ahead that runtime limits and this test's deadline fire.
    mock_clock.autojump_threshold = 0.25
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"t#1": ["--exit", "1"], "t#2": ["--exit", "1"], "t#3": []}))
    store = Store(tmp_path / "state" / "corral.db")
    engine = Engine(store, EventBus(store, clock=trio.current_time), clock=trio.current_time)
    pool = AgentPool(
        engine,
        logs_dir=tmp_path / "logs",
        worktree_base=tmp_path / "worktrees",
        custom_types={"flaky": AgentTypeConfig(argv=[sys.executable, str(PLAN_AGENT), str(plan)])},
    )
    seen: list[tuple[TaskState, float]] = []
    done = trio.Event()

    def watch(state: SessionState) -> None:
        if not state.scheduler.tasks():  # the session was just created (every change wakes)
            return
        status = state.scheduler.get("t").state
        if not seen or seen[-1][0] is not status:
            seen.append((status, trio.current_time()))
        if state.session.status is SessionStatus.COMPLETED:
            done.set()

    engine.on_change.append(watch)
    config = SchedulerConfig(
        integrate=False,  # backoff alone (integration: test_integration.py)
        agent_type="flaky",
        max_retries=2,
        backoff=Backoff(base_secs=60, multiplier=3, cap_secs=1000),
        resource_limits=ResourceLimits(max_runtime_secs=0),  # virtual time: no runtime limit
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        engine.init_session(config, str(repo), "s")
        engine.add_tasks("s", [TaskSpec(id="t", title="flaky task")])
        engine.set_status("s", SessionStatus.RUNNING)
        with trio.fail_after(24 * 3600):  # virtual seconds
            await done.wait()
        nursery.cancel_scope.cancel()
    store.close()
    task = engine.get_task("s", "t")
    assert task.state is TaskState.COMPLETED and task.attempts == 3
    statuses = [status for status, _ in seen]
    assert statuses == [
        TaskState.READY,
        TaskState.IN_PROGRESS,
        TaskState.RETRY_WAIT,
        TaskState.READY,
        TaskState.IN_PROGRESS,
        TaskState.RETRY_WAIT,
        TaskState.READY,
        TaskState.IN_PROGRESS,
        TaskState.COMPLETED,
    ], seen
    times = [at for _, at in seen]
    # Failure -> next start: 60 s after the first failure, 180 s after the second.
    assert times[4] - times[2] == pytest.approx(60, abs=0.01)
    assert times[7] - times[5] == pytest.approx(180, abs=0.01)
