"""A small real plan for the dashboard's tests: five tasks, a failure, a block, a conflict.

`alpha` and `gamma` change `shared.txt` in two ways, so their branches
conflict (gamma finishes later and parks: `onConflict = "manual"`); `delta`
fails, so `epsilon` is blocked; `beta` runs after `alpha` and prints to
both streams. Token and cost figures differ per task, so sorting by cost
has one right answer.

`python -m tests.ui_plan` records what a real daemon answers for this plan
into `tests/ui_board.json`, the fixed data of the snapshot tests.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.client import Client
from corral.models import to_jsonable
from tests.conftest import make_repo
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, wait_for

BOARD = Path(__file__).with_name("ui_board.json")

FAKE = ["--stream-json"]
BEHAVIOUR: dict[str, list[str]] = {
    "alpha": [*FAKE, "--tokens", "1200", "--cost", "0.03", "--edit", "shared.txt=alpha\n"],
    "beta": [
        *FAKE,
        *("--tokens", "800", "--cost", "0.01"),
        *("--stdout", "beta says hello", "--stderr", "beta warns"),
    ],
    "gamma": [
        *FAKE,
        *("--tokens", "3000", "--cost", "0.09", "--sleep", "1.5"),
        *("--edit", "shared.txt=gamma\n"),
    ],
    "delta": [*FAKE, "--tokens", "100", "--cost", "0.002", "--exit", "1"],
    "epsilon": [*FAKE, "--tokens", "100", "--cost", "0.001"],
}
TASKS: list[dict[str, Any]] = [
    {"id": "alpha", "title": "write shared.txt one way"},
    {"id": "beta", "title": "build on alpha", "dependencies": ["alpha"]},
    {"id": "gamma", "title": "write shared.txt another way"},
    {"id": "delta", "title": "a task that fails"},
    {"id": "epsilon", "title": "after the failure", "dependencies": ["delta"]},
]
CONFIG: dict[str, Any] = {
    "agentType": "fake",
    "maxRetries": 0,
    "onConflict": "manual",
    "backoff": {"baseSecs": 0},
}


def daemon_for(tmp: Path, behaviour: dict[str, list[str]] | None = None) -> DaemonProcess:
    """A daemon whose `fake` agent type plays `behaviour` (default: the plan above)."""
    plan = tmp / "behaviour.json"
    plan.write_text(json.dumps(behaviour or BEHAVIOUR))
    return DaemonProcess(config=agent_config(plan, "fake"))


def repo_for(path: Path) -> Path:
    return make_repo(path, {"README.md": "hello\n", "shared.txt": "base\n"})


def settled(c: Client, session_id: str) -> bool:
    """The plan has played out: every task ended or parked, nothing is gating."""
    tasks = {t.id: t for t in c.parallel_list_tasks(session_id=session_id)}
    report = c.integration_status(session_id=session_id)
    ended = all(
        t.state.value in ("completed", "failed", "blocked", "cancelled") for t in tasks.values()
    )
    return ended and not report.gating and not report.queue and bool(report.parked)


def record(path: Path = BOARD) -> None:
    """Play the plan on a real daemon and write every answer the dashboard draws."""
    tmp = Path(tempfile.mkdtemp(prefix="uiplan", dir="/tmp"))
    repo = repo_for(tmp / "repo")
    with daemon_for(tmp) as d, d.client() as c:
        sid = c.init_parallel_scheduler(repo_path=str(repo), config=CONFIG, session_id="demo").id
        c.parallel_add_tasks(session_id=sid, tasks=TASKS)
        c.session_start(session_id=sid)
        wait_for(lambda: settled(c, sid), 60, "the plan to settle")
        conflicts = c.conflicts_detect(session_id=sid)
        board = {
            "session": c.session_get(session_id=sid),
            "stats": c.parallel_get_scheduler_stats(session_id=sid),
            "pool": c.parallel_get_pool_stats(session_id=sid),
            "agents": c.parallel_list_agents(session_id=sid),
            "tasks": c.parallel_list_tasks(session_id=sid),
            "violations": c.parallel_check_violations(session_id=sid),
            "integration": c.integration_status(session_id=sid),
            "matrix": c.conflicts_matrix(session_id=sid),
            "conflicts": conflicts,
            "summary": c.conflicts_get_summary(conflicts=conflicts),
            "recordedAt": time.time(),
        }
    path.write_text(json.dumps(to_jsonable(board), indent=1) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else BOARD)
