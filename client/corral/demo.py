"""`corral demo`: the whole product on a throwaway repository, with no setup.

It writes a small demo agent (a Python script standing in for a coding CLI)
and a daemon config whose `[agents.command]` runs it, starts a PRIVATE
corrald on a temporary socket, creates a git repository with a few files and
runs a plan of eight tasks, three at a time. The agent looks up
`$CORRAL_TASK_ID` (and its attempt number) in `BEHAVIOUR` below and makes
that task's edit, printing claude-style stream-json so tokens, cost and
activity show in the live view. The plan is built to show, in one run:

- parallel execution that respects dependencies (`changelog` waits for four);
- `search-index` killed by its memory limit on attempt 1 (it allocates
  ~300 MB against a 150 MB limit) and retried with success;
- `api-docs` rate-limited on attempt 1 (a `rate_limit_event` that resets in
  3 s), parked without consuming a retry, then resumed;
- `greeting-en` and `greeting-fr` editing the same line (a conflict) and
  `config-timeout` and `config-retries` editing different lines of one file
  (an overlap that merges cleanly).

Then it detects conflicts, merges the completed branches into `main`, prints
a summary, shuts its daemon down and checks nothing is left running. The
repository is kept (its path is printed) unless `--cleanup` is given.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.client import Client
from corral.launch import DaemonStartError, LocalDaemon
from corral.models import Agent, Event
from corral.watch import Mode, follow, print_summary, summarize

#: The repository the demo starts from.
FILES: dict[str, str] = {
    "README.md": "# demo-shop\n\nA tiny shop used by `corral demo`.\n",
    "app/__init__.py": "",
    "app/greeting.py": (
        'GREETING = "hello"\n\n\ndef greet(name: str) -> str:\n    return f"{GREETING}, {name}!"\n'
    ),
    "app/config.py": "".join(
        f"{line}\n"
        for line in (
            "TIMEOUT = 10",
            "HOST = 'localhost'",
            "PORT = 8080",
            "DEBUG = False",
            "LOG_LEVEL = 'info'",
            "CACHE_SIZE = 128",
            "WORKERS = 4",
            "CURRENCY = 'EUR'",
            "TAX_RATE = 0.2",
            "RETRIES = 1",
        )
    ),
}

#: The plan: id, title, dependencies, priority (lower starts first among equals).
TASKS: list[dict[str, Any]] = [
    {"id": "scaffold", "title": "Add a version module", "dependencies": []},
    {"id": "search-index", "title": "Build the search index", "priority": -1},
    {"id": "api-docs", "title": "Write the API docs", "priority": -1},
    {"id": "greeting-en", "title": "Friendlier English greeting", "dependencies": ["scaffold"]},
    {"id": "greeting-fr", "title": "Greet in French", "dependencies": ["scaffold"]},
    {"id": "config-timeout", "title": "Raise the timeout"},
    {"id": "config-retries", "title": "Retry more often"},
    {
        "id": "changelog",
        "title": "Write the changelog",
        "dependencies": ["greeting-en", "config-timeout", "search-index", "api-docs"],
    },
]

#: What the demo agent does for each task, per attempt (the last entry repeats).
#: Steps: "write" {path: text}; "line" [path, line number (1-based), new text];
#: "hog_mb" allocate and hold that much memory; "rate_limit" report a limit
#: that resets in N seconds and exit 1.
BEHAVIOUR: dict[str, list[dict[str, Any]]] = {
    "scaffold": [{"write": {"app/version.py": 'VERSION = "0.2.0"\n'}}],
    "search-index": [
        {"hog_mb": 300},
        {"write": {"data/index.txt": "greeting app/greeting.py\nconfig app/config.py\n"}},
    ],
    "api-docs": [
        {"rate_limit": 3},
        {"write": {"docs/api.md": "# API\n\n`greet(name)` returns a greeting.\n"}},
    ],
    "greeting-en": [{"line": ["app/greeting.py", 1, 'GREETING = "hello there"']}],
    "greeting-fr": [{"line": ["app/greeting.py", 1, 'GREETING = "bonjour"']}],
    "config-timeout": [{"line": ["app/config.py", 1, "TIMEOUT = 30"]}],
    "config-retries": [{"line": ["app/config.py", 10, "RETRIES = 5"]}],
    "changelog": [{"write": {"CHANGELOG.md": "# 0.2.0\n\n- search, docs, greeting, config\n"}}],
}

#: Scheduler settings: small limits so the memory hog trips, quick retries.
CONFIG: dict[str, Any] = {
    "agentType": "command",
    "integrate": False,
    "maxParallel": 3,
    "maxRetries": 2,
    "strategy": "dependency_first",
    "backoff": {"baseSecs": 0.5, "multiplier": 2, "capSecs": 2},
    "resourceLimits": {
        "maxAgents": 3,
        "maxMemoryMbPerAgent": 150,
        "maxTotalMemoryMb": 4096,
        # Python start-up is a CPU burst; the demo is about memory, not CPU.
        "maxCpuPerAgent": 400.0,
        "maxTotalCpu": 1600.0,
        "maxRuntimeSecs": 60,
        "sampleIntervalSecs": 0.2,
        "killGraceSecs": 1.0,
    },
}

AGENT_SCRIPT = r'''"""corral demo agent: makes the edit behaviour.json gives for $CORRAL_TASK_ID."""
import json, os, sys, time
from pathlib import Path

demo = Path(sys.argv[1])
task = os.environ["CORRAL_TASK_ID"]
counter = demo / "attempts" / task
counter.parent.mkdir(exist_ok=True)
attempt = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(attempt))
steps = json.loads((demo / "behaviour.json").read_text())[task]
step = steps[min(attempt, len(steps)) - 1]


def emit(obj):
    print(json.dumps(obj), flush=True)


def say(i, text, tool=None, tokens=0):
    content = [{"type": "text", "text": text}]
    if tool:
        content.append({"type": "tool_use", "id": f"t{i}", "name": tool[0], "input": tool[1]})
    usage = {"input_tokens": tokens, "output_tokens": tokens // 10}
    emit({"type": "assistant", "message": {"id": f"m{i}", "content": content, "usage": usage}})


emit({"type": "system", "subtype": "init", "model": "demo"})
say(0, f"attempt {attempt} at {task}", ("Read", {"file_path": "README.md"}), 400)
time.sleep(0.3)
if "hog_mb" in step:
    say(1, f"loading {step['hog_mb']} MB of data")
    hog = bytearray(b"\x01") * (step["hog_mb"] * 1024 * 1024)  # touched: real RSS
    time.sleep(60)  # the memory limit ends this
if "rate_limit" in step:
    info = {"status": "rejected", "resetsAt": int(time.time()) + step["rate_limit"]}
    emit({"type": "rate_limit_event", "rate_limit_info": info})
    print("rate limited", file=sys.stderr, flush=True)
    sys.exit(1)
say(2, "editing", ("Edit", {"file_path": "x"}), 900)
for path, text in step.get("write", {}).items():
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
if "line" in step:
    path, number, text = step["line"]
    lines = Path(path).read_text().splitlines()
    lines[number - 1] = text
    Path(path).write_text("\n".join(lines) + "\n")
time.sleep(0.6)
say(3, "testing", ("Bash", {"command": "python -m pytest -q"}), 1200)
time.sleep(0.3)
emit({"type": "result", "subtype": "success", "is_error": False, "result": "done",
      "total_cost_usd": 0.0042 * attempt, "usage": {"input_tokens": 2000, "output_tokens": 500}})
'''


class DemoError(RuntimeError):
    """The demo could not set itself up (git missing, daemon failed to start)."""


def _git(repo: Path, *args: str) -> None:
    try:
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise DemoError("the demo needs git on PATH") from None
    except subprocess.CalledProcessError as exc:
        raise DemoError(f"git {' '.join(args)} failed: {exc.stderr.strip()}") from None


def make_repo(path: Path) -> Path:
    """A git repository on branch `main` with FILES in one commit (local identity)."""
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "corral demo")
    _git(path, "config", "user.email", "demo@corral.invalid")
    _git(path, "config", "commit.gpgsign", "false")
    for name, text in FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "demo-shop: initial")
    return path


def daemon_config(root: Path, script: Path) -> str:
    """The private daemon's TOML: worktrees inside the demo dir, the demo agent type."""
    argv = json.dumps([sys.executable, str(script), str(root)])
    return (
        "[daemon]\n"
        f"worktree_base = {json.dumps(str(root / 'worktrees'))}\n"
        "shutdown_grace_secs = 5\n"
        "\n[agents.command]\n"
        f"argv = {argv}\n"
        'parser = "claude-stream-json"\n'
    )


