"""In-memory merges with pygit2: conflict detection, resolution, the merge queue.

No working tree is touched to *find* conflicts: every pair is a real three-way
merge (`Repository.merge_commits`, renames found, virtual merge base on
criss-cross histories) whose index conflicts are reduced to
`corrald.conflicts.ConflictFacts`; deciding what they mean is pure logic over
there.

Reporting follows `git merge-tree --write-tree --name-only` (a test compares
the two on generated histories). libgit2 stores a rename conflict under every
name involved (source and destinations, one stage each); git names only the
destination, except for rename/rename(1to2) where it names all three. We fold
the source into its destination the same way. For a file/directory conflict
git names the file `path~branch` (moved out of the way); we report `path`.

Speed: a pair whose two sides changed disjoint paths (no shared path, no path
that is a directory of the other side's) cannot conflict, so it is answered
from per-branch change lists (one tree diff per branch, cached) without a
merge. A pair whose shared paths are all regular files edited on both sides
(no add, delete, rename, file/directory clash, symlink, submodule, merge
attribute; one merge base) needs no tree merge either: its outcome is the
per-file three-way merge libgit2's text driver would run, so only those files
are merged (`_Engine._file_merges`). Everything else takes the tree merge.
`matrix` runs all pairs in one worker thread with one Repository.

The merge queue moves the target ref with a compare-and-swap: under the
repository's write lock and a libgit2 ref transaction (the ref file is locked,
so not even an outside `git` can slip in), the ref is re-read and must still
point at the commit the merge was computed on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pygit2
from pygit2.enums import (
    CheckoutStrategy,
    DeltaStatus,
    DiffFind,
    FileMode,
    FileStatus,
    MergeFlag,
    ObjectType,
)

from corral import errors
from corral.models import (
    ConflictMatrix,
    ConflictResolutionResult,
    MergeConflict,
    MergeItem,
    MergeReport,
    MergeStatus,
    ResolutionStrategy,
)
from corrald.conflicts import (
    ConflictFacts,
    build_conflict,
    matrix_cell,
)
from corrald.git.repo import in_thread, map_git_errors, open_repo, write_lock

__all__ = [
    "MergeItem",
    "MergeReport",
    "MergeStatus",
    "can_merge_safely",
    "detect",
    "matrix",
    "merge_queue",
    "resolution_branch_name",
    "resolve",
]

Entry = tuple[pygit2.Oid, int]
Changes = dict[str, Entry | None]
Triple = tuple[Any, Any, Any]  # (ancestor, ours, theirs) IndexEntry | None; pygit2 is untyped here

_FALLBACK_SIGNATURE = ("corral", "corral@localhost")
_REGULAR = frozenset((FileMode.BLOB, FileMode.BLOB_EXECUTABLE))


# --- the engine (runs inside one worker thread) --------------------------------


@dataclass
class _Analysis:
    """One pair's merge: its index (None when skipped as disjoint) and facts."""

    facts: list[ConflictFacts]
    index: pygit2.Index | None = None
    groups: dict[str, Triple] = field(default_factory=dict)
    links: dict[str, set[str]] = field(default_factory=dict)

    @property
    def conflicted(self) -> list[str]:
        return [f.path for f in self.facts if not f.clean]


