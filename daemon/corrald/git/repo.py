"""The edge where pygit2 enters: threads, per-repository locks, error mapping.

pygit2 blocks, so every call runs in a worker thread through
`trio.to_thread.run_sync`, opening its own `pygit2.Repository` (opening is
~0.2 ms and a Repository must not be shared across threads). Changes to refs
and worktrees are serialised by one `trio.Lock` per repository path.
`pygit2.GitError` becomes a `corral.errors` class here and nowhere else.

Git takes a lock on a ref by creating `<ref>.lock` beside it, and a writer
that is killed (the daemon itself, or an agent's git) leaves that file
behind: every later update of the ref then fails. `remove_stale_lock` tells
such debris from a live lock (see its docstring for the rule).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pygit2
import trio
from pydantic import ValidationError

from corral import errors

T = TypeVar("T")

log = logging.getLogger(__name__)

_locks: dict[str, trio.Lock] = {}

#: A lock file untouched this long, open in no process, is debris: git holds a
#: ref or index lock for milliseconds, never seconds.
STALE_LOCK_SECS = 2.0
#: Lock files older than this process were left by an earlier daemon or a
#: killed git: nothing of ours holds them (our writers run under `write_lock`).
_STARTED_AT = time.time()
_LOCK_MESSAGE = re.compile(r"failed to lock file '([^']+)'")


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
    except (errors.CorralError, ValidationError):
        raise  # ours already, or a bug of ours that must stay a -32603 with its traceback
    except pygit2.GitError as exc:
        raise errors.GitFailure(_short(f"{what}: {exc}"), {"operation": what}) from exc
    except KeyError as exc:
        # pygit2 raises KeyError for missing refs/objects in several lookups.
        raise errors.BranchNotFound(
            _short(f"{what}: not found: {exc}"), {"operation": what}
        ) from exc
    except ValueError as exc:
        # pygit2 raises a plain ValueError for a name libgit2 refuses (a ref name
        # too long for the file system, GIT_EINVALIDSPEC, GIT_EEXISTS).
        raise errors.GitFailure(_short(f"{what}: {exc}"), {"operation": what}) from exc
    except OSError as exc:
        # libgit2's OS-level failures (a lock file that exists, a full disk, a
        # name too long for the file system) come out of pygit2 as plain OSError.
        locked = _LOCK_MESSAGE.search(str(exc))
        if locked:
            raise errors.GitFailure(
                f"{what}: {locked.group(1)} is locked: another git process is using it,"
                " or one that was killed left it behind",
                {"operation": what, "lockFile": locked.group(1)},
            ) from exc
        raise errors.GitFailure(_short(f"{what}: {exc}"), {"operation": what}) from exc


def _short(message: str, limit: int = 500) -> str:
    """Messages quote names the client sent, which may be huge: keep them readable."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _open_by(path: Path) -> list[int]:
    """Pids of the processes (that we may inspect) with `path` open."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    holders = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                target = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (target.st_ino, target.st_dev) == (st.st_ino, st.st_dev):
                holders.append(int(pid))
                break
    return holders


def remove_stale_lock(lock: Path) -> bool:
    """Remove the git lock file `lock` if it is debris; GitFailure if it is live.

    Debris is a lock that no process has open (git keeps the file open while it
    holds the lock) and that is either older than this daemon (an earlier
    daemon or a git that was killed made it) or untouched for STALE_LOCK_SECS
    (no git holds a lock that long). Call it in a worker thread with the
    repository's `write_lock` held, so no writer of ours is mid-update.
    Returns True when a lock was removed, False when there was none.
    """
    try:
        st = os.lstat(lock)
    except FileNotFoundError:
        return False
    age = time.time() - st.st_mtime
    holders = _open_by(lock)
    if holders or (age < STALE_LOCK_SECS and st.st_mtime >= _STARTED_AT):
        who = f"held by pid {', '.join(map(str, holders))}" if holders else "being written"
        raise errors.GitFailure(
            f"{lock} is locked ({who}, {age:.1f} s old); try again once that git is done",
            {
                "operation": "lock",
                "lockFile": str(lock),
                "ageSecs": round(age, 1),
                "heldBy": holders,
            },
        )
    log.warning("removing stale git lock %s (%.1f s old, open in no process)", lock, age)
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
    return True


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


def _is_repository_sync(path: str) -> bool:
    return os.path.isdir(path) and pygit2.discover_repository(path) is not None


async def is_repository(path: str) -> bool:
    """True when `path` is a directory inside a git repository (a work tree or a .git dir)."""
    return await in_thread(lambda: _is_repository_sync(path))


def _init_sync(path: str) -> str:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise errors.NotAGitRepository(f"not a directory: {p}", {"path": str(p)})
    found = pygit2.discover_repository(str(p)) if p.is_dir() else None
    if found is not None and Path(found).resolve().parent == p.resolve():
        return str(p.resolve())  # already one: git init would only re-read it too
    p.mkdir(parents=True, exist_ok=True)
    pygit2.init_repository(str(p), bare=False)
    return str(p.resolve())


async def init_repository(path: str) -> str:
    """Create a repository with a work tree at `path` (made if missing); one already there is kept.

    Returns the work tree's path. A file in the way is NotAGitRepository.
    """
    with map_git_errors("init repository"):
        return await in_thread(lambda: _init_sync(path))
