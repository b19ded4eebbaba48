"""The seed's API contract: each seed call, with the seed's argument object, on a real daemon.

The seed's TypeScript types (the seed report's "API Documentation", and the
issue's list for the types it does not print) are written down once here as
pydantic models with `extra="allow"` (corral's own fields ride along) and
every seed field required. Each call is one raw JSON-RPC request with exactly
the seed's params, on a repository whose branches really conflict.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, TypeAdapter

from corral import errors
from corral.client import Client
from tests.conftest import git, make_repo
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, wait_for

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
TaskStatus = Literal["pending", "in_progress", "completed", "failed"]
AgentStatus = Literal["idle", "thinking", "reading", "implementing", "testing", "committing"]
ConflictType = Literal["file_modification", "delete_modify", "file_creation", "directory_conflict"]
Strategy = Literal["use_first", "use_last", "use_priority", "auto_merge", "manual"]


class Seed(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class SeedTask(Seed):
    id: str
    title: str
    description: str
    status: TaskStatus
    priority: int
    dependencies: list[str]
    assignedAgent: str | None = None
    estimatedTokens: int | None = None
    actualTokens: int | None = None
    startedAt: str | None = None
    completedAt: str | None = None
    branch: str | None = None
    worktreePath: str | None = None
    error: str | None = None


class SeedLogEntry(Seed):
    timestamp: str
    level: Literal["info", "warn", "error", "debug"]
    message: str


class SeedAgent(Seed):
    id: str
    sessionId: str
    taskId: str
    status: AgentStatus
    processId: int | None = None
    worktreePath: str
    branch: str
    iterationCount: int
    tokens: int
    cost: float
    logs: list[SeedLogEntry]
    subagents: list[Any]


class SeedSchedulerStats(Seed):
    pending: int
    ready: int
    running: int
    completed: int
    failed: int
    total: int


class SeedPoolStats(Seed):
    runningAgents: int
    maxAgents: int
    totalCpuUsage: float
    maxTotalCpu: float
    totalMemoryMb: float
    maxTotalMemoryMb: float


class SeedCompletedAgent(Seed):
    agentId: str
    taskId: str
    processId: int | None
    exitCode: int | None
    logs: list[SeedLogEntry]


class SeedWorktreeAllocation(Seed):
    agentId: str
    taskId: str
    worktreePath: str
    branch: str
    createdAt: str


class SeedMergeConflict(Seed):
    filePath: str
    conflictType: ConflictType
    agents: list[str]
    branches: list[str]
    recommendedStrategy: Strategy
    description: str
    autoResolvable: bool


class SeedConflictSummary(Seed):
    totalConflicts: int
    autoResolvable: int
    manualRequired: int
    uniqueFiles: int
    conflictsByType: dict[ConflictType, int]


class SeedResolution(Seed):
    filePath: str
    strategyUsed: Strategy
    success: bool
    message: str


class SeedMergeable(Seed):
    taskId: str
    branch: str
    completedAt: str


class SeedAutoMergeItem(Seed):
    taskId: str
    branch: str
    success: bool
    message: str
    conflictFiles: list[str] | None = None


class SeedAutoMergeResult(Seed):
    totalBranches: int
    merged: int
    failed: int
    skipped: int
    results: list[SeedAutoMergeItem]


def check(model: Any, value: Any) -> Any:
    return TypeAdapter(model).validate_python(value)


# --- the seed's helpers, from the report's descriptions --------------------------------


def utilization(used: float, limit: float) -> float:
    """ "Calculate utilization": a percentage of a limit, for the resource bars."""
    return min(100.0, used / limit * 100.0)


def cost_per_1k(agent: SeedAgent) -> float:
    """AgentComparison's "efficiency metric (cost per 1K tokens)"."""
    return agent.cost / agent.tokens * 1000 if agent.tokens else 0.0


CONFLICT_LABELS = {
    "file_modification": "File Modified",
    "delete_modify": "Delete/Modify",
    "file_creation": "File Created",
    "directory_conflict": "Directory Conflict",
}


def conflict_label(kind: str) -> str:
    """ "Get color/label helpers": the label of a conflict type (a KeyError for anything else)."""
    return CONFLICT_LABELS[kind]


