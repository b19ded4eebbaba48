"""The seed's git and landing methods: repositories, mergeable branches, auto-merge, AI merges.

They are built on the merge queue (`git.merge.queue`, as `merge_completed_branches`)
and on the integration's agent path: a conflicting branch goes back to its
task's agent with the target merged into its worktree (markers left in
place), as the `onConflict: "agent"` policy does for the integration head.
"""

from __future__ import annotations

from corral import errors
from corral.models import (
    AutoMergeItem,
    AutoMergeResult,
    IntegrationPolicy,
    IntegrationStatus,
    MergeableBranch,
    MergeBranchResult,
    MergeItem,
    MergeStatus,
    SessionStatus,
    TaskState,
)
from corral.params import AutoMergeParams, MergeableParams, MergeWithAiParams, PathParams
from corrald.api.conflicts import _target
from corrald.api.context import Call, methods
from corrald.core.graph import merge_order
from corrald.core.taskrow import TaskRow
from corrald.git import worktrees
from corrald.git.merge import integrate, queue
from corrald.git.repo import init_repository, is_repository
from corrald.state.engine import SessionState

_LANDED = (MergeStatus.MERGED, MergeStatus.FAST_FORWARD)


@methods.method()
async def git_is_repository(call: Call, p: PathParams) -> bool:
    """True when `path` is inside a git repository (a work tree or a .git directory)."""
    return await is_repository(p.path)


@methods.method()
async def git_init_repository(call: Call, p: PathParams) -> str:
    """Create a git repository with a work tree at `path` (the directory is made if missing).

    A repository already there is kept as it is. Result: the work tree's
    absolute path. Errors: 1010 NotAGitRepository when a file is in the way.
    """
    return await init_repository(p.path)


def _mergeable(state: SessionState) -> list[TaskRow]:
    """Completed tasks whose branch can land: integrated ones with integration on."""
    done = [t for t in state.scheduler.tasks(TaskState.COMPLETED) if t.branch]
    if state.session.config.integrate:
        done = [t for t in done if t.integration_status is IntegrationStatus.INTEGRATED]
    return merge_order(done)


@methods.method()
async def get_mergeable_branches(call: Call, p: MergeableParams) -> list[MergeableBranch]:
    """The seed's `{taskId, branch, completedAt}[]`: completed work that can land, in merge order.

    `sessionId` and `repoPath` pick the session as in `parallel_schedule_next`.
    With integration on (the default) these are the tasks already in the
    session's integration branch (`integrationStatus: integrated`), which is
    what landing puts on the target; with it off, every completed task's
    branch, in dependency order.
    """
    state = call.seed_session(p.session_id, p.repo_path)
    return [
        MergeableBranch(
            task_id=t.id,
            branch=t.branch or "",
            completed_at=t.completed_at,
            integration_status=t.integration_status,
        )
        for t in _mergeable(state)
    ]


def _agent_policy(state: SessionState) -> bool:
    return state.session.config.on_conflict is not IntegrationPolicy.MANUAL


async def _to_agent(
    call: Call, state: SessionState, task: TaskRow, target: str, files: list[str]
) -> list[str]:
    """Hand a completed task's landing conflict to an agent; the files left with markers.

    The target is merged into the task's worktree (conflict markers left in
    place, as the integration does with its head) and the task goes back to
    ready with `resolving: conflict`; its next attempt is told which files
    to resolve. Errors: 4005 when the task has no worktree to resolve in.
    """
    if not task.worktree_path:
        raise errors.ResolutionFailed(
            f"task {task.id} has no worktree to resolve the conflict in",
            {"taskId": task.id, "reason": "no_worktree"},
        )
    marked = await integrate.merge_into_worktree(
        state.session.repo_path, task.worktree_path, target
    )
    marked = marked or files
    error = f"{task.branch} conflicts with {target} in {', '.join(marked) or 'its files'}"
    call.engine.reopen_to_resolve(state, task.id, marked, error)
    call.pool.wake(state)
    return marked


def _who(state: SessionState) -> str:
    if state.session.status is SessionStatus.RUNNING:
        return "an agent is resolving it"
    return f"an agent resolves it once the session runs (it is {state.session.status.value})"


