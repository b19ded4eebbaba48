"""The `corral` CLI against a real daemon running real (fake) agents.

Commands run in-process through `corral.cli.main` (fast, output captured);
the exit-code contract is also checked on a real subprocess. `--json` output
is parsed and its content asserted.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cli import main
from corral.plan import PlanError, load_plan, parse_plan, slugify
from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, wait_for

CLIENT_DIR = Path(__file__).parents[1] / "client" / "corral"


class Cli:
    """Run `corral ... --socket S` in-process and capture its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str], socket: Path) -> None:
        self.capsys = capsys
        self.socket = socket

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*argv, "--socket", str(self.socket)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, (argv, err)
        return json.loads(out)


@pytest.fixture
def behaviour(tmp_path: Path) -> Path:
    plan = tmp_path / "behaviour.json"
    plan.write_text("{}")
    return plan


@pytest.fixture
def fake_daemon(behaviour: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(config=agent_config(behaviour, "fake")) as d:
        yield d


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], fake_daemon: DaemonProcess) -> Cli:
    return Cli(capsys, fake_daemon.socket)


def quick(task_id: str, *extra: str) -> list[str]:
    """Fake-agent args: a stream-json run that writes `<id>.txt` and exits 0."""
    return [
        "--stream-json",
        "--tokens",
        "100",
        "--cost",
        "0.01",
        "--stdout",
        f"hello from {task_id}",
        "--edit",
        f"{task_id}.txt=work of {task_id}",
        *extra,
    ]


def test_session_workflow_every_command_in_json(cli: Cli, behaviour: Path, repo: Path) -> None:
    behaviour.write_text(json.dumps({"write-the-docs": quick("docs"), "t2": quick("t2")}))
    session = cli.json(
        "init", str(repo), "--session", "s1", "--parallel", "2", "--agent", "fake", "--no-integrate"
    )
    assert session["id"] == "s1" and session["repoPath"] == str(repo)
    assert session["config"]["maxParallel"] == 2 and session["config"]["agentType"] == "fake"
    assert [s["id"] for s in cli.json("sessions")] == ["s1"]

    first = cli.json("add", "Write the docs", "--desc", "all of them")
    assert first["id"] == "write-the-docs" and first["description"] == "all of them"
    second = cli.json("add", "Second", "--id", "t2", "--after", "write-the-docs", "--priority", "1")
    assert second["dependencies"] == ["write-the-docs"] and second["priority"] == 1
    assert [t["id"] for t in cli.json("tasks")] == ["write-the-docs", "t2"]
    assert [t["id"] for t in cli.json("tasks", "--status", "pending")] == ["t2"]

    assert cli.json("start")["status"] == "running"
    wait_for(lambda: cli.json("sessions")[0]["status"] == "completed", 30, "the session to end")
    assert {t["status"] for t in cli.json("tasks")} == {"completed"}

    agents = cli.json("agents")
    assert [a["taskId"] for a in agents] == ["write-the-docs", "t2"]
    assert all(a["endReason"] == "ok" and a["tokens"] == 100 for a in agents)
    assert cli.json("agents", "--live") == []

    logs = cli.json("logs", agents[0]["id"])
    assert "hello from docs" in [e["message"] for e in logs]
    assert cli.json("logs", agents[0]["id"], "--offset", "1") == logs[1:]
    # -f on an agent that already ended prints what there is and returns (NDJSON)
    code, out, _ = cli("logs", agents[0]["id"], "-f", "--json")
    assert code == 0 and [json.loads(x)["message"] for x in out.splitlines()] == [
        e["message"] for e in logs
    ]

    allocations = cli.json("worktrees")
    assert sorted(a["branch"] for a in allocations) == ["corral/t2", "corral/write-the-docs"]
    assert set(cli.json("worktrees", "--cleanup")) >= {"removed", "pruned", "keptDirty"}

    assert cli.json("conflicts") == []  # different files: nothing in common
    assert cli.json("conflicts", "--target", "main") == []
    matrix = cli.json("conflicts", "--matrix")
    assert sorted(matrix["branches"]) == ["corral/t2", "corral/write-the-docs"]
    assert [c["state"] for c in matrix["cells"]] == ["clean"]

    dry = cli.json("merge", "--dry-run")
    assert dry["dryRun"] and dry["totalBranches"] == 2 and git(repo, "ls-files") == "README.md"
    report = cli.json("merge", "--target", "main")
    assert report["merged"] == 2 and report["failed"] == 0
    assert git(repo, "show", "main:t2.txt") == "work of t2"

    view = cli.json("watch")
    assert view["session"]["id"] == "s1" and view["stats"]["completed"] == 2
    assert view["agents"] == [] and view["matrix"]["branches"]


