"""Views: `corral watch` (live) and `corral demo` (imported only when it runs)."""

from __future__ import annotations

import argparse

from corral.cli.common import EXIT_OK, Out, command, connect, session_arg


def _watch_args(parser: argparse.ArgumentParser) -> None:
    session_arg(parser)
    parser.add_argument("--once", action="store_true", help="draw one frame and exit")


@command("watch", "live view of a session: agents, CPU/memory, violations, conflicts", _watch_args)
def cmd_watch(args: argparse.Namespace, out: Out) -> int:
    from corral.watch import fetch_matrix, gather, watch  # loaded late: it needs rich

    if out.as_json:
        with connect(args) as c:
            sid = c.session_get(session_id=args.session).id
            snap = gather(c, sid, fetch_matrix(c, sid))
        out.data(
            {
                "session": snap.session,
                "stats": snap.stats,
                "pool": snap.pool,
                "agents": list(snap.agents),
                "violations": snap.violations,
                "matrix": snap.matrix,
            }
        )
        return EXIT_OK
    return watch(args.socket, args.session, once=args.once, console=out.console)


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
