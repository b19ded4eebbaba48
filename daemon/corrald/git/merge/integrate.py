"""The git side of the integration queue: candidates in memory, the ref by compare-and-swap.

A session integrates its tasks' branches into one integration branch. For a
batch of branches, `candidates` merges each, in order, onto the running
result (`head`, then head + the first, ...), in memory: every included
branch becomes one merge commit "Integrate task <id>" whose first parent is
the previous candidate, so the branch's first-parent history has exactly one
merge per task. A branch that conflicts is left out (and its files named);
one already contained in the head is recognised, so nothing is integrated
twice. No ref moves until `swap`, a compare-and-swap under the repository's
lock and a ref transaction.

For a branch that has to go back to its agent, `merge_into_worktree` merges
the integration head into the task's own worktree, leaving conflict markers
and MERGE_HEAD in place; the agent's (or corral's) next commit is then a
merge commit and the branch integrates cleanly. The gate runs in a scratch
worktree (`<base>/.gate-<session>`, detached at the candidate).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pygit2
from pygit2.enums import CheckoutStrategy, DeltaStatus, FileMode, ObjectType

from corral import errors
from corrald.git.merge.analysis import MergeEngine, signature
from corrald.git.merge.queue import _prepare, _swap
from corrald.git.repo import in_thread, map_git_errors, open_repo, write_lock

#: A line that git writes as a conflict marker.
_MARKER = re.compile(rb"^(<{7}|>{7})( |$)", re.MULTILINE)


@dataclass(frozen=True)
class Item:
    """One branch of a batch: its task, and files it had to resolve (checked for markers)."""

    task_id: str
    branch: str
    resolved_files: tuple[str, ...] = ()


@dataclass
class Candidate:
    """What merging one item onto the running candidate gave.

    `kind`: merged (a new merge commit), already (the head contains it),
    conflict (left out; `files`), missing (no such branch; `error`).
    `commit` is the running candidate after this item (hex).
    """

    task_id: str
    kind: str
    commit: str
    files: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def included(self) -> bool:
        return self.kind in ("merged", "already")


def _ref(branch: str) -> str:
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


def _ensure_sync(repo_path: str, branch: str, base_branch: str) -> str:
    repo = open_repo(repo_path)
    ref = _ref(branch)
    if ref in repo.references:
        return str(repo.references[ref].peel(pygit2.Commit).id)
    engine = MergeEngine(repo)
    base = engine.commit(base_branch)
    repo.create_reference(ref, base.id, message=f"corral: integration branch from {base_branch}")
    return str(base.id)


async def ensure_branch(repo_path: str, branch: str, base_branch: str) -> str:
    """The integration branch's head; created from `base_branch` if it does not exist yet."""
    async with write_lock(repo_path):
        with map_git_errors(f"integration branch {branch}"):
            return await in_thread(partial(_ensure_sync, repo_path, branch, base_branch))


def _markers(repo: pygit2.Repository, tree: pygit2.Tree, paths: tuple[str, ...]) -> list[str]:
    """Those of `paths` whose content in `tree` still has conflict markers."""
    left = []
    for path in paths:
        try:
            blob = repo[tree[path].id].peel(pygit2.Blob)
        except KeyError:
            continue
        if _MARKER.search(blob.data):
            left.append(path)
    return left


def _candidates_sync(repo_path: str, head: str, items: list[Item], into: str) -> list[Candidate]:
    repo = open_repo(repo_path)
    engine = MergeEngine(repo)
    current = repo[pygit2.Oid(hex=head)].peel(pygit2.Commit)
    sig = signature(repo)
    out: list[Candidate] = []
    for item in items:
        try:
            tip = engine.commit(item.branch)
        except errors.BranchNotFound as exc:
            out.append(Candidate(item.task_id, "missing", str(current.id), error=exc.message))
            continue
        if tip.id == current.id or repo.descendant_of(current.id, tip.id):
            out.append(Candidate(item.task_id, "already", str(current.id)))
            continue
        unresolved = _markers(repo, tip.tree, item.resolved_files)
        if unresolved:
            out.append(Candidate(item.task_id, "conflict", str(current.id), files=unresolved))
            continue
        index = repo.merge_commits(current, tip)
        if index.conflicts is not None:
            files = sorted({e.path for triple in index.conflicts for e in triple if e is not None})
            out.append(Candidate(item.task_id, "conflict", str(current.id), files=files))
            continue
        tree = _merged_tree(repo, current.tree, index)
        message = f"Integrate task {item.task_id} ({item.branch}) into {into}\n"
        oid = repo.create_commit(None, sig, sig, message, tree, [current.id, tip.id])
        current = repo[oid].peel(pygit2.Commit)
        out.append(Candidate(item.task_id, "merged", str(current.id)))
    return out


