"""In-memory merges with pygit2: the engine that analyses one branch pair.

No working tree is touched to *find* conflicts: every pair is a real three-way
merge (`Repository.merge_commits`, renames found, virtual merge base on
criss-cross histories) whose index conflicts are reduced to
`corrald.core.conflicts.ConflictFacts`; deciding what they mean is pure logic over
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
are merged (`MergeEngine._file_merges`). Everything else takes the tree merge.
`matrix` runs all pairs in one worker thread with one Repository.

"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pygit2
from pygit2.enums import DeltaStatus, DiffFind, FileMode, MergeFlag, ObjectType

from corral import errors
from corral.models import MergeConflict
from corrald.core.conflicts import ConflictFacts, build_conflict

Entry = tuple[pygit2.Oid, int]
Changes = dict[str, Entry | None]
Triple = tuple[Any, Any, Any]  # (ancestor, ours, theirs) IndexEntry | None; pygit2 is untyped here

_FALLBACK_SIGNATURE = ("corral", "corral@localhost")
_REGULAR = frozenset((FileMode.BLOB, FileMode.BLOB_EXECUTABLE))


# --- the engine (runs inside one worker thread) --------------------------------


@dataclass
class Analysis:
    """One pair's merge: its index (None when skipped as disjoint) and facts."""

    facts: list[ConflictFacts]
    index: pygit2.Index | None = None
    groups: dict[str, Triple] = field(default_factory=dict)
    links: dict[str, set[str]] = field(default_factory=dict)

    @property
    def conflicted(self) -> list[str]:
        return [f.path for f in self.facts if not f.clean]


class MergeEngine:
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
            f"MergeEngine(repo={self.repo.path!r}, commits={len(self._commits)}, "
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
    ) -> Analysis:
        """Merge c2 into c1 in memory and describe every conflicting or overlapping path.

        With `full` the merge is libgit2's own `merge_commits` (the index is
        committed); otherwise, when one side reaches the merge base without
        merges (so it is the only base), `merge_trees` on the cached base.
        """
        if c1.id == c2.id:
            return Analysis([])
        base_id = self.merge_base(c1.id, c2.id)
        if base_id in (c1.id, c2.id):
            return Analysis([])  # one contains the other: a fast-forward
        base_tree = self._tree(base_id)
        ch1, dirs1 = self.changes(base_tree, c1.tree)
        ch2, dirs2 = self.changes(base_tree, c2.tree)
        shared = ch1.keys() & ch2.keys()
        if ch1.keys() & dirs2 or ch2.keys() & dirs1:
            pass  # a file on one side where the other has a directory: the tree merge decides
        elif not shared:
            return Analysis([])
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
        analysis = Analysis([], index, groups)
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
    ) -> Analysis | None:
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
        analysis = Analysis([])
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
        analysis: Analysis,
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


def signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return pygit2.Signature(*_FALLBACK_SIGNATURE)