def test_pause_resume_stop_and_logs_follow(
    cli: Cli, fake_daemon: DaemonProcess, behaviour: Path, repo: Path
) -> None:
    sleeper = ["--stdout", "started", "--sleep", "60"]
    behaviour.write_text(json.dumps({"a": sleeper, "b": sleeper}))
    cli.json("init", str(repo), "--agent", "fake")
    cli.json("add", "task a", "--id", "a")
    cli.json("add", "task b", "--id", "b")
    cli.json("start")
    agents = wait_for(
        lambda: len(live := cli.json("agents", "--live")) == 2 and live, 20, "two agents"
    )
    agent_a = next(a["id"] for a in agents if a["taskId"] == "a")
    wait_for(lambda: cli.json("logs", agent_a), 20, "a's first line")

    # follow a's log in a real process; it must end by itself when a is cancelled
    argv = ["logs", agent_a, "-f", "--json", "--socket", str(fake_daemon.socket)]
    follow = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    assert json.loads(follow.stdout.readline())["message"] == "started"

    assert cli.json("pause")["status"] == "paused"
    assert cli.json("resume")["status"] == "running"
    cancelled = cli.json("stop", "a")
    assert [t["id"] for t in cancelled] == ["a"] and cancelled[0]["state"] == "cancelled"
    _, err = follow.communicate(timeout=20)
    assert follow.returncode == 0, err

    requeued = cli.json("stop")  # no TASK: pause, then stop every running agent
    assert [(t["id"], t["state"]) for t in requeued] == [("b", "ready")]
    assert cli.json("sessions")[0]["status"] == "paused"
    assert cli.json("agents", "--live") == []


def test_run_toml_plan_with_fake_agent(
    cli: Cli, behaviour: Path, repo: Path, tmp_path: Path
) -> None:
    behaviour.write_text(json.dumps({i: quick(i) for i in ("base", "left", "right", "top")}))
    plan = tmp_path / "plan.toml"
    plan.write_text(
        """
[config]
maxRetries = 0

[[tasks]]
id = "base"
title = "Lay the base"

[[tasks]]
id = "left"
title = "Left wing"
deps = ["base"]

[[tasks]]
id = "right"
title = "Right wing"
after = "base"
priority = 2

[[tasks]]
id = "top"
title = "Roof"
dependencies = ["left", "right"]
"""
    )
    code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "fake", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["status"] == "completed"
    assert summary["counts"] == {"completed": 4} and summary["failures"] == []
    assert summary["tokens"] == 400 and summary["cost"] == pytest.approx(0.04)
    assert [t["id"] for t in summary["tasks"]] == ["base", "left", "right", "top"]
    assert all(t["attempts"] == 1 and t["endReasons"] == ["ok"] for t in summary["tasks"])
    tasks = {t["id"]: t for t in cli.json("tasks")}
    assert tasks["top"]["startedAt"] >= max(tasks[d]["completedAt"] for d in ("left", "right"))
    session = cli.json("sessions")[0]
    assert session["config"]["maxRetries"] == 0 and session["config"]["agentType"] == "fake"


