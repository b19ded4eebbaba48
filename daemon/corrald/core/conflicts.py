"""Conflict classification, recommendation and summaries (pure logic, no git, no I/O).

`corrald.git.merge` runs the three-way merges with pygit2 and reduces each
conflicting (or overlapping) path to a `ConflictFacts`; everything that
*decides* something about a conflict lives here, so it can be tested without
a repository and reads as a table.

Classification (first matching row wins):

=====================================================  ======================
facts about the path                                   ConflictType
=====================================================  ======================
a directory on one side, a file on the other           directory_conflict
added on both sides (no ancestor)                      file_creation
present in the ancestor, deleted on exactly one side   delete_modify
present in the ancestor and on both sides              file_modification
=====================================================  ======================

These are the seed's four types and never more. A conflict a rename is part
of (rename/rename, rename/delete, a rename onto an added file, a content
conflict in a file one side renamed) is classified by the same table from
its logical three versions, and `MergeConflict.renamed` and the description
say that a rename is involved.

Recommendation (first matching row wins; `autoResolvable` is true only on the
first row):

==  =====================================  ==============================  ===============
#   situation                              strategy                        autoResolvable
==  =====================================  ==============================  ===============
1   changed on both sides, the three-way   auto_merge                      true
    merge is clean (an *overlap*)
2   lockfile / generated file              use_last (take the later        false
    (``poetry.lock``, ``package-lock.json``  branch, then regenerate)
    ...), content or add/add conflict
3   delete_modify                          the side that kept the file:    false
                                           use_first when branch1 kept it,
                                           else use_last (never drops edits)
4   file_modification                      manual                          false
5   file_creation                          manual (two unrelated versions) false
6   directory_conflict                     manual                          false
7   a rename is part of a conflict         manual (which name is a         false
    between names (rename/rename, ...)     decision)
==  =====================================  ==============================  ===============

`use_priority` is never recommended: priorities live in the scheduler, not in
the repository; a caller that knows them may still ask for it.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from corral.models import (
    ConflictSummary,
    ConflictType,
    MatrixCell,
    MatrixState,
    MergeConflict,
    ResolutionStrategy,
)

#: Files that are regenerated rather than merged by hand (basename match).
GENERATED_FILES = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "poetry.lock",
        "Pipfile.lock",
        "uv.lock",
        "pdm.lock",
        "Cargo.lock",
        "Gemfile.lock",
        "composer.lock",
        "go.sum",
        "flake.lock",
        "mix.lock",
        "pubspec.lock",
        "Podfile.lock",
    }
)


@dataclass(frozen=True, slots=True)
class ConflictFacts:
    """What the merge engine found out about one path of one branch pair.

    `in_base`/`in_first`/`in_second` describe the *logical* three versions: for
    a file renamed on one side and edited on the other, all three are present
    even though git's index stores them under two names.
    """

    path: str
    in_base: bool
    in_first: bool
    in_second: bool
    first_is_dir: bool = False
    second_is_dir: bool = False
    renamed: bool = False
    clean: bool = False
    note: str = ""


def is_generated(path: str) -> bool:
    """True for lockfiles and similar files that tools rewrite wholesale."""
    return posixpath.basename(path) in GENERATED_FILES


def classify(facts: ConflictFacts) -> ConflictType:
    """The conflict type of one path (see the module docstring's table)."""
    if facts.first_is_dir or facts.second_is_dir:
        return ConflictType.DIRECTORY_CONFLICT
    if not facts.in_base and facts.in_first and facts.in_second:
        return ConflictType.FILE_CREATION
    if facts.in_base and facts.in_first != facts.in_second:
        return ConflictType.DELETE_MODIFY
    return ConflictType.FILE_MODIFICATION


def recommend(facts: ConflictFacts) -> ResolutionStrategy:
    """The strategy to suggest for one path (see the module docstring's table)."""
    if facts.clean:
        return ResolutionStrategy.AUTO_MERGE
    kind = classify(facts)
    if facts.renamed and kind is not ConflictType.DIRECTORY_CONFLICT:
        return ResolutionStrategy.MANUAL
    if is_generated(facts.path) and kind in (
        ConflictType.FILE_MODIFICATION,
        ConflictType.FILE_CREATION,
    ):
        return ResolutionStrategy.USE_LAST
    if kind is ConflictType.DELETE_MODIFY:
        return ResolutionStrategy.USE_FIRST if facts.in_first else ResolutionStrategy.USE_LAST
    return ResolutionStrategy.MANUAL


def describe(facts: ConflictFacts, branch1: str, branch2: str) -> str:
    """One human sentence about the path, naming the branches."""
    kind = classify(facts)
    if facts.clean:
        text = f"{facts.path} changed on both {branch1} and {branch2}; merges cleanly"
    elif kind is ConflictType.DIRECTORY_CONFLICT:
        dir_side = branch1 if facts.first_is_dir else branch2
        text = f"{facts.path} is a directory on {dir_side} and a file on the other branch"
    elif facts.renamed:
        text = f"{facts.path}: conflicting renames between {branch1} and {branch2}"
    elif kind is ConflictType.FILE_CREATION:
        text = f"{facts.path} added with different content on {branch1} and {branch2}"
    elif kind is ConflictType.DELETE_MODIFY:
        deleted, kept = (branch2, branch1) if facts.in_first else (branch1, branch2)
        text = f"{facts.path} deleted on {deleted} and modified on {kept}"
    else:
        text = f"{facts.path} modified on both {branch1} and {branch2} in conflicting ways"
    return f"{text} ({facts.note})" if facts.note else text


def build_conflict(
    facts: ConflictFacts,
    branch1: str,
    branch2: str,
    agent1: str | None = None,
    agent2: str | None = None,
) -> MergeConflict:
    """The wire model for one path of one pair."""
    return MergeConflict(
        file_path=facts.path,
        branch1=branch1,
        branch2=branch2,
        agent1=agent1,
        agent2=agent2,
        conflict_type=classify(facts),
        auto_resolvable=facts.clean,
        recommended_strategy=recommend(facts),
        description=describe(facts, branch1, branch2),
        renamed=facts.renamed,
    )


def pair_key(branch1: str, branch2: str) -> str:
    """Key of a branch pair in `ConflictSummary.by_branch_pair` (git's `a...b`)."""
    return f"{branch1}...{branch2}"


def summarize(conflicts: Iterable[MergeConflict]) -> ConflictSummary:
    """Counts for a list of conflicts (overlaps included as auto-resolvable).

    `manualRequired` counts everything that is not auto-resolvable, including
    the paths for which a side is recommended: someone still has to choose.
    `conflictsByType` always holds the four types, with zeros, so frontends
    get one shape. `uniqueFiles` counts distinct paths over all pairs.
    """
    items = list(conflicts)
    by_type = {kind.value: 0 for kind in ConflictType}
    by_type.update(Counter(c.conflict_type.value for c in items))
    pairs = Counter(pair_key(c.branch1, c.branch2) for c in items)
    auto = sum(1 for c in items if c.auto_resolvable)
    return ConflictSummary(
        total_conflicts=len(items),
        auto_resolvable=auto,
        manual_required=len(items) - auto,
        unique_files=len({c.file_path for c in items}),
        conflicts_by_type=by_type,
        by_branch_pair=dict(sorted(pairs.items())),
    )


def matrix_cell(branch1: str, branch2: str, conflicts: Iterable[MergeConflict]) -> MatrixCell:
    """Derive a pair's cell from the conflicts (and overlaps) detected for it."""
    items = list(conflicts)
    hard = sorted({c.file_path for c in items if not c.auto_resolvable})
    if hard:
        return MatrixCell(
            branch1=branch1,
            branch2=branch2,
            state=MatrixState.CONFLICT,
            files=len(hard),
            paths=hard,
        )
    soft = sorted({c.file_path for c in items})
    if soft:
        return MatrixCell(
            branch1=branch1, branch2=branch2, state=MatrixState.OVERLAP, files=len(soft), paths=soft
        )
    return MatrixCell(branch1=branch1, branch2=branch2, state=MatrixState.CLEAN)
