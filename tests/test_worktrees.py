"""The worktree coordinator's git side, on real repositories (DESIGN §4 "Worktrees")."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
import trio
from pygit2.enums import ConfigLevel

from corral import errors
from corrald.git import worktrees as wt
from tests.conftest import git, make_repo


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "wt-base"


@pytest.fixture
def libgit2_isolated(tmp_path: Path) -> Iterator[None]:
    """libgit2 fixes its config search path at import (from the real $HOME), so the
    conftest's env isolation does not reach pygit2: point it at an empty dir here."""
    empty = tmp_path / "no-config"
    empty.mkdir()
    levels = (ConfigLevel.SYSTEM, ConfigLevel.XDG, ConfigLevel.GLOBAL)
    saved = {level: pygit2.settings.search_path[level] for level in levels}
    for level in levels:
        pygit2.settings.search_path[level] = str(empty)
    try:
        yield
    finally:
        for level, value in saved.items():
            pygit2.settings.search_path[level] = value


def porcelain(repo: Path) -> list[dict[str, str]]:
    """`git worktree list --porcelain`, one dict per worktree."""
    blocks = git(repo, "worktree", "list", "--porcelain").split("\n\n")
    out = []
    for block in blocks:
        entry: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            entry[key] = value
        out.append(entry)
    return out


def exists(*parts: str | Path) -> bool:
    return Path(*parts).exists()


def is_dir(path: str | Path) -> bool:
    return Path(path).is_dir()


def symlink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def branches(repo: Path) -> set[str]:
    return set(git(repo, "branch", "--format=%(refname:short)").split())


# --- pure helpers -------------------------------------------------------------
def test_default_base_dir_uses_xdg_and_hash(tmp_path: Path) -> None:
    a = wt.default_base_dir(str(tmp_path / "x" / "proj"))
    b = wt.default_base_dir(str(tmp_path / "y" / "proj"))
    data = Path(os.environ["XDG_DATA_HOME"])
    assert a.parent == data / "corral" / "worktrees"
    assert a.name.startswith("proj-") and a != b


def test_default_base_dir_falls_back_to_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_DATA_HOME")
    got = wt.default_base_dir(str(tmp_path))
    assert got.parent == Path.home() / ".local" / "share" / "corral" / "worktrees"


def test_render_branch() -> None:
    assert wt.render_branch("corral/{task_id}", "t-1.a") == "corral/t-1.a"
    assert wt.render_branch("agents/{taskId}/work", "x") == "agents/x/work"
    assert wt.render_branch("a{{b}}/{task_id}", "x") == "a{b}/x"


@pytest.mark.parametrize(
    ("template", "task_id"),
    [
        ("corral/{task_id}", "a..b"),
        ("corral/{task_id} x", "t"),
        ("-{task_id}", "t"),
        ("corral/{task_id}.lock", "t"),
        ("corral/{nope}", "t"),
        ("{task_id}", "HEAD"),
        ("a~{task_id}", "t"),
        # str.format would run these: a 100 GB padding, an attribute lookup, a conversion.
        ("c/{task_id:>99999999999}", "t"),
        ("c/{task_id.__class__}", "t"),
        ("c/{task_id!r}", "t"),
        ("c/{0}", "t"),
        ("c/{", "t"),
    ],
)
def test_render_branch_refuses_bad_names(template: str, task_id: str) -> None:
    with pytest.raises(errors.InvalidBranchName) as info:
        wt.render_branch(template, task_id)
    assert "branch" in info.value.data


def test_validate_inside(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "a").mkdir(parents=True)
    assert wt.validate_inside(base, str(base / "a")) == (base / "a").resolve()
    for bad in (str(tmp_path), str(base), str(base / ".." / "x"), "/etc"):
        with pytest.raises(errors.PathOutsideBase):
            wt.validate_inside(base, bad)
    (base / "link").symlink_to(tmp_path)
    with pytest.raises(errors.PathOutsideBase):
        wt.validate_inside(base, str(base / "link" / "elsewhere"))


# --- allocate -----------------------------------------------------------------
async def test_head_branch(repo: Path) -> None:
    assert await wt.head_branch(str(repo)) == "main"