def test_run_prd_json_reports_failure_with_its_category(
    cli: Cli, behaviour: Path, repo: Path, tmp_path: Path
) -> None:
    behaviour.write_text(
        json.dumps({"US-001": quick("US-001"), "US-002": ["--exit", "3"], "US-004": quick("x")})
    )
    prd = tmp_path / "prd.json"
    prd.write_text(
        json.dumps(
            {
                "project": "demo",
                "config": {"maxRetries": 0},
                "branchName": "ralph/demo",
                "userStories": [
                    {
                        "id": "US-001",
                        "title": "Login",
                        "description": "d",
                        "priority": 1,
                        "acceptanceCriteria": ["works"],
                        "passes": False,
                        "dependencies": [],
                    },
                    {
                        "id": "US-002",
                        "title": "Logout",
                        "priority": 2,
                        "dependencies": ["US-001"],
                        "passes": False,
                    },
                    {"id": "US-003", "title": "Done already", "priority": 3, "passes": True},
                    {
                        "id": "US-004",
                        "title": "Profile",
                        "priority": 4,
                        "dependencies": ["US-003"],
                        "passes": False,
                    },
                ],
            }
        )
    )
    code, out, err = cli("run", str(prd), "--repo", str(repo), "--agent", "fake", "--json")
    assert code == 1, err  # one story failed
    summary = json.loads(out)
    assert [t["id"] for t in summary["tasks"]] == ["US-001", "US-002", "US-004"]
    assert not summary["ok"]
    assert summary["counts"] == {"completed": 2, "failed": 1}
    (failure,) = summary["failures"]
    assert failure["taskId"] == "US-002" and failure["errorCategory"] == "crash"


def test_run_human_output_prints_progress_and_summary(
    cli: Cli, behaviour: Path, repo: Path, tmp_path: Path
) -> None:
    behaviour.write_text(json.dumps({"*": quick("any")}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": [{"id": "only", "title": "The only task"}]}))
    code, out, err = cli("run", str(plan), "--repo", str(repo), "--agent", "fake")
    assert code == 0, err
    assert "task only: in_progress" in out and "task only: completed" in out  # plain lines
    assert "1 tasks (1 completed)" in out and "100 tokens" in out


def test_errors_unknown_session_and_invalid_input(cli: Cli, repo: Path, tmp_path: Path) -> None:
    code, out, err = cli("tasks", "--session", "nope", "--json")
    assert code == 1 and out == ""
    assert json.loads(err)["error"]["code"] == 1001
    code, _, err = cli("tasks", "--session", "nope")
    assert code == 1 and "no session 'nope'" in err and len(err.strip().splitlines()) == 1
    cli.json("init", str(repo))
    code, _, err = cli("add", "x", "--id", "../evil")
    assert code == 2 and "invalid task id" in err
    code, _, err = cli("add", "x", "--after", "ghost")
    assert code == 1 and "ghost" in err
    code, _, err = cli("init", str(tmp_path))  # not a git repository
    assert code == 1


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "[[tasks]\nid=1", "is not valid TOML"),
        ("bad.json", "{", "is not valid JSON"),
        ("plan.yaml", "tasks: []", "must be a .toml or .json"),
        ("missing.json", None, "cannot read plan"),
        ("empty.json", '{"tasks": []}', "has no tasks"),
        ("ghost.json", '{"tasks": [{"id": "a", "deps": ["b"]}]}', "unknown task(s) b"),
        ("dup.json", '{"tasks": [{"id": "a"}, {"id": "a"}]}', "duplicate task id 'a'"),
        ("badid.json", '{"tasks": [{"id": "-x"}]}', "invalid task id"),
        ("typo.json", '{"tasks": [{"id": "a", "prio": 1}]}', "unknown key(s) prio"),
        ("cfg.json", '{"tasks": [{"id": "a"}], "config": {"maxParallel": 0}}', "config.max"),
    ],
)
def test_bad_plan_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    # the plan is checked before connecting: no daemon is needed for this error
    code = main(["run", str(path), "--socket", str(tmp_path / "none.sock")])
    _, err = capsys.readouterr()
    assert code == 2
    assert message in err and str(path) in " ".join(err.split())