def _peak_parallel(agents: list[Agent]) -> int:
    spans = [(a.started_at, a.ended_at or a.started_at) for a in agents]
    return max((sum(1 for s, e in spans if s <= start < e) for start, _ in spans), default=0)


def run_plan(c: Client, repo: Path, console: Console, mode: Mode) -> dict[str, Any]:
    """Run the demo plan on `repo` through the daemon and collect what happened."""
    history: dict[str, list[str]] = {}

    def note(event: Event) -> None:
        if event.type == "task.status":
            history.setdefault(str(event.payload.get("taskId")), []).append(
                str(event.payload.get("state"))
            )

    started = time.monotonic()
    session = c.init_parallel_scheduler(repo_path=str(repo), session_id="demo", config=CONFIG)
    c.parallel_add_tasks(session_id=session.id, tasks=TASKS)
    follow(
        c,
        session.id,
        console,
        mode=mode,
        show_tasks=True,
        on_event=note,
        start=lambda: c.session_start(session_id=session.id),
    )
    run_secs = time.monotonic() - started
    summary = summarize(c, session.id, run_secs)
    agents = c.parallel_list_agents(session_id=session.id)
    violations = c.parallel_list_violations(session_id=session.id)
    tasks = {t["id"]: t for t in summary["tasks"]}

    killed = [
        {
            "taskId": v.task_id,
            "memoryMb": round(v.value),
            "limitMb": round(v.limit),
            "retried": tasks[v.task_id]["attempts"] > 1,
            "finalStatus": tasks[v.task_id]["status"],
        }
        for v in violations
        if v.kind == "limit_memory"
    ]
    rate_limited = []
    for task_id, seen in history.items():
        if "rate_limited" in seen:
            tries = [a for a in agents if a.task_id == task_id]
            ended = tries[0].ended_at
            parked = tries[1].started_at - ended if len(tries) > 1 and ended else None
            rate_limited.append(
                {
                    "taskId": task_id,
                    "parkedSecs": round(parked, 2) if parked is not None else None,
                    "resumed": len(tries) > 1,
                    "finalStatus": tasks[task_id]["status"],
                }
            )

    found = c.conflicts_detect(session_id=session.id)
    pairs: dict[tuple[str, str, bool], set[str]] = {}
    for f in found:
        pairs.setdefault((f.branch1, f.branch2, f.auto_resolvable), set()).add(f.file_path)
    conflicts = [
        {"branches": [b1, b2], "files": sorted(files)}
        for (b1, b2, auto), files in pairs.items()
        if not auto
    ]
    overlaps = [
        {"branches": [b1, b2], "files": sorted(files)}
        for (b1, b2, auto), files in pairs.items()
        if auto
    ]
    report = c.merge_completed_branches(session_id=session.id)
    merged = [r.branch for r in report.results if r.status.value in ("merged", "fast_forward")]
    not_merged = [
        {"branch": r.branch, "status": r.status.value, "files": r.files or [], "error": r.error}
        for r in report.results
        if r.branch not in merged
    ]
    return {
        "session": summary,
        "statusHistory": history,
        "peakParallel": _peak_parallel(agents),
        "memoryKilled": killed,
        "rateLimited": rate_limited,
        "conflicts": conflicts,
        "overlaps": overlaps,
        "merge": {
            "target": report.target,
            "targetCommit": report.target_commit,
            "merged": merged,
            "notMerged": not_merged,
        },
    }