async def test_allocate_creates_worktree_and_branch(repo: Path, base: Path) -> None:
    git(repo, "checkout", "-q", "-b", "dev")
    (repo / "dev.txt").write_text("dev\n")
    git(repo, "add", "dev.txt")
    git(repo, "commit", "-q", "-m", "dev")
    git(repo, "checkout", "-q", "main")

    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "dev")
    assert info == wt.WorktreeInfo(str((base / "t1").resolve()), "corral/t1", "dev", True)
    path = Path(info.path)
    assert (path / "dev.txt").read_text() == "dev\n"
    assert git(repo, "rev-parse", "corral/t1") == git(repo, "rev-parse", "dev")
    listed = {e["worktree"]: e.get("branch") for e in porcelain(repo)}
    assert listed[info.path] == "refs/heads/corral/t1"
    assert git(path, "status", "--porcelain") == ""
    assert git(repo, "status", "--porcelain") == ""


async def test_allocate_reuses_worktree_and_keeps_work(repo: Path, base: Path) -> None:
    first = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    (Path(first.path) / "wip.txt").write_text("not committed\n")
    second = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert second.path == first.path and not second.created
    assert (Path(second.path) / "wip.txt").read_text() == "not committed\n"


async def test_allocate_existing_branch_keeps_its_commits(repo: Path, base: Path) -> None:
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    (Path(info.path) / "work.txt").write_text("w\n")
    sha = await wt.commit_all(info.path, "work")
    await wt.deallocate(str(repo), base, info.path)
    again = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert again.created
    assert git(Path(again.path), "rev-parse", "HEAD") == sha
    assert (Path(again.path) / "work.txt").exists()


async def test_two_concurrent_allocates_make_one_worktree(repo: Path, base: Path) -> None:
    results: list[wt.WorktreeInfo] = []

    async def one() -> None:
        results.append(await wt.allocate(str(repo), base, "t1", "corral/t1", "main"))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    assert len({r.path for r in results}) == 1
    assert sorted(r.created for r in results) == [False, False, False, True]
    assert len(porcelain(repo)) == 2


async def test_allocate_refuses_branch_checked_out_elsewhere(repo: Path, base: Path) -> None:
    await wt.allocate(str(repo), base, "t1", "shared", "main")
    with pytest.raises(errors.BranchCheckedOut) as info:
        await wt.allocate(str(repo), base, "t2", "shared", "main")
    assert info.value.data["branch"] == "shared"
    assert not (base / "t2").exists()
    assert not (repo / ".git" / "worktrees" / "t2").exists()
    with pytest.raises(errors.BranchCheckedOut):
        await wt.allocate(str(repo), base, "t3", "main", "main")


async def test_failed_add_leaves_nothing_behind(repo: Path, base: Path) -> None:
    # A symlink as target that points at a file: libgit2 cannot make the directory.
    symlink(base / "t1", base / "missing-file")
    with pytest.raises(errors.CorralError):
        await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert not (repo / ".git" / "worktrees" / "t1").exists()
    assert "corral/t1" not in branches(repo)
    (base / "t1").unlink()

    # libgit2 itself fails (the path appears as a file inside the lock): no debris.
    (base / "t1").mkdir()
    (base / "t1" / "file").write_text("someone's")
    with pytest.raises(errors.GitFailure):
        await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert (base / "t1" / "file").read_text() == "someone's"
    assert not (repo / ".git" / "worktrees" / "t1").exists()


async def test_failed_libgit2_add_removes_its_metadata(repo: Path, base: Path) -> None:
    # Debris from an earlier failed add (libgit2 leaves .git/worktrees/<name>) is cleared.
    (repo / ".git" / "worktrees" / "t1").mkdir(parents=True)
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    assert info.created and is_dir(info.path)
    # And libgit2's own failure (branch ref pointing at a missing object) cleans up.
    (repo / ".git" / "refs" / "heads" / "broken").write_text("1" * 40 + "\n")
    with pytest.raises(errors.CorralError):
        await wt.allocate(str(repo), base, "t2", "broken", "main")
    assert not (repo / ".git" / "worktrees" / "t2").exists()
    assert not (base / "t2").exists()


