"""The merge queue: branches merged in memory onto a target, the ref moved by compare-and-swap.

Under the repository's write lock and a libgit2 ref transaction (the ref
file is locked, so not even an outside `git` can slip in), the ref is
re-read and must still point at the commit the merge was computed on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pygit2
from pygit2.enums import CheckoutStrategy, FileStatus

from corral import errors
from corral.models import MergeItem, MergeReport, MergeStatus
from corrald.git.merge.analysis import MergeEngine, signature
from corrald.git.repo import in_thread, map_git_errors, open_repo, write_lock


@dataclass
class _Plan:
    item: MergeItem
    expected: pygit2.Oid | None = None
    new: pygit2.Oid | None = None


def _target_ref(target: str) -> str:
    return target if target.startswith("refs/") else f"refs/heads/{target}"


def _prepare(repo_path: str, target: str) -> tuple[pygit2.Oid, bool]:
    """Target tip, and whether the main work tree has it checked out; TargetDirty if dirty."""
    repo = open_repo(repo_path)
    name = _target_ref(target)
    try:
        tip = repo.references[name].peel(pygit2.Commit).id
    except KeyError:
        raise errors.BranchNotFound(f"no such branch: {target}", {"branch": target}) from None
    checked_out = (
        not repo.is_bare and not repo.head_is_unborn and not repo.head_is_detached
    ) and repo.head.name == name
    if checked_out:
        dirty = sorted(
            path
            for path, flags in repo.status(untracked_files="all", ignored=False).items()
            if flags not in (FileStatus.CURRENT, FileStatus.IGNORED)
        )
        if dirty:
            raise errors.TargetDirty(
                f"{target} is checked out in {repo.workdir} with uncommitted changes",
                {"target": target, "worktree": repo.workdir, "files": dirty},
            )
    return tip, checked_out


def _plan(repo_path: str, target: str, branch: str, onto: pygit2.Oid | None) -> _Plan:
    """Merge `branch` in memory onto `onto` (default: the target's current tip)."""
    repo = open_repo(repo_path)
    engine = MergeEngine(repo)
    tip_id = onto if onto is not None else repo.references[_target_ref(target)].target
    tip = repo[tip_id].peel(pygit2.Commit)
    try:
        other = engine.commit(branch)
    except errors.BranchNotFound as exc:
        item = MergeItem(branch=branch, status=MergeStatus.FAILED, error=exc.message)
        item.error_code = exc.code
        return _Plan(item)
    if other.id == tip.id or repo.descendant_of(tip.id, other.id):
        item = MergeItem(branch=branch, status=MergeStatus.SKIPPED, error="already merged")
        return _Plan(item, tip.id)
    if repo.descendant_of(other.id, tip.id):
        item = MergeItem(branch=branch, status=MergeStatus.FAST_FORWARD, commit=str(other.id))
        return _Plan(item, tip.id, other.id)
    analysis = engine.analyse(tip, other, target, branch, full=True)
    index = analysis.index if analysis.index is not None else repo.merge_commits(tip, other)
    if index.conflicts is not None:
        files = analysis.conflicted or sorted(analysis.groups)
        item = MergeItem(branch=branch, status=MergeStatus.CONFLICT, files=files)
        item.error = f"conflicts in {len(files)} file(s)"
        item.error_code = errors.MergeConflictError.code
        return _Plan(item, tip.id)
    tree = index.write_tree(repo)
    sig = signature(repo)
    short = target.removeprefix("refs/heads/")
    message = f"Merge branch '{branch}' into {short}\n"
    new = repo.create_commit(None, sig, sig, message, tree, [tip.id, other.id])
    return _Plan(MergeItem(branch=branch, status=MergeStatus.MERGED, commit=str(new)), tip.id, new)


def _swap(
    repo_path: str, target: str, expected: pygit2.Oid, new: pygit2.Oid, update_worktree: bool
) -> None:
    """Compare-and-swap the target ref (and check out the new tree when it is checked out)."""
    repo = open_repo(repo_path)
    name = _target_ref(target)
    with repo.transaction() as txn:
        txn.lock_ref(name)
        current = repo.references[name].target
        if current != expected:
            raise errors.TargetMoved(
                f"{target} moved from {expected} to {current} during the merge",
                {"target": target, "expected": str(expected), "actual": str(current)},
            )
        if update_worktree:
            # HEAD still names the old tip here, so SAFE compares against it and
            # refuses (before writing anything) if a file was edited meanwhile.
            repo.checkout_tree(  # type: ignore[no-untyped-call]  # pygit2 leaves it untyped
                repo[new], strategy=CheckoutStrategy.SAFE
            )
        txn.set_target(name, new, message=f"corral: merge into {target}")


async def merge_queue(
    repo_path: str,
    branches: list[str],
    target: str,
    dry_run: bool = False,
    *,
    before_swap: Callable[[str, str], None] | None = None,
) -> MergeReport:
    """Merge `branches` into `target`, one by one, in the given order.

    Each branch is merged in memory onto the target's current commit
    (fast-forward when possible, else a two-parent merge commit "Merge branch
    'x' into target") and the target ref is moved only if it still points at
    that commit (compare-and-swap); otherwise the branch fails with
    TargetMoved (4003) in its result and nothing changes. A conflicting
    branch is reported with its files and skipped; the queue goes on. If the
    target is checked out in the repository's work tree, that tree is
    updated; if it is dirty the whole queue is refused before anything
    happens: TargetDirty (4004) with `data.files`. `dry_run` computes the
    same report without moving any ref. `before_swap(branch, expected_oid)`
    is a test hook run between computing a merge and swapping the ref.
    Errors: BranchNotFound (4001) for the target, TargetDirty (4004).
    """
    with map_git_errors("merge queue"):
        tip, checked_out = await in_thread(lambda: _prepare(repo_path, target))
    report = MergeReport(target=target, dry_run=dry_run, total_branches=len(branches))
    virtual: pygit2.Oid | None = tip if dry_run else None
    final = tip
    for branch in branches:
        onto = virtual
        with map_git_errors(f"merge {branch}"):
            plan = await in_thread(partial(_plan, repo_path, target, branch, onto))
        item = plan.item
        if plan.new is not None and plan.expected is not None:
            if dry_run:
                virtual = final = plan.new
            else:
                if before_swap is not None:
                    before_swap(branch, str(plan.expected))
                expected, new = plan.expected, plan.new
                try:
                    async with write_lock(repo_path):
                        with map_git_errors(f"move {target}"):
                            await in_thread(
                                partial(_swap, repo_path, target, expected, new, checked_out)
                            )
                except errors.CorralError as exc:
                    item = MergeItem(
                        branch=branch,
                        status=MergeStatus.FAILED,
                        error=exc.message,
                        error_code=exc.code,
                    )
                else:
                    final = new
                    report.worktree_updated = report.worktree_updated or checked_out
        report.results.append(item)
    for item in report.results:
        if item.status in (MergeStatus.MERGED, MergeStatus.FAST_FORWARD):
            report.merged += 1
        elif item.status in (MergeStatus.SKIPPED, MergeStatus.CONFLICT):
            # A conflicting branch is reported and skipped (DESIGN); `failed`
            # counts errors: a target that moved, a missing branch.
            report.skipped += 1
        else:
            report.failed += 1
    report.target_commit = str(final)
    return report


def _delete_merged_sync(repo_path: str, branch: str, target: str) -> str | None:
    repo = open_repo(repo_path)
    ref = repo.branches.local.get(branch)
    if ref is None:
        return "no such branch"
    try:
        tip = repo.references[_target_ref(target)].peel(pygit2.Commit).id
    except KeyError:
        return f"target {target} not found"
    head = ref.peel(pygit2.Commit).id
    if head != tip and not repo.descendant_of(tip, head):
        return f"not merged into {target}"
    if ref.is_checked_out():
        return "checked out in a worktree"
    ref.delete()
    return None


async def delete_merged_branch(repo_path: str, branch: str, target: str) -> str | None:
    """Delete `branch` if `target` holds all of it and no worktree has it checked out.

    Returns None when deleted, else why it was kept (never an unmerged branch).
    """
    async with write_lock(repo_path):
        with map_git_errors(f"delete {branch}"):
            return await in_thread(partial(_delete_merged_sync, repo_path, branch, target))
