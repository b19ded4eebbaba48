"""Integration: a plan's work composes into one branch (real daemon, real agents, real git).

Fake agents (tests/fake_agent.py through tests/plan_agent.py, behaviour per
task and attempt) write files in their worktrees; the daemon commits them,
merges each branch into the session's integration branch through the queue
and, where a test sets one, a real gate program (tests/gate.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import errors
from corral.cli import main
from corral.client import Client
from corral.models import ErrorCategory, IntegrationReport, IntegrationStatus, Task, TaskState
from tests import procs
from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, finished, wait_for

GATE = Path(__file__).with_name("gate.py")
BRANCH = "corral-integration/s"


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text("{}")
    return path


@pytest.fixture
def daemon(plan: Path, tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path / "state", config=agent_config(plan, "fake")) as d:
        yield d


def behave(plan: Path, behaviour: dict[str, list[str]]) -> None:
    plan.write_text(json.dumps(behaviour))


def start(c: Client, repo: Path, tasks: list[dict[str, Any]], **config: Any) -> None:
    c.init_parallel_scheduler(
        repo_path=str(repo), session_id="s", config={"agentType": "fake", **config}
    )
    c.parallel_add_tasks(tasks=tasks)
    c.session_start()


def tasks_of(c: Client) -> dict[str, Task]:
    return {t.id: t for t in c.parallel_list_tasks(session_id="s")}


def merges(repo: Path) -> list[str]:
    """The task ids of the integration branch's first-parent merges, oldest first."""
    log = git(repo, "log", "--first-parent", "--format=%s", BRANCH, "^main")
    return [line.split()[2] for line in reversed(log.splitlines()) if line.startswith("Integrate")]


def report_if(
    c: Client, condition: Callable[[IntegrationReport], bool]
) -> IntegrationReport | None:
    report = c.integration_status(session_id="s")
    return report if condition(report) else None


def gate(*args: str) -> list[str]:
    return [sys.executable, str(GATE), *args]


def test_a_diamond_composes_into_one_branch(daemon: DaemonProcess, plan: Path, repo: Path) -> None:
    behave(
        plan,
        {
            "a": ["--edit", "a.txt=from a"],
            "b": ["--edit", "b.txt=from b"],
            # c fails unless its worktree already holds a's and b's work
            "c": ["--require", "a.txt", "--require", "b.txt", "--edit", "c.txt=from c"],
        },
    )
    with daemon.client() as c:
        start(
            c,
            repo,
            [
                {"id": "a", "title": "a"},
                {"id": "b", "title": "b"},
                {"id": "c", "title": "c", "dependencies": ["a", "b"]},
            ],
            maxParallel=3,
        )
        wait_for(lambda: finished(c, "s"), 60, "the diamond to finish")
        tasks = tasks_of(c)
        report = c.integration_status(session_id="s")
        session = c.session_get(session_id="s")
    assert session.status.value == "completed" and session.integration_branch == BRANCH
    assert {t.id: t.integration_status for t in tasks.values()} == dict.fromkeys(
        "abc", IntegrationStatus.INTEGRATED
    )
    assert all(t.attempts == 1 for t in tasks.values())  # c never failed: a and b were there
    for name in ("a", "b", "c"):
        assert git(repo, "show", f"{BRANCH}:{name}.txt") == f"from {name}"
    order = merges(repo)
    assert sorted(order) == ["a", "b", "c"] and order[-1] == "c"  # one merge each, c after both
    assert report.head == git(repo, "rev-parse", BRANCH) and report.queue == []
    assert git(repo, "ls-files") == "README.md"  # nothing landed on main unasked


