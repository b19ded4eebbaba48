"""Bench: corral's pairwise conflict matrix vs `git merge-tree --write-tree` per pair.

A repository of 5,000 files (50 directories x 100) and 20 branches that each
change 50 files: 40 of their own, 10 from a pool of 60 "hot" files shared
with other branches. A hot file is edited on a line that depends on the
branch, so some pairs touch the same line (a real conflict) and others
different lines (an overlap that merges cleanly).

Prints the time for corral's full 190-pair matrix (`detect.matrix` under
`trio.run`, one worker thread, one Repository) and for 190 `git merge-tree`
subprocesses, their ratio (target <= 0.3), and checks that both agree on
which pairs conflict.

    python bench/conflicts.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2
import trio
from pygit2.enums import FileMode

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("daemon", "client")]

from corrald.git.merge import detect  # noqa: E402

DIRS, PER_DIR, BRANCHES, OWN, HOT_PICK, HOT_POOL, LINES = 50, 100, 20, 40, 10, 60, 20
TARGET_RATIO = 0.3


def content(name: str, edits: dict[int, str] | None = None) -> bytes:
    lines = [f"{name}: line {i} of a file that is long enough to look real" for i in range(LINES)]
    for i, text in (edits or {}).items():
        lines[i] = text
    return ("\n".join(lines) + "\n").encode()


def build(path: Path) -> list[str]:
    """Write the repository with pygit2 (fast) and return the branch names."""
    repo = pygit2.init_repository(str(path), initial_head="main")
    sig = pygit2.Signature("bench", "bench@corral.invalid")
    files = [f"pkg{d:02d}/mod{f:03d}.py" for d in range(DIRS) for f in range(PER_DIR)]
    index = pygit2.Index()
    for name in files:
        index.add(pygit2.IndexEntry(name, repo.create_blob(content(name)), FileMode.BLOB))
    base = repo.create_commit("refs/heads/main", sig, sig, "base", index.write_tree(repo), [])
    hot = files[:HOT_POOL]
    rest = files[HOT_POOL:]
    names = []
    for b in range(BRANCHES):
        index = pygit2.Index()
        index.read_tree(repo[base].peel(pygit2.Tree))
        own = rest[b * OWN : (b + 1) * OWN]
        shared = [hot[(b * 3 + k * 6) % HOT_POOL] for k in range(HOT_PICK)]
        for name in own:
            blob = repo.create_blob(content(name, {5: f"branch {b} edits {name}"}))
            index.add(pygit2.IndexEntry(name, blob, FileMode.BLOB))
        for k, name in enumerate(shared):
            line = (b + k) % 4 * 5  # equal for some pairs (conflict), not for others (overlap)
            blob = repo.create_blob(content(name, {line: f"branch {b} rewrites line {line}"}))
            index.add(pygit2.IndexEntry(name, blob, FileMode.BLOB))
        branch = f"agent/task-{b:02d}"
        repo.create_commit(
            f"refs/heads/{branch}", sig, sig, f"task {b}", index.write_tree(repo), [base]
        )
        names.append(branch)
    repo.checkout("refs/heads/main")
    return names


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    try:
        t0 = time.perf_counter()
        branches = build(root / "repo")
        repo_path = str(root / "repo")
        pairs = [(a, b) for i, a in enumerate(branches) for b in branches[i + 1 :]]
        print(
            f"repo: {DIRS * PER_DIR} files, {len(branches)} branches x {OWN + HOT_PICK} "
            f"changed files, {len(pairs)} pairs (built in {time.perf_counter() - t0:.2f} s)"
        )

        t0 = time.perf_counter()
        result = trio.run(detect.matrix, repo_path, branches)
        corral_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        git_conflicts = set()
        for a, b in pairs:
            rc = subprocess.run(
                ["git", "merge-tree", "--write-tree", "--name-only", a, b],
                cwd=repo_path,
                env=env,
                capture_output=True,
            ).returncode
            if rc == 1:
                git_conflicts.add((a, b))
            elif rc != 0:
                raise SystemExit(f"git merge-tree failed on {a} {b}")
        git_s = time.perf_counter() - t0

        ours = {(c.branch1, c.branch2) for c in result.cells if c.state.value == "conflict"}
        states: dict[str, int] = {}
        for cell in result.cells:
            states[cell.state.value] = states.get(cell.state.value, 0) + 1
        ratio = corral_s / git_s
        print(f"pairs by state: {dict(sorted(states.items()))}")
        for label, secs in (("corral matrix: ", corral_s), ("git merge-tree:", git_s)):
            print(f"{label} {secs * 1000:8.1f} ms  ({secs / len(pairs) * 1000:.2f} ms/pair)")
        print(f"ratio corral/git: {ratio:.3f}  (target <= {TARGET_RATIO})")
        agree = ours == git_conflicts
        print(f"conflicting pairs agree with git: {agree} ({len(ours)} vs {len(git_conflicts)})")
        return 0 if agree and ratio <= TARGET_RATIO else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