Change = tuple[pygit2.Oid, int] | None  # (blob or gitlink id, mode), or None: removed


def _merged_tree(repo: pygit2.Repository, base: pygit2.Tree, merged: pygit2.Index) -> pygit2.Oid:
    """The merged index's tree, built by rewriting only the directories that changed.

    `Index.write_tree` recomputes every tree of a merge index (it has no tree
    cache): 10-20 ms for a thousand files, every merge. The changes against
    the previous candidate are a handful of paths, so only the trees on those
    paths are rewritten (the same tree, a tenth of the time).
    """
    changes: dict[str, Change] = {}
    for delta in merged.diff_to_tree(base).deltas:  # old: the tree, new: the index
        if delta.status == DeltaStatus.DELETED:
            changes[delta.old_file.path] = None
        else:
            changes[delta.new_file.path] = (delta.new_file.id, delta.new_file.mode)
    oid = _rewrite(repo, base, changes)
    return oid if oid is not None else repo.TreeBuilder().write()


def _rewrite(
    repo: pygit2.Repository, tree: pygit2.Tree | None, changes: dict[str, Change]
) -> pygit2.Oid | None:
    """`tree` with `changes` applied (paths relative to it); None when it ends up empty."""
    here: dict[str, Change] = {}
    below: dict[str, dict[str, Change]] = {}
    for path, change in changes.items():
        name, sep, rest = path.partition("/")
        if sep:
            below.setdefault(name, {})[rest] = change
        else:
            here[name] = change
    builder = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
    # Decide each name once: a file may become a directory or the reverse,
    # so its own change and its subtree's are looked at together.
    for name in {*here, *below}:
        current = builder.get(name)
        subtree = None
        if name in below:
            child = None
            if current is not None and current.type == ObjectType.TREE:
                child = repo[current.id].peel(pygit2.Tree)
            subtree = _rewrite(repo, child, below[name])
        if current is not None:
            builder.remove(name)
        change = here.get(name)
        if subtree is not None:
            builder.insert(name, subtree, FileMode.TREE)
        elif change is not None:
            builder.insert(name, change[0], change[1])
    return builder.write() if len(builder) else None


async def candidates(repo_path: str, head: str, items: list[Item], into: str) -> list[Candidate]:
    """Merge each item in order onto the running candidate, in memory (no ref moves)."""
    with map_git_errors("integration merge"):
        return await in_thread(partial(_candidates_sync, repo_path, head, items, into))


async def swap(repo_path: str, branch: str, expected: str, new: str) -> None:
    """Move the integration branch from `expected` to `new`, or raise TargetMoved.

    If someone checked the branch out in the main work tree, that tree is
    updated (or, with uncommitted changes, TargetDirty is raised).
    """
    if expected == new:
        return
    async with write_lock(repo_path):
        with map_git_errors(f"move {branch}"):
            _, checked_out = await in_thread(partial(_prepare, repo_path, branch))
            await in_thread(
                partial(
                    _swap,
                    repo_path,
                    branch,
                    pygit2.Oid(hex=expected),
                    pygit2.Oid(hex=new),
                    checked_out,
                )
            )