async def test_empty_repository(tmp_path: Path, base: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(errors.RepositoryEmpty):
        await wt.head_branch(str(empty))
    with pytest.raises(errors.RepositoryEmpty):
        await wt.allocate(str(empty), base, "t1", "corral/t1", "main")
    assert not (base / "t1").exists()


async def test_missing_base_branch(repo: Path, base: Path) -> None:
    with pytest.raises(errors.BaseBranchNotFound) as info:
        await wt.allocate(str(repo), base, "t1", "corral/t1", "nope")
    assert info.value.data == {"branch": "nope"}
    assert "corral/t1" not in branches(repo)


@pytest.mark.parametrize("branch", ["a..b", "has space", "-x", "HEAD"])
async def test_allocate_refuses_bad_branch(repo: Path, base: Path, branch: str) -> None:
    with pytest.raises(errors.InvalidBranchName):
        await wt.allocate(str(repo), base, "t1", branch, "main")


@pytest.mark.parametrize("task_id", ["a/b", "..", ".x", ""])
async def test_allocate_refuses_bad_task_id(repo: Path, base: Path, task_id: str) -> None:
    with pytest.raises(errors.InvalidTaskId):
        await wt.allocate(str(repo), base, task_id, "corral/x", "main")


async def test_worktreeinclude_copies_ignored_files(tmp_path: Path, base: Path) -> None:
    repo = make_repo(
        tmp_path / "r",
        {
            ".gitignore": ".env\nconfig/*.local\n",
            ".worktreeinclude": "# secrets\n.env\n/config/*.local\n../outside\nmissing\nlink\n",
            "config/app.toml": "tracked\n",
        },
    )
    (repo / ".env").write_text("TOKEN=1\n")
    (repo / "config" / "db.local").write_text("db\n")
    (tmp_path / "outside").write_text("secret\n")
    (tmp_path / "secret").write_text("secret\n")
    (repo / "link").symlink_to(tmp_path / "secret")
    git(repo, "add", "link")  # a tracked symlink whose target escapes: never followed
    git(repo, "commit", "-q", "-m", "link")

    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    path = Path(info.path)
    assert (path / ".env").read_text() == "TOKEN=1\n"
    assert (path / "config" / "db.local").read_text() == "db\n"
    assert not (tmp_path / "wt-base" / "outside").exists()
    assert (path / "link").is_symlink()
    assert await wt.dirty_files(info.path) == []


# --- dirty, deallocate ---------------------------------------------------------
async def test_dirty_files_kinds(tmp_path: Path, base: Path) -> None:
    repo = make_repo(tmp_path / "r", {".gitignore": "*.log\n", "a.txt": "a\n", "b.txt": "b\n"})
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    path = Path(info.path)
    assert await wt.dirty_files(info.path) == []
    (path / "debug.log").write_text("ignored\n")
    assert await wt.dirty_files(info.path) == []
    (path / "a.txt").write_text("changed\n")
    (path / "b.txt").write_text("staged\n")
    git(path, "add", "b.txt")
    (path / "new.txt").write_text("untracked\n")
    assert await wt.dirty_files(info.path) == ["a.txt", "b.txt", "new.txt"]


async def test_deallocate_refuses_dirty_then_force(repo: Path, base: Path) -> None:
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    (Path(info.path) / "wip.txt").write_text("x\n")
    with pytest.raises(errors.WorktreeDirty) as exc:
        await wt.deallocate(str(repo), base, info.path)
    assert exc.value.data == {"path": info.path, "files": ["wip.txt"]}
    assert exists(info.path, "wip.txt")

    await wt.deallocate(str(repo), base, info.path, force=True)
    assert not exists(info.path)
    assert not (repo / ".git" / "worktrees" / "t1").exists()
    assert len(porcelain(repo)) == 1
    assert "corral/t1" in branches(repo)  # the branch is kept


async def test_deallocate_clean(repo: Path, base: Path) -> None:
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    await wt.deallocate(str(repo), base, info.path)
    assert not exists(info.path)
    assert "corral/t1" in branches(repo)
    with pytest.raises(errors.WorktreeNotFound):
        await wt.deallocate(str(repo), base, info.path)


async def test_deallocate_refuses_paths_outside_base(
    repo: Path, base: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    symlink(base / "sneaky", outside)
    for path in (str(outside), str(base / "sneaky"), str(base / ".." / "precious"), str(repo)):
        with pytest.raises(errors.PathOutsideBase):
            await wt.deallocate(str(repo), base, path, force=True)
    assert (outside / "keep.txt").exists()
    assert (repo / "README.md").exists()


async def test_deallocate_unknown_path(repo: Path, base: Path) -> None:
    (base / "stray").mkdir(parents=True)
    with pytest.raises(errors.WorktreeNotFound):
        await wt.deallocate(str(repo), base, str(base / "stray"), force=True)
    assert (base / "stray").is_dir()


# --- orphans ----------------------------------------------------------------------
async def test_cleanup_orphans(repo: Path, base: Path, tmp_path: Path) -> None:
    live = await wt.allocate(str(repo), base, "live", "corral/live", "main")
    (Path(live.path) / "wip.txt").write_text("live work\n")
    clean = await wt.allocate(str(repo), base, "clean", "corral/clean", "main")
    dirty = await wt.allocate(str(repo), base, "dirty", "corral/dirty", "main")
    (Path(dirty.path) / "wip.txt").write_text("orphan work\n")
    gone = await wt.allocate(str(repo), base, "gone", "corral/gone", "main")
    shutil.rmtree(gone.path)  # git's metadata for it is now stale
    git(repo, "worktree", "add", "-q", str(tmp_path / "userwt"), "-b", "user")
    (base / "empty").mkdir()

    report = await wt.cleanup_orphans(str(repo), base, lambda: {live.path})

    assert report.removed == sorted([clean.path, str(base / "empty")])
    assert report.pruned == [gone.path]
    assert report.kept_dirty == [dirty.path]
    assert (Path(dirty.path) / "wip.txt").read_text() == "orphan work\n"
    assert (Path(live.path) / "wip.txt").read_text() == "live work\n"
    listed = {e["worktree"] for e in porcelain(repo)}
    assert listed == {str(repo), live.path, dirty.path, str(tmp_path / "userwt")}
    assert {"corral/clean", "corral/gone", "corral/dirty"} <= branches(repo)
    again = await wt.cleanup_orphans(str(repo), base, lambda: {live.path})
    assert (again.removed, again.pruned, again.kept_dirty) == ([], [], [dirty.path])


# --- commit ---------------------------------------------------------------------
async def test_commit_all(tmp_path: Path, base: Path, libgit2_isolated: None) -> None:
    repo = make_repo(tmp_path / "r", {".gitignore": "*.log\n", "a.txt": "a\n", "gone.txt": "g\n"})
    git(repo, "config", "user.name", "repo author")
    git(repo, "config", "user.email", "author@repo.invalid")
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    path = Path(info.path)
    assert await wt.commit_all(info.path, "nothing") is None
    (path / "a.txt").write_text("changed\n")
    (path / "gone.txt").unlink()
    (path / "sub").mkdir()
    (path / "sub" / "new.txt").write_text("new\n")
    (path / "debug.log").write_text("ignored\n")

    sha = await wt.commit_all(info.path, "agent work")
    assert sha is not None
    assert git(repo, "log", "-1", "--format=%H %s", "corral/t1") == f"{sha} agent work"
    assert git(repo, "rev-parse", "main") != sha
    files = set(git(repo, "ls-tree", "-r", "--name-only", "corral/t1").split())
    assert files == {".gitignore", "a.txt", "sub/new.txt"}
    assert git(repo, "log", "-1", "--format=%an <%ae>", sha) == "repo author <author@repo.invalid>"
    assert git(path, "status", "--porcelain") == ""
    assert await wt.dirty_files(info.path) == []


async def test_commit_all_falls_back_to_corral_identity(
    repo: Path, base: Path, libgit2_isolated: None
) -> None:
    info = await wt.allocate(str(repo), base, "t1", "corral/t1", "main")
    (Path(info.path) / "x.txt").write_text("x\n")
    sha = await wt.commit_all(info.path, "anon")
    assert sha is not None
    assert git(repo, "log", "-1", "--format=%an <%ae>", sha) == "corral <corral@localhost>"
