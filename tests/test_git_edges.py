"""The git edge under hostile leftovers: stale lock files, symlinks, names too long.

Each case ends in a clear error or a clean success, never a -32603, and
nothing outside the worktree changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from corral import errors
from corrald.git import worktrees as wt
from tests.conftest import git
from tests.daemon_proc import DaemonProcess, UnprivilegedDaemon


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "wt-base"


def ref_lock(repo: Path, branch: str) -> Path:
    lock = repo / ".git" / "refs" / "heads" / f"{branch}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    return lock


def age(path: Path, secs: float) -> None:
    """Make `path` look `secs` old, as a lock left by a killed writer would."""
    then = time.time() - secs
    os.utime(path, (then, then))


def is_dir(path: str) -> bool:
    return Path(path).is_dir()


def branches(repo: Path) -> set[str]:
    return set(git(repo, "branch", "--format=%(refname:short)").split())


# --- stale ref and index locks ---------------------------------------------------------
async def test_stale_ref_lock_is_removed_and_allocation_succeeds(repo: Path, base: Path) -> None:
    lock = ref_lock(repo, "corral/t1")
    lock.write_text("")  # what `kill -9` in the middle of creating the branch leaves
    age(lock, 60)
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert info.created and is_dir(info.path)
    assert not lock.exists()
    assert "corral/t1" in branches(repo)


async def test_live_ref_lock_is_a_clear_error_naming_the_file(repo: Path, base: Path) -> None:
    lock = ref_lock(repo, "corral/t1")
    with lock.open("w"):  # held open, as a git that is writing the ref holds it
        age(lock, 60)
        with pytest.raises(errors.GitFailure) as info:
            await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert info.value.data["lockFile"] == str(lock)
    assert info.value.data["heldBy"] == [os.getpid()]
    assert str(lock) in info.value.message
    # Nothing was made, and the live lock was left alone.
    assert lock.exists()
    assert not (base / "t1").exists()
    assert not (repo / ".git" / "worktrees" / "t1").exists()
    assert "corral/t1" not in branches(repo)


async def test_fresh_lock_of_another_writer_is_left_alone(repo: Path, base: Path) -> None:
    # Not open and only just made: a git between writing and renaming it.
    lock = ref_lock(repo, "corral/t1")
    lock.write_text("")
    with pytest.raises(errors.GitFailure) as info:
        await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert info.value.data["lockFile"] == str(lock)
    assert lock.exists()
    # Once it is old enough to be debris, the next attempt clears it.
    age(lock, 60)
    assert (await wt.allocate(str(repo), base, "t1", "corral/t1", "main")).created


async def test_unmapped_lock_error_from_libgit2_names_the_file(repo: Path, base: Path) -> None:
    # A lock corral does not clear by itself (here the main index's, held by
    # a "running" git): libgit2's plain OSError becomes a GitFailure.
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    (Path(info.path) / "new.txt").write_text("work\n")
    index_lock = Path(git(Path(info.path), "rev-parse", "--absolute-git-dir")) / "index.lock"
    with index_lock.open("w"), pytest.raises(errors.GitFailure) as exc:
        await wt.commit_all(info.path, "work")
    assert exc.value.data["lockFile"] == str(index_lock)


async def test_stale_index_and_ref_locks_do_not_stop_the_auto_commit(
    repo: Path, base: Path
) -> None:
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    (Path(info.path) / "new.txt").write_text("work\n")
    gitdir = Path(git(Path(info.path), "rev-parse", "--absolute-git-dir"))
    locks = [gitdir / "index.lock", ref_lock(repo, "corral/t1")]
    for lock in locks:
        lock.write_text("")
        age(lock, 60)
    sha = await wt.commit_all(info.path, "agent work")
    assert sha is not None
    assert git(repo, "rev-parse", "corral/t1") == sha
    assert not any(lock.exists() for lock in locks)


def test_allocation_over_rpc_clears_a_stale_lock_and_reports_a_live_one(repo: Path) -> None:
    with DaemonProcess() as d, d.client(timeout=20) as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        stale = ref_lock(repo, "corral/t1")
        stale.write_text("")
        age(stale, 60)
        alloc = c.worktree_allocate(agent_id="a1", task_id="t1")
        assert Path(alloc.worktree_path).is_dir() and not stale.exists()

        live = ref_lock(repo, "corral/t2")
        with live.open("w"):
            with pytest.raises(errors.GitFailure) as info:
                c.worktree_allocate(agent_id="a2", task_id="t2")
            assert info.value.data["lockFile"] == str(live)
            assert info.value.data["heldBy"] == [os.getpid()]
        live.unlink()  # that git is done: it renamed its lock into place
        assert c.worktree_allocate(agent_id="a2", task_id="t2").branch == "corral/t2"
        assert [a.task_id for a in c.worktree_get_allocations()] == ["t1", "t2"]


# --- symlinks are never followed when removing a worktree ------------------------------
def symlinks_out(worktree: Path, outside: Path) -> list[Path]:
    """Links inside `worktree` to `outside`, some in directories that deny writing."""
    links = []
    for where in ("", "ro", "ro/deeper", "locked"):
        d = worktree / where
        d.mkdir(parents=True, exist_ok=True)
        link = d / "secret-link"
        link.symlink_to(outside)
        links.append(link)
    (worktree / "ro" / "dir-link").symlink_to(outside.parent, target_is_directory=True)
    (worktree / "ro" / "deeper").chmod(0o500)
    (worktree / "ro").chmod(0o500)
    (worktree / "locked").chmod(0o000)  # not even listable
    return links


def test_force_deallocate_over_rpc_keeps_outside_modes(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text("keep\n")
    outside.chmod(0o600)
    with UnprivilegedDaemon() as d, d.client(timeout=20) as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        alloc = c.worktree_allocate(agent_id="a1", task_id="t1")
        symlinks_out(Path(alloc.worktree_path), outside)
        assert c.worktree_deallocate(worktree_path=alloc.worktree_path, force=True) is True
        assert not os.path.lexists(alloc.worktree_path)
        assert c.worktree_get_allocations() == []
    assert outside.stat().st_mode & 0o7777 == 0o600
    assert outside.read_text() == "keep\n"


def test_undeletable_worktree_is_a_clear_error_and_outside_keeps_its_mode(
    repo: Path, tmp_path: Path
) -> None:
    # An immutable directory cannot be emptied by anyone: the old code chmodded
    # the link's target (0600 -> 0700) on its way to a -32603.
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make an immutable directory")
    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text("keep\n")
    outside.chmod(0o600)
    with UnprivilegedDaemon() as d, d.client(timeout=20) as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        alloc = c.worktree_allocate(agent_id="a1", task_id="t1")
        stuck = Path(alloc.worktree_path) / "stuck"
        stuck.mkdir()
        (stuck / "secret-link").symlink_to(outside)
        if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode:
            pytest.skip("this file system has no immutable flag")
        try:
            with pytest.raises(errors.GitFailure) as info:
                c.worktree_deallocate(worktree_path=alloc.worktree_path, force=True)
            assert str(stuck) in info.value.message  # says what could not be removed
            assert outside.stat().st_mode & 0o7777 == 0o600
            # Nothing was forgotten: the allocation is still listed and can be retried.
            assert [a.worktree_path for a in c.worktree_get_allocations()] == [alloc.worktree_path]
        finally:
            subprocess.run(["chattr", "-i", str(stuck)], check=True)
        assert c.worktree_deallocate(worktree_path=alloc.worktree_path, force=True) is True
        assert not os.path.lexists(alloc.worktree_path)
    assert outside.stat().st_mode & 0o7777 == 0o600
