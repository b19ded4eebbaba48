"""The git side of the worktree coordinator: one worktree and branch per task.

Every function opens its own `pygit2.Repository` in a worker thread
(`in_thread`); changes to refs and worktrees run under the repository's
`write_lock`, so two allocations of one task cannot both create a worktree.
Errors leave as `corral.errors` classes. Rules (DESIGN §4 "Worktrees"):
worktrees live under a base directory outside the repository, a retried task
reuses its worktree, uncommitted work is never deleted without `force`, and
branches are always kept.

Spare worktrees make allocation cheap: libgit2's checkout of a new worktree
costs as much as `git worktree add` (a profile puts 99.6% of it there), so
`fill_spares` checks one out ahead of time as `<base>/.spare-<hex>` (a
detached HEAD; the dot keeps it out of orphan cleanup), and `allocate` turns
a clean spare into the task's worktree: it checks out the base commit over
it (only what changed since), creates the branch, and renames the spare's
directory and metadata into place. The rename of the directory comes last,
so nothing under a spare name has ever been handed to anyone: a fill or a
handout cut short leaves debris that the next sweep (each fill and each
allocation) removes. A spare somebody changed is never used nor removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
from pygit2.enums import BranchType, CheckoutStrategy, FileStatus

from corral import errors
from corral.models import CleanupReport, fill_branch_template, fill_integration_template
from corrald.git.repo import (
    discover_repo_root,
    in_thread,
    map_git_errors,
    open_repo,
    remove_stale_lock,
    write_lock,
)

log = logging.getLogger(__name__)

#: Same shape as a Task id: safe as a path component and a worktree name.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_INCLUDE_FILE = ".worktreeinclude"
_FALLBACK_SIGNATURE = ("corral", "corral@localhost")
#: Longest branch name: its ref file and that file's `.lock` must fit in NAME_MAX
#: (255 bytes) even as one path component.
MAX_BRANCH_BYTES = 250
#: Status bits that mean "not committed" (ignored and unchanged files are not).
_DIRTY = ~(FileStatus.CURRENT | FileStatus.IGNORED)
#: Spares are `<base>/.spare-<hex>`, worktree name the same: a task id cannot
#: start with a dot, so no task's worktree name or directory can clash with one.
SPARE_PREFIX = ".spare-"
#: The short-lived branch a spare is created on (libgit2 adds worktrees on a branch only).
_SPARE_BRANCH = "corral-spare/"
#: In a spare's metadata while a handout turns it into a task's worktree.
_CLAIMED = "corral-claimed"


@dataclass(frozen=True)
class WorktreeInfo:
    """One task's worktree; `created` is False when an existing one was reused."""

    path: str
    branch: str
    base_branch: str
    created: bool


# --- pure helpers -------------------------------------------------------------
def default_base_dir(repo_path: str) -> Path:
    """`$XDG_DATA_HOME/corral/worktrees/<repo-name>-<hash>/`: outside the repo, one per repo.

    The hash of the resolved path keeps two repositories of the same name apart.
    """
    real = os.path.realpath(repo_path)
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    data = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    digest = hashlib.sha1(real.encode(), usedforsecurity=False).hexdigest()[:10]
    name = os.path.basename(real.rstrip(os.sep)) or "repo"
    return data / "corral" / "worktrees" / f"{name}-{digest}"


def validate_branch(branch: str) -> str:
    """Return `branch` if it is a usable local branch name, else InvalidBranchName."""
    size = len(branch.encode(errors="surrogatepass"))
    if size > MAX_BRANCH_BYTES:
        raise errors.InvalidBranchName(
            f"branch name is {size} bytes long; at most {MAX_BRANCH_BYTES} are allowed",
            {"branch": branch[:100], "bytes": size, "maxBytes": MAX_BRANCH_BYTES},
        )
    bad = (
        not branch
        or branch != branch.strip()
        or any(c.isspace() for c in branch)
        or ".." in branch
        or branch.startswith("-")
        or branch.startswith("refs/")
        or branch == "HEAD"
        or not pygit2.reference_is_valid_name(f"refs/heads/{branch}")
    )
    if bad:
        raise errors.InvalidBranchName(f"invalid branch name: {branch!r}", {"branch": branch})
    return branch