class _Engine:
    """Merges many pairs of one repository, caching commits, diffs and renames.

    Not thread-safe: one engine per worker-thread call, like its Repository.
    """

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo
        self._commits: dict[str, pygit2.Commit] = {}
        self._changes: dict[tuple[pygit2.Oid, pygit2.Oid], tuple[Changes, frozenset[str]]] = {}
        self._renames: dict[tuple[pygit2.Oid, pygit2.Oid], dict[str, str]] = {}
        self._bases: dict[frozenset[pygit2.Oid], pygit2.Oid | None] = {}
        self._linear: dict[tuple[pygit2.Oid, pygit2.Oid], bool] = {}
        self._drivers: dict[str, bool] = {}
        self.merges = 0

    def __repr__(self) -> str:
        return (
            f"_Engine(repo={self.repo.path!r}, commits={len(self._commits)}, "
            f"diffs={len(self._changes)}, merges={self.merges})"
        )

    def commit(self, branch: str) -> pygit2.Commit:
        """The tip of a local branch (or a full ref name); BranchNotFound otherwise."""
        cached = self._commits.get(branch)
        if cached is not None:
            return cached
        name = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        try:
            ref = self.repo.references[name]
        except (KeyError, pygit2.InvalidSpecError, ValueError):
            raise errors.BranchNotFound(f"no such branch: {branch}", {"branch": branch}) from None
        commit = ref.peel(pygit2.Commit)
        self._commits[branch] = commit
        return commit

    def merge_base(self, a: pygit2.Oid, b: pygit2.Oid) -> pygit2.Oid | None:
        key = frozenset((a, b))
        if key not in self._bases:
            self._bases[key] = self.repo.merge_base(a, b)
        return self._bases[key]

    def _single_base(self, tip: pygit2.Oid, base: pygit2.Oid) -> bool:
        """True when `tip` reaches `base` without merges: then `base` is the only merge base."""
        key = (tip, base)
        if key not in self._linear:
            walker = self.repo.walk(tip)
            walker.hide(base)
            self._linear[key] = all(len(c.parent_ids) < 2 for c in walker)
        return self._linear[key]

    def _merge(
        self, c1: pygit2.Commit, c2: pygit2.Commit, base: pygit2.Oid | None, full: bool
    ) -> pygit2.Index:
        self.merges += 1
        if (
            not full
            and base is not None
            and (self._single_base(c1.id, base) or self._single_base(c2.id, base))
        ):
            # The cached base spares libgit2 a merge-base walk per pair; no REUC
            # (resolve-undo) data is needed for an index nobody writes out.
            return self.repo.merge_trees(
                self._tree(base),
                c1.tree,
                c2.tree,
                flags=MergeFlag.FIND_RENAMES | MergeFlag.SKIP_REUC,
            )
        # A merge to commit, or a criss-cross history that needs libgit2's
        # recursive virtual merge base.
        return self.repo.merge_commits(c1, c2)

    def changes(self, base: pygit2.Tree, tree: pygit2.Tree) -> tuple[Changes, frozenset[str]]:
        """Paths changed from `base` to `tree` (new entry or None if deleted), and their dirs."""
        key = (base.id, tree.id)
        hit = self._changes.get(key)
        if hit is not None:
            return hit
        changed: Changes = {}
        for delta in base.diff_to_tree(tree).deltas:
            if delta.status == DeltaStatus.DELETED:
                changed.setdefault(delta.old_file.path, None)
            else:
                changed[delta.new_file.path] = (delta.new_file.id, delta.new_file.mode)
        dirs = frozenset(_parents(changed))
        self._changes[key] = (changed, dirs)
        return changed, dirs

    def renames(self, base: pygit2.Tree, tree: pygit2.Tree) -> dict[str, str]:
        """old path -> new path for renames from `base` to `tree` (libgit2's 50% rule)."""
        key = (base.id, tree.id)
        hit = self._renames.get(key)
        if hit is None:
            diff = base.diff_to_tree(tree)
            diff.find_similar(flags=DiffFind.FIND_RENAMES, rename_threshold=50)
            hit = {
                d.old_file.path: d.new_file.path
                for d in diff.deltas
                if d.status == DeltaStatus.RENAMED
            }
            self._renames[key] = hit
        return hit

    def analyse(
        self, c1: pygit2.Commit, c2: pygit2.Commit, label1: str, label2: str, full: bool = False
    ) -> _Analysis:
        """Merge c2 into c1 in memory and describe every conflicting or overlapping path.

        With `full` the merge is libgit2's own `merge_commits` (the index is
        committed); otherwise, when one side reaches the merge base without
        merges (so it is the only base), `merge_trees` on the cached base.
        """
        if c1.id == c2.id:
            return _Analysis([])
        base_id = self.merge_base(c1.id, c2.id)
        if base_id in (c1.id, c2.id):
            return _Analysis([])  # one contains the other: a fast-forward
        base_tree = self._tree(base_id)
        ch1, dirs1 = self.changes(base_tree, c1.tree)
        ch2, dirs2 = self.changes(base_tree, c2.tree)
        shared = ch1.keys() & ch2.keys()
        if ch1.keys() & dirs2 or ch2.keys() & dirs1:
            pass  # a file on one side where the other has a directory: the tree merge decides
        elif not shared:
            return _Analysis([])
        elif not full:
            quick = self._file_merges(c1, c2, base_id, base_tree, ch1, ch2, shared)
            if quick is not None:
                return quick
        index = self._merge(c1, c2, base_id, full)
        if index.conflicts is not None:
            self._merge_same_renames(index, base_tree, c1, c2)
        groups: dict[str, Triple] = {}
        conflicts = index.conflicts
        if conflicts is not None:
            for triple in conflicts:
                entry = next(e for e in triple if e is not None)
                groups[entry.path] = (triple[0], triple[1], triple[2])
        analysis = _Analysis([], index, groups)
        ren1 = ren2 = None
        if groups or ch1.keys() & ch2.keys():
            ren1 = self.renames(base_tree, c1.tree)
            ren2 = self.renames(base_tree, c2.tree)
        if groups:
            assert ren1 is not None and ren2 is not None
            self._conflict_facts(analysis, c1, c2, ren1, ren2, label1, label2)
        for path in sorted(ch1.keys() & ch2.keys()):
            if path in groups or ch1[path] == ch2[path]:
                continue  # a conflict, or the same change on both sides
            assert ren1 is not None and ren2 is not None
            note = _rename_note(path, ren1, ren2, label1, label2)
            analysis.facts.append(
                ConflictFacts(
                    path=path,
                    in_base=path in base_tree,
                    in_first=ch1[path] is not None,
                    in_second=ch2[path] is not None,
                    renamed=bool(note),
                    clean=True,
                    note=note,
                )
            )
        analysis.facts.sort(key=lambda f: f.path)
        return analysis

    def _file_merges(
        self,
        c1: pygit2.Commit,
        c2: pygit2.Commit,
        base_id: pygit2.Oid | None,
        base_tree: pygit2.Tree,
        ch1: Changes,
        ch2: Changes,
        shared: set[str],
    ) -> _Analysis | None:
        """The pair's facts from file-level merges alone, or None if the tree merge is needed.

        Valid when every path changed on both sides is a regular file in the
        base and on both sides (no file/directory clash; the caller checked):
        renames only pair a deleted path with an added one, and any rename
        conflict involves a path changed on both sides, so none is possible
        here, and every other path merges trivially. What is left is what
        libgit2's tree merge would do per path: an identical change or a side
        that kept the base content is clean; otherwise the text driver's
        three-way merge, which is `merge_file_from_index` with the default
        options. Anything else (adds, deletes, symlinks, submodules, a
        `merge` attribute, several merge bases) returns None.
        """
        if base_id is None or not (
            self._single_base(c1.id, base_id) or self._single_base(c2.id, base_id)
        ):
            return None  # unrelated or criss-cross: libgit2's recursive merge decides
        analysis = _Analysis([])
        for path in sorted(shared):
            e1, e2 = ch1[path], ch2[path]
            if e1 is None or e2 is None:
                return None  # a delete may be half of a rename
            if e1 == e2:
                continue  # the same change on both sides
            try:
                anc = base_tree[path]
            except KeyError:
                return None  # added on both sides, maybe as a rename target
            if not (anc.filemode in _REGULAR and e1[1] in _REGULAR and e2[1] in _REGULAR):
                return None  # a symlink, submodule or directory somewhere: no text merge
            clean = True
            # Among regular files a mode change never conflicts (git and libgit2
            # keep the side that changed it); only contents can.
            if e1[0] != e2[0] and anc.id not in (e1[0], e2[0]):
                if not self._text_driver(path):
                    return None  # a merge driver chosen by .gitattributes
                triple = (
                    pygit2.IndexEntry(path, anc.id, anc.filemode),
                    pygit2.IndexEntry(path, e1[0], FileMode(e1[1])),
                    pygit2.IndexEntry(path, e2[0], FileMode(e2[1])),
                )
                try:
                    merged = self.repo.merge_file_from_index(*triple)
                except (UnicodeDecodeError, RuntimeError):
                    # pygit2 decodes the merged file as UTF-8 and fails when there
                    # is none (a binary conflict): let the tree merge judge those.
                    return None
                clean = merged.automergeable
                if not clean:
                    analysis.groups[path] = triple
            analysis.facts.append(
                ConflictFacts(path=path, in_base=True, in_first=True, in_second=True, clean=clean)
            )
        return analysis

    def _text_driver(self, path: str) -> bool:
        """True when libgit2's tree merge would use its built-in text driver for `path`.

        The same attribute lookup as libgit2's (`merge` unspecified or set),
        cached: a matrix asks about the same hot files again and again.
        """
        hit = self._drivers.get(path)
        if hit is None:
            attr = self.repo.get_attr(path, "merge")
            hit = self._drivers[path] = attr is None or attr is True
        return hit

    def _merge_same_renames(
        self, index: pygit2.Index, base_tree: pygit2.Tree, c1: pygit2.Commit, c2: pygit2.Commit
    ) -> None:
        """Merge files both sides renamed to the same new name, as git does.

        libgit2 reports such a file as a conflict (stage 1 at the old name,
        stages 2 and 3 at the new one) even when the two edits merge cleanly;
        git merges the content. Do that here with a file-level three-way merge
        and keep the conflict only if the content really conflicts.
        """
        conflicts = index.conflicts
        assert conflicts is not None
        ren1 = self.renames(base_tree, c1.tree)
        ren2 = self.renames(base_tree, c2.tree)
        for old, new in ren1.items():
            if ren2.get(old) != new or old not in conflicts or new not in conflicts:
                continue
            anc, _, _ = conflicts[old]
            _, ours, theirs = conflicts[new]
            if anc is None or ours is None or theirs is None:
                continue
            merged = self.repo.merge_file_from_index(anc, ours, theirs)
            if not merged.automergeable:
                continue
            del conflicts[old]
            del conflicts[new]
            blob = self.repo.create_blob(merged.contents.encode())
            index.add(pygit2.IndexEntry(new, blob, ours.mode))

    def _conflict_facts(
        self,
        analysis: _Analysis,
        c1: pygit2.Commit,
        c2: pygit2.Commit,
        ren1: dict[str, str],
        ren2: dict[str, str],
        label1: str,
        label2: str,
    ) -> None:
        inv1 = {new: old for old, new in ren1.items()}
        inv2 = {new: old for old, new in ren2.items()}
        for path, (anc, ours, theirs) in sorted(analysis.groups.items()):
            to1, to2 = ren1.get(path), ren2.get(path)
            if (to1 or to2) and not (to1 and to2 and to1 != to2):
                # A rename source: its stage-1 entry belongs to the conflict at the new name.
                dest = to1 or to2
                assert dest is not None
                analysis.links.setdefault(dest, set()).add(path)
                continue
            is_dir1 = _is_dir(c1.tree, path)
            is_dir2 = _is_dir(c2.tree, path)
            in_base, in_first, in_second = anc is not None, ours is not None, theirs is not None
            renamed = False
            note = ""
            if to1 and to2:
                renamed = True
                note = f"renamed to {to1} on {label1} and to {to2} on {label2}"
                analysis.links.setdefault(path, set()).update((to1, to2))
            elif path in inv1 or path in inv2:
                origin = inv1.get(path) or inv2.get(path)
                assert origin is not None
                on = label1 if path in inv1 else label2
                note = f"renamed from {origin} on {on}"
                # Renamed on one side, edited in place on the other: a content conflict.
                if path in inv1 and path not in inv2 and theirs is None and origin in c2.tree:
                    in_base = in_second = True
                elif path in inv2 and path not in inv1 and ours is None and origin in c1.tree:
                    in_base = in_first = True
                else:
                    renamed = True
            analysis.facts.append(
                ConflictFacts(
                    path=path,
                    in_base=in_base,
                    in_first=in_first,
                    in_second=in_second,
                    first_is_dir=is_dir1,
                    second_is_dir=is_dir2,
                    renamed=renamed,
                    note=note,
                )
            )

    def _tree(self, oid: pygit2.Oid | None) -> pygit2.Tree:
        if oid is None:  # unrelated histories: merge against the empty tree
            return self.repo[self.repo.TreeBuilder().write()].peel(pygit2.Tree)
        return self.repo[oid].peel(pygit2.Tree)

    def pair(
        self, b1: str, b2: str, agent1: str | None = None, agent2: str | None = None
    ) -> list[MergeConflict]:
        analysis = self.analyse(self.commit(b1), self.commit(b2), b1, b2)
        return [build_conflict(f, b1, b2, agent1, agent2) for f in analysis.facts]


