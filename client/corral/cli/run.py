"""`corral run`: a plan file from start to summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from corral.client import Client


def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="plan file: TOML [[tasks]], JSON {tasks: [...]} or prd.json")
    session_arg(parser)
    parser.add_argument("--parallel", type=int, metavar="N", help="agents running at once")
    parser.add_argument("--agent", metavar="TYPE", help="agent type for the whole plan")
    parser.add_argument("--repo", default=".", help="git repository (default: here)")
    parser.add_argument("--no-watch", action="store_true", help="start the run and return at once")
    parser.add_argument(
        "--land",
        action="store_true",
        help="when every task is integrated, land the integration branch on the base branch"
        " (as `corral merge` does); nothing lands otherwise",
    )
    integration_args(parser)


@command(
    "run",
    "run a plan on a repository: create a session, add the tasks, start, show progress,"
    " then a summary (exit 0 when every task completed and, with integration on, is"
    " integrated; 1 otherwise); --land then puts the integration branch on the base branch",
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
    if args.land and args.no_watch:
        raise UsageError("--land waits for the run to finish: it cannot go with --no-watch")
    if args.land and config.get("integrate") is False:
        raise UsageError("--land lands the integration branch: it cannot go with --no-integrate")
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
        landing = _land(c, session.id, summary) if args.land else None
    if landing is not None:
        summary["landing"] = landing
    if out.as_json:
        out.data(summary)
    else:
        print_summary(out.console, summary)
        if landing is not None:
            _print_landing(out, landing)
    ok = summary["ok"] and (landing is None or landing["landed"])
    return EXIT_OK if ok else EXIT_ERROR


def _land(c: Client, session_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """`--land`: land the integration branch if (and only if) every task is integrated."""
    if not summary["ok"]:
        left = [t["id"] for t in summary["tasks"] if t.get("integrationStatus") != "integrated"]
        return {"landed": False, "reason": f"not every task is integrated: {', '.join(left)}"}
    report = c.merge_completed_branches(session_id=session_id)
    result = report.results[0] if report.results else None
    landed = result is not None and result.status.value in ("merged", "fast_forward")
    return {
        "landed": landed,
        "target": report.target,
        "targetCommit": report.target_commit,
        "branch": result.branch if result else None,
        "status": result.status.value if result else None,
        "worktreeUpdated": report.worktree_updated,
        **({} if landed or result is None else {"reason": result.error or result.status.value}),
    }


def _print_landing(out: Out, landing: dict[str, Any]) -> None:
    if landing["landed"]:
        out.line(
            f"landed {landing['branch']} on [bold]{landing['target']}[/] ({landing['status']}),"
            f" now {(landing['targetCommit'] or '')[:12]}"
        )
    else:
        out.line(f"[yellow]not landed[/]: {landing['reason']}")