def _print(console: Console, result: dict[str, Any]) -> None:
    s = result["session"]
    console.print()
    print_summary(console, s)
    console.print(f"at most {result['peakParallel']} agents ran at once", highlight=False)
    for k in result["memoryKilled"]:
        console.print(
            f"[red]memory kill[/]: {k['taskId']} used {k['memoryMb']} MB (limit"
            f" {k['limitMb']} MB), killed, retried → {k['finalStatus']}",
            highlight=False,
        )
    for r in result["rateLimited"]:
        console.print(
            f"[magenta]rate limit[/]: {r['taskId']} parked {r['parkedSecs']} s until the reset,"
            f" resumed → {r['finalStatus']}",
            highlight=False,
        )
    table = Table(title="branch pairs touching the same files", title_justify="left")
    for column in ("branches", "files", "result"):
        table.add_column(column)
    for c in result["conflicts"]:
        table.add_row(" vs ".join(c["branches"]), ", ".join(c["files"]), "[red]conflict[/]")
    for o in result["overlaps"]:
        table.add_row(" + ".join(o["branches"]), ", ".join(o["files"]), "[green]merges clean[/]")
    console.print(table)
    m = result["merge"]
    console.print(
        f"merged into {m['target']}: {', '.join(m['merged']) or 'nothing'}", highlight=False
    )
    for n in m["notMerged"]:
        console.print(
            f"[yellow]not merged[/]: {n['branch']} ({n['status']}: {', '.join(n['files'])})",
            highlight=False,
        )
    console.print(
        f"demo took {result['wallSecs']:.1f} s; daemon (pid {result['daemonPid']}) is stopped.",
        highlight=False,
    )
    if result["cleanedUp"]:
        console.print("the demo repository was deleted (--cleanup)")
    else:
        console.print(
            f"the repository is at [bold]{result['repoPath']}[/]"
            f" (try: git -C {result['repoPath']} log --oneline --graph --all)",
            soft_wrap=True,
        )