def render_branch(template: str, task_id: str) -> str:
    """Fill `{task_id}` (or `{taskId}`) in a branch template and validate the result."""
    try:
        branch = fill_branch_template(template, task_id)
    except ValueError as exc:
        raise errors.InvalidBranchName(str(exc), {"branch": template[:100]}) from None
    return validate_branch(branch)


def _template_pattern(template: str) -> re.Pattern[str]:
    """A regex matching every branch the task branch template can produce."""
    parts = re.split(r"\{(?:task_id|taskId)\}", template)
    body = _TASK_ID.pattern.join(re.escape(part) for part in parts)
    return re.compile(body)


def branch_collision(name: str, template: str) -> str | None:
    """Why the branch `name` could collide with a task branch of `template`, or None.

    Git refs are paths: `a` and `a/b` cannot both exist. So `name` collides
    when it is a possible task branch, when a possible task branch is one of
    its directories, or when it is a directory of the template's fixed prefix.
    """
    pattern = _template_pattern(template)
    if pattern.fullmatch(name):
        return f"{name!r} is a possible task branch of {template!r}"
    parts = name.split("/")
    for k in range(1, len(parts)):
        if pattern.fullmatch("/".join(parts[:k])):
            return f"a task branch could be {'/'.join(parts[:k])!r}, a directory of {name!r}"
    prefix = re.split(r"\{(?:task_id|taskId)\}", template)[0]
    if prefix.startswith(name + "/"):
        return f"task branches of {template!r} live inside {name!r}"
    return None


def integration_branch_name(template: str, session_id: str, task_template: str) -> str:
    """The session's integration branch: `template` with `{session_id}`, checked.

    It must be a valid branch name and must not collide with any branch
    `task_template` can produce (InvalidBranchName otherwise).
    """
    try:
        name = fill_integration_template(template, session_id)
    except ValueError as exc:
        raise errors.InvalidBranchName(str(exc), {"branch": template[:100]}) from None
    validate_branch(name)
    clash = branch_collision(name, task_template)
    if clash:
        raise errors.InvalidBranchName(
            f"integration branch {name!r} could collide with a task branch: {clash}",
            {"branch": name, "branchTemplate": task_template},
        )
    return name


def validate_task_id(task_id: str) -> str:
    """Task ids become a directory and a worktree name: no '/', no dot-only names."""
    if not _TASK_ID.fullmatch(task_id):
        raise errors.InvalidTaskId(f"invalid task id: {task_id!r}", {"taskId": task_id})
    return task_id


def validate_inside(base_dir: Path, path: str) -> Path:
    """Resolve `path` (following symlinks) and require it strictly inside `base_dir`.

    Relative paths are taken relative to `base_dir`. The base itself is refused:
    it is never a worktree.
    """
    base = Path(os.path.realpath(base_dir))
    resolved = Path(os.path.realpath(os.path.join(base_dir, path)))
    if base not in resolved.parents:
        raise errors.PathOutsideBase(
            f"{path} is not inside {base_dir}", {"path": str(path), "baseDir": str(base_dir)}
        )
    return resolved


# --- sync internals (run in worker threads) ------------------------------------
def _common_dir(repo: pygit2.Repository) -> Path:
    """The shared .git directory, also when `repo` was opened through a linked worktree."""
    gitdir = Path(repo.path or "")
    commondir = gitdir / "commondir"
    if commondir.is_file():
        return (gitdir / commondir.read_text().strip()).resolve()
    return gitdir.resolve()


def _read_head(gitdir: Path) -> str | None:
    """The ref a HEAD file names (`refs/heads/x`), or None when detached/unreadable."""
    try:
        head = (gitdir / "HEAD").read_text().strip()
    except OSError:
        return None
    return head[5:].strip() if head.startswith("ref:") else None


