"""The kill -9 loop: a daemon killed at random moments loses nothing and leaves no process.

Every iteration starts the daemon on the same state directory, makes a few
acknowledged mutations (tasks added, the session started), lets agents start
(each forks a grandchild that ignores SIGTERM and an escaper that calls
`setsid`), and SIGKILLs the daemon at a random moment. The next start must
find every acknowledged task, and every process an earlier incarnation
created must be dead (pid and start ticks), because the restart killed it
from the runs' stored records. At the end no process carrying the test's own
environment marker may be alive anywhere.

Three kills in a plain run, twenty with `-m chaos`, fifty with `-m chaos_long`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

from corral import errors
from tests import procs
from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.test_pool import PLAN_AGENT, wait_for

MARKER = "CORRAL_CHAOS_RUN"


def _config(plan: Path, marker: str) -> str:
    argv = json.dumps([sys.executable, str(PLAN_AGENT), str(plan)])
    return (
        f'[agents.fake]\nargv = {argv}\nparser = "claude-stream-json"\n'
        f'env = {{ {MARKER} = "{marker}" }}\n'
    )


def _marked(marker: str) -> list[int]:
    """Pids of every process whose environment carries this test's marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _grew(pidfile: Path, known: int) -> bool:
    return len(procs.recorded(pidfile)) > known


def _loop(tmp_path: Path, repo: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    marker = f"{seed}-{time.monotonic_ns()}"
    pidfile = tmp_path / "pids"
    plan = tmp_path / "plan.json"
    behaviour = [
        "--pidfile",
        str(pidfile),
        "--grandchild-ignore-sigterm",
        "--setsid-escape",
        "--sleep",
        "30",
    ]
    plan.write_text(json.dumps({"*": behaviour}))
    state = tmp_path / "state"
    config = _config(plan, marker)
    acked: set[str] = set()
    recorded_before = 0
    for i in range(kills):
        with DaemonProcess(state, config=config) as d, d.client(timeout=20) as c:
            # Whatever an earlier incarnation started is dead by the time we are answered.
            earlier = procs.recorded(pidfile)[:recorded_before]
            alive = [(p, r) for p, s, r in earlier if procs.same_start(p, s)]
            assert alive == [], f"kill {i}: survivors of the last daemon: {alive}"
            tasks = {t.id for t in c.parallel_list_tasks(session_id="k")} if i else set()
            assert acked <= tasks, f"kill {i}: lost {sorted(acked - tasks)}"
            if i == 0:
                c.init_parallel_scheduler(
                    repo_path=str(repo),
                    session_id="k",
                    config={
                        "agentType": "fake",
                        "maxParallel": 3,
                        "integrate": False,
                        "resourceLimits": {"killGraceSecs": 0.2, "maxAgents": 3},
                    },
                )
            for n in range(rng.randint(1, 3)):
                task_id = f"k{i}-{n}"
                c.parallel_add_task(session_id="k", task={"id": task_id, "title": task_id})
                acked.add(task_id)
            with contextlib.suppress(errors.InvalidStateTransition):
                c.session_start(session_id="k")  # (already running after a restart)
            # Let some agents get going, then kill at a random moment.
            wait_for(functools.partial(_grew, pidfile, recorded_before), 30, "an agent")
            time.sleep(rng.uniform(0, 0.4))  # the random moment itself, not a wait for a state
            recorded_before = len(procs.recorded(pidfile))
            d.kill()
    with DaemonProcess(state, config=config) as d, d.client(timeout=20) as c:
        earlier = procs.recorded(pidfile)[:recorded_before]
        assert [p for p, s, _ in earlier if procs.same_start(p, s)] == []
        assert acked <= {t.id for t in c.parallel_list_tasks(session_id="k")}
        c.parallel_stop_all(session_id="k")
        c.daemon_shutdown()
        assert d.proc is not None
        d.proc.wait(30)
    wait_for(lambda: not _marked(marker), 10, "every marked process to be gone")
    assert git(repo, "status", "--porcelain") == ""  # the repository itself untouched


def test_kill_9_loop_short(tmp_path: Path, repo: Path) -> None:
    _loop(tmp_path, repo, kills=3, seed=3)


@pytest.mark.chaos
def test_kill_9_loop(tmp_path: Path, repo: Path) -> None:
    _loop(tmp_path, repo, kills=20, seed=1)


@pytest.mark.chaos_long
def test_kill_9_loop_long(tmp_path: Path, repo: Path) -> None:
    _loop(tmp_path, repo, kills=50, seed=2)