def run_demo(console: Console, *, as_json: bool = False, cleanup: bool = False) -> int:
    """Set up, run, summarise, tear down. Exit 0 when every part of the story happened."""
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="corral-demo-", dir="/tmp"))
    script = root / "demo_agent.py"
    script.write_text(AGENT_SCRIPT)
    (root / "behaviour.json").write_text(json.dumps(BEHAVIOUR))
    config_path = root / "config.toml"
    config_path.write_text(daemon_config(root, script))
    daemon = LocalDaemon(
        root / "corrald.sock",
        root / "state",
        log_path=root / "corrald.log",
        config_path=config_path,
    )
    mode: Mode = "quiet" if as_json else "live" if console.is_terminal else "plain"
    try:
        repo = make_repo(root / "repo")
        if not as_json:
            console.print(f"corral demo: repository {repo}, private daemon on {daemon.socket}")
        daemon.start()
        with Client(daemon.socket) as c:
            pid = c.daemon_status().pid
            result = run_plan(c, repo, console, mode)
    except (DemoError, DaemonStartError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1
    finally:
        daemon.shutdown()
    result.update(
        {
            "wallSecs": round(time.monotonic() - t0, 2),
            "daemonPid": pid,
            "demoDir": str(root),
            "repoPath": str(repo),
            "socket": str(daemon.socket),
            "socketLeft": daemon.socket.exists(),
            "cleanedUp": cleanup,
        }
    )
    if cleanup:
        shutil.rmtree(root, ignore_errors=True)
    result["ok"] = bool(
        result["session"]["ok"]
        and result["memoryKilled"]
        and result["rateLimited"]
        and result["conflicts"]
        and result["overlaps"]
        and result["merge"]["merged"]
        and not result["socketLeft"]
    )
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print(console, result)
    return 0 if result["ok"] else 1