def _merge_into_sync(worktree: str, branch: str) -> list[str]:
    if not os.path.isdir(worktree):
        raise errors.WorktreeNotFound(f"no such worktree: {worktree}", {"path": worktree})
    repo = open_repo(worktree)
    head = repo.head.peel(pygit2.Commit)
    theirs = repo.references[_ref(branch)].peel(pygit2.Commit)
    if theirs.id == head.id or repo.descendant_of(head.id, theirs.id):
        return []
    repo.merge(theirs.id)
    index = repo.index
    if index.conflicts is None:
        # Clean: commit it now, so the next attempt starts from the latest work.
        tree = index.write_tree()
        sig = signature(repo)
        message = f"Merge {branch} (integration head) into {repo.head.shorthand}\n"
        repo.create_commit("HEAD", sig, sig, message, tree, [head.id, theirs.id])
        repo.state_cleanup()
        return []
    return sorted({e.path for triple in index.conflicts for e in triple if e is not None})


async def merge_into_worktree(repo_path: str, worktree: str, branch: str) -> list[str]:
    """Merge `branch` into the worktree: clean merges are committed, conflicts left marked.

    Returns the conflicting files (markers are in them and MERGE_HEAD is
    set, so whoever resolves and commits makes a merge commit).
    """
    async with write_lock(repo_path):
        with map_git_errors(f"merge {branch} into {worktree}"):
            return await in_thread(partial(_merge_into_sync, worktree, branch))


def _gate_tree_sync(repo_path: str, base_dir: Path, name: str, commit: str) -> str:
    path = Path(os.path.realpath(base_dir)) / name
    repo = open_repo(repo_path)
    target = pygit2.Oid(hex=commit)
    if name not in repo.list_worktrees() or not path.is_dir():
        if name in repo.list_worktrees():
            repo.lookup_worktree(name).prune(True)
        scratch = f"corral-gate-scratch/{name.lstrip('.')}"
        ref = repo.create_reference(_ref(scratch), target, force=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        repo.add_worktree(name, str(path), ref)
        tree_repo = open_repo(path)
        tree_repo.set_head(target)  # detached: no branch stays checked out
        ref.delete()
    tree_repo = open_repo(path)
    tree_repo.set_head(target)
    tree_repo.checkout_tree(  # type: ignore[no-untyped-call]  # pygit2 leaves it untyped
        tree_repo[target],
        strategy=CheckoutStrategy.FORCE | CheckoutStrategy.REMOVE_UNTRACKED,
    )
    return str(path)


async def gate_tree(repo_path: str, base_dir: Path, session_id: str, commit: str) -> str:
    """A clean work tree of `commit` for the gate: `<base>/.gate-<session>`, reused."""
    name = f".gate-{session_id}"
    async with write_lock(repo_path):
        with map_git_errors("gate work tree"):
            return await in_thread(partial(_gate_tree_sync, repo_path, base_dir, name, commit))


def _contains_sync(repo_path: str, head: str, branch: str) -> bool:
    repo = open_repo(repo_path)
    ref = _ref(branch)
    if ref not in repo.references:
        return False
    tip = repo.references[ref].peel(pygit2.Commit).id
    oid = pygit2.Oid(hex=head)
    return tip == oid or repo.descendant_of(oid, tip)


def _head_sync(repo_path: str, branch: str) -> str | None:
    repo = open_repo(repo_path)
    ref = _ref(branch)
    if ref not in repo.references:
        return None
    return str(repo.references[ref].peel(pygit2.Commit).id)


async def head_of(repo_path: str, branch: str) -> str | None:
    """The commit `branch` points at (None if it does not exist)."""
    with map_git_errors(f"read {branch}"):
        return await in_thread(partial(_head_sync, repo_path, branch))


async def contains(repo_path: str, head: str, branch: str) -> bool:
    """True when `branch`'s tip is in the history of `head`."""
    with map_git_errors("integration check"):
        return await in_thread(partial(_contains_sync, repo_path, head, branch))


def first_parents(repo_path: str, head: str, stop: str) -> list[str]:
    """Commit ids from `head` down its first parents to (excluding) `stop` (tests, reports)."""
    repo = open_repo(repo_path)
    out: list[str] = []
    commit = repo[pygit2.Oid(hex=head)].peel(pygit2.Commit)
    while str(commit.id) != stop and commit.parents:
        out.append(str(commit.id))
        commit = commit.parents[0]
    return out
