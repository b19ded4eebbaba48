"""`corral daemon` (corrald in the foreground) and `corral status`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from corral.cli.common import EXIT_OK, Out, command, raw_connect
from corral.paths import socket_path


def _daemon_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--state-dir", help="directory of the state file")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


@command("daemon", "run corrald in the foreground (Ctrl-C stops it)", _daemon_args)
def cmd_daemon(args: argparse.Namespace, out: Out) -> int:
    # exec rather than import: the client package never imports corrald.
    argv = [sys.executable, "-m", "corrald.app"]
    # corrald ranks a socket in its config file above $CORRAL_SOCKET: pass the
    # path on when one was chosen here, so it listens where this CLI looks.
    if args.socket or os.environ.get("CORRAL_SOCKET"):
        argv += ["--socket", str(socket_path(args.socket))]
    for flag in ("config", "state_dir", "log_level"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag.replace('_', '-')}", value]
    os.execv(sys.executable, argv)


@command("status", "show the daemon's status")
def cmd_status(args: argparse.Namespace, out: Out) -> int:
    # The daemon's JSON as it comes, printed without rich: this is the command
    # scripts and prompts call most, so it starts without models or tables.
    with raw_connect(args) as c:
        status: dict[str, Any] = c.call("daemon_status")
    if out.as_json:
        out.data(status)
        return EXIT_OK
    cg = status.get("cgroup") or {}
    cgroup = (
        f"{cg.get('path')} (kill: {'yes' if cg.get('kill') else 'no'}; controllers: "
        f"{', '.join(cg.get('controllers') or []) or 'none'})"
        if cg.get("available")
        else f"unavailable ({cg.get('reason', '')})"
    )
    out.pairs(
        f"corrald {status['version']}",
        [
            ("pid", status["pid"]),
            ("uptime", f"{status['uptimeSecs']:.0f} s"),
            ("socket", status["socketPath"]),
            ("state", status["stateDir"]),
            ("connections", status["connections"]),
            ("sessions", status["sessions"]),
            ("cgroups", cgroup),
        ],
    )
    return EXIT_OK
