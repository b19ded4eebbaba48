"""Conflict detection between branches: every pair merged in memory, one thread per call."""

from __future__ import annotations

from corral.models import ConflictMatrix, MergeConflict
from corrald.core.conflicts import matrix_cell
from corrald.git.merge.analysis import MergeEngine
from corrald.git.repo import in_thread, map_git_errors, open_repo


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
            engine = MergeEngine(open_repo(repo_path))
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
            engine = MergeEngine(open_repo(repo_path))
            return all(c.auto_resolvable for c in engine.pair(a, b))

    return await in_thread(work)


async def matrix(repo_path: str, branches: list[str]) -> ConflictMatrix:
    """For every unordered pair of `branches`: clean, overlap or conflict, and how many files."""

    def work() -> ConflictMatrix:
        with map_git_errors("conflict matrix"):
            engine = MergeEngine(open_repo(repo_path))
            pairs = [(b1, b2) for i, b1 in enumerate(branches) for b2 in branches[i + 1 :]]
            cells = [matrix_cell(b1, b2, engine.pair(b1, b2)) for b1, b2 in pairs]
            return ConflictMatrix(branches=list(branches), cells=cells)

    return await in_thread(work)
