"""Branches as git bundles: what a run on another node is given, and what it hands back.

libgit2 (pygit2) cannot write or read bundles, so these two calls run the
git program (argv lists, never a shell), in a worker thread, under the
repository's write lock when they write. Everything else in corral's git work stays pygit2.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from corral import errors
from corrald.git.repo import discover_repo_root, in_thread, write_lock


def _git(cwd: str, *args: str) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, check=False)
    if out.returncode != 0:
        why = out.stderr.decode("utf-8", "replace").strip()[-400:]
        raise errors.GitFailure(f"git {args[0]} in {cwd} failed: {why}", {"path": cwd})
    return out.stdout.decode("utf-8", "replace").strip()


def _bundle_sync(worktree_path: str, branch: str) -> tuple[bytes, str]:
    head = _git(worktree_path, "rev-parse", f"refs/heads/{branch}")
    with tempfile.TemporaryDirectory(prefix="corral-bundle-") as tmp:
        path = Path(tmp) / "source.bundle"
        _git(worktree_path, "bundle", "create", "-q", str(path), f"refs/heads/{branch}")
        return path.read_bytes(), head


async def bundle_branch(worktree_path: str, branch: str) -> tuple[bytes, str]:
    """The branch (its whole history) as a bundle, and its head commit.

    Only reads: it does not wait for the repository's write lock (a burst of
    worktree allocations would hold every run's start behind all of them).
    """
    return await in_thread(lambda: _bundle_sync(worktree_path, branch))


def _apply_sync(worktree_path: str, data: bytes, branch: str, head: str) -> None:
    with tempfile.TemporaryDirectory(prefix="corral-bundle-") as tmp:
        path = Path(tmp) / "result.bundle"
        path.write_bytes(data)
        _git(worktree_path, "fetch", "-q", "--no-tags", str(path), f"refs/heads/{branch}")
        _git(worktree_path, "merge", "--ff-only", "-q", head)
    now = _git(worktree_path, "rev-parse", "HEAD")
    if now != head:
        raise errors.GitFailure(
            f"the branch {branch} did not move to {head[:12]} (it is at {now[:12]})",
            {"path": worktree_path},
        )


async def apply_bundle(worktree_path: str, data: bytes, branch: str, head: str) -> None:
    """Fetch a run's branch bundle and fast-forward the task's worktree (and branch) to `head`.

    The worktree is the one the run was given as its source: clean, at the
    base commit. A branch that moved meanwhile is refused (no fast-forward),
    never overwritten.
    """
    root = await in_thread(lambda: discover_repo_root(worktree_path))
    async with write_lock(root):
        await in_thread(lambda: _apply_sync(worktree_path, data, branch, head))
