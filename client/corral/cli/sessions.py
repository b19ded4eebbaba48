"""Sessions: `corral init`, `sessions`, `start`, `pause`, `resume`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from corral.cli.common import (
    EXIT_OK,
    Handler,
    LazyChoices,
    Out,
    ago,
    command,
    config_from,
    connect,
    integration_args,
    session_arg,
)

if TYPE_CHECKING:
    from corral.models import Session


def _init_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo", nargs="?", default=".", help="git repository (default: here)")
    session_arg(parser)
    parser.add_argument("--parallel", type=int, metavar="N", help="agents running at once")
    parser.add_argument("--agent", metavar="TYPE", help="agent type, e.g. claude or codex")
    parser.add_argument(
        "--strategy",
        choices=LazyChoices("Strategy"),
        metavar="STRATEGY",  # a metavar keeps argparse from listing the choices at start-up
        help="which ready task starts first: %(choices)s",
    )
    parser.add_argument("--base", metavar="BRANCH", help="branch the worktrees start from")
    integration_args(parser)


@command("init", "create a session on a git repository (or reconfigure one)", _init_args)
def cmd_init(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        session = c.init_parallel_scheduler(
            repo_path=str(Path(args.repo).resolve()),
            session_id=args.session,
            config=config_from(args),
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
                ago(s.created_at),
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
        from corral.models import Session  # loaded late (see `corral.cli.agents`)

        with connect(args) as c:
            session = Session.model_validate(c.call(method, session_id=args.session))
        if out.as_json:
            out.data(session)
        else:
            out.line(f"session [bold]{session.id}[/]: {session.status.value}")
        return EXIT_OK

    return handler


command("start", "start scheduling: tasks run by themselves as slots allow", session_arg)(
    _transition("session_start")
)
command("pause", "pause a session: no new task starts; running agents go on", session_arg)(
    _transition("session_pause")
)
command("resume", "resume a paused session", session_arg)(_transition("session_resume"))
