"""Running the same plan again on the same repository (issue 14, bug a).

A new session with the same task ids finds the worktrees and branches of the
earlier session. It takes them over: the earlier session's allocation moves
to the new one, and nothing in the worktree is removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.test_cli import Cli

CONFIG = '[agents.command]\nargv = ["sh", "-c", "echo hi > out.txt"]\n'


@pytest.fixture
def command_daemon() -> Iterator[DaemonProcess]:
    with DaemonProcess(config=CONFIG) as d:
        yield d


def test_same_plan_twice_on_one_repository(
    capsys: pytest.CaptureFixture[str], command_daemon: DaemonProcess, repo: Path, tmp_path: Path
) -> None:
    cli = Cli(capsys, command_daemon.socket)
    plan = tmp_path / "plan.toml"
    plan.write_text('[[tasks]]\nid = "hello"\ntitle = "Say hi"\n')
    runs = []
    for _ in range(2):
        code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "command", "--json")
        assert code == 0, (out, err)
        runs.append(json.loads(out))
    for summary in runs:
        assert summary["ok"] and summary["counts"] == {"completed": 1}, summary
    first, second = (s["sessionId"] for s in runs)
    assert first != second
    # the second session owns the worktree now; the first keeps none
    allocs = cli.json("worktrees", "--session", second)
    assert [a["taskId"] for a in allocs] == ["hello"]
    assert cli.json("worktrees", "--session", first) == []
    path = Path(allocs[0]["worktreePath"])
    assert (path / "out.txt").read_text() == "hi\n"
    assert git(repo, "show", "corral/hello:out.txt") == "hi"


def test_rerun_keeps_dirty_work_of_the_earlier_session(
    capsys: pytest.CaptureFixture[str], command_daemon: DaemonProcess, repo: Path, tmp_path: Path
) -> None:
    cli = Cli(capsys, command_daemon.socket)
    plan = tmp_path / "plan.toml"
    plan.write_text('[[tasks]]\nid = "hello"\ntitle = "Say hi"\n')
    code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "command", "--json")
    assert code == 0, err
    first = json.loads(out)["sessionId"]
    (wt,) = cli.json("worktrees", "--session", first)
    notes = Path(wt["worktreePath"]) / "notes.txt"
    notes.write_text("uncommitted, precious\n")
    code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "command", "--json")
    assert code == 0, err
    # the earlier file is still there; it was committed with the new attempt's work
    assert notes.read_text() == "uncommitted, precious\n"
    assert git(repo, "show", "corral/hello:notes.txt") == "uncommitted, precious"