def test_daemon_not_running_exit_3_in_a_real_process(tmp_path: Path) -> None:
    sock = tmp_path / "absent.sock"
    for argv in (["status"], ["tasks", "--json"], ["watch", "--once"]):
        proc = subprocess.run(
            [sys.executable, "-m", "corral.cli", *argv, "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 3, (argv, proc.stderr)
        assert proc.stdout == ""
        assert "corrald is not running" in proc.stderr and str(sock) in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tasks", "--status", "nonsense"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_plan_parsing_aliases_and_prd(tmp_path: Path) -> None:
    plan = parse_plan(
        {
            "tasks": [
                {"title": "Fix the bug!", "agent": "codex", "estimatedTokens": 5},
                {"id": "b", "after": "fix-the-bug", "deps": ["fix-the-bug"]},
            ],
            "config": {"maxParallel": 2},
        },
        tmp_path / "p.json",
    )
    assert plan.tasks[0]["id"] == "fix-the-bug" and plan.tasks[0]["agentType"] == "codex"
    assert plan.tasks[0]["estimatedTokens"] == 5
    assert plan.tasks[1]["title"] == "b"
    assert plan.config == {"maxParallel": 2}
    prd = tmp_path / "prd.json"
    prd.write_text(
        json.dumps(
            {"userStories": [{"id": "US-001", "title": "t", "acceptanceCriteria": ["a", "b"]}]}
        )
    )
    (story,) = load_plan(prd).tasks
    assert story["id"] == "US-001" and story["description"].endswith("- a\n- b")
    assert slugify("  Über -- cool!! ") == "ber-cool" and slugify("!!!") == "task"
    with pytest.raises(PlanError, match="userStories"):
        parse_plan({"userStories": {}}, prd)


def test_client_package_never_imports_corrald() -> None:
    offenders = []
    for path in sorted(CLIENT_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "corrald"]
    assert offenders == []
    assert len(list(CLIENT_DIR.glob("*.py"))) >= 8  # the walk saw the package


#: Run `corral ARGS`, then say on stderr's last line which heavy packages it loaded.
_REPORT_IMPORTS = """
import json, sys
from corral.cli import main
code = main(sys.argv[1:])
print(json.dumps(sorted(m for m in ("trio", "pydantic", "rich") if m in sys.modules)),
      file=sys.stderr)
sys.exit(code)
"""


def test_simple_commands_start_without_trio_pydantic_or_rich(
    daemon: DaemonProcess, repo: Path
) -> None:
    """`corral status` and `corral tasks --json` print the daemon's JSON as it comes:
    a real process that loads none of the heavy packages, with the same output as
    the typed client's models."""
    with daemon.client() as c:
        session = c.init_parallel_scheduler(repo_path=str(repo)).id
        c.parallel_add_tasks(
            session_id=session,
            tasks=[{"id": "a", "title": "A"}, {"id": "b", "title": "B", "dependencies": ["a"]}],
        )
        typed = [t.to_wire() for t in c.parallel_list_tasks(session_id=session)]
        pid = c.daemon_status().pid

    def run(*argv: str) -> tuple[str, list[str]]:
        proc = subprocess.run(
            [sys.executable, "-c", _REPORT_IMPORTS, *argv, "--socket", str(daemon.socket)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, json.loads(proc.stderr.strip().splitlines()[-1])

    out, loaded = run("tasks", "--json")
    assert loaded == []
    assert json.loads(out) == typed and [t["id"] for t in typed] == ["a", "b"]
    out, loaded = run("status")
    assert loaded == []
    assert out.startswith("corrald ") and f"  pid          {pid}\n" in out
    out, loaded = run("status", "--json")
    assert loaded == [] and json.loads(out)["pid"] == pid
    # A command that shows models still gets them (and rich for its table).
    out, loaded = run("tasks")
    assert loaded == ["pydantic", "rich"] and "a" in out