def _checkouts(repo: pygit2.Repository) -> dict[str, str]:
    """Which ref each work tree has checked out: {ref name: work tree path}."""
    common = _common_dir(repo)
    found: dict[str, str] = {}
    main_head = _read_head(common)
    if main_head and not repo.is_bare:
        found[main_head] = str(common.parent)
    for name in repo.list_worktrees():
        head = _read_head(common / "worktrees" / name)
        if head:
            with contextlib.suppress(pygit2.GitError):
                wt = repo.lookup_worktree(name)
                # A worktree whose directory is gone holds nothing: it is about to be pruned.
                if not wt.is_prunable:
                    found[head] = wt.path
    return found


def _owner_rwx(directory: str) -> None:
    """Give the owner rwx on `directory` if it is a real directory; links are left alone.

    chmod follows symlinks and Linux cannot change a link's own mode
    (`follow_symlinks=False` is unsupported), so a link is never chmodded:
    its target may be any file outside the worktree.
    """
    st = os.lstat(directory)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def _rmtree(path: Path) -> None:
    """Remove a directory tree, including read-only directories (build outputs often have them).

    shutil's fd-based walk never follows a symlink; it unlinks the link. What
    stops a removal is a directory without write permission (its entries
    cannot be unlinked) or without read permission (it cannot be listed): only
    such directories inside `path` are made accessible, never what a link names.
    """
    top = os.fspath(path)
    root = os.path.realpath(top)
    with contextlib.suppress(OSError):
        _owner_rwx(top)

    def within(p: str) -> bool:
        real = os.path.realpath(p)
        return real == root or real.startswith(root + os.sep)

    def retry(fn: Callable[..., Any], p: str, exc: BaseException) -> None:
        if not isinstance(exc, PermissionError) or p == top:
            raise exc
        parent = os.path.dirname(p)
        if not within(parent):
            raise exc
        _owner_rwx(parent)  # unlinking or removing p needs write permission on its directory
        if fn in (os.open, os.scandir, os.listdir):
            _rmtree(Path(p))  # a directory we could not list: made listable, removed whole
        else:
            fn(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=lambda fn, p, info: retry(fn, p, info[1]))


def _dirty(worktree: Path) -> list[str]:
    repo = open_repo(worktree)
    # "normal" reports an untracked directory once instead of every file in it.
    status = repo.status(untracked_files="normal", ignored=False)
    return sorted(p for p, flags in status.items() if flags & _DIRTY)


def _lookup_branch(
    repo: pygit2.Repository, name: str, kind: BranchType = BranchType.LOCAL
) -> pygit2.Branch | None:
    """`lookup_branch` returns None for a missing branch (its stub says otherwise)."""
    try:
        found: pygit2.Branch | None = repo.lookup_branch(name, kind)
    except (KeyError, ValueError):
        return None
    return found


def _resolve_base(repo: pygit2.Repository, base_branch: str) -> pygit2.Commit:
    for kind in (BranchType.LOCAL, BranchType.REMOTE):
        ref = _lookup_branch(repo, base_branch, kind)
        if ref is not None:
            return ref.peel(pygit2.Commit)
    if repo.is_empty or not repo.listall_branches():
        raise errors.RepositoryEmpty(
            f"repository has no commits: {repo.workdir}", {"path": repo.workdir}
        )
    raise errors.BaseBranchNotFound(
        f"base branch not found: {base_branch}", {"branch": base_branch}
    )