def test_a_conflict_goes_back_to_the_agent_and_is_resolved(
    daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    behave(
        plan,
        {
            "left": ["--edit", "x.txt=LEFT\n"],
            "right": ["--edit", "x.txt=RIGHT\n", "--sleep", "1"],
            "right#2": ["--resolve-markers"],  # the resolution attempt keeps both sides
        },
    )
    with daemon.client() as c:
        start(
            c,
            repo,
            [{"id": "left", "title": "left"}, {"id": "right", "title": "right"}],
            maxParallel=2,
            maxRetries=0,
        )
        wait_for(lambda: finished(c, "s"), 60, "both to be integrated")
        tasks = tasks_of(c)
        agents = c.parallel_list_agents(session_id="s")
    right = tasks["right"]
    assert right.integration_status is IntegrationStatus.INTEGRATED
    assert (right.attempts, right.integration_attempts) == (1, 1)  # no normal retry spent
    assert [a.task_id for a in agents].count("right") == 2
    merged = git(repo, "show", f"{BRANCH}:x.txt").splitlines()
    assert sorted(merged) == ["LEFT", "RIGHT"]
    assert merges(repo) == ["left", "right"]


def test_the_resolver_policy_hands_the_conflict_to_the_resolver_agent(
    plan: Path, repo: Path, tmp_path: Path
) -> None:
    behave(
        plan,
        {
            "left": ["--edit", "x.txt=LEFT\n"],
            "right": ["--edit", "x.txt=RIGHT\n", "--sleep", "1"],
            "right#2": ["--resolve-markers"],
        },
    )
    with (
        DaemonProcess(tmp_path / "state", config=agent_config(plan, "fake", "fixer")) as d,
        d.client() as c,
    ):
        with pytest.raises(errors.ConfigInvalid) as refused:  # a resolver needs an agent type
            c.init_parallel_scheduler(repo_path=str(repo), config={"onConflict": "resolver"})
        assert "resolverAgent" in refused.value.message and c.session_list() == []
        start(
            c,
            repo,
            [{"id": "left", "title": "left"}, {"id": "right", "title": "right"}],
            maxParallel=2,
            onConflict="resolver",
            resolverAgent="fixer",
        )
        wait_for(lambda: finished(c, "s"), 60, "both to be integrated")
        right = tasks_of(c)["right"]
        runs = [a for a in c.parallel_list_agents(session_id="s") if a.task_id == "right"]
    assert right.integration_status is IntegrationStatus.INTEGRATED
    assert [a.agent_type for a in runs] == ["fake", "fixer"]  # the resolution went to the fixer
    assert (right.attempts, right.integration_attempts) == (1, 1)
    assert sorted(git(repo, "show", f"{BRANCH}:x.txt").splitlines()) == ["LEFT", "RIGHT"]


def test_manual_parks_until_a_person_fixes_it(
    daemon: DaemonProcess, plan: Path, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    behave(
        plan,
        {"left": ["--edit", "x.txt=LEFT\n"], "right": ["--edit", "x.txt=RIGHT\n", "--sleep", "1"]},
    )
    with daemon.client() as c:
        start(
            c,
            repo,
            [{"id": "left", "title": "left"}, {"id": "right", "title": "right"}],
            maxParallel=2,
            onConflict="manual",
        )
        report = wait_for(lambda: report_if(c, lambda r: bool(r.parked)), 60, "a parked task")
        (parked,) = report.parked
        assert (parked.task_id, parked.files) == ("right", ["x.txt"])
        with pytest.raises(errors.InvalidStateTransition):
            c.task_integrate(session_id="s", task_id="left")  # integrated, not parked
        worktree = Path(tasks_of(c)["right"].worktree_path or "")
        assert "<<<<<<<" in (worktree / "x.txt").read_text()  # the merge, with markers
        capsys.readouterr()
        assert main(["integration", "--socket", str(daemon.socket)]) == 0
        shown = capsys.readouterr().out
        assert "parked: right (conflict: x.txt)" in shown and "corral integrate right" in shown
        # A person resolves it and commits, then puts it back in the queue with the CLI.
        (worktree / "x.txt").write_text("LEFT and RIGHT\n")
        git(worktree, "commit", "-qam", "resolved by hand")
        assert main(["integrate", "right", "--json", "--socket", str(daemon.socket)]) == 0
        task = Task.model_validate(json.loads(capsys.readouterr().out))
        assert task.integration_status is IntegrationStatus.QUEUED
        wait_for(
            lambda: tasks_of(c)["right"].integration_status is IntegrationStatus.INTEGRATED,
            30,
            "the fixed branch to be integrated",
        )
    assert git(repo, "show", f"{BRANCH}:x.txt") == "LEFT and RIGHT"


def test_past_the_cap_it_fails_with_category_conflict(
    daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    behave(
        plan,
        {
            "left": ["--edit", "x.txt=LEFT\n"],
            "right": ["--edit", "x.txt=RIGHT\n", "--sleep", "1"],
            "right#2": [],  # commits the markers as they are: still a conflict
            "after": ["--edit", "after.txt=never"],
        },
    )
    with daemon.client() as c:
        start(
            c,
            repo,
            [
                {"id": "left", "title": "left"},
                {"id": "right", "title": "right"},
                {"id": "after", "title": "after", "dependencies": ["right"]},
            ],
            maxParallel=2,
            maxIntegrationAttempts=1,
        )
        wait_for(lambda: finished(c, "s"), 60, "the session to give up")
        tasks = tasks_of(c)
        assert c.session_get(session_id="s").status.value == "failed"
    right, after = tasks["right"], tasks["after"]
    assert (right.state, right.error_category) == (TaskState.FAILED, ErrorCategory.CONFLICT)
    assert right.integration_attempts == 1
    assert (after.state, after.blocked_by) == (TaskState.BLOCKED, "right")


@pytest.mark.slow
def test_a_failing_batch_is_bisected(
    daemon: DaemonProcess, plan: Path, repo: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "gate-runs"
    behave(
        plan,
        {
            "first": ["--edit", "first.txt=1"],
            "t1": ["--edit", "t1.txt=1", "--sleep", "0.5"],
            "t2": ["--edit", "t2.txt=1", "--sleep", "0.5"],
            "t3": ["--edit", "t3.txt=1", "--edit", "BAD=broken", "--sleep", "0.5"],
            "t3#2": ["--delete", "BAD"],  # fixed on the second try
            "t4": ["--edit", "t4.txt=1", "--sleep", "0.5"],
        },
    )
    with daemon.client() as c:
        start(
            c,
            repo,
            [{"id": "first", "title": "first", "priority": -1}]
            + [{"id": f"t{i}", "title": f"t{i}"} for i in range(1, 5)],
            maxParallel=5,
            gateCommand=gate("--fail-if-exists", "BAD", "--sleep", "1.5", "--count", str(runs)),
        )  # gateBatch is left at its default, 4
        batch = wait_for(
            lambda: (
                (b := c.integration_status(session_id="s").last_batch)
                and len(b.task_ids) == 4
                and b
            ),
            90,
            "the batch of four",
        )
        wait_for(lambda: finished(c, "s"), 90, "everything to be integrated")
        tasks = tasks_of(c)
    assert batch.task_ids == ["t1", "t2", "t3", "t4"]
    assert batch.integrated == ["t1", "t2"] and batch.gate_failed == ["t3"]
    assert batch.gate_runs <= 2 * 2 + 1 and batch.gate_runs == 3  # full, then two halvings
    assert f"{batch.gate_runs} gate run(s)" in daemon.log()
    order = merges(repo)
    assert order[:3] == ["first", "t1", "t2"] and order.index("t4") < order.index("t3")
    t3 = tasks["t3"]
    assert (t3.state, t3.integration_status, t3.attempts) == (
        TaskState.COMPLETED,
        IntegrationStatus.INTEGRATED,
        1,
    )
    assert t3.integration_attempts == 1
    assert "BAD" not in git(repo, "ls-tree", "--name-only", BRANCH).split()


def _one_merge_each(repo: Path, ids: list[str]) -> None:
    order = merges(repo)
    assert sorted(order) == sorted(ids), order  # each exactly once


def test_kill_9_while_a_gate_runs(plan: Path, repo: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    slow.write_text("until the test says so")
    behave(plan, {"*": ["--edit", "{task}.txt=x"]})
    behave(plan, {f"k{i}": ["--edit", f"k{i}.txt=x"] for i in range(3)})
    state = tmp_path / "state"
    config = agent_config(plan, "fake")
    with DaemonProcess(state, config=config) as d, d.client() as c:
        start(
            c,
            repo,
            [{"id": f"k{i}", "title": f"k{i}"} for i in range(3)],
            maxParallel=3,
            gateCommand=gate("--slow-while", str(slow)),
        )
        wait_for(lambda: c.integration_status(session_id="s").gating, 60, "a gate to run")
        d.kill()
    slow.unlink()
    with DaemonProcess(state, config=config) as d, d.client() as c:
        wait_for(lambda: finished(c, "s"), 60, "the restarted queue to finish")
        tasks = tasks_of(c)
    assert all(t.integration_status is IntegrationStatus.INTEGRATED for t in tasks.values())
    _one_merge_each(repo, [f"k{i}" for i in range(3)])


def test_kill_9_between_the_merge_and_the_ref_update(
    plan: Path, repo: Path, tmp_path: Path
) -> None:
    behave(plan, {f"m{i}": ["--edit", f"m{i}.txt=x"] for i in range(3)})
    state = tmp_path / "state"
    config = agent_config(plan, "fake")
    crash = DaemonProcess(state, config=config, env={"CORRAL_TEST_CRASH_BEFORE_CAS": "1"})
    with crash as d, d.client() as c:
        start(c, repo, [{"id": f"m{i}", "title": f"m{i}"} for i in range(3)], maxParallel=3)
        assert d.proc is not None
        d.proc.wait(60)  # it dies at the first compare-and-swap
        assert d.proc.returncode == 137
    assert git(repo, "rev-parse", BRANCH) == git(repo, "rev-parse", "main")  # nothing moved
    with DaemonProcess(state, config=config) as d, d.client() as c:
        wait_for(lambda: finished(c, "s"), 60, "the restarted queue to finish")
        tasks = tasks_of(c)
    assert all(t.integration_status is IntegrationStatus.INTEGRATED for t in tasks.values())
    _one_merge_each(repo, [f"m{i}" for i in range(3)])


def test_overlapping_paths_never_run_together(
    daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    behave(
        plan,
        {
            "api": ["--edit", "api.txt=1", "--sleep", "1"],
            "users": ["--edit", "users.txt=1", "--sleep", "1"],
            "docs": ["--edit", "docs.txt=1", "--sleep", "1"],
        },
    )
    with daemon.client() as c:
        start(
            c,
            repo,
            [
                {"id": "api", "title": "api", "paths": ["src/api/**"], "priority": 0},
                {"id": "users", "title": "users", "paths": ["src/api/users.py"], "priority": 1},
                {"id": "docs", "title": "docs", "paths": ["docs/**"], "priority": 2},
            ],
            maxParallel=3,
        )
        # While api runs, users is ready but held back, and the stats say so.
        wait_for(
            lambda: c.parallel_get_scheduler_stats(session_id="s").waiting_for_paths == 1,
            30,
            "users to wait for api's paths",
        )
        wait_for(lambda: finished(c, "s"), 60, "the session to finish")
        assert c.parallel_get_scheduler_stats(session_id="s").waiting_for_paths == 0
        spans = {
            a.task_id: (a.started_at, a.ended_at or 0.0)
            for a in c.parallel_list_agents(session_id="s")
        }

    def overlap(x: tuple[float, float], y: tuple[float, float]) -> bool:
        return x[0] < y[1] and y[0] < x[1]

    api, users, docs = spans["api"], spans["users"], spans["docs"]
    assert not overlap(api, users)  # never at the same time
    assert overlap(docs, api) or overlap(docs, users)  # docs ran beside one of them


def test_a_missing_gate_program_is_refused_or_blocks_the_queue_losing_nothing(
    daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    behave(plan, {"g": ["--edit", "g.txt=1"]})
    with daemon.client() as c:
        with pytest.raises(errors.ConfigInvalid) as refused:
            c.init_parallel_scheduler(
                repo_path=str(repo), session_id="s", config={"gateCommand": ["no-such-gate-x"]}
            )
        assert "no-such-gate-x" in refused.value.message
        assert c.session_list() == []
        # A relative program can only be found in the merged tree: the queue stops.
        start(c, repo, [{"id": "g", "title": "g"}], gateCommand=["./run-the-gate.sh"])
        report = wait_for(lambda: report_if(c, lambda r: bool(r.blocked)), 60, "a block")
        assert report.blocked is not None and "run-the-gate.sh" in report.blocked
        task = tasks_of(c)["g"]
        assert (task.state, task.integration_status) == (
            TaskState.COMPLETED,
            IntegrationStatus.QUEUED,
        )  # nothing failed, nothing lost
        # A working gate: the queue moves on.
        c.init_parallel_scheduler(
            repo_path=str(repo), session_id="s", config={"agentType": "fake", "gateCommand": gate()}
        )
        c.session_start(session_id="s")
        wait_for(
            lambda: tasks_of(c)["g"].integration_status is IntegrationStatus.INTEGRATED,
            60,
            "the queue to move",
        )
        assert c.integration_status(session_id="s").blocked is None


def test_a_hanging_gate_is_killed_whole(
    daemon: DaemonProcess, plan: Path, repo: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "gate-pids"
    behave(plan, {"h": ["--edit", "h.txt=1"]})
    with daemon.client() as c:
        start(
            c,
            repo,
            [{"id": "h", "title": "h"}],
            gateCommand=gate("--hang", "--pidfile", str(pidfile)),
            gateTimeoutSecs=2,
            maxIntegrationAttempts=0,
            resourceLimits={"killGraceSecs": 0.5},
        )
        wait_for(lambda: finished(c, "s"), 60, "the gate to time out")
        task = tasks_of(c)["h"]
    assert (task.state, task.error_category) == (TaskState.FAILED, ErrorCategory.GATE)
    assert task.error is not None and "runtime limit" in task.error
    procs.assert_all_dead(pidfile, "gate", "gate-child")


def test_a_gate_over_its_memory_limit_is_killed(
    daemon: DaemonProcess, plan: Path, repo: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "gate-pids"
    behave(plan, {"h": ["--edit", "h.txt=1"]})
    with daemon.client() as c:
        start(
            c,
            repo,
            [{"id": "h", "title": "h"}],
            gateCommand=gate("--hog", "200", "--pidfile", str(pidfile)),
            gateTimeoutSecs=60,
            maxIntegrationAttempts=0,
            resourceLimits={"maxMemoryMbPerAgent": 100, "sampleIntervalSecs": 0.2},
        )
        wait_for(lambda: finished(c, "s"), 60, "the gate to be killed")
        task = tasks_of(c)["h"]
    assert (task.state, task.error_category) == (TaskState.FAILED, ErrorCategory.GATE)
    assert task.error is not None and "memory" in task.error
    procs.assert_all_dead(pidfile, "gate")


@pytest.mark.parametrize(
    ("template", "task_template", "why"),
    [
        ("bad..name/{session_id}", "corral/{task_id}", "invalid branch name"),
        ("corral/{session_id}", "corral/{task_id}", "collide"),
        ("work/{session_id}", "work/{task_id}", "collide"),  # a custom task template too
        ("work", "work/{task_id}", "collide"),  # `work` would be a directory of task branches
    ],
)
def test_bad_integration_templates_are_refused(
    daemon: DaemonProcess, repo: Path, template: str, task_template: str, why: str
) -> None:
    with daemon.client() as c:
        with pytest.raises(errors.InvalidBranchName) as info:
            c.init_parallel_scheduler(
                repo_path=str(repo),
                config={"integrationBranch": template, "branchTemplate": task_template},
            )
        assert why in info.value.message
        assert c.session_list() == []
    assert git(repo, "branch", "--format=%(refname:short)") == "main"


def test_landing_puts_the_integration_branch_on_main(
    daemon: DaemonProcess, plan: Path, repo: Path
) -> None:
    behave(plan, {"l1": ["--edit", "l1.txt=1"], "l2": ["--edit", "l2.txt=2"]})
    with daemon.client() as c:
        start(c, repo, [{"id": "l1", "title": "l1"}, {"id": "l2", "title": "l2"}], maxParallel=2)
        wait_for(lambda: finished(c, "s"), 60, "the session")
        dry = c.merge_completed_branches(session_id="s", dry_run=True)
        assert git(repo, "ls-files") == "README.md"
        report = c.merge_completed_branches(session_id="s")
    assert dry.total_branches == report.total_branches == 1
    assert report.merged == 1 and report.results[0].branch == BRANCH
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", BRANCH)  # a fast-forward
    assert sorted(git(repo, "ls-files").split()) == ["README.md", "l1.txt", "l2.txt"]
    assert os.path.exists(repo / "l1.txt")  # the clean checkout was updated


def test_every_gate_command_must_pass(
    daemon: DaemonProcess, plan: Path, repo: Path, tmp_path: Path
) -> None:
    behave(plan, {"v": ["--edit", "v.txt=1"]})
    with daemon.client() as c:
        start(
            c,
            repo,
            [{"id": "v", "title": "v"}],
            gateCommand=gate("--require", "v.txt"),  # passes
            gateCommands=[gate("--require", "missing.txt")],  # fails
            maxIntegrationAttempts=0,
        )
        wait_for(lambda: finished(c, "s"), 60, "the gate to fail")
        task = tasks_of(c)["v"]
        # every change of the way in was announced (and kept: read from seq 0)
        ways: list[str] = []
        batches: list[dict[str, Any]] = []
        for event in c.events(["task", "integration"], session_id="s", since_seq=0):
            if event.type == "task.status" and event.payload.get("integrationStatus"):
                ways.append(event.payload["integrationStatus"])
            elif event.type == "integration.batch":
                batches.append(event.payload)
                break  # published with the batch's task changes, after them
    assert (task.state, task.error_category) == (TaskState.FAILED, ErrorCategory.GATE)
    assert task.error is not None and "missing.txt is missing" in task.error
    assert ways[:3] == ["queued", "gating", "gate_failed"]
    (batch,) = batches
    assert (batch["taskIds"], batch["gateFailed"], batch["gateRuns"]) == (["v"], ["v"], 1)
    # each gate command's output has its log, like an agent's
    logs = sorted((tmp_path / "state" / "logs" / "s").glob("gate-s-*.log"))
    assert [path.name for path in logs] == ["gate-s-1.log", "gate-s-2.log"]
    assert "gate: all good" in logs[0].read_text()
    assert "gate: missing.txt is missing" in logs[1].read_text()