def _parents(paths: Iterable[str]) -> Iterator[str]:
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            yield "/".join(parts[:i])


def _is_dir(tree: pygit2.Tree, path: str) -> bool:
    return path in tree and tree[path].type == ObjectType.TREE


def _rename_note(path: str, ren1: dict[str, str], ren2: dict[str, str], l1: str, l2: str) -> str:
    if path in ren1:
        return f"renamed to {ren1[path]} on {l1}"
    if path in ren2:
        return f"renamed to {ren2[path]} on {l2}"
    return ""


def _signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return pygit2.Signature(*_FALLBACK_SIGNATURE)


# --- detection -----------------------------------------------------------------


async def detect(
    repo_path: str, branches: list[tuple[str, str | None]], target: str | None
) -> list[MergeConflict]:
    """Conflicts and overlaps for every pair of `branches` and each branch against `target`.

    `branches` holds (branch, agent id or None). In a pair with the target,
    the target is `branch1` (git's "ours": what is merged into). Overlaps
    (changed on both sides, merges cleanly) come back with
    `autoResolvable=true`. Raises BranchNotFound for an unknown branch.
    """

    def work() -> list[MergeConflict]:
        with map_git_errors("detect conflicts"):
            engine = _Engine(open_repo(repo_path))
            out: list[MergeConflict] = []
            for i, (b1, a1) in enumerate(branches):
                for b2, a2 in branches[i + 1 :]:
                    if b1 != b2:
                        out.extend(engine.pair(b1, b2, a1, a2))
            if target is not None:
                for b, agent in branches:
                    if b != target:
                        out.extend(engine.pair(target, b, None, agent))
            return out

    return await in_thread(work)


