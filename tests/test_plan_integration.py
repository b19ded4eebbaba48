"""Plans and integration: `paths` and prd.json's integration fields, `corral run --land`, `merge`.

The parsing tests need no daemon. The CLI tests run a real daemon, real fake
agents (tests/plan_agent.py) and a real gate (tests/gate.py), reached from a
prd.json's `verificationCommands` strings.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.models import SchedulerConfig
from corral.plan import PlanError, load_plan, parse_plan
from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.test_cli import Cli, quick
from tests.test_pool import agent_config

GATE = Path(__file__).with_name("gate.py")


def test_paths_in_toml_json_and_prd(tmp_path: Path) -> None:
    toml = tmp_path / "plan.toml"
    toml.write_text(
        '[[tasks]]\nid = "api"\ntitle = "API"\npaths = ["src/api/**", "docs/api.md"]\n'
        '[[tasks]]\nid = "one"\ntitle = "One"\npaths = "src/one.py"\n'
    )
    api, one = load_plan(toml).tasks
    assert api["paths"] == ["src/api/**", "docs/api.md"] and one["paths"] == ["src/one.py"]
    plan = parse_plan({"tasks": [{"id": "j", "paths": ["lib/*.py"]}]}, tmp_path / "p.json")
    assert plan.tasks[0]["paths"] == ["lib/*.py"]
    prd = parse_plan(
        {"userStories": [{"id": "US-1", "title": "s", "paths": ["web/**"]}]},
        tmp_path / "prd.json",
    )
    assert prd.tasks[0]["paths"] == ["web/**"]
    undeclared = parse_plan({"tasks": [{"id": "free"}]}, tmp_path / "p.json")
    assert undeclared.tasks[0]["paths"] == []  # undeclared: not restricted


def test_prd_json_maps_onto_integration(tmp_path: Path) -> None:
    prd = tmp_path / "prd.json"
    prd.write_text(
        json.dumps(
            {
                "project": "shop",
                "branchName": "ralph/shop",
                "verificationCommands": ["python -m pytest -q 'tests/a b.py'", "ruff check ."],
                "config": {"gateCommands": [["mypy", "--strict"]], "maxParallel": 2},
                "userStories": [
                    {
                        "id": "US-1",
                        "title": "Login",
                        "description": "Let users log in.",
                        "acceptanceCriteria": ["a form", "a session cookie"],
                        "notes": "The old login lives in legacy/; do not touch it.",
                        "passes": False,
                    },
                    {"id": "US-2", "title": "Logout", "notes": ["one", "two"]},
                ],
            }
        )
    )
    plan = load_plan(prd)
    assert plan.config["integrationBranch"] == "ralph/shop"
    # split into words with shlex (quotes respected), never a shell string; appended
    assert plan.config["gateCommands"] == [
        ["mypy", "--strict"],
        ["python", "-m", "pytest", "-q", "tests/a b.py"],
        ["ruff", "check", "."],
    ]
    assert plan.config["maxParallel"] == 2
    config = SchedulerConfig.model_validate(plan.config)
    assert config.gates()[1] == ["python", "-m", "pytest", "-q", "tests/a b.py"]
    login, logout = plan.tasks
    assert login["description"] == (
        "Let users log in.\n\nAcceptance criteria:\n- a form\n- a session cookie"
        "\n\nNotes:\nThe old login lives in legacy/; do not touch it."
    )
    assert logout["description"].endswith("Notes:\n- one\n- two")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"verificationCommands": ["pytest 'unclosed"]}, "verificationCommands[0]: cannot split"),
        ({"verificationCommands": ["ok", "   "]}, "verificationCommands[1]: the command is empty"),
        ({"verificationCommands": [["pytest"]]}, "must be a string, not list"),
        ({"verificationCommands": {"a": "b"}}, "must be a list of commands"),
        ({"branchName": ""}, "`branchName` must be a non-empty string"),
        ({"userStories": [{"id": "s", "paths": ["/etc/*"]}]}, "must be relative"),
        ({"userStories": [{"id": "s", "paths": ["../up"]}]}, "must be relative"),
    ],
)
def test_bad_integration_fields_are_clear_usage_errors(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    data = {"userStories": [{"id": "US-1", "title": "one"}], **extra}
    with pytest.raises(PlanError, match=r"prd\.json") as info:
        parse_plan(data, tmp_path / "prd.json")
    assert message in str(info.value)


# --- the CLI, end to end -----------------------------------------------------------------


@pytest.fixture
def behaviour(tmp_path: Path) -> Path:
    path = tmp_path / "behaviour.json"
    path.write_text("{}")
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], behaviour: Path) -> Iterator[Cli]:
    with DaemonProcess(config=agent_config(behaviour, "fake")) as d:
        yield Cli(capsys, d.socket)


def _prd(tmp_path: Path, gate_args: str, **config: Any) -> Path:
    prd = tmp_path / "prd.json"
    gate = f"{shlex.quote(sys.executable)} {shlex.quote(str(GATE))} {gate_args}"
    prd.write_text(
        json.dumps(
            {
                "branchName": "ralph/feature",
                "verificationCommands": [gate],
                "config": config,
                "userStories": [
                    {"id": "US-1", "title": "one", "paths": ["US-1.txt"]},
                    {"id": "US-2", "title": "two", "dependencies": ["US-1"]},
                ],
            }
        )
    )
    return prd


def test_run_land_puts_the_prd_branch_on_main_and_the_views_show_integration(
    cli: Cli, behaviour: Path, repo: Path, tmp_path: Path
) -> None:
    behaviour.write_text(
        json.dumps({"US-1": quick("US-1"), "US-2": quick("US-2", "--require", "US-1.txt")})
    )
    prd = _prd(tmp_path, "--require US-1.txt")  # the gate passes once US-1's work is in
    code, out, err = cli("run", str(prd), "--repo", str(repo), "--agent", "fake", "--land")
    assert code == 0, err
    # the plain progress lines (not a terminal), then the summary and the landing
    assert "task US-1: completed, integration queued" in out
    assert "integration: batch US-1, 1 gate run(s); integrated US-1" in out
    assert "integration branch ralph/feature: 2 integrated" in out
    assert "landed ralph/feature on main (fast_forward)" in out
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", "ralph/feature")
    assert sorted(git(repo, "ls-files").split()) == ["README.md", "US-1.txt", "US-2.txt"]
    session = cli.json("sessions")[0]
    assert session["integrationBranch"] == "ralph/feature"
    assert session["config"]["gateCommands"] == [
        [sys.executable, str(GATE), "--require", "US-1.txt"]
    ]
    report = cli.json("integration")
    assert report["integrated"] == ["US-1", "US-2"] and report["queue"] == []
    assert report["head"] == git(repo, "rev-parse", "ralph/feature")
    code, out, err = cli("watch", "--once")
    assert code == 0, err
    assert "integration ralph/feature @" in out and "2 integrated" in out
    assert "last batch 1: 1 gate run" in out


def test_nothing_lands_unless_everything_is_integrated_and_merge_dry_run_moves_nothing(
    cli: Cli, behaviour: Path, repo: Path, tmp_path: Path
) -> None:
    behaviour.write_text(json.dumps({"*": quick("any")}))
    main_before = git(repo, "rev-parse", "main")
    # The verification command always fails: no story gets in, and --land lands nothing.
    prd = _prd(tmp_path, "--require never-there.txt", maxIntegrationAttempts=0)
    code, out, err = cli(
        "run", str(prd), "--repo", str(repo), "--agent", "fake", "--land", "--json"
    )
    assert code == 1, err
    summary = json.loads(out)
    assert not summary["ok"]
    assert summary["landing"] == {
        "landed": False,
        "reason": "not every task is integrated: US-1, US-2",
    }
    assert [(t["status"], t["integrationStatus"]) for t in summary["tasks"]] == [
        ("failed", "gate_failed"),
        ("blocked", None),
    ]
    assert git(repo, "rev-parse", "main") == main_before
    # `corral merge --dry-run` reports what landing would do, and moves nothing.
    report = cli.json("merge", "--dry-run")
    assert report["dryRun"] is True and report["results"][0]["branch"] == "ralph/feature"
    assert git(repo, "rev-parse", "main") == main_before
    code, _, err = cli("run", str(prd), "--repo", str(repo), "--land", "--no-watch")
    assert code == 2 and "--land" in err and "--no-watch" in err

    # `corral add --paths` declares paths by hand; a glob outside the repository is refused.
    cli.json("init", str(repo), "--session", "p", "--agent", "fake")
    task = cli.json("add", "Users API", "--session", "p", "--paths", "src/api/**", "docs/api.md")
    assert task["paths"] == ["src/api/**", "docs/api.md"]
    code, out, err = cli("add", "Escape", "--session", "p", "--paths", "../outside")
    assert code != 0 and out == "" and "must be relative" in err
    assert [t["id"] for t in cli.json("tasks", "--session", "p")] == ["users-api"]
