"""`corral run`: a plan file from start to summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from corral.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    Out,
    UsageError,
    command,
    config_from,
    connect,
    integration_args,
    progress,
    session_arg,
)

if TYPE_CHECKING:
    from corral.watch import Mode


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="plan file: TOML [[tasks]], JSON {tasks: [...]} or prd.json")
    session_arg(parser)
    parser.add_argument("--parallel", type=int, metavar="N", help="agents running at once")
    parser.add_argument("--agent", metavar="TYPE", help="agent type for the whole plan")
    parser.add_argument("--repo", default=".", help="git repository (default: here)")
    parser.add_argument("--no-watch", action="store_true", help="start the run and return at once")
    integration_args(parser)


@command(
    "run",
    "run a plan on a repository: create a session, add the tasks, start, show progress,"
    " then a summary (exit 0 when every task completed, 1 otherwise)",
    _run_args,
)
def cmd_run(args: argparse.Namespace, out: Out) -> int:
    from corral.plan import PlanError, load_plan  # loaded late (see `corral.cli.agents`)
    from corral.watch import follow, print_summary, summarize

    try:
        plan = load_plan(args.plan)
    except PlanError as exc:
        raise UsageError(str(exc)) from None
    config = config_from(args, plan.config)
    started = time.monotonic()
    with connect(args) as c:
        with progress(out, f"starting {len(plan.tasks)} tasks"):
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
        mode: Mode = "quiet" if out.as_json else "live" if out.console.is_terminal else "plain"
        sid = session.id
        follow(
            c,
            sid,
            out.console,
            mode=mode,
            show_tasks=True,
            start=lambda: c.session_start(session_id=sid),
        )
        summary = summarize(c, session.id, time.monotonic() - started)
    if out.as_json:
        out.data(summary)
    else:
        print_summary(out.console, summary)
    return EXIT_OK if summary["ok"] else EXIT_ERROR