# --- the repository ----------------------------------------------------------------------

LINES = "".join(f"line {i}\n" for i in range(1, 9))


def conflicting_repo(path: Path) -> Path:
    """Branches `left` and `right` that conflict in every way the seed names, and overlap."""
    repo = make_repo(
        path,
        {
            "shared.txt": "shared\n",
            "doomed.txt": "doomed\n",
            "old.txt": "a file that both sides rename\n" * 5,
            "overlap.txt": LINES,
        },
    )
    for side in ("left", "right"):
        git(repo, "checkout", "-q", "-b", side, "main")
        (repo / "shared.txt").write_text(f"{side}\n")
        if side == "left":
            git(repo, "rm", "-q", "doomed.txt")
        else:
            (repo / "doomed.txt").write_text("kept and changed\n")
        (repo / "new.txt").write_text(f"added on {side}\n")
        git(repo, "mv", "old.txt", f"moved-{side}.txt")
        number = 1 if side == "left" else 8
        (repo / "overlap.txt").write_text(LINES.replace(f"line {number}\n", f"{side}\n"))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", side)
    git(repo, "checkout", "-q", "main")
    return repo


PLAN = {
    "a": [
        "--stream-json",
        "--tokens",
        "1500",
        "--cost",
        "0.03",
        "--stdout",
        "to stdout",
        "--stderr",
        "to stderr",
        "--edit",
        "a.txt=a",
    ],
    "b": ["--sleep", "120"],
    "c": ["--sleep", "120"],
    "d": ["--sleep", "120"],
    "*": ["--edit", "other.txt=x"],
}


@pytest.fixture
def seed_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    # Each task's branch lands on its own (the seed has no integration branch).
    config = agent_config(plan, "fake") + '[defaults]\nintegrate = false\nagentType = "fake"\n'
    with DaemonProcess(config=config) as d:
        yield d


SEED_CONFIG = {
    "maxParallel": 3,
    "maxIterations": 10,
    "maxRetries": 2,
    "agentType": "fake",
    "strategy": "priority",
    "resourceLimits": {
        "maxAgents": 5,
        "maxCpuPerAgent": 400.0,
        "maxMemoryMbPerAgent": 2048,
        "maxTotalCpu": 800.0,
        "maxTotalMemoryMb": 8192,
        "maxRuntimeSecs": 3600,
    },
}


def seed_task(task_id: str, priority: int, deps: list[str] | None = None) -> dict[str, Any]:
    """A Task as the seed's frontend builds it, read-only fields echoed."""
    return {
        "id": task_id,
        "title": f"task {task_id}",
        "description": "do it",
        "status": "pending",
        "priority": priority,
        "dependencies": deps or [],
        "estimatedTokens": 1000,
    }


def assert_times(value: Any) -> int:
    """Every timestamp field in a result is an RFC 3339 string; returns how many were seen."""
    seen = 0
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("createdAt", "startedAt", "completedAt", "endedAt", "timestamp"):
                if item is not None:
                    assert isinstance(item, str) and RFC3339.match(item), (key, item)
                    seen += 1
            else:
                seen += assert_times(item)
    elif isinstance(value, list):
        seen += sum(assert_times(v) for v in value)
    return seen


