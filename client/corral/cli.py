"""The `corral` command: every workflow of the daemon from a terminal.

Conventions: data goes to stdout (a rich table, or JSON with `--json`),
errors go to stderr as one line, `NO_COLOR` is honoured (rich does it), and
the exit code says what happened: 0 ok, 1 the daemon reported an error,
2 usage error, 3 the daemon is not running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral import __version__, errors, watch
from corral.client import Client
from corral.models import (
    Agent,
    AgentLifecycle,
    LogEntry,
    Session,
    Strategy,
    Task,
    TaskStatus,
    check_task_id,
    to_jsonable,
)
from corral.plan import PlanError, load_plan, slugify

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3

Handler = Callable[[argparse.Namespace, "Out"], int]
COMMANDS: dict[str, tuple[Handler, Callable[[argparse.ArgumentParser], None], str]] = {}


def _no_args(parser: argparse.ArgumentParser) -> None:
    pass


def command(
    name: str, help: str, args: Callable[[argparse.ArgumentParser], None] = _no_args
) -> Callable[[Handler], Handler]:
    """Declare a subcommand with its help text and its argument definitions."""

    def register(fn: Handler) -> Handler:
        COMMANDS[name] = (fn, args, help)
        return fn

    return register


class Out:
    """Where a command's data goes: JSON or rich, stdout; errors to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def data(self, value: Any) -> None:
        print(json.dumps(to_jsonable(value), indent=2, sort_keys=False))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.console.print(table)

    def line(self, text: str) -> None:
        self.console.print(text)

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/] {text}", soft_wrap=True)


def connect(args: argparse.Namespace) -> Client:
    return Client(args.socket).connect()


# --- daemon ------------------------------------------------------------------------


def _daemon_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--state-dir", help="directory of the state file")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


@command("daemon", "run corrald in the foreground (Ctrl-C stops it)", _daemon_args)
def cmd_daemon(args: argparse.Namespace, out: Out) -> int:
    # exec rather than import: the client package never imports corrald.
    argv = [sys.executable, "-m", "corrald.app"]
    if args.socket:
        argv += ["--socket", args.socket]
    for flag in ("config", "state_dir", "log_level"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag.replace('_', '-')}", value]
    os.execv(sys.executable, argv)


@command("status", "show the daemon's status")
def cmd_status(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        status = c.daemon_status()
    if out.as_json:
        out.data(status)
        return EXIT_OK
    cg = status.cgroup
    cgroup = (
        f"{cg.path} (kill: {'yes' if cg.kill else 'no'}; controllers: "
        f"{', '.join(cg.controllers) or 'none'})"
        if cg.available
        else f"unavailable ({cg.reason})"
    )
    out.table(
        f"corrald {status.version}",
        ["", ""],
        [
            ["pid", status.pid],
            ["uptime", f"{status.uptime_secs:.0f} s"],
            ["socket", status.socket_path],
            ["state", status.state_dir],
            ["connections", status.connections],
            ["sessions", status.sessions],
            ["cgroups", cgroup],
        ],
    )
    return EXIT_OK


# --- shared helpers ----------------------------------------------------------------


class UsageError(Exception):
    """A command line that cannot work (exit 2), found after argparse accepted it."""


def _session_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--session",
        metavar="ID",
        help="the session to act on (may be omitted when exactly one exists)",
    )


def _progress(out: Out, text: str) -> contextlib.AbstractContextManager[Any]:
    """A spinner on stderr for a long operation (nothing with --json or off a terminal)."""
    if out.as_json:
        return contextlib.nullcontext()
    return out.err.status(text)