async def can_merge_safely(repo_path: str, a: str, b: str) -> bool:
    """True when merging `a` and `b` has no conflicts (overlaps are fine)."""

    def work() -> bool:
        with map_git_errors("check merge"):
            engine = _Engine(open_repo(repo_path))
            return all(c.auto_resolvable for c in engine.pair(a, b))

    return await in_thread(work)


async def matrix(repo_path: str, branches: list[str]) -> ConflictMatrix:
    """For every unordered pair of `branches`: clean, overlap or conflict, and how many files."""

    def work() -> ConflictMatrix:
        with map_git_errors("conflict matrix"):
            engine = _Engine(open_repo(repo_path))
            pairs = [(b1, b2) for i, b1 in enumerate(branches) for b2 in branches[i + 1 :]]
            cells = [matrix_cell(b1, b2, engine.pair(b1, b2)) for b1, b2 in pairs]
            return ConflictMatrix(branches=list(branches), cells=cells)

    return await in_thread(work)


# --- resolution ------------------------------------------------------------------

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


def _resolve_sync(
    repo_path: str,
    conflict: MergeConflict,
    strategy: ResolutionStrategy,
    base_branch: str,
    priority_branch: str | None,
) -> _Resolution:
    repo = open_repo(repo_path)
    engine = _Engine(repo)
    b1, b2, path = conflict.branch1, conflict.branch2, conflict.file_path
    engine.commit(base_branch)  # must exist: it is where the resolution is meant to land
    c1, c2 = engine.commit(b1), engine.commit(b2)
    analysis = engine.analyse(c1, c2, b1, b2, full=True)
    index = analysis.index if analysis.index is not None else repo.merge_commits(c1, c2)
    linked = analysis.links.get(path, set())
    own = {path, *linked}
    this_conflicts = [p for p in analysis.groups if p in own]
    others = sorted(set(analysis.conflicted) - own)

    def fail(why: str, **data: Any) -> errors.ResolutionFailed:
        return errors.ResolutionFailed(
            f"{path}: {why}", {"file": path, "strategy": strategy.value, **data}
        )

    if strategy is ResolutionStrategy.MANUAL:
        content, message = _manual_content(repo, index, analysis, path, b1, b2)
        return _Resolution(
            ConflictResolutionResult(
                success=False, strategy=strategy, file_path=path, message=message, content=content
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
    if others:
        raise fail(
            "the merge has other conflicts; resolve them first",
            reason="other_conflicts",
            otherConflicts=others,
        )
    if index.conflicts is not None:  # pragma: no cover - all conflicts were accounted for
        raise fail("conflicts remain", reason="other_conflicts")
    tree = index.write_tree(repo)
    sig = _signature(repo)
    message = f"Resolve {path} ({strategy.value}) merging {b2} into {b1}\n\nTarget: {base_branch}\n"
    commit = repo.create_commit(None, sig, sig, message, tree, [c1.id, c2.id])
    branch = resolution_branch_name(b1, b2)
    return _Resolution(
        ConflictResolutionResult(
            success=True,
            strategy=strategy,
            file_path=path,
            branch=branch,
            commit=str(commit),
            message=f"resolved with {strategy.value} on {branch}",
        ),
        branch,
        commit,
    )


def _manual_content(
    repo: pygit2.Repository,
    index: pygit2.Index,
    analysis: _Analysis,
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
    A pair with other conflicting files cannot be committed: ResolutionFailed
    with `data.otherConflicts`. `base_branch` must exist and is named in the
    commit message; it does not change the tree.
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


# --- the merge queue ---------------------------------------------------------------


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
    engine = _Engine(repo)
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
    sig = _signature(repo)
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