def test_every_seed_call_answers_the_seed_types(seed_daemon: DaemonProcess, tmp_path: Path) -> None:
    repo = conflicting_repo(tmp_path / "repo")
    times = 0
    with seed_daemon.client(timeout=60) as c:
        call = c.call
        session = call("init_parallel_scheduler", config=SEED_CONFIG, repoPath=str(repo))
        times += assert_times(session)
        added = check(SeedTask, call("parallel_add_task", task=seed_task("a", 0)))
        assert added.status == "pending" and added.branch is None  # echoes ignored
        batch = call(
            "parallel_add_tasks",
            tasks=[seed_task("b", 1), seed_task("c", 2, ["a"]), seed_task("d", 3)],
        )
        check(list[SeedTask], batch)

        # The frontend's own session id and the repository find corral's session.
        where = {"sessionId": "ralph-ui-1", "projectPath": str(repo)}
        first = check(SeedAgent, call("parallel_schedule_next", **where))
        assert first.taskId == "a" and Path(first.worktreePath).is_dir()
        assert first.branch == "corral/a" and git(repo, "rev-parse", "--verify", first.branch)
        done = wait_for(lambda: call("parallel_poll_completed"), 30, "a to complete")
        [completed] = check(list[SeedCompletedAgent], done)
        assert completed.agentId == first.id and completed.exitCode == 0
        assert completed.processId is not None and completed.logs
        times += assert_times(done)
        logs = check(list[SeedLogEntry], call("parallel_get_agent_logs", agentId=first.id))
        levels = {e.message: e.level for e in logs}
        assert levels["to stdout"] == "info" and levels["to stderr"] == "warn"
        times += assert_times(call("parallel_get_agent_logs", agentId=first.id))

        # Completing or failing a task whose agent still runs stops that agent.
        second = check(SeedAgent, call("parallel_schedule_next", **where))
        assert (second.taskId == "b" and second.processId is None) or second.processId
        wait_for(lambda: call("parallel_get_agent", agentId=second.id)["lifecycle"] == "running")
        call("parallel_complete_task", taskId="b")
        stopped = call("parallel_get_agent", agentId=second.id)
        assert stopped["lifecycle"] in ("killed", "exited") and Path(second.worktreePath).is_dir()
        third = check(SeedAgent, call("parallel_schedule_next", **where))
        assert third.taskId == "c"  # its dependency a completed
        call("parallel_fail_task", taskId="c", error="broke the build")
        assert call("parallel_get_task", taskId="c")["status"] == "pending"  # retrying
        assert call("parallel_get_agent", agentId=third.id)["lifecycle"] != "running"

        # The seed's agent-result report: records it, starts the next one.
        fourth = check(SeedAgent, call("parallel_schedule_next", **where))
        assert fourth.taskId == "d"
        nxt = call(
            "parallel_handle_agent_result",
            agentId=fourth.id,
            taskId="d",
            sessionId="ralph-ui-1",
            success=True,
            error=None,
        )
        assert nxt is None or check(SeedAgent, nxt)
        requeued = call("parallel_stop_all")
        check(list[SeedTask], requeued)
        assert all(t["status"] != "completed" for t in requeued)

        stats = check(SeedSchedulerStats, call("parallel_get_scheduler_stats"))
        assert stats.total == 4 and stats.completed == 3 and stats.running == 0
        pool = check(SeedPoolStats, call("parallel_get_pool_stats"))
        for used, limit in (
            (pool.runningAgents, pool.maxAgents),
            (pool.totalCpuUsage, pool.maxTotalCpu),
            (pool.totalMemoryMb, pool.maxTotalMemoryMb),
        ):
            assert not math.isnan(utilization(used, limit))
        assert all(isinstance(v, str) for v in call("parallel_check_violations"))
        agents = check(list[SeedAgent], call("parallel_list_agents"))
        costs = {a.taskId: cost_per_1k(a) for a in agents}
        assert costs["a"] == pytest.approx(0.02) and not any(map(math.isnan, costs.values()))

        # Worktrees.
        alloc = call("worktree_allocate", agentId="agent-x", taskId="wt", branch="seed/wt")
        check(SeedWorktreeAllocation, alloc)
        times += assert_times(alloc)
        check(list[SeedWorktreeAllocation], call("worktree_get_allocations"))
        assert call("worktree_deallocate", worktreePath=alloc["worktreePath"]) is True
        call("worktree_allocate", agentId="agent-y", taskId="wt2", branch="seed/wt2")
        assert call("worktree_deallocate_by_agent", agentId="agent-y") is True
        orphans = call("worktree_cleanup_orphaned")
        assert isinstance(orphans, list) and all(isinstance(p, str) for p in orphans)

        # Conflicts: the seed's [branch, agentId][] pairs.
        found = call("conflicts_detect", branches=[["left", "agent-l"], ["right", "agent-r"]])
        conflicts = check(list[SeedMergeConflict], found)
        by_file = {x.filePath: x for x in conflicts}
        assert by_file["shared.txt"].conflictType == "file_modification"
        assert by_file["doomed.txt"].conflictType == "delete_modify"
        assert by_file["new.txt"].conflictType == "file_creation"
        assert by_file["overlap.txt"].autoResolvable
        assert any(f["renamed"] for f in found)
        assert by_file["shared.txt"].agents == ["agent-l", "agent-r"]
        assert by_file["shared.txt"].branches == ["left", "right"]
        assert all(conflict_label(x.conflictType) for x in conflicts)
        assert call("conflicts_can_merge_safely", branch1="left", branch2="right") is False
        assert call("conflicts_can_merge_safely", branch1="main", branch2="left") is True
        seed_shaped = [{k: f[k] for k in SeedMergeConflict.model_fields} for f in found]
        summary = check(SeedConflictSummary, call("conflicts_get_summary", conflicts=seed_shaped))
        assert summary.totalConflicts == len(found) and summary.uniqueFiles == len(by_file)
        assert set(summary.conflictsByType) == set(CONFLICT_LABELS)
        shared = next(f for f in seed_shaped if f["filePath"] == "shared.txt")
        resolved = check(
            SeedResolution,
            call("conflicts_resolve", conflict=shared, strategy="use_first", baseBranch="main"),
        )
        assert resolved.success and resolved.strategyUsed == "use_first"  # others still conflict

        # Git and landing.
        assert call("git_is_repository", path=str(repo)) is True
        assert call("git_is_repository", path=str(tmp_path)) is False
        fresh = tmp_path / "fresh"
        call("git_init_repository", path=str(fresh))
        assert call("git_is_repository", path=str(fresh)) is True
        mergeable = check(
            list[SeedMergeable],
            call("get_mergeable_branches", sessionId="ralph-ui-1", repoPath=str(repo)),
        )
        assert [m.taskId for m in mergeable] == ["a", "b", "d"]
        landed = call(
            "auto_merge_completed_branches",
            sessionId="ralph-ui-1",
            repoPath=str(repo),
            config={
                "targetBranch": "main",
                "deleteBranches": True,
                "cleanupWorktrees": True,
                "useAiConflictResolution": False,
            },
        )
        result = check(SeedAutoMergeResult, landed)
        # b and d were stopped before committing anything: already in main.
        assert (result.totalBranches, result.merged, result.skipped) == (3, 1, 2), landed
        assert all(r.success for r in result.results)
        assert (repo / "a.txt").read_text() == "a"
        assert git(repo, "branch", "--list", "corral/a") == ""  # merged, so deleted
        assert not Path(first.worktreePath).exists()
        with pytest.raises(errors.ResolutionFailed) as no_agent:
            call(
                "merge_branch_with_ai",
                repoPath=str(repo),
                sourceBranch="right",
                targetBranch="left",
                taskId="nobody",
            )
        assert no_agent.value.data["reason"] == "no_task"
        clean = call(
            "merge_branch_with_ai",
            repoPath=str(repo),
            sourceBranch="main",
            targetBranch="right",
            taskId="a",
        )
        assert clean["success"] is True and clean["conflictFiles"] == []
    assert times >= 6


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("parallel_add_task", {"task": {**seed_task("x", 0), "priority": "high"}}, "task.priority"),
    ("parallel_add_task", {"task": {**seed_task("x", 0), "status": "done"}}, "task.status"),
    ("parallel_add_task", {"task": {**seed_task("x", 0), "colour": "red"}}, "task.colour"),
    ("parallel_add_task", {"task": {"title": "no id"}}, "task.id"),
    ("parallel_add_task", {"task": seed_task("x", 0), "title": "flat too"}, "title"),
    ("parallel_add_tasks", {"tasks": [{**seed_task("x", 0), "dependencies": "a"}]}, "tasks.0"),
    ("parallel_schedule_next", {"projectPath": 7}, "projectPath"),
    ("parallel_complete_task", {}, "taskId"),
    ("parallel_fail_task", {"taskId": "x", "error": ["no"]}, "error"),
    ("parallel_handle_agent_result", {"agentId": "a", "taskId": "t"}, "success"),
    ("parallel_get_agent_logs", {"agentId": "a", "verbose": True}, "verbose"),
    ("worktree_allocate", {"agentId": "a", "taskId": 3}, "taskId"),
    ("worktree_deallocate", {"path": "/tmp/x"}, "worktreePath"),
    ("conflicts_detect", {"branches": "left,right"}, "branches"),
    ("conflicts_can_merge_safely", {"branch1": "left"}, "branch2"),
    ("conflicts_get_summary", {"conflicts": [{"filePath": "x"}]}, "conflicts.0"),
    ("conflicts_resolve", {"conflict": {}, "strategy": "coin_flip"}, "strategy"),
    ("git_is_repository", {"path": "relative/dir"}, "path"),
    ("get_mergeable_branches", {"sessionId": 1}, "sessionId"),
    ("auto_merge_completed_branches", {"config": {"deleteBranches": "maybe"}}, "deleteBranches"),
    ("merge_branch_with_ai", {"repoPath": "/tmp", "sourceBranch": "x"}, "targetBranch"),
]