def _ago(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def _task_rows(tasks: Sequence[Task]) -> list[list[Any]]:
    return [
        [
            t.id,
            t.status.value,
            t.priority,
            ", ".join(t.dependencies),
            t.attempts,
            t.agent_type or "",
            t.branch or "",
            f"{t.error_category.value}: {t.error}" if t.error_category else (t.error or ""),
        ]
        for t in tasks
    ]


_TASK_COLUMNS = ["id", "status", "priority", "after", "attempts", "agent", "branch", "error"]


# --- sessions ------------------------------------------------------------------------


def _init_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", nargs="?", default=".", help="git repository (default: here)")
    _session_arg(parser)
    parser.add_argument("--parallel", type=int, metavar="N", help="agents running at once")
    parser.add_argument("--agent", metavar="TYPE", help="agent type, e.g. claude or codex")
    parser.add_argument(
        "--strategy",
        choices=[s.value for s in Strategy],
        help="which ready task starts first",
    )
    parser.add_argument("--base", metavar="BRANCH", help="branch the worktrees start from")


def _config_from(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    config = dict(base or {})
    if getattr(args, "parallel", None) is not None:
        if args.parallel < 1:
            raise UsageError("--parallel must be at least 1")
        config["maxParallel"] = args.parallel
    if getattr(args, "agent", None):
        config["agentType"] = args.agent
    if getattr(args, "strategy", None):
        config["strategy"] = args.strategy
    if getattr(args, "base", None):
        config["baseBranch"] = args.base
    return config


@command("init", "create a session on a git repository (or reconfigure one)", _init_args)
def cmd_init(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        session = c.init_parallel_scheduler(
            repo_path=str(Path(args.repo).resolve()),
            session_id=args.session,
            config=_config_from(args),
        )
    if out.as_json:
        out.data(session)
    else:
        out.line(f"session [bold]{session.id}[/] on {session.repo_path} ({session.status.value})")
    return EXIT_OK


def _sessions_table(out: Out, sessions: Sequence[Session]) -> None:
    out.table(
        "sessions",
        ["id", "status", "repository", "agent", "parallel", "created"],
        [
            [
                s.id,
                s.status.value,
                s.repo_path,
                s.config.agent_type,
                s.config.max_parallel,
                _ago(s.created_at),
            ]
            for s in sessions
        ],
    )


@command("sessions", "list the daemon's sessions")
def cmd_sessions(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        sessions = c.session_list()
    if out.as_json:
        out.data(sessions)
    else:
        _sessions_table(out, sessions)
    return EXIT_OK


def _transition(method: str) -> Handler:
    def handler(args: argparse.Namespace, out: Out) -> int:
        with connect(args) as c:
            session = Session.model_validate(c.call(method, session_id=args.session))
        if out.as_json:
            out.data(session)
        else:
            out.line(f"session [bold]{session.id}[/]: {session.status.value}")
        return EXIT_OK

    return handler


command("start", "start scheduling: tasks run by themselves as slots allow", _session_arg)(
    _transition("session_start")
)
command("pause", "pause a session: no new task starts; running agents go on", _session_arg)(
    _transition("session_pause")
)
command("resume", "resume a paused session", _session_arg)(_transition("session_resume"))


# --- tasks ---------------------------------------------------------------------------


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("title", help="what the agent should do (its prompt's first line)")
    _session_arg(parser)
    parser.add_argument("--id", help="task id (default: made from the title)")
    parser.add_argument("--desc", default="", help="longer description for the prompt")
    parser.add_argument("--priority", type=int, default=0, help="lower runs first (default 0)")
    parser.add_argument(
        "--after", nargs="+", default=[], metavar="ID", help="tasks that must complete first"
    )
    parser.add_argument("--agent", metavar="TYPE", help="agent type for this task only")


@command("add", "add a task to a session", _add_args)
def cmd_add(args: argparse.Namespace, out: Out) -> int:
    task_id = args.id or slugify(args.title)
    try:
        check_task_id(task_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with connect(args) as c:
        task = c.parallel_add_task(
            session_id=args.session,
            id=task_id,
            title=args.title,
            description=args.desc,
            priority=args.priority,
            dependencies=args.after,
            agent_type=args.agent,
        )
    if out.as_json:
        out.data(task)
    else:
        out.line(f"added task [bold]{task.id}[/] ({task.status.value})")
    return EXIT_OK


def _tasks_args(parser: argparse.ArgumentParser) -> None:
    _session_arg(parser)
    parser.add_argument(
        "--status", choices=[s.value for s in TaskStatus], help="only tasks in this status"
    )


@command("tasks", "list a session's tasks", _tasks_args)
def cmd_tasks(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        tasks = c.parallel_list_tasks(session_id=args.session, status=args.status)
    if out.as_json:
        out.data(tasks)
    else:
        out.table("tasks", _TASK_COLUMNS, _task_rows(tasks))
    return EXIT_OK


def _stop_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", nargs="?", help="cancel only this task (its dependents block)")
    _session_arg(parser)


@command(
    "stop",
    "pause the session and stop its running agents (their tasks go back to ready;"
    " `corral resume` goes on), or cancel one TASK",
    _stop_args,
)
def cmd_stop(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        if args.task:
            with _progress(out, f"cancelling {args.task}"):
                changed = c.parallel_cancel_task(session_id=args.session, task_id=args.task)
        else:  # the daemon pauses a running session first, so nothing restarts
            with _progress(out, "stopping agents"):
                changed = c.parallel_stop_all(session_id=args.session)
    if out.as_json:
        out.data(changed)
    else:
        out.table("changed tasks", _TASK_COLUMNS, _task_rows(changed))
    return EXIT_OK


# --- run -----------------------------------------------------------------------------


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="plan file: TOML [[tasks]], JSON {tasks: [...]} or prd.json")
    _session_arg(parser)
    parser.add_argument("--parallel", type=int, metavar="N", help="agents running at once")
    parser.add_argument("--agent", metavar="TYPE", help="agent type for the whole plan")
    parser.add_argument("--repo", default=".", help="git repository (default: here)")
    parser.add_argument("--no-watch", action="store_true", help="start the run and return at once")


@command(
    "run",
    "run a plan on a repository: create a session, add the tasks, start, show progress,"
    " then a summary (exit 0 when every task completed, 1 otherwise)",
    _run_args,
)
def cmd_run(args: argparse.Namespace, out: Out) -> int:
    try:
        plan = load_plan(args.plan)
    except PlanError as exc:
        raise UsageError(str(exc)) from None
    config = _config_from(args, plan.config)
    started = time.monotonic()
    with connect(args) as c:
        with _progress(out, f"starting {len(plan.tasks)} tasks"):
            session = c.init_parallel_scheduler(
                repo_path=str(Path(args.repo).resolve()), session_id=args.session, config=config
            )
            c.parallel_add_tasks(session_id=session.id, tasks=plan.tasks)
        if args.no_watch:
            session = c.session_start(session_id=session.id)
            if out.as_json:
                out.data(session)
            else:
                out.line(f"session [bold]{session.id}[/] started; `corral watch` follows it")
            return EXIT_OK
        mode: watch.Mode = (
            "quiet" if out.as_json else "live" if out.console.is_terminal else "plain"
        )
        sid = session.id
        watch.follow(
            c,
            sid,
            out.console,
            mode=mode,
            show_tasks=True,
            start=lambda: c.session_start(session_id=sid),
        )
        summary = watch.summarize(c, session.id, time.monotonic() - started)
    if out.as_json:
        out.data(summary)
    else:
        watch.print_summary(out.console, summary)
    return EXIT_OK if summary["ok"] else EXIT_ERROR


# --- agents and logs -----------------------------------------------------------------


def _agents_args(parser: argparse.ArgumentParser) -> None:
    _session_arg(parser)
    parser.add_argument("--live", action="store_true", help="only agents running now")


@command("agents", "list a session's agents (one per attempt)", _agents_args)
def cmd_agents(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        agents = c.parallel_list_agents(session_id=args.session, live=args.live)
    if out.as_json:
        out.data(agents)
        return EXIT_OK
    now = time.time()
    out.table(
        "agents",
        [
            "id",
            "task",
            "type",
            "lifecycle",
            "activity",
            "runtime",
            "tokens",
            "cost",
            "CPU",
            "memory",
            "end",
        ],
        [
            [
                a.id,
                a.task_id,
                a.agent_type,
                a.lifecycle.value,
                a.status.value,
                watch.duration((a.ended_at or now) - a.started_at),
                a.tokens,
                f"${a.cost:.4f}",
                f"{a.cpu_percent:.0f}%",
                f"{a.memory_mb:.0f} MB",
                a.end_reason.value if a.end_reason else "",
            ]
            for a in agents
        ],
    )
    return EXIT_OK


def _logs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", help="agent id (see `corral agents`)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the agent ends"
    )
    parser.add_argument("--offset", type=int, default=0, metavar="N", help="start at line N")


def _find_agent(c: Client, agent_id: str) -> Agent:
    for session in c.session_list():
        for agent in c.parallel_list_agents(session_id=session.id):
            if agent.id == agent_id:
                return agent
    raise errors.AgentNotFound(f"no agent {agent_id!r}", {"agentId": agent_id})


_ENDED = (AgentLifecycle.EXITED, AgentLifecycle.KILLED)


@command("logs", "print an agent's output (-f follows it until the agent ends)", _logs_args)
def cmd_logs(args: argparse.Namespace, out: Out) -> int:
    if args.offset < 0:
        raise UsageError("--offset must be 0 or more")

    def show(entry: LogEntry) -> None:
        if out.as_json and args.follow:
            print(json.dumps(entry.to_wire()), flush=True)
        elif not out.as_json:
            style = "red" if entry.stream == "stderr" else "dim" if entry.stream == "daemon" else ""
            out.console.print(Text(entry.line, style=style), soft_wrap=True)

    with connect(args) as c:
        if not args.follow:
            entries = _read_logs(c, args.agent, args.offset)
            if out.as_json:
                out.data(entries)
            else:
                for entry in entries:
                    show(entry)
            return EXIT_OK
        # Subscribe before reading what is there, then skip what was read: no gap, no repeat.
        with watch.EventFeed(c.path, ["log", "agent.status"]) as feed:
            offset = args.offset
            for entry in _read_logs(c, args.agent, offset):
                show(entry)
                offset = entry.offset + 1
            ended = _find_agent(c, args.agent).lifecycle in _ENDED
            while not ended:
                for event in feed.get(timeout=1.0):
                    p = event.payload
                    if p.get("agentId") != args.agent:
                        continue
                    if event.type == "log" and int(p.get("offset", -1)) >= offset:
                        entry = LogEntry.model_validate(p)
                        show(entry)
                        offset = entry.offset + 1
                    elif event.type == "agent.status" and p.get("lifecycle") in _ENDED:
                        ended = True
            for entry in _read_logs(c, args.agent, offset):  # lines that raced the end
                show(entry)
    return EXIT_OK


def _read_logs(c: Client, agent_id: str, offset: int) -> list[LogEntry]:
    entries: list[LogEntry] = []
    while True:
        page = c.parallel_get_agent_logs(agent_id=agent_id, offset=offset, limit=1000)
        entries += page
        if len(page) < 1000:
            return entries
        offset = page[-1].offset + 1


# --- worktrees, conflicts, merge ---------------------------------------------------------


def _worktrees_args(parser: argparse.ArgumentParser) -> None:
    _session_arg(parser)
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove clean orphan worktrees and prune git metadata (dirty ones are kept)",
    )


@command("worktrees", "list a session's worktrees, or clean up orphans", _worktrees_args)
def cmd_worktrees(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        if args.cleanup:
            with _progress(out, "cleaning up orphan worktrees"):
                report = c.worktree_cleanup_orphaned(session_id=args.session)
            if out.as_json:
                out.data(report)
            else:
                out.line(
                    f"removed {len(report.removed)}, pruned {len(report.pruned)},"
                    f" kept {len(report.kept_dirty)} dirty"
                )
                for path in report.kept_dirty:
                    out.line(f"  dirty, kept: {path}")
            return EXIT_OK
        allocations = c.worktree_get_allocations(session_id=args.session)
    if out.as_json:
        out.data(allocations)
    else:
        out.table(
            "worktrees",
            ["task", "agent", "branch", "base", "path"],
            [
                [a.task_id, a.agent_id, a.branch, a.base_branch, a.worktree_path]
                for a in allocations
            ],
        )
    return EXIT_OK


def _conflicts_args(parser: argparse.ArgumentParser) -> None:
    _session_arg(parser)
    parser.add_argument(
        "--matrix", action="store_true", help="show each pair's state (clean/overlap/conflict)"
    )
    parser.add_argument(
        "--target", metavar="BRANCH", help="also merge each branch against this branch"
    )


@command(
    "conflicts",
    "find conflicts between the session's task branches (in-memory merges)",
    _conflicts_args,
)
def cmd_conflicts(args: argparse.Namespace, out: Out) -> int:
    if args.matrix and args.target:
        raise UsageError("--matrix and --target cannot be combined")
    with connect(args) as c, _progress(out, "merging branch pairs in memory"):
        if args.matrix:
            matrix = c.conflicts_matrix(session_id=args.session)
        else:
            found = c.conflicts_detect(session_id=args.session, target=args.target)
    if args.matrix:
        if out.as_json:
            out.data(matrix)
        else:
            out.console.print(watch.render_matrix(matrix))
        return EXIT_OK
    if out.as_json:
        out.data(found)
    else:
        out.table(
            "conflicts",
            ["file", "branch", "branch", "type", "resolvable", "strategy"],
            [
                [
                    f.file_path,
                    f.branch1,
                    f.branch2,
                    f.conflict_type.value,
                    "yes" if f.auto_resolvable else "no",
                    f.recommended_strategy.value,
                ]
                for f in found
            ],
        )
    return EXIT_OK


def _merge_args(parser: argparse.ArgumentParser) -> None:
    _session_arg(parser)
    parser.add_argument("--dry-run", action="store_true", help="report, move nothing")
    parser.add_argument("--target", metavar="BRANCH", help="branch to merge into (default: base)")


@command(
    "merge",
    "merge the branches of completed tasks into the target, skipping conflicting ones",
    _merge_args,
)
def cmd_merge(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c, _progress(out, "merging completed branches"):
        report = c.merge_completed_branches(
            session_id=args.session, target_branch=args.target, dry_run=args.dry_run
        )
    if out.as_json:
        out.data(report)
        return EXIT_OK
    verb = "would merge" if report.dry_run else "merged"
    out.table(
        f"{verb} into {report.target}: {report.merged} of {report.total_branches}"
        f" ({report.failed} failed, {report.skipped} skipped)",
        ["branch", "status", "commit", "files / error"],
        [
            [
                r.branch,
                r.status.value,
                (r.commit or "")[:10],
                ", ".join(r.files or []) or r.error or "",
            ]
            for r in report.results
        ],
    )
    return EXIT_OK


# --- live view and demo ------------------------------------------------------------------


def _watch_args(parser: argparse.ArgumentParser) -> None:
    _session_arg(parser)
    parser.add_argument("--once", action="store_true", help="draw one frame and exit")


@command("watch", "live view of a session: agents, CPU/memory, violations, conflicts", _watch_args)
def cmd_watch(args: argparse.Namespace, out: Out) -> int:
    if out.as_json:
        with connect(args) as c:
            sid = c.session_get(session_id=args.session).id
            snap = watch.gather(c, sid, watch.fetch_matrix(c, sid))
        out.data(
            {
                "session": snap.session,
                "stats": snap.stats,
                "pool": snap.pool,
                "agents": snap.agents,
                "violations": snap.violations,
                "matrix": snap.matrix,
            }
        )
        return EXIT_OK
    return watch.watch(args.socket, args.session, once=args.once, console=out.console)


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cleanup", action="store_true", help="delete the demo repository afterwards"
    )


@command(
    "demo",
    "show corral at work on a throwaway repository: a private daemon, 8 small tasks,"
    " a memory kill, a rate limit, conflicts and a merge (no setup, no network)",
    _demo_args,
)
def cmd_demo(args: argparse.Namespace, out: Out) -> int:
    from corral import demo  # imported late: only this command needs it

    return demo.run_demo(out.console, as_json=out.as_json, cleanup=args.cleanup)


# --- entry point -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Run many AI coding agents in parallel on one git repository.",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        default=os.environ.get("CORRAL_SOCKET"),
        help="daemon socket (env CORRAL_SOCKET)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_fn, add_args, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text, parents=[common]))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Out(args.json)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args, out)
    except UsageError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except errors.DaemonNotRunning as exc:
        out.error(exc.message)
        return EXIT_NOT_RUNNING
    except errors.CorralError as exc:
        if args.json:
            print(json.dumps({"error": exc.to_wire()}), file=sys.stderr)
        else:
            detail = f" {json.dumps(exc.data)}" if exc.data else ""
            out.error(f"{exc.message} [{exc.code}]{detail}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
