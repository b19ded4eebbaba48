"""The merge queue: real repositories, checked with the real git CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import errors
from corral.models import MergeStatus
from corrald.git.merge import queue
from tests.conftest import git, make_repo

FILES = {"shared.txt": "".join(f"line {i}\n" for i in range(10)), "README.md": "hello\n"}


def branch(repo: Path, name: str, files: dict[str, str], start: str = "main") -> None:
    """A branch from `start` with one commit writing `files`; leaves main checked out."""
    git(repo, "checkout", "-q", "-b", name, start)
    for path, content in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"work on {name}")
    git(repo, "checkout", "-q", "main")


def edit_shared(line: int, text: str) -> str:
    lines = FILES["shared.txt"].splitlines()
    lines[line] = text
    return "\n".join(lines) + "\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main plus three clean branches and one that conflicts with the first."""
    repo = make_repo(tmp_path / "repo", FILES)
    branch(repo, "t1", {"shared.txt": edit_shared(1, "t1 was here"), "one.txt": "1\n"})
    branch(repo, "t2", {"two.txt": "2\n"})
    branch(repo, "t3", {"shared.txt": edit_shared(8, "t3 was here")})
    branch(repo, "t4", {"shared.txt": edit_shared(1, "t4 disagrees")})
    return repo


async def test_queue_merges_clean_branches_and_skips_the_conflict(repo: Path) -> None:
    start = git(repo, "rev-parse", "main")
    report = await queue.merge_queue(str(repo), ["t1", "t4", "t2", "t3"], "main")
    assert (report.total_branches, report.merged, report.failed, report.skipped) == (4, 3, 0, 1)
    by_branch = {r.branch: r for r in report.results}
    assert [r.branch for r in report.results] == ["t1", "t4", "t2", "t3"]
    # t1 is ahead of main: a fast-forward; the next ones need merge commits.
    assert by_branch["t1"].status is MergeStatus.FAST_FORWARD
    assert by_branch["t1"].commit == git(repo, "rev-parse", "t1")
    assert by_branch["t4"].status is MergeStatus.CONFLICT
    assert by_branch["t4"].files == ["shared.txt"]
    assert by_branch["t4"].error_code == errors.MergeConflictError.code
    assert by_branch["t2"].status is by_branch["t3"].status is MergeStatus.MERGED

    head = git(repo, "rev-parse", "main")
    assert report.target_commit == head == by_branch["t3"].commit
    log = git(repo, "log", "--first-parent", "--format=%s", f"{start}..main").splitlines()
    assert log == ["Merge branch 't3' into main", "Merge branch 't2' into main", "work on t1"]
    assert git(repo, "log", "-1", "--format=%P", "main").split() == [
        by_branch["t2"].commit,
        git(repo, "rev-parse", "t3"),
    ]
    merged = git(repo, "show", "main:shared.txt")
    assert "t1 was here" in merged and "t3 was here" in merged and "t4" not in merged
    assert git(repo, "branch", "--contains", "t4", "--format=%(refname:short)") == "t4"
    # main was checked out and clean: the work tree follows, and stays clean.
    assert report.worktree_updated
    assert (repo / "two.txt").read_text() == "2\n"
    assert (repo / "shared.txt").read_text() == merged + "\n"
    assert git(repo, "status", "--porcelain") == ""
    wire = report.to_wire()
    assert wire["totalBranches"] == 4 and wire["results"][1]["status"] == "conflict"


async def test_dry_run_moves_nothing(repo: Path) -> None:
    refs = git(repo, "for-each-ref")
    report = await queue.merge_queue(str(repo), ["t1", "t4", "t2", "t3"], "main", dry_run=True)
    assert report.dry_run and (report.merged, report.skipped) == (3, 1)
    assert git(repo, "for-each-ref") == refs
    assert git(repo, "status", "--porcelain") == ""
    # The would-be result is a real commit whose tree holds all three.
    assert report.target_commit is not None
    tree = git(repo, "ls-tree", "--name-only", report.target_commit).split()
    assert {"one.txt", "two.txt"} <= set(tree)