async def _tidy(
    call: Call, state: SessionState, task: TaskRow, target: str, item: AutoMergeItem, delete: bool
) -> None:
    """After a landing: remove a clean worktree and/or a merged branch, as asked.

    A dirty worktree is never removed and an unmerged branch never deleted;
    the item's message says what was kept and why.
    """
    repo = state.session.repo_path
    notes: list[str] = []
    if item.worktree_removed and task.worktree_path:  # asked for; try it
        try:
            base = call.pool.base_dir(repo)
            await worktrees.deallocate(repo, base, task.worktree_path, False)
            call.engine.release_allocation(state, task.worktree_path)
        except errors.WorktreeDirty:
            item.worktree_removed = False
            notes.append("worktree kept: it has uncommitted changes")
        except errors.WorktreeNotFound:
            item.worktree_removed = False
    else:
        item.worktree_removed = False
    if delete and task.branch:
        why = await queue.delete_merged_branch(repo, task.branch, target)
        item.branch_deleted = why is None
        if why is not None:
            notes.append(f"branch kept: {why}")
    if notes:
        item.message += "; " + "; ".join(notes)


def _message(merge: MergeItem, target: str) -> str:
    if merge.status is MergeStatus.FAST_FORWARD:
        return f"fast-forwarded {target} to {merge.branch}"
    if merge.status is MergeStatus.MERGED:
        return f"merged {merge.branch} into {target}"
    if merge.status is MergeStatus.CONFLICT:
        return f"conflicts with {target} in {', '.join(merge.files or [])}"
    if merge.status is MergeStatus.SKIPPED:
        return f"already in {target}: nothing to merge"
    return merge.error or merge.status.value


@methods.method()
async def auto_merge_completed_branches(call: Call, p: AutoMergeParams) -> AutoMergeResult:
    """Land every mergeable branch on the target: the seed's AutoMergeResult.

    Params: `sessionId`, `repoPath` (mapped as in `parallel_schedule_next`)
    and `config: {targetBranch, deleteBranches, cleanupWorktrees,
    useAiConflictResolution}`. The merges are `merge_completed_branches`':
    with integration on the integration branch lands (and each integrated
    task's result is that landing's), with it off each completed branch in
    dependency order; each in memory, the target moved by compare-and-swap,
    a conflicting branch reported with its `conflictFiles` and skipped,
    never half-merged; a branch the target already holds is a success
    counted as skipped (nothing to merge). After a branch landed, `cleanupWorktrees` removes its
    task's worktree unless it has uncommitted changes, and `deleteBranches`
    deletes the branch only if the target holds all of it and no worktree
    has it checked out; what was kept is said in the item's `message`.
    `useAiConflictResolution`: a conflicting task branch goes back to its
    agent (the session's `onConflict` policy `agent`/`resolver`): the target
    is merged into its worktree with markers and a new attempt resolves them
    (`resolving: true`); with policy `manual` it is only reported.
    Errors: 4004 TargetDirty (`data.files`), 4001 BranchNotFound.
    """
    state = call.seed_session(p.session_id, p.repo_path)
    target = await _target(state, p.config.target_branch)
    tasks = _mergeable(state)
    session = state.session
    integrated = session.config.integrate and session.integration_branch is not None
    if integrated and tasks:
        assert session.integration_branch is not None
        report = await queue.merge_queue(session.repo_path, [session.integration_branch], target)
        landing = report.results[0]
        merges = [(t, landing.model_copy(update={"branch": t.branch or ""})) for t in tasks]
    elif integrated:
        report, merges = None, []
    else:
        branches = [t.branch or "" for t in tasks]
        report = await queue.merge_queue(session.repo_path, branches, target)
        merges = list(zip(tasks, report.results, strict=True))
    if report is not None:
        call.engine.merged(state, report)
    result = AutoMergeResult(
        total_branches=len(merges),
        target_branch=target,
        target_commit=report.target_commit if report else None,
    )
    for task, merge in merges:
        item = AutoMergeItem(
            task_id=task.id,
            branch=merge.branch,
            success=merge.status in _LANDED,
            message=_message(merge, target),
            conflict_files=merge.files if merge.status is MergeStatus.CONFLICT else None,
            worktree_removed=p.config.cleanup_worktrees,
        )
        if merge.status is MergeStatus.SKIPPED:  # nothing to merge: the target has it all
            item.success = True
            result.skipped += 1
            await _tidy(call, state, task, target, item, p.config.delete_branches)
        elif item.success:
            result.merged += 1
            await _tidy(call, state, task, target, item, p.config.delete_branches)
        else:
            item.worktree_removed = False
            if merge.status is MergeStatus.CONFLICT:
                result.skipped += 1
                if p.config.use_ai_conflict_resolution and not integrated:
                    if _agent_policy(state) and task.worktree_path:
                        await _to_agent(call, state, task, target, merge.files or [])
                        item.resolving = True
                        item.message += f"; {_who(state)}"
                    else:
                        item.message += "; left for a person (onConflict policy manual)"
            else:
                result.failed += 1
        result.results.append(item)
    return result