def test_bad_seed_input_is_refused_naming_the_field(daemon: DaemonProcess, repo: Path) -> None:
    with Client(daemon.socket, timeout=30) as c:
        c.call("init_parallel_scheduler", config=SEED_CONFIG, repoPath=str(repo))
        for method, params, field in BAD:
            with pytest.raises(errors.InvalidParams) as info:
                c.call(method, **params)
            named = " ".join(
                f"{e.get('loc', '')} {e.get('msg', '')}" for e in info.value.data["errors"]
            )
            assert field in named, (method, params, info.value.data)
        assert c.call("parallel_list_tasks") == []  # nothing of a refused call was kept


def test_landing_conflicts_go_back_to_the_tasks_agents(tmp_path: Path) -> None:
    """useAiConflictResolution and merge_branch_with_ai: the agent resolves, then it lands."""
    repo = make_repo(tmp_path / "repo", {"f.txt": "base\n", "g.txt": "base\n"})
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "t1": ["--edit", "f.txt=one\n"],
                "t1#2": ["--resolve-markers"],  # the resolution attempt keeps both sides
                "t2": ["--edit", "g.txt=two\n"],
                "t2#2": ["--resolve-markers"],
            }
        )
    )
    config = agent_config(plan, "fake") + '[defaults]\nintegrate = false\nagentType = "fake"\n'
    with DaemonProcess(config=config) as d, d.client(timeout=60) as c:
        call = c.call
        call("init_parallel_scheduler", config=SEED_CONFIG, repoPath=str(repo))
        call("parallel_add_tasks", tasks=[seed_task("t1", 0), seed_task("t2", 1)])
        call("session_start")

        def done() -> set[str]:
            return {t["id"] for t in call("parallel_list_tasks", status="completed")}

        wait_for(lambda: done() == {"t1", "t2"}, 60, "both tasks")
        (repo / "f.txt").write_text("main\n")
        (repo / "g.txt").write_text("main\n")
        git(repo, "commit", "-qam", "main moves on")
        where = {"sessionId": "ui", "repoPath": str(repo)}

        handed = call(
            "merge_branch_with_ai",
            repoPath=str(repo),
            sourceBranch="corral/t2",
            targetBranch="main",
            taskId="t2",
        )
        assert handed["success"] is False and handed["resolving"] is True
        assert handed["conflictFiles"] == ["g.txt"]
        auto = call(
            "auto_merge_completed_branches",
            **where,
            config={"targetBranch": "main", "useAiConflictResolution": True},
        )
        [item] = check(SeedAutoMergeResult, auto).results
        assert (item.taskId, item.success, item.conflictFiles) == ("t1", False, ["f.txt"])
        assert auto["results"][0]["resolving"] is True
        # The resolution attempts run, commit, and complete the tasks again.
        wait_for(lambda: done() == {"t1", "t2"}, 60, "the resolutions")
        assert call("parallel_get_task", taskId="t1")["attempts"] == 1  # no retry spent
        landed = check(
            SeedAutoMergeResult,
            call("auto_merge_completed_branches", **where, config={"targetBranch": "main"}),
        )
        assert (landed.merged, landed.failed, landed.skipped) == (2, 0, 0), landed
    assert (repo / "f.txt").read_text() == "one\nmain\n"  # the agent kept both sides
    assert (repo / "g.txt").read_text() == "two\nmain\n"
    assert git(repo, "status", "--porcelain") == ""
