"""Resolve one conflicting file of a branch pair with a strategy, as a real commit."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pygit2
from pygit2.enums import ObjectType

from corral import errors
from corral.models import ConflictResolutionResult, MergeConflict, ResolutionStrategy
from corrald.git.merge.analysis import Analysis, MergeEngine, signature
from corrald.git.repo import in_thread, map_git_errors, open_repo, write_lock

_UNSAFE_REF_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def resolution_branch_name(branch1: str, branch2: str) -> str:
    """`corral/resolve/<b1>--<b2>`, each name squeezed into one safe ref component."""

    def part(name: str) -> str:
        clean = _UNSAFE_REF_CHARS.sub("_", name.removeprefix("refs/heads/"))
        clean = clean.replace("..", "_").strip("._") or "_"
        return clean.removesuffix(".lock")

    name = f"corral/resolve/{part(branch1)}--{part(branch2)}"
    if not pygit2.reference_is_valid_name(f"refs/heads/{name}"):  # pragma: no cover - defensive
        raise errors.InvalidBranchName(f"cannot build a branch name from {name!r}", {"name": name})
    return name


_MARKER_OURS = re.compile(r"^<<<<<<< .*$", re.MULTILINE)
_MARKER_THEIRS = re.compile(r"^>>>>>>> .*$", re.MULTILINE)


def _take_side(index: pygit2.Index, tree: pygit2.Tree, paths: Iterable[str]) -> None:
    """Make `paths` (files or directories) in `index` exactly what they are in `tree`."""
    for path in paths:
        doomed = {e.path for e in index if e.path == path or e.path.startswith(path + "/")}
        conflicts = index.conflicts
        for p in sorted(doomed):
            if conflicts is not None and p in conflicts:
                del conflicts[p]
        for p in sorted(doomed):
            if p in {e.path for e in index}:
                index.remove(p)
        if path in tree:
            _add_object(index, tree[path], path)


def _add_object(index: pygit2.Index, obj: pygit2.Object, path: str) -> None:
    if obj.type == ObjectType.TREE:
        for child in obj.peel(pygit2.Tree):
            _add_object(index, child, f"{path}/{child.name}")
    else:
        index.add(pygit2.IndexEntry(path, obj.id, obj.filemode))


@dataclass
class _Resolution:
    result: ConflictResolutionResult
    branch: str | None = None
    commit: pygit2.Oid | None = None


_RESOLVED = "Resolved: "
_UNRESOLVED = "Unresolved: "


def _prior(
    repo: pygit2.Repository, branch: str, c1: pygit2.Commit, c2: pygit2.Commit
) -> tuple[pygit2.Tree, set[str]] | None:
    """The pair's earlier resolution commit, if it still merges these very tips.

    Returns its tree and the files it resolved (its `Resolved:` trailers);
    None when there is none or either branch moved since (start afresh).
    """
    ref = repo.references.get(f"refs/heads/{branch}")
    if ref is None:
        return None
    commit = ref.peel(pygit2.Commit)
    if [p.id for p in commit.parents] != [c1.id, c2.id]:
        return None
    resolved = {
        line.removeprefix(_RESOLVED)
        for line in commit.message.splitlines()
        if line.startswith(_RESOLVED)
    }
    return commit.tree, resolved


def _with_markers(
    repo: pygit2.Repository, index: pygit2.Index, analysis: Analysis, path: str, b1: str, b2: str
) -> None:
    """Leave an unresolved file as a work tree would: git-style markers labelled by branch.

    A file with no text merge (binary, or deleted on one side) keeps the
    version of the branch that has one, branch1 first.
    """
    content, _ = _manual_content(repo, index, analysis, path, b1, b2)
    group = {path, *analysis.links.get(path, set())}
    conflicts = index.conflicts
    entries = {}
    if conflicts is not None:
        for p in sorted(group):
            if p in conflicts:
                entries[p] = conflicts[p]
                del conflicts[p]
    if content is None:
        for _, ours, theirs in entries.values():
            kept = ours or theirs
            if kept is not None:
                index.add(pygit2.IndexEntry(kept.path, kept.id, kept.mode))
                return
        return
    blob = repo.create_blob(content.encode())
    index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))


def _resolve_sync(
    repo_path: str,
    conflict: MergeConflict,
    strategy: ResolutionStrategy,
    base_branch: str,
    priority_branch: str | None,
) -> _Resolution:
    repo = open_repo(repo_path)
    engine = MergeEngine(repo)
    b1, b2, path = conflict.branch1, conflict.branch2, conflict.file_path
    engine.commit(base_branch)  # must exist: it is where the resolution is meant to land
    c1, c2 = engine.commit(b1), engine.commit(b2)
    analysis = engine.analyse(c1, c2, b1, b2, full=True)
    index = analysis.index if analysis.index is not None else repo.merge_commits(c1, c2)
    linked = analysis.links.get(path, set())
    own = {path, *linked}
    this_conflicts = [p for p in analysis.groups if p in own]
    branch = resolution_branch_name(b1, b2)

    def fail(why: str, **data: Any) -> errors.ResolutionFailed:
        return errors.ResolutionFailed(
            f"{path}: {why}", {"file": path, "strategy": strategy.value, **data}
        )

    if strategy is ResolutionStrategy.MANUAL:
        content, message = _manual_content(repo, index, analysis, path, b1, b2)
        return _Resolution(
            ConflictResolutionResult(
                success=False,
                strategy_used=strategy,
                file_path=path,
                message=message,
                content=content,
            )
        )
    if strategy is ResolutionStrategy.AUTO_MERGE:
        if this_conflicts:
            raise fail("the three-way merge of this file conflicts", reason="conflict")
    else:
        side = {
            ResolutionStrategy.USE_FIRST: b1,
            ResolutionStrategy.USE_LAST: b2,
            ResolutionStrategy.USE_PRIORITY: priority_branch or b1,
        }[strategy]
        _take_side(index, engine.commit(side).tree, sorted(own))
    # One file at a time: files resolved by earlier calls on these same tips
    # keep their resolution; the rest stay with conflict markers until theirs.
    prior = _prior(repo, branch, c1, c2)
    conflicted = set(analysis.conflicted) - own
    earlier = sorted(conflicted & prior[1]) if prior is not None else []
    if prior is not None:
        for p in earlier:
            _take_side(index, prior[0], sorted({p, *analysis.links.get(p, set())}))
    remaining = sorted(conflicted - set(earlier))
    for p in remaining:
        _with_markers(repo, index, analysis, p, b1, b2)
    if index.conflicts is not None:  # pragma: no cover - all conflicts were accounted for
        raise fail("conflicts remain", reason="other_conflicts")
    tree = index.write_tree(repo)
    sig = signature(repo)
    trailers = [f"{_RESOLVED}{p}" for p in sorted({path, *earlier})]
    trailers += [f"{_UNRESOLVED}{p}" for p in remaining]
    message = (
        f"Resolve {path} ({strategy.value}) merging {b2} into {b1}\n\nTarget: {base_branch}\n"
        + "".join(f"{t}\n" for t in trailers)
    )
    commit = repo.create_commit(None, sig, sig, message, tree, [c1.id, c2.id])
    done = f"resolved {path} with {strategy.value} on {branch}"
    if remaining:
        done += f"; still to resolve (conflict markers on the branch): {', '.join(remaining)}"
    return _Resolution(
        ConflictResolutionResult(
            success=True,
            strategy_used=strategy,
            file_path=path,
            branch=branch,
            commit=str(commit),
            message=done,
            remaining=remaining,
        ),
        branch,
        commit,
    )


def _manual_content(
    repo: pygit2.Repository,
    index: pygit2.Index,
    analysis: Analysis,
    path: str,
    b1: str,
    b2: str,
) -> tuple[str | None, str]:
    """The file with git-style conflict markers labelled by branch (or its clean merge)."""
    triple = analysis.groups.get(path)
    if triple is None:
        if path in {e.path for e in index}:
            data = repo[index[path].id].peel(pygit2.Blob).data
            return _text(data), "merges cleanly; this is the merged content"
        return None, "no such file in the merge"
    anc, ours, theirs = triple
    for source in analysis.links.get(path, ()):  # rename: the other versions live at the old name
        s_anc, s_ours, s_theirs = analysis.groups.get(source, (None, None, None))
        anc = anc or s_anc
        if ours is None and theirs is not None:
            ours = s_ours
        if theirs is None and ours is not None:
            theirs = s_theirs
    if ours is None or theirs is None:
        kept, side = (ours, b1) if ours is not None else (theirs, b2)
        data = repo[kept.id].peel(pygit2.Blob).data if kept is not None else b""
        return _text(data), f"deleted on one branch; this is the version on {side}"
    merged = repo.merge_file_from_index(anc, ours, theirs)
    assert not isinstance(merged, str)
    contents = _MARKER_OURS.sub(f"<<<<<<< {b1}", merged.contents)
    contents = _MARKER_THEIRS.sub(f">>>>>>> {b2}", contents)
    return contents, "edit the conflict markers by hand, then commit"


def _text(data: bytes) -> str | None:
    if b"\0" in data[:8000]:
        return None
    return data.decode("utf-8", errors="replace")


async def resolve(
    repo_path: str,
    conflict: MergeConflict,
    strategy: ResolutionStrategy,
    base_branch: str,
    priority_branch: str | None = None,
) -> ConflictResolutionResult:
    """Resolve one conflict of a branch pair.

    use_first / use_last / use_priority: commit the merge of branch1 and
    branch2 (parents: both tips) in which the file (and, for a rename, every
    name involved) is that side's version (use_priority: `priority_branch`,
    default branch1); the commit lands on `corral/resolve/<b1>--<b2>`
    (replacing an earlier resolution of the pair). auto_merge: the same commit
    with git's merge of the file; ResolutionFailed if that merge conflicts.
    manual: nothing is committed; `content` is the file with git-style
    markers labelled by branch, and `success` is false (it is not resolved).
    One file at a time: when the pair has other conflicting files, the
    commit holds them with git-style conflict markers (listed in `remaining`
    and as `Unresolved:` trailers), and the next call for the same pair (while
    neither branch moved) keeps every file resolved before (`Resolved:`
    trailers). The branch is ready to merge when `remaining` is empty.
    `base_branch` must exist and is named in the commit message; it does not
    change the tree.
    Errors: BranchNotFound (4001), ResolutionFailed (4005).
    """
    with map_git_errors("resolve conflict"):
        done = await in_thread(
            lambda: _resolve_sync(repo_path, conflict, strategy, base_branch, priority_branch)
        )
        if done.branch is not None and done.commit is not None:
            branch, commit = done.branch, done.commit

            def move() -> None:
                repo = open_repo(repo_path)
                repo.create_reference(
                    f"refs/heads/{branch}", commit, force=True, message="corral: resolve"
                )

            async with write_lock(repo_path):
                await in_thread(move)
        return done.result