@methods.method()
async def merge_branch_with_ai(call: Call, p: MergeWithAiParams) -> MergeBranchResult:
    """Merge `sourceBranch` into `targetBranch`; a conflict goes to the task's agent.

    Params: the seed's `{repoPath, sourceBranch, targetBranch, taskId}` (and
    optionally corral's `sessionId`). The merge is the merge queue's (in
    memory, compare-and-swap, never half-merged). On a conflict, the task
    (`taskId`, or the session's task on `sourceBranch`) goes back to an agent
    as with `useAiConflictResolution`: the target is merged into its
    worktree with markers, and a new attempt resolves them; the result has
    `resolving: true` and the files. Call again once the task completed to
    land it. Without that path (no such task, no worktree, policy `manual`,
    or the task not completed) a conflict is a clear 4005 ResolutionFailed
    naming why (`data.reason`). Errors: 4001 BranchNotFound, 4004
    TargetDirty, 4005 ResolutionFailed.
    """
    state = call.seed_session(p.session_id, p.repo_path)
    repo = state.session.repo_path
    report = await queue.merge_queue(repo, [p.source_branch], p.target_branch)
    call.engine.merged(state, report)
    merge = report.results[0]
    result = MergeBranchResult(
        success=merge.status in _LANDED,
        message=_message(merge, p.target_branch),
        source_branch=p.source_branch,
        target_branch=p.target_branch,
        task_id=p.task_id,
        commit=report.target_commit if merge.status in _LANDED else None,
        conflict_files=merge.files or [],
    )
    if merge.status is not MergeStatus.CONFLICT:
        if not result.success and merge.error_code == errors.BranchNotFound.code:
            raise errors.BranchNotFound(merge.error or "branch not found", {"branch": merge.branch})
        return result
    task = _task_for(state, p.task_id, p.source_branch)
    data = {"taskId": p.task_id, "files": result.conflict_files}
    if task is None:
        raise errors.ResolutionFailed(
            f"{p.source_branch} conflicts with {p.target_branch} and no task of the session"
            " owns it, so no agent can resolve it",
            {**data, "reason": "no_task"},
        )
    if not _agent_policy(state):
        raise errors.ResolutionFailed(
            f"{p.source_branch} conflicts with {p.target_branch}; the session's onConflict"
            " policy is manual, so no agent resolves it",
            {**data, "reason": "policy_manual"},
        )
    if task.state is not TaskState.COMPLETED:
        raise errors.ResolutionFailed(
            f"{p.source_branch} conflicts with {p.target_branch}; task {task.id} is"
            f" {task.state.value}, not completed",
            {**data, "reason": "task_not_completed"},
        )
    result.conflict_files = await _to_agent(
        call, state, task, p.target_branch, result.conflict_files
    )
    result.task_id = task.id
    result.resolving = True
    result.message += f"; {_who(state)} in {task.worktree_path}"
    return result


def _task_for(state: SessionState, task_id: str | None, branch: str) -> TaskRow | None:
    if task_id is not None:
        try:
            return state.scheduler.get(task_id)
        except errors.TaskNotFound:
            return None
    return next((t for t in state.scheduler.tasks() if t.branch == branch), None)
