"""`corral demo`: the whole product on a throwaway repository, with no setup.

It writes a small demo agent (a Python script standing in for a coding CLI),
a gate (a check the merged work must pass) and a daemon config whose
`[agents.command]` runs the agent, starts a PRIVATE corrald on a temporary
socket, creates a git repository with a few files and runs a plan of eight
tasks, three at a time, with integration on. The agent looks up
`$CORRAL_TASK_ID` (and its attempt number) in `BEHAVIOUR` below and makes
that task's edit, printing claude-style stream-json so tokens, cost and
activity show in the live view. The plan is built to show, in one run:

- parallel execution that respects dependencies, where dependent tasks read
  their dependencies' files and fail without them (`api-docs` needs
  `scaffold`'s `app/version.py`; `changelog` needs the docs, the index and
  the version): each task starts from the integration branch, which holds
  every task integrated so far;
- `search-index` killed by its memory limit on attempt 1 (it allocates
  ~300 MB against a 150 MB limit) and retried with success;
- `api-docs` rate-limited on attempt 1 (a `rate_limit_event` that resets in
  3 s), parked without consuming a retry, then resumed;
- `greeting-en` and `greeting-fr`, started together, adding different lines
  at the same place of one file: the second to reach the queue conflicts, corral
  merges the integration branch into its worktree with the markers, and a
  new attempt of its agent (told so in its prompt) resolves them keeping both
  sides (the `agent` policy);
- `config-timeout` setting a number as a string: the merged work fails the
  gate, the batch is bisected so the others go in, and the agent's second
  try (given the gate's output) fixes it; `config-retries` edits another
  line of the same file and merges cleanly;
- the integration branch landed on `main` at the end (a fast-forward).

Then it prints a summary, shuts its daemon down and checks nothing is left
running. The repository is kept (its path is printed) unless `--cleanup`.
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

from corral.client import Client
from corral.launch import DaemonStartError, LocalDaemon
from corral.models import Agent, Event
from corral.watch import Mode, follow, print_summary, summarize

#: The repository the demo starts from.
FILES: dict[str, str] = {
    "README.md": "# demo-shop\n\nA tiny shop used by `corral demo`.\n",
    "app/__init__.py": "",
    "app/greeting.py": (
        "GREETINGS = {\n"
        '    "en": "hello",\n'
        "}\n\n\n"
        'def greet(name: str, lang: str = "en") -> str:\n'
        '    return f"{GREETINGS[lang]}, {name}!"\n'
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
    {"id": "api-docs", "title": "Write the API docs", "dependencies": ["scaffold"]},
    # The conflicting pair starts first, together, from the same head: had one
    # started after the other was integrated, it would hold its work (no conflict).
    {"id": "greeting-en", "title": "Add a British greeting", "priority": -3},
    {"id": "greeting-fr", "title": "Greet in French", "priority": -2},
    {"id": "config-timeout", "title": "Raise the timeout"},
    {"id": "config-retries", "title": "Retry more often"},
    {
        "id": "changelog",
        "title": "Write the changelog",
        "dependencies": [
            "scaffold",
            "greeting-en",
            "greeting-fr",
            "config-timeout",
            "search-index",
            "api-docs",
        ],
    },
]

#: What the demo agent does for each task, per attempt (the last entry repeats).
#: Steps: "require" [paths that must be in the worktree, else exit 3];
#: "write" {path: text}; "line" [path, line number (1-based), new text];
#: "insert" [path, after line number, new line]; "hog_mb" allocate and hold
#: that much memory; "rate_limit" report a limit that resets in N seconds and
#: exit 1; "slow" seconds more of work. Whatever the step, an attempt whose
#: prompt says there are conflict markers resolves them, keeping both sides.
BEHAVIOUR: dict[str, list[dict[str, Any]]] = {
    "scaffold": [{"write": {"app/version.py": 'VERSION = "0.2.0"\n'}}],
    "search-index": [
        {"hog_mb": 300},
        {"write": {"data/index.txt": "greeting app/greeting.py\nconfig app/config.py\n"}},
    ],
    "api-docs": [
        {"require": ["app/version.py"], "rate_limit": 3},
        {
            "require": ["app/version.py"],
            "write": {"docs/api.md": "# API (0.2.0)\n\n`greet(name, lang)` returns a greeting.\n"},
        },
    ],
    "greeting-en": [{"insert": ["app/greeting.py", 2, '    "en-gb": "hiya",']}],
    "greeting-fr": [
        {"insert": ["app/greeting.py", 2, '    "fr": "bonjour",'], "slow": 0.8},
        {},  # the resolution attempt: its prompt lists the conflicting file
    ],
    "config-timeout": [
        {"line": ["app/config.py", 1, 'TIMEOUT = "30s"']},  # a string: the gate says no
        {"line": ["app/config.py", 1, "TIMEOUT = 30"]},  # fixed, after reading the gate's output
    ],
    "config-retries": [{"line": ["app/config.py", 10, "RETRIES = 5"]}],
    "changelog": [
        {
            "require": ["app/version.py", "docs/api.md", "data/index.txt"],
            "write": {"CHANGELOG.md": "# 0.2.0\n\n- search, docs, greetings, config\n"},
        }
    ],
}

#: Scheduler settings: small limits so the memory hog trips, quick retries.
#: `gateCommand` is added when the demo knows where its gate is.
CONFIG: dict[str, Any] = {
    "agentType": "command",
    "integrate": True,
    "onConflict": "agent",
    "onGateFailure": "agent",
    "gateBatch": 4,
    "gateTimeoutSecs": 30,
    "maxIntegrationAttempts": 2,
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
import json, os, subprocess, sys, time
from pathlib import Path

demo = Path(sys.argv[1])
prompt = sys.argv[2] if len(sys.argv) > 2 else ""
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
for name in step.get("require", []):  # a dependency's work must be here
    if not Path(name).exists():
        print(f"{name} is missing: its dependency's work is not in this worktree",
              file=sys.stderr, flush=True)
        sys.exit(3)
if "hog_mb" in step:
    say(1, f"loading {step['hog_mb']} MB of data")
    hog = bytearray(b"\x01") * (step["hog_mb"] * 1024 * 1024)  # touched: real RSS
    time.sleep(60)  # the memory limit ends this
if "rate_limit" in step:
    info = {"status": "rejected", "resetsAt": int(time.time()) + step["rate_limit"]}
    emit({"type": "rate_limit_event", "rate_limit_info": info})
    print("rate limited", file=sys.stderr, flush=True)
    sys.exit(1)
if "conflict markers" in prompt:  # corral merged the integration branch in: resolve
    unmerged = subprocess.run(["git", "diff", "--name-only", "--diff-filter=U"],
                              capture_output=True, text=True, check=True).stdout.split()
    for name in unmerged:
        lines = Path(name).read_text().splitlines(keepends=True)
        kept = [l for l in lines if not l.startswith(("<<<<<<<", "=======", ">>>>>>>"))]
        Path(name).write_text("".join(kept))
        say(1, f"resolved {name}, keeping both sides", ("Edit", {"file_path": name}))
if "fails the integration check" in prompt:
    say(1, "the gate said: " + prompt.rsplit("```", 2)[-2].strip().splitlines()[-1])
say(2, "editing", ("Edit", {"file_path": "x"}), 900)
for path, text in step.get("write", {}).items():
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
if "line" in step:
    path, number, text = step["line"]
    lines = Path(path).read_text().splitlines()
    lines[number - 1] = text
    Path(path).write_text("\n".join(lines) + "\n")
if "insert" in step:
    path, after, text = step["insert"]
    lines = Path(path).read_text().splitlines()
    lines.insert(after, text)
    Path(path).write_text("\n".join(lines) + "\n")
time.sleep(0.6 + step.get("slow", 0))
say(3, "testing", ("Bash", {"command": "python -m pytest -q"}), 1200)
time.sleep(0.3)
emit({"type": "result", "subtype": "success", "is_error": False, "result": "done",
      "total_cost_usd": 0.0042 * attempt, "usage": {"input_tokens": 2000, "output_tokens": 500}})
'''

GATE_SCRIPT = r'''"""corral demo gate: the merged work imports, and its settings are numbers."""
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, ".")
from app import config  # noqa: E402
from app.greeting import GREETINGS, greet  # noqa: E402

for lang in GREETINGS:
    print(greet("gate", lang))
wrong = {n: getattr(config, n) for n in ("TIMEOUT", "PORT", "WORKERS", "RETRIES")
         if not isinstance(getattr(config, n), int)}
if wrong:
    print("FAILED: " + ", ".join(f"config.{n} must be an integer, not {v!r}"
                                for n, v in wrong.items()))
    sys.exit(1)
print("gate passed")
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
    argv = json.dumps([sys.executable, str(script), str(root), "{prompt}"])
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


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_plan(c: Client, repo: Path, console: Console, mode: Mode, gate: Path) -> dict[str, Any]:
    """Run the demo plan on `repo` through the daemon, land it, and collect what happened."""
    history: dict[str, list[str]] = {}
    integrated_at: dict[str, float] = {}
    setbacks: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    sid = "demo"

    def note(event: Event) -> None:
        p = event.payload
        if event.type == "task.status":
            task_id = str(p.get("taskId"))
            history.setdefault(task_id, []).append(str(p.get("state")))
            status = p.get("integrationStatus")
            if status == "integrated":
                integrated_at.setdefault(task_id, event.at)
            elif status in ("conflict", "gate_failed") and not any(
                s["taskId"] == task_id and s["kind"] == status for s in setbacks
            ):
                task = c.parallel_get_task(session_id=sid, task_id=task_id)
                setbacks.append(
                    {
                        "taskId": task_id,
                        "kind": status,
                        "files": task.conflict_files,
                        "detail": _last_line(task.integration_error),
                    }
                )
        elif event.type == "integration.batch":
            batches.append(
                {
                    k: p.get(k)
                    for k in ("taskIds", "gateRuns", "integrated", "conflicted", "gateFailed")
                }
            )

    started = time.monotonic()
    config = {**CONFIG, "gateCommand": [sys.executable, str(gate)]}
    c.init_parallel_scheduler(repo_path=str(repo), session_id=sid, config=config)
    c.parallel_add_tasks(session_id=sid, tasks=TASKS)
    follow(
        c,
        sid,
        console,
        mode=mode,
        show_tasks=True,
        on_event=note,
        start=lambda: c.session_start(session_id=sid),
    )
    run_secs = time.monotonic() - started
    summary = summarize(c, sid, run_secs)
    agents = c.parallel_list_agents(session_id=sid)
    violations = c.parallel_list_violations(session_id=sid)
    integration = c.integration_status(session_id=sid)
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
    # A dependent started only once every dependency was in the integration branch.
    dependents = [
        {
            "taskId": t["id"],
            "dependencies": t["dependencies"],
            "startedAt": t["startedAt"],
            "startedAfterIntegration": all(
                d in integrated_at and t["startedAt"] >= integrated_at[d] for d in t["dependencies"]
            ),
        }
        for t in summary["tasks"]
        if t["dependencies"]
    ]
    for s in setbacks:
        t = tasks[s["taskId"]]
        s.update(
            {
                "agentRuns": t["attempts"],
                "integrationAttempts": t["integrationAttempts"],
                "finalIntegrationStatus": t["integrationStatus"],
            }
        )
    report = c.merge_completed_branches(session_id=sid)
    landed = report.results[0] if report.results else None
    return {
        "session": summary,
        "statusHistory": history,
        "peakParallel": _peak_parallel(agents),
        "memoryKilled": killed,
        "rateLimited": rate_limited,
        "dependents": dependents,
        "conflicts": [s for s in setbacks if s["kind"] == "conflict"],
        "gateFailures": [s for s in setbacks if s["kind"] == "gate_failed"],
        "integration": {
            "branch": integration.branch,
            "head": integration.head,
            # in the order they went in (the report lists them in plan order)
            "integrated": [t for b in batches for t in b["integrated"] or []],
            "batches": batches,
            "gateRuns": sum(b["gateRuns"] or 0 for b in batches),
            "gate": config["gateCommand"],
        },
        "landing": {
            "target": report.target,
            "targetCommit": report.target_commit,
            "branch": landed.branch if landed else None,
            "status": landed.status.value if landed else None,
            "worktreeUpdated": report.worktree_updated,
        },
    }


def _print(console: Console, result: dict[str, Any]) -> None:
    s = result["session"]
    console.print()
    print_summary(console, s)
    console.print(f"at most {result['peakParallel']} agents ran at once", highlight=False)
    for d in result["dependents"]:
        deps = d["dependencies"]
        when = "once" if d["startedAfterIntegration"] else "[red]before[/]"
        console.print(
            f"[cyan]dependencies[/]: {d['taskId']} started {when} {', '.join(deps)}"
            f" {'was' if len(deps) == 1 else 'were'} integrated, on a branch holding"
            f" {'its' if len(deps) == 1 else 'their'} work",
            highlight=False,
        )
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
    for c in result["conflicts"]:
        console.print(
            f"[yellow]conflict[/]: {c['taskId']} conflicted in {', '.join(c['files'])};"
            f" its agent resolved the markers in a new attempt → {c['finalIntegrationStatus']}",
            highlight=False,
        )
    for g in result["gateFailures"]:
        console.print(
            f"[yellow]gate failure[/]: {g['taskId']}: {g['detail']}; fixed on its next try"
            f" → {g['finalIntegrationStatus']}",
            highlight=False,
        )
    i = result["integration"]
    console.print(
        f"[green]integration[/]: {len(i['batches'])} batches, {i['gateRuns']} gate runs;"
        f" in this order: {', '.join(i['integrated'])}",
        highlight=False,
    )
    landing = result["landing"]
    console.print(
        f"landed on {landing['target']}: {landing['branch']} ({landing['status']}),"
        f" {landing['target']} is now {(landing['targetCommit'] or '')[:12]}",
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
            f" (try: git -C {result['repoPath']} log --oneline --graph main)",
            soft_wrap=True,
        )


def run_demo(console: Console, *, as_json: bool = False, cleanup: bool = False) -> int:
    """Set up, run, summarise, tear down. Exit 0 when every part of the story happened."""
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="corral-demo-", dir="/tmp"))
    script = root / "demo_agent.py"
    script.write_text(AGENT_SCRIPT)
    gate = root / "demo_gate.py"
    gate.write_text(GATE_SCRIPT)
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
            result = run_plan(c, repo, console, mode, gate)
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
        and all(d["startedAfterIntegration"] for d in result["dependents"])
        and result["conflicts"]
        and all(c["finalIntegrationStatus"] == "integrated" for c in result["conflicts"])
        and result["gateFailures"]
        and all(g["finalIntegrationStatus"] == "integrated" for g in result["gateFailures"])
        and result["landing"]["status"] in ("merged", "fast_forward")
        and not result["socketLeft"]
    )
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print(console, result)
    return 0 if result["ok"] else 1