def _copy_included(source_root: Path, target_root: Path) -> list[str]:
    """Copy files named in `.worktreeinclude` (paths or globs) into a new worktree.

    Only files inside the repository are copied, existing files in the worktree
    are never overwritten (they are checked out content), and `.git` is skipped.
    """
    include = source_root / _INCLUDE_FILE
    if not include.is_file():
        return []
    root = source_root.resolve()
    target = target_root.resolve()
    copied: list[str] = []
    for raw in include.read_text(errors="replace").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        # A leading '/' anchors at the repository root, as in .gitignore.
        pattern = pattern.lstrip("/")
        if not pattern or ".." in Path(pattern).parts:
            log.warning("%s: refusing %r: escapes the repository", include, raw)
            continue
        for match in sorted(root.glob(pattern)):
            for src in _walk_files(match):
                real = Path(os.path.realpath(src))
                if root not in real.parents:
                    log.warning("%s: refusing %s: resolves outside the repository", include, src)
                    continue
                rel = src.relative_to(root)
                if rel.parts[0] == ".git":
                    continue
                dest = target / rel
                if os.path.lexists(dest):
                    continue
                # A symlinked directory in the worktree must not carry the copy outside.
                parent = Path(os.path.realpath(dest.parent))
                if parent != target and target not in parent.parents:
                    log.warning("%s: refusing %s: destination leaves the worktree", include, rel)
                    continue
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(real, dest)
                except OSError as exc:
                    # A missing convenience file must not fail the allocation.
                    log.warning("%s: could not copy %s: %s", include, rel, exc)
                    continue
                copied.append(str(rel))
    return copied


def _walk_files(path: Path) -> Iterator[Path]:
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for f in filenames:
                yield Path(dirpath) / f
    elif path.is_file():
        yield path


def _allocate_sync(
    repo_path: str, base_dir: Path, task_id: str, branch: str, base_branch: str
) -> WorktreeInfo:
    # Exactly <base>/<task_id>: a symlink there is refused below, not followed.
    target = Path(os.path.realpath(base_dir)) / task_id
    validate_inside(base_dir, str(target))
    repo = open_repo(repo_path)
    with map_git_errors(f"allocate worktree {task_id}"):
        if repo.is_bare:
            raise errors.NotAGitRepository(
                "bare repositories have no work tree", {"path": repo_path}
            )
        ref_name = f"refs/heads/{branch}"
        common = _common_dir(repo)
        meta = common / "worktrees" / task_id
        # First, so a handout cut short releases the branch it claimed.
        spares = _sweep_spares(repo, common, target.parent)
        if task_id in repo.list_worktrees():
            wt = repo.lookup_worktree(task_id)
            if wt.is_prunable:
                wt.prune(True)
            elif Path(os.path.realpath(wt.path)) == target and target.is_dir():
                head = _read_head(meta)
                if head == ref_name:
                    return WorktreeInfo(str(target), branch, base_branch, created=False)
                raise errors.BranchCheckedOut(
                    f"worktree {target} has {head or 'a detached HEAD'} checked out, not {branch}",
                    {"branch": branch, "path": str(target), "checkedOut": head},
                )
            else:
                raise errors.GitFailure(
                    f"a worktree named {task_id} already exists at {wt.path}",
                    {"operation": "allocate", "name": task_id, "path": wt.path},
                )

        checked_out = _checkouts(repo)
        if ref_name in checked_out:
            raise errors.BranchCheckedOut(
                f"branch {branch} is checked out in {checked_out[ref_name]}",
                {"branch": branch, "path": checked_out[ref_name]},
            )
        if os.path.lexists(target):
            # A leftover empty directory is harmless; anything else may be someone's work.
            if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
                target.rmdir()
            else:
                raise errors.GitFailure(
                    f"{target} exists and is not a worktree of this repository",
                    {"operation": "allocate", "path": str(target)},
                )
        if meta.exists():
            # Not listed above, so it is the debris of an earlier failed add.
            _rmtree(meta)

        created_branch = False
        ref = _lookup_branch(repo, branch)
        if ref is None:
            commit = _resolve_base(repo, base_branch)
            # A daemon killed while creating this branch left its lock behind.
            remove_stale_lock(common / f"{ref_name}.lock")
            if _take_spare(repo, common, spares, target, task_id, branch, commit):
                _copy_included(Path(repo.workdir or repo_path), target)
                return WorktreeInfo(str(target), branch, base_branch, created=True)
            ref = repo.create_branch(branch, commit)
            created_branch = True

        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            repo.add_worktree(task_id, str(target), ref)
        except BaseException:
            # libgit2 leaves its metadata (and maybe a half checkout) behind.
            with contextlib.suppress(OSError):
                _rmtree(meta)
            with contextlib.suppress(OSError):
                _rmtree(target)
            if created_branch:
                with contextlib.suppress(pygit2.GitError):
                    ref.delete()
            raise
    source_root = Path(repo.workdir or repo_path)
    _copy_included(source_root, target)
    return WorktreeInfo(str(target), branch, base_branch, created=True)


