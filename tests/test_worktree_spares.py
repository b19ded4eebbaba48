"""Spare worktrees: checked out ahead of time, handed out exactly clean (DESIGN §4 "Worktrees")."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from corral import errors
from corrald.git import worktrees as wt
from tests.conftest import git, make_repo
from tests.daemon_proc import DaemonProcess
from tests.test_pool import wait_for
from tests.test_worktrees import branches, exists, porcelain
from tests.waits import wait_until


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "wt-base"


def spares(base: Path) -> list[Path]:
    return sorted(base.glob(".spare-*")) if base.is_dir() else []


def assert_sane(repo: Path) -> None:
    """git agrees with itself: no worktree git would prune, no spare's branch left over."""
    for entry in porcelain(repo):
        assert "prunable" not in entry, entry
    assert not [b for b in branches(repo) if b.startswith("corral-spare/")]
    assert git(repo, "worktree", "prune", "--dry-run", "-v") == ""


def assert_exactly(path: Path, repo: Path, branch: str, commit: str) -> None:
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD") == branch
    assert git(path, "rev-parse", "HEAD") == commit
    assert git(repo, "rev-parse", branch) == commit
    assert git(path, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""


async def test_spare_becomes_the_task_worktree(repo: Path, base: Path) -> None:
    assert await wt.fill_spares(str(repo), base, "main", 1) == 1
    [spare] = spares(base)
    listed = {e["worktree"]: e for e in porcelain(repo)}
    assert "detached" in listed[str(spare)]  # no branch is held by a spare
    assert await wt.fill_spares(str(repo), base, "main", 1) == 0  # already there

    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")

    path = Path(info.path)
    assert path == base.resolve() / "t1"  # noqa: ASYNC240 - a test, not the daemon
    assert info == wt.WorktreeInfo(str(path), "corral/t1", "main", True)
    assert spares(base) == []
    assert_exactly(path, repo, "corral/t1", git(repo, "rev-parse", "main"))
    assert (path / "README.md").read_text() == "hello\n"
    assert (repo / ".git" / "worktrees" / "t1").is_dir()  # named after the task, as ever
    listed = {e["worktree"]: e for e in porcelain(repo)}
    assert listed[str(path)]["branch"] == "refs/heads/corral/t1"
    assert set(listed) == {str(repo), str(path)}
    assert_sane(repo)
    # The rest of the life cycle works on it as on any worktree.
    (path / "work.txt").write_text("w\n")
    sha = await wt.commit_all(str(path), "work")
    assert git(repo, "rev-parse", "corral/t1") == sha
    again = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert again.path == str(path) and not again.created
    await wt.deallocate(str(repo), base, str(path))
    assert not exists(path) and "corral/t1" in branches(repo)
    assert_sane(repo)


async def test_spare_at_an_older_commit_is_brought_up_to_date(tmp_path: Path, base: Path) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"keep.txt": "k\n", "change.txt": "old\n", "gone/only.txt": "x\n", ".gitignore": "*.log\n"},
    )
    await wt.fill_spares(str(repo), base, "main", 1)
    (repo / "change.txt").write_text("new\n")
    git(repo, "rm", "-q", "-r", "gone")
    (repo / "new" / "deep").mkdir(parents=True)
    (repo / "new" / "deep" / "file.txt").write_text("n\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    (repo / ".worktreeinclude").write_text("secret.env\n")
    (repo / "secret.env").write_text("TOKEN=1\n")

    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")

    path = Path(info.path)
    assert spares(base) == []
    assert (path / "change.txt").read_text() == "new\n"
    assert (path / "new" / "deep" / "file.txt").read_text() == "n\n"
    assert not (path / "gone").exists()
    assert (path / "secret.env").read_text() == "TOKEN=1\n"  # .worktreeinclude as ever
    (path / "secret.env").unlink()
    assert_exactly(path, repo, "corral/t1", git(repo, "rev-parse", "main"))
    assert_sane(repo)


async def test_changed_spare_is_left_alone(repo: Path, base: Path) -> None:
    await wt.fill_spares(str(repo), base, "main", 1)
    [spare] = spares(base)
    (spare / "someone.txt").write_text("not corral's\n")

    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")

    assert_exactly(Path(info.path), repo, "corral/t1", git(repo, "rev-parse", "main"))
    assert not (Path(info.path) / "someone.txt").exists()
    assert (spare / "someone.txt").read_text() == "not corral's\n"
    assert await wt.fill_spares(str(repo), base, "main", 1) == 1  # a clean one beside it
    assert (spare / "someone.txt").read_text() == "not corral's\n"
    assert len(spares(base)) == 2
    assert_sane(repo)


async def test_spare_somebody_works_in_on_a_branch_is_left_alone(repo: Path, base: Path) -> None:
    await wt.fill_spares(str(repo), base, "main", 1)
    [spare] = spares(base)
    git(spare, "checkout", "-q", "-b", "mine")
    (spare / "mine.txt").write_text("mine\n")
    git(spare, "add", "mine.txt")  # staged, not committed

    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert await wt.fill_spares(str(repo), base, "main", 1) == 1

    assert_exactly(Path(info.path), repo, "corral/t1", git(repo, "rev-parse", "main"))
    assert git(spare, "rev-parse", "--abbrev-ref", "HEAD") == "mine"
    assert git(spare, "status", "--porcelain") == "A  mine.txt"
    assert len(spares(base)) == 2


async def test_no_spare_for_an_existing_branch(repo: Path, base: Path) -> None:
    git(repo, "branch", "corral/t1")
    (repo / "later.txt").write_text("l\n")
    git(repo, "add", "later.txt")
    git(repo, "commit", "-q", "-m", "later")
    await wt.fill_spares(str(repo), base, "main", 1)
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    # The branch keeps its own commit; the spare waits for a new branch.
    assert git(Path(info.path), "rev-parse", "HEAD") == git(repo, "rev-parse", "main~1")
    assert len(spares(base)) == 1


@pytest.mark.parametrize(
    ("call", "nth"),
    [("replace", 1), ("replace", 3), ("rename", 1), ("rename", 2)],
    ids=["head", "backlink", "metadata-rename", "directory-rename"],
)
async def test_handout_cut_short_recovers(
    repo: Path, base: Path, monkeypatch: pytest.MonkeyPatch, call: str, nth: int
) -> None:
    """A handout stopped at each step (a full disk, or a kill) leaves a state the retry fixes."""
    await wt.fill_spares(str(repo), base, "main", 1)
    real: Callable[..., Any] = getattr(os, call)
    calls = 0

    def failing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(os, call, failing)
    with pytest.raises(errors.GitFailure):
        await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    monkeypatch.setattr(os, call, real)

    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert_exactly(Path(info.path), repo, "corral/t1", git(repo, "rev-parse", "main"))
    assert spares(base) == []  # the half-claimed spare was debris and is gone
    assert await wt.fill_spares(str(repo), base, "main", 1) == 1
    assert_sane(repo)
    second = await wt.allocate(str(repo), base, "t2", "corral/t2", "main")
    assert_exactly(Path(second.path), repo, "corral/t2", git(repo, "rev-parse", "main"))


_FILL = """
import sys, trio
from pathlib import Path
from corrald.git import worktrees
trio.run(worktrees.fill_spares, sys.argv[1], Path(sys.argv[2]), "main", 1)
"""


async def test_fill_killed_midway_is_debris_for_the_next(tmp_path: Path, base: Path) -> None:
    files = {f"d{i % 20}/f{i}.txt": f"{i}\n" * 50 for i in range(3000)}
    repo = make_repo(tmp_path / "repo", files)
    proc = await trio.lowlevel.open_process([sys.executable, "-c", _FILL, str(repo), str(base)])
    try:
        with trio.fail_after(60):
            await wait_until(
                lambda: proc.poll() is not None or any((s / "d0").is_dir() for s in spares(base)),
                interval=0.005,
            )
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed inside libgit2's checkout
    assert [b for b in branches(repo) if b.startswith("corral-spare/")]  # its debris
    assert await wt.fill_spares(str(repo), base, "main", 1) == 1
    [spare] = spares(base)
    assert git(spare, "status", "--porcelain", "--ignored") == ""
    assert_sane(repo)
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert_exactly(Path(info.path), repo, "corral/t1", git(repo, "rev-parse", "main"))


async def test_cleanup_orphans_passes_spares_by(repo: Path, base: Path) -> None:
    await wt.fill_spares(str(repo), base, "main", 1)
    [spare] = spares(base)
    report = await wt.cleanup_orphans(str(repo), base, set)
    assert (report.removed, report.pruned, report.kept_dirty) == ([], [], [])
    assert spares(base) == [spare]


async def test_no_spares_in_an_empty_repository(tmp_path: Path, base: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(errors.RepositoryEmpty):
        await wt.fill_spares(str(empty), base, "main", 1)
    assert spares(base) == []


def ready_spare(repo: Path, base: Path) -> Path | None:
    """The spare git lists as a whole detached checkout (its fill is over), if there is one."""
    if [b for b in branches(repo) if b.startswith("corral-spare/")]:
        return None  # a fill is under way
    for entry in porcelain(repo):
        path = Path(entry.get("worktree", ""))
        if path.parent == base and path.name.startswith(".spare-") and "detached" in entry:
            return path
    return None


def test_daemon_refills_and_hands_out_spares_across_a_kill(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with DaemonProcess(state) as d, d.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo), session_id="s")
        first = c.worktree_allocate(agent_id="a1", task_id="t1")  # cold: no spare yet
        base = Path(first.worktree_path).parent
        spare = wait_for(lambda: ready_spare(repo, base), 60, "the refill after an allocation")
        inode = spare.stat().st_ino
        second = c.worktree_allocate(agent_id="a2", task_id="t2")
        assert Path(second.worktree_path).stat().st_ino == inode  # the spare, renamed
        assert_exactly(
            Path(second.worktree_path), repo, "corral/t2", git(repo, "rev-parse", "main")
        )
        wait_for(lambda: ready_spare(repo, base), 60, "the next refill")
        assert d.proc is not None
        d.proc.kill()  # kill -9: the spare outlives the daemon
        d.proc.wait(10)
    with DaemonProcess(state) as d, d.client() as c:
        assert sorted(a.task_id for a in c.worktree_get_allocations()) == ["t1", "t2"]
        report = c.worktree_cleanup_report()
        assert (report.removed, report.kept_dirty) == ([], [])  # a spare is no orphan
        left = ready_spare(repo, base)
        assert left is not None
        third = c.worktree_allocate(agent_id="a3", task_id="t3")
        assert not left.exists()  # handed out after the restart
        assert_exactly(Path(third.worktree_path), repo, "corral/t3", git(repo, "rev-parse", "main"))
    assert_sane(repo)