async def test_fast_forward_and_already_merged(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    branch(repo, "ahead", {"new.txt": "new\n"})
    report = await queue.merge_queue(str(repo), ["ahead", "ahead"], "main")
    assert [r.status for r in report.results] == [MergeStatus.FAST_FORWARD, MergeStatus.SKIPPED]
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", "ahead")
    assert git(repo, "log", "-1", "--format=%P", "main").count(" ") == 0  # no merge commit
    assert (repo / "new.txt").read_text() == "new\n"


async def test_target_moved_between_merge_and_swap_fails_cleanly(repo: Path) -> None:
    moved_to: list[str] = []

    def someone_else_commits(name: str, expected: str) -> None:
        if name == "t2":
            # An outside writer advances main after corral computed t2's merge.
            git(repo, "commit", "-q", "--allow-empty", "-m", "outside commit")
            moved_to.append(git(repo, "rev-parse", "main"))

    report = await queue.merge_queue(
        str(repo), ["t2", "t3"], "main", before_swap=someone_else_commits
    )
    t2, t3 = report.results
    assert t2.status is MergeStatus.FAILED and t2.error_code == errors.TargetMoved.code
    assert t2.commit is None
    # Nothing of t2 landed; t3 was then merged onto the moved target.
    assert git(repo, "rev-parse", "main^1") == moved_to[0]
    assert t3.status is MergeStatus.MERGED and git(repo, "rev-parse", "main") == t3.commit
    assert not (repo / "two.txt").exists()
    assert "t3 was here" in (repo / "shared.txt").read_text()
    assert git(repo, "status", "--porcelain") == ""


async def test_dirty_worktree_refuses_the_whole_queue(repo: Path) -> None:
    (repo / "README.md").write_text("local edit\n")
    (repo / "scratch.txt").write_text("untracked\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "ignored.log").write_text("ignored\n")
    refs = git(repo, "for-each-ref")
    with pytest.raises(errors.TargetDirty) as info:
        await queue.merge_queue(str(repo), ["t1", "t2"], "main")
    assert info.value.data["files"] == [".gitignore", "README.md", "scratch.txt"]
    assert git(repo, "for-each-ref") == refs
    assert (repo / "README.md").read_text() == "local edit\n"


async def test_target_not_checked_out_leaves_the_worktree_alone(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "elsewhere")
    (repo / "README.md").write_text("dirty, but not on the target\n")
    report = await queue.merge_queue(str(repo), ["t2"], "main")
    assert report.merged == 1 and not report.worktree_updated
    assert not (repo / "two.txt").exists()
    assert git(repo, "show", "main:two.txt") == "2"


async def test_missing_branch_and_missing_target(repo: Path) -> None:
    report = await queue.merge_queue(str(repo), ["nope", "t2"], "main")
    assert report.results[0].status is MergeStatus.FAILED
    assert report.results[0].error_code == errors.BranchNotFound.code
    assert report.results[1].status is MergeStatus.FAST_FORWARD and report.merged == 1
    with pytest.raises(errors.BranchNotFound):
        await queue.merge_queue(str(repo), ["t2"], "no-such-target")


async def test_worktree_edited_during_the_queue_fails_that_branch_only(repo: Path) -> None:
    def edit_a_file_the_merge_changes(name: str, expected: str) -> None:
        if name == "t3":
            (repo / "shared.txt").write_text("someone is typing here\n")

    before = git(repo, "rev-parse", "main")
    report = await queue.merge_queue(
        str(repo), ["t3"], "main", before_swap=edit_a_file_the_merge_changes
    )
    assert report.results[0].status is MergeStatus.FAILED
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "shared.txt").read_text() == "someone is typing here\n"
