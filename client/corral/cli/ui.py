"""`corral ui`: the interactive dashboard, in this terminal or (`--web`) in a browser.

Textual is imported only when the command runs, so the other commands do
not pay for it.
"""

from __future__ import annotations

import argparse

from corral.cli.common import EXIT_OK, EXIT_USAGE, Out, command, connect, session_arg


def _ui_args(parser: argparse.ArgumentParser) -> None:
    session_arg(parser)
    parser.add_argument(
        "--web",
        action="store_true",
        help="serve the dashboard to a browser on 127.0.0.1, behind a token printed at start",
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="port for --web (default 8765; 0: any free port)"
    )


@command(
    "ui",
    "interactive dashboard: run, agents, conflicts, integration (--web: in a browser)",
    _ui_args,
)
def cmd_ui(args: argparse.Namespace, out: Out) -> int:
    if out.as_json:
        out.error("corral ui is interactive; --json has no meaning here")
        return EXIT_USAGE
    if not 0 <= args.port <= 65535:
        out.error("--port must be 0..65535")
        return EXIT_USAGE
    # Say so now, not inside the full-screen app, if the daemon or the session is not there
    # (DaemonNotRunning is exit 3, SessionNotFound exit 1, as for every command).
    with connect(args) as c:
        if args.session is not None:
            c.session_get(session_id=args.session)
        else:
            c.daemon_status()
    if args.web:
        from corral.ui.web import serve  # imported late: only --web needs aiohttp

        return serve(args.socket, args.session, args.port, out.console)
    from corral.ui.app import CorralApp  # imported late: Textual is for this command only

    CorralApp(args.socket, args.session).run()
    return EXIT_OK