# --- spare worktrees (sync, under the repository's write lock) -------------------
def _gitfile_target(gitfile: Path) -> str | None:
    """The directory a worktree's `.git` file names, or None when it is not one."""
    try:
        text = gitfile.read_text().strip()
    except OSError:
        return None
    return os.path.realpath(text[7:].strip()) if text.startswith("gitdir:") else None


def _spare_state(common: Path, base: Path, name: str) -> str:
    """ "ready", "debris" (a fill or a handout cut short) or "other" (not ours to touch).

    A fill detaches HEAD only after libgit2's checkout returned, and a handout
    marks the spare claimed before it changes anything, so a detached HEAD
    without the mark and with both links intact is a whole, unclaimed checkout.
    """
    meta = common / "worktrees" / name
    if os.path.lexists(meta / _CLAIMED):
        return "debris"
    try:
        back = (meta / "gitdir").read_text().strip()
        head = (meta / "HEAD").read_text().strip()
    except OSError:
        return "debris"  # libgit2 stopped before writing its metadata
    spare = Path(back).parent
    if spare.parent != base:
        return "other"  # a spare of another base directory (the config changed)
    if head.startswith(f"ref: refs/heads/{_SPARE_BRANCH}"):
        return "debris"  # the fill's checkout did not finish
    if spare.name != name or _gitfile_target(spare / ".git") != os.path.realpath(meta):
        return "debris"  # its directory is gone
    if not re.fullmatch(r"[0-9a-f]{40}", head):
        return "other"  # somebody checked out a branch in it
    return "ready"


