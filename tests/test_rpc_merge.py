"""Conflicts and the merge queue over RPC, on branches real agents produced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral import errors
from tests.conftest import git, make_repo
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, finished, wait_for


def test_agents_branches_conflict_matrix_and_merge_queue(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"shared.txt": "one\ntwo\nthree\nfour\nfive\n"})
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "base": ["--edit", "base.txt=base"],
                "left": ["--edit", "shared.txt=LEFT\n"],
                "right": ["--edit", "shared.txt=RIGHT\n"],
                "solo": ["--edit", "solo.txt=solo"],
            }
        )
    )
    with DaemonProcess(config=agent_config(plan, "fake")) as d, d.client() as c:
        # Each task on its own branch (integration off): conflicts stay for the merge queue.
        c.init_parallel_scheduler(
            repo_path=str(repo), config={"agentType": "fake", "integrate": False}
        )
        c.parallel_add_tasks(
            tasks=[
                {"id": "base", "title": "base"},
                {"id": "left", "title": "left", "dependencies": ["base"], "priority": 1},
                {"id": "right", "title": "right", "dependencies": ["base"], "priority": 2},
                {"id": "solo", "title": "solo", "priority": 5},
            ]
        )
        c.session_start()
        wait_for(lambda: finished(c, c.session_list()[0].id), 60)

        found = c.conflicts_detect(branches=[{"branch": "corral/left"}, ["corral/right", None]])
        assert [(x.file_path, x.conflict_type.value, x.auto_resolvable) for x in found] == [
            ("shared.txt", "file_modification", False)
        ]
        assert c.conflicts_can_merge_safely(branch1="corral/left", branch2="corral/right") is False
        assert c.conflicts_can_merge_safely(branch1="corral/left", branch2="corral/solo") is True
        summary = c.conflicts_get_summary(conflicts=found)
        assert summary.total_conflicts == 1 and summary.manual_required == 1
        cells = {
            (m["branch1"], m["branch2"]): m["state"] for m in c.call("conflicts_matrix")["cells"]
        }
        assert cells[("corral/left", "corral/right")] == "conflict"
        assert cells[("corral/base", "corral/solo")] == "clean"
        with pytest.raises(errors.BranchNotFound):
            c.conflicts_detect(branches=[{"branch": "nope"}, {"branch": "corral/left"}])

        dry = c.call("merge_completed_branches", dry_run=True)
        assert git(repo, "rev-list", "--count", "main") == "1"
        report = c.call("merge_completed_branches")
    assert dry["totalBranches"] == report["totalBranches"] == 4
    order = [r["branch"] for r in report["results"]]
    assert order == ["corral/base", "corral/left", "corral/right", "corral/solo"]
    status = {r["branch"]: r["status"] for r in report["results"]}
    assert status["corral/right"] == "conflict"
    assert report["merged"] == 3 and report["skipped"] == 1 and report["failed"] == 0
    assert (repo / "shared.txt").read_text() == "LEFT\n"  # the clean main work tree followed
    assert (repo / "solo.txt").read_text() == "solo"
    assert git(repo, "status", "--porcelain") == ""
