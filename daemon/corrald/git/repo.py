"""The edge where pygit2 enters: threads, per-repository locks, error mapping.

pygit2 blocks, so every call runs in a worker thread through
`trio.to_thread.run_sync`, opening its own `pygit2.Repository` (opening is
~0.2 ms and a Repository must not be shared across threads). Changes to refs
and worktrees are serialised by one `trio.Lock` per repository path.
`pygit2.GitError` becomes a `corral.errors` class here and nowhere else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pygit2
import trio

from corral import errors

T = TypeVar("T")

_locks: dict[str, trio.Lock] = {}


def repo_key(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def write_lock(path: str | os.PathLike[str]) -> trio.Lock:
    """The lock that serialises ref and worktree changes of one repository."""
    key = repo_key(path)
    lock = _locks.get(key)
    if lock is None:
        lock = _locks[key] = trio.Lock()
    return lock


@contextlib.contextmanager
def map_git_errors(what: str) -> Iterator[None]:
    """Translate pygit2's exceptions into our own, with what we were doing."""
    try:
        yield
    except errors.CorralError:
        raise
    except pygit2.GitError as exc:
        raise errors.GitFailure(f"{what}: {exc}", {"operation": what}) from exc
    except KeyError as exc:
        # pygit2 raises KeyError for missing refs/objects in several lookups.
        raise errors.BranchNotFound(f"{what}: not found: {exc}", {"operation": what}) from exc


def open_repo(path: str | os.PathLike[str]) -> pygit2.Repository:
    """Open the repository at `path` (a work tree or a .git dir) or raise a clear error."""
    p = Path(path)
    if not p.exists():
        raise errors.RepositoryNotFound(f"no such directory: {p}", {"path": str(p)})
    try:
        return pygit2.Repository(str(p))
    except pygit2.GitError as exc:
        raise errors.RepositoryNotFound(f"not a git repository: {p}", {"path": str(p)}) from exc


def discover_repo_root(path: str | os.PathLike[str]) -> str:
    """The main work tree of the repository containing `path`."""
    p = Path(path)
    if not p.is_dir():
        raise errors.NotAGitRepository(f"no such directory: {p}", {"path": str(p)})
    found = pygit2.discover_repository(str(p))
    if found is None:
        raise errors.NotAGitRepository(f"not a git repository: {p}", {"path": str(p)})
    repo = pygit2.Repository(found)
    if repo.is_bare:
        raise errors.NotAGitRepository(
            f"bare repositories have no work tree: {p}", {"path": str(p)}
        )
    common = Path(repo.path).resolve()
    # For a linked worktree, repo.path is .git/worktrees/<name>; the main tree is above `.git`.
    if common.parent.name == "worktrees":
        common = common.parent.parent
    return str(common.parent)


async def repo_root(path: str | os.PathLike[str]) -> str:
    """`discover_repo_root` in a worker thread (it reads the disk through libgit2)."""
    return await in_thread(lambda: discover_repo_root(path))


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking pygit2 function in a worker thread (cancellable wait)."""
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=False)