def _replace_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a crash never leaves half a link)."""
    tmp = path.with_name(path.name + ".corral-tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _take_spare(
    repo: pygit2.Repository,
    common: Path,
    spares: list[str],
    target: Path,
    task_id: str,
    branch: str,
    commit: pygit2.Commit,
) -> bool:
    """Turn a clean spare into `target` on a new `branch` at `commit`; False if none fits.

    The caller checked that `target`, the worktree name `task_id` and `branch`
    are all free. The spare is marked claimed, checked out to `commit` (libgit2
    writes only what differs from the spare's commit), then given the branch,
    HEAD, both links, the metadata's name, and last the directory's rename.
    """
    for name in spares:
        spare = target.parent / name
        if not _spare_clean(spare):
            continue
        meta = common / "worktrees" / name
        # From here a crash before the last rename leaves debris that the next sweep removes.
        (meta / _CLAIMED).touch()
        work = open_repo(spare)
        if work.head.target != commit.id:
            # The baseline is HEAD's tree (the spare's commit): only the differences are written.
            work.checkout_tree(  # type: ignore[no-untyped-call]  # pygit2 leaves it untyped
                work[commit.tree_id], strategy=CheckoutStrategy.SAFE
            )
            work.set_head(commit.id)
        repo.create_branch(branch, commit)
        task_meta = common / "worktrees" / task_id
        _replace_text(meta / "HEAD", f"ref: refs/heads/{branch}\n")
        _replace_text(spare / ".git", f"gitdir: {task_meta}\n")
        _replace_text(meta / "gitdir", f"{target / '.git'}\n")
        os.rename(meta, task_meta)
        (task_meta / _CLAIMED).unlink()
        os.rename(spare, target)  # the handout: before this the spare was nobody's
        return True
    return False


def _spare_clean(spare: Path) -> bool:
    """Exactly its commit, ignored files included: nothing of anyone's may ride along.

    Nobody but corral should write in a spare; if somebody did, it is left alone.
    """
    if open_repo(spare).status(untracked_files="normal", ignored=True):
        log.warning("spare worktree %s has changes: leaving it alone", spare)
        return False
    return True


def _drop_spare(common: Path, base: Path, name: str) -> None:
    """Remove a spare's directory and metadata: spares were never handed to anyone."""
    with contextlib.suppress(FileNotFoundError):
        _rmtree(base / name)
    with contextlib.suppress(FileNotFoundError):
        _rmtree(common / "worktrees" / name)


def _sweep_spares(repo: pygit2.Repository, common: Path, base: Path) -> list[str]:
    """Remove spare debris (a fill or a handout cut short); return the ready spares' names."""
    kept: dict[str, str] = {}
    for name in repo.list_worktrees():
        if name.startswith(SPARE_PREFIX):
            state = _spare_state(common, base, name)
            if state == "debris":
                _drop_spare(common, base, name)
            else:
                kept[name] = state
    if base.is_dir():
        for entry in base.iterdir():
            # A spare directory without its metadata: a handout renamed that, then stopped.
            if entry.name.startswith(SPARE_PREFIX) and entry.name not in kept:
                _drop_spare(common, base, entry.name)
    for name in repo.listall_branches():
        if name.startswith(_SPARE_BRANCH):
            repo.branches.local.delete(name)  # left by a fill that was killed
    others = sorted(name for name, state in kept.items() if state == "other")
    if others:
        log.warning("leaving alone spare worktrees somebody changed: %s", ", ".join(others))
    return sorted(name for name, state in kept.items() if state == "ready")


def _fill_spares_sync(repo_path: str, base_dir: Path, base_branch: str, count: int) -> int:
    repo = open_repo(repo_path)
    base = Path(os.path.realpath(base_dir))
    with map_git_errors("prepare a spare worktree"):
        if repo.is_bare:
            return 0
        common = _common_dir(repo)
        ready = [name for name in _sweep_spares(repo, common, base) if _spare_clean(base / name)]
        commit = _resolve_base(repo, base_branch)
        made = 0
        while len(ready) + made < count:
            name = SPARE_PREFIX + secrets.token_hex(6)
            ref = repo.create_branch(_SPARE_BRANCH + name[len(SPARE_PREFIX) :], commit)
            try:
                base.mkdir(parents=True, exist_ok=True)
                repo.add_worktree(name, str(base / name), ref)
                open_repo(base / name).set_head(commit.id)  # detached: the spare is ready
            except BaseException:
                with contextlib.suppress(OSError):
                    _drop_spare(common, base, name)
                raise
            finally:
                with contextlib.suppress(pygit2.GitError):
                    ref.delete()
            made += 1
        return made


def _find_worktree(repo: pygit2.Repository, path: Path) -> pygit2.Worktree | None:
    for name in repo.list_worktrees():
        with contextlib.suppress(pygit2.GitError):
            wt = repo.lookup_worktree(name)
            if Path(os.path.realpath(wt.path)) == path:
                return wt
    return None


def _deallocate_sync(repo_path: str, base_dir: Path, worktree_path: str, force: bool) -> None:
    target = validate_inside(base_dir, worktree_path)
    repo = open_repo(repo_path)
    with map_git_errors(f"deallocate worktree {worktree_path}"):
        wt = _find_worktree(repo, target)
        if wt is None:
            raise errors.WorktreeNotFound(
                f"no worktree of this repository at {worktree_path}", {"path": worktree_path}
            )
        if target.is_dir():
            if not force:
                dirty = _dirty(target)
                if dirty:
                    raise errors.WorktreeDirty(
                        f"{worktree_path} has uncommitted changes",
                        {"path": worktree_path, "files": dirty},
                    )
            _rmtree(target)
        # The branch stays: only the working tree and its metadata go.
        wt.prune(True)


def _cleanup_sync(repo_path: str, base_dir: Path, live_paths: set[str]) -> CleanupReport:
    report = CleanupReport()
    repo = open_repo(repo_path)
    live = {os.path.realpath(p) for p in live_paths}
    base = Path(os.path.realpath(base_dir))
    with map_git_errors("clean up orphaned worktrees"):
        by_path: dict[str, pygit2.Worktree] = {}
        for name in repo.list_worktrees():
            try:
                wt = repo.lookup_worktree(name)
            except pygit2.GitError:
                continue
            if wt.is_prunable:
                wt.prune(False)
                report.pruned.append(wt.path)
            else:
                by_path[os.path.realpath(wt.path)] = wt
        if not base.is_dir():
            return report
        for entry in sorted(base.iterdir()):
            real = os.path.realpath(entry)
            if real in live or entry.name.startswith("."):
                continue  # allocated, or corral's own (the gate's scratch worktree)
            if entry.is_symlink() or not entry.is_dir() or base not in Path(real).parents:
                log.warning("leaving %s alone: not a worktree directory", entry)
                continue
            owner = by_path.get(real)
            if owner is None:
                # No git metadata: nothing can prove its content is committed.
                if any(entry.iterdir()):
                    report.kept_dirty.append(str(entry))
                else:
                    entry.rmdir()
                    report.removed.append(str(entry))
                continue
            try:
                dirty = _dirty(entry)
            except (pygit2.GitError, errors.CorralError):
                dirty = ["?"]  # unreadable: treat as dirty, never delete it
            if dirty:
                report.kept_dirty.append(str(entry))
                continue
            _rmtree(entry)
            owner.prune(True)
            report.removed.append(str(entry))
    return report


def _commit_all_sync(worktree_path: str, message: str) -> str | None:
    if not os.path.isdir(worktree_path):
        raise errors.WorktreeNotFound(f"no such worktree: {worktree_path}", {"path": worktree_path})
    repo = open_repo(worktree_path)
    with map_git_errors(f"commit in {worktree_path}"):
        # An agent (or a daemon) killed in the middle of a git command leaves
        # the worktree's index lock, or its branch's ref lock, behind.
        gitdir = Path(repo.path or "")
        remove_stale_lock(gitdir / "index.lock")
        head_ref = _read_head(gitdir)
        if head_ref:
            remove_stale_lock(_common_dir(repo) / f"{head_ref}.lock")
        index = repo.index
        workdir = Path(worktree_path)
        for path, flags in repo.status(untracked_files="all", ignored=False).items():
            if flags & FileStatus.CONFLICTED:
                # A merge left this path conflicted: what is in the work tree now
                # (resolved, or still with markers) is what gets committed.
                if os.path.lexists(workdir / path):
                    index.add(path)
                else:
                    index.remove(path)
            elif flags & (FileStatus.WT_DELETED):
                index.remove(path)
            elif flags & (FileStatus.WT_NEW | FileStatus.WT_MODIFIED | FileStatus.WT_TYPECHANGE):
                index.add(path)
        tree = index.write_tree()
        # A merge in progress (MERGE_HEAD, e.g. the integration head merged in
        # for a resolution attempt) makes this a merge commit, so the resolved
        # branch contains what it was merged with and integrates cleanly.
        merging = list(repo.listall_mergeheads())
        parents: list[pygit2.Oid] = []
        if not repo.head_is_unborn:
            head = repo.head.peel(pygit2.Commit)
            if head.tree_id == tree and not merging:
                index.write()
                return None
            parents = [head.id]
        parents += [m for m in merging if m not in parents]
        index.write()
        try:
            author = repo.default_signature
        except (KeyError, pygit2.GitError):
            author = pygit2.Signature(*_FALLBACK_SIGNATURE)
        oid = repo.create_commit("HEAD", author, author, message, tree, parents)
        if merging:
            repo.state_cleanup()
        return str(oid)


# --- async API -------------------------------------------------------------------
async def head_branch(repo_path: str) -> str:
    """The short name of the branch HEAD points at (the default base branch)."""

    def run() -> str:
        repo = open_repo(repo_path)
        with map_git_errors("read HEAD"):
            if repo.is_empty or repo.head_is_unborn:
                raise errors.RepositoryEmpty(
                    f"repository has no commits: {repo_path}", {"path": repo_path}
                )
            if repo.head_is_detached:
                raise errors.BaseBranchNotFound(
                    "HEAD is detached: name a base branch", {"path": repo_path}
                )
            return repo.head.shorthand

    return await in_thread(run)


async def allocate(
    repo_path: str,
    base_dir: Path,
    task_id: str,
    branch: str,
    base_branch: str,
    record: Callable[[WorktreeInfo], object] = lambda info: None,
) -> WorktreeInfo:
    """Create (or reuse) the worktree `base_dir/<task_id>` with `branch` checked out.

    The branch is created from `base_branch` when missing. A worktree that already
    has this task's branch is reused (`created=False`), so retries keep their work.
    A new branch takes a clean spare worktree when there is one (see
    `fill_spares`), else libgit2 checks out a new worktree.
    `record(info)` runs under the repository's lock once the worktree exists, so a
    concurrent orphan cleanup never sees a worktree that is not yet recorded.
    Errors: InvalidTaskId, InvalidBranchName, BranchCheckedOut, BaseBranchNotFound,
    RepositoryEmpty, RepositoryNotFound, PathOutsideBase, GitFailure. A failed add
    leaves neither git metadata nor a directory behind.
    """
    validate_task_id(task_id)
    validate_branch(branch)
    async with write_lock(repo_path):
        info = await in_thread(
            lambda: _allocate_sync(repo_path, base_dir, task_id, branch, base_branch)
        )
        record(info)
        return info


async def fill_spares(repo_path: str, base_dir: Path, base_branch: str, count: int) -> int:
    """Keep `count` spare worktrees checked out at `base_branch` under `base_dir`.

    Removes spares a killed daemon left half made or half handed out (none
    was ever given to anyone), then checks out new ones at the branch's
    commit. Returns how many it made. Runs under the repository's lock.
    Errors: RepositoryEmpty, BaseBranchNotFound, RepositoryNotFound, GitFailure.
    """
    async with write_lock(repo_path):
        return await in_thread(lambda: _fill_spares_sync(repo_path, base_dir, base_branch, count))


async def dirty_files(worktree_path: str) -> list[str]:
    """Modified, staged and untracked (not ignored) paths: what a removal would lose."""

    def run() -> list[str]:
        if not os.path.isdir(worktree_path):
            raise errors.WorktreeNotFound(
                f"no such worktree: {worktree_path}", {"path": worktree_path}
            )
        with map_git_errors(f"status of {worktree_path}"):
            return _dirty(Path(worktree_path))

    return await in_thread(run)


async def deallocate(
    repo_path: str, base_dir: Path, worktree_path: str, force: bool = False
) -> None:
    """Remove a worktree's directory and git metadata; its branch is kept.

    Errors: PathOutsideBase (after resolving links), WorktreeNotFound, and
    WorktreeDirty (data: path, files) unless `force`.
    """
    async with write_lock(repo_path):
        await in_thread(lambda: _deallocate_sync(repo_path, base_dir, worktree_path, force))


async def cleanup_orphans(
    repo_path: str, base_dir: Path, live_paths: Callable[[], set[str]]
) -> CleanupReport:
    """Remove clean worktrees under `base_dir` that are not in `live_paths()`.

    `live_paths` is asked under the repository's lock (allocations record
    themselves under the same lock). Dirty ones (and unregistered non-empty
    directories, whose content nothing proves committed) are reported in
    `kept_dirty` and left untouched; git's metadata for worktrees whose
    directory is gone is pruned and listed.
    """
    async with write_lock(repo_path):
        live = live_paths()
        return await in_thread(lambda: _cleanup_sync(repo_path, base_dir, live))


async def commit_all(worktree_path: str, message: str) -> str | None:
    """Stage every change (respecting .gitignore) and commit it on the worktree's branch.

    Returns the new commit's hex id, or None when there was nothing to commit.
    The author comes from the repository's config, else "corral <corral@localhost>".
    """
    root = await in_thread(lambda: discover_repo_root(worktree_path))
    async with write_lock(root):
        return await in_thread(lambda: _commit_all_sync(worktree_path, message))


__all__ = [
    "WorktreeInfo",
    "allocate",
    "cleanup_orphans",
    "commit_all",
    "deallocate",
    "default_base_dir",
    "dirty_files",
    "fill_spares",
    "head_branch",
    "render_branch",
    "validate_branch",
    "validate_inside",
    "validate_task_id",
]
