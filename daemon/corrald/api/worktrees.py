"""Worktree methods: allocate, deallocate, list, clean up orphans."""

from __future__ import annotations

from corral import errors
from corral.models import CleanupReport, WorktreeAllocation
from corral.params import AllocateParams, DeallocateByAgentParams, DeallocateParams, SessionParams
from corrald.api.context import Call, methods
from corrald.git import worktrees
from corrald.state.engine import SessionState


@methods.method()
async def worktree_allocate(call: Call, p: AllocateParams) -> WorktreeAllocation:
    """Create (or reuse) the worktree and branch for a task of the session.

    The worktree is `<base>/<taskId>` outside the repository, on branch
    `branch` or the session's branch template (default `corral/<taskId>`),
    created from `baseBranch` (default: the repository's HEAD branch); files
    listed in `.worktreeinclude` are copied in. Reuses an existing one: work is
    never thrown away. Errors: 3003 BranchCheckedOut, 3004 InvalidBranchName,
    3007 RepositoryEmpty, 3008 BaseBranchNotFound, 3010 WorktreeInUse (another
    session holds that worktree: a task id two sessions on one repository share;
    `data` names the holder).
    """
    return await call.pool.allocate(
        call.session(p.session_id), p.agent_id, p.task_id, p.branch, take_over=False
    )


async def _deallocate(call: Call, state: SessionState, path: str, force: bool) -> bool:
    repo = state.session.repo_path
    base = call.pool.base_dir(repo)
    resolved = str(worktrees.validate_inside(base, path))
    await worktrees.deallocate(repo, base, path, force)
    call.engine.release_allocation(state, resolved)
    return True


@methods.method()
async def worktree_deallocate(call: Call, p: DeallocateParams) -> bool:
    """Remove a worktree (its branch is kept).

    A worktree with modified, staged or untracked (not ignored) files is
    refused unless `force`. Errors: 3001 WorktreeDirty (`data.files`),
    3002 PathOutsideBase, 3006 WorktreeNotFound.
    """
    return await _deallocate(call, call.session(p.session_id), p.worktree_path, p.force)


@methods.method()
async def worktree_deallocate_by_agent(call: Call, p: DeallocateByAgentParams) -> bool:
    """Remove the worktree allocated to an agent; same rules as worktree_deallocate."""
    state = call.session(p.session_id)
    for alloc in call.engine.allocations(state.id):
        if alloc.agent_id == p.agent_id:
            return await _deallocate(call, state, alloc.worktree_path, p.force)
    raise errors.WorktreeNotFound(f"agent {p.agent_id} has no worktree", {"agentId": p.agent_id})


@methods.method()
async def worktree_get_allocations(call: Call, p: SessionParams) -> list[WorktreeAllocation]:
    """The session's worktree allocations (persisted; they survive restarts)."""
    return call.engine.allocations(call.session(p.session_id).id)


@methods.method()
async def worktree_cleanup_orphaned(call: Call, p: SessionParams) -> list[str]:
    """Remove clean orphan worktrees; the seed's `string[]` of the removed paths.

    Orphans are directories under the base directory with no allocation in
    any session on this repository. Stale git metadata is pruned; dirty
    orphans are left untouched. `worktree_cleanup_report` does the same and
    says what was pruned and kept.
    """
    return (await call.pool.cleanup_orphans(call.session(p.session_id))).removed


@methods.method()
async def worktree_cleanup_report(call: Call, p: SessionParams) -> CleanupReport:
    """Clean up orphans as `worktree_cleanup_orphaned`, answering everything it did.

    Result: `{removed, pruned, keptDirty}`: removed worktrees, pruned git
    metadata, and dirty orphans listed and left untouched.
    """
    return await call.pool.cleanup_orphans(call.session(p.session_id))
