"""Conflict and merge methods: detection, the pairwise matrix, resolution, the merge queue."""

from __future__ import annotations

from corral.models import (
    ConflictMatrix,
    ConflictResolutionResult,
    ConflictSummary,
    MergeConflict,
    MergeReport,
    TaskState,
)
from corral.params import (
    BranchRef,
    DetectParams,
    MatrixParams,
    MergeParams,
    PairParams,
    ResolveParams,
    SummaryParams,
)
from corrald.api.context import Call, methods
from corrald.core import conflicts as conflict_rules
from corrald.core.graph import merge_order
from corrald.core.taskrow import TaskRow
from corrald.git import worktrees
from corrald.git.merge import detect, queue, resolve
from corrald.state.engine import SessionState

#: Tasks whose branch may hold work worth checking for conflicts.
_WITH_WORK = (
    TaskState.COMPLETED,
    TaskState.IN_PROGRESS,
    TaskState.READY,
    TaskState.RETRY_WAIT,
    TaskState.RATE_LIMITED,
)


def _task_branches(state: SessionState, statuses: tuple[TaskState, ...]) -> list[TaskRow]:
    return [t for t in state.scheduler.tasks() if t.branch and t.state in statuses]


async def _target(state: SessionState, explicit: str | None) -> str:
    if explicit:
        return explicit
    return state.session.config.base_branch or await worktrees.head_branch(state.session.repo_path)


@methods.method()
async def conflicts_detect(call: Call, p: DetectParams) -> list[MergeConflict]:
    """Find conflicts between branches with real three-way merges in memory.

    Params: `branches` as `[{branch, agentId?}]` (the older `[[branch,
    agentId]]` pairs are accepted too; default: the session's task branches),
    `target` (each branch is also merged against it). Every pair is checked.
    Result: MergeConflicts; files changed on both sides that still merge
    cleanly come back with `autoResolvable: true` and `auto_merge`.
    Errors: 4001 BranchNotFound.
    """
    state = call.session(p.session_id)
    if p.branches is None:
        pairs = [(t.branch or "", t.assigned_agent) for t in _task_branches(state, _WITH_WORK)]
    else:
        pairs = [
            (b.branch, b.agent_id) if isinstance(b, BranchRef) else (b[0], b[1]) for b in p.branches
        ]
    found = await detect.detect(state.session.repo_path, pairs, p.target)
    call.engine.conflicts_detected(state, [b for b, _ in pairs], p.target, found)
    return found


@methods.method()
async def conflicts_can_merge_safely(call: Call, p: PairParams) -> bool:
    """True when merging `branch1` and `branch2` has no conflicts (overlaps are fine)."""
    state = call.session(p.session_id)
    return await detect.can_merge_safely(state.session.repo_path, p.branch1, p.branch2)


@methods.method()
async def conflicts_get_summary(call: Call, p: SummaryParams) -> ConflictSummary:
    """Totals of a list of conflicts: by type, by branch pair, auto-resolvable or not."""
    return conflict_rules.summarize(p.conflicts)


@methods.method()
async def conflicts_matrix(call: Call, p: MatrixParams) -> ConflictMatrix:
    """For each pair of branches: clean, overlap or conflict, with the file count.

    Default branches: the session's task branches. This is what a dashboard draws.
    """
    state = call.session(p.session_id)
    branches = p.branches
    if branches is None:
        branches = [t.branch or "" for t in _task_branches(state, _WITH_WORK)]
    return await detect.matrix(state.session.repo_path, branches)


@methods.method()
async def conflicts_resolve(call: Call, p: ResolveParams) -> ConflictResolutionResult:
    """Resolve one conflict with a strategy and return a real result.

    use_first / use_last / use_priority: a commit on a resolution branch
    (`corral/resolve/<b1>--<b2>`) merging both branches, the file taken from
    that side. auto_merge: succeeds only when the file's three-way merge is
    clean. manual: the file with conflict markers in `content`, no commit.
    Errors: 4005 ResolutionFailed, 4001 BranchNotFound.
    """
    state = call.session(p.session_id)
    base = await _target(state, p.base_branch)
    result = await resolve.resolve(
        state.session.repo_path, p.conflict, p.strategy, base, p.priority_branch
    )
    call.engine.conflict_resolved(state, result)
    return result


@methods.method()
async def merge_completed_branches(call: Call, p: MergeParams) -> MergeReport:
    """Land the session's work on the target: the integration branch, or each completed branch.

    With integration on (the default), the integration branch (which holds
    every integrated task) is landed: a fast-forward when the target has not
    moved, else one merge commit. With integration off, the branches of
    completed tasks are merged one at a time, in dependency order, then
    priority, then insertion. Each merge is made
    in memory (fast-forward when possible) and the target ref moves only if it
    still points where it did; a conflicting branch is reported with its files
    and skipped, never half-merged. A clean checked-out target work tree is
    updated; a dirty one refuses the whole queue. `dryRun` moves nothing.
    Result: `{totalBranches, merged, failed, skipped, results}`.
    Errors: 4004 TargetDirty (`data.files`), 4001 BranchNotFound.
    """
    state = call.session(p.session_id)
    target = await _target(state, p.target_branch)
    if state.session.config.integrate and state.session.integration_branch:
        branches = [state.session.integration_branch]
    else:
        ordered = merge_order(_task_branches(state, (TaskState.COMPLETED,)))
        branches = [t.branch or "" for t in ordered]
    report = await queue.merge_queue(state.session.repo_path, branches, target, p.dry_run)
    if not p.dry_run:
        call.engine.merged(state, report)
    return report
