"""The `corral` command: every workflow of the daemon from a terminal.

`common` holds what every command shares (the registry, `Out`, exit codes:
0 ok, 1 the daemon reported an error, 2 usage error, 3 the daemon is not
running); each other module is one group of commands and registers them with
`@command` when it is imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from corral import __version__, errors
from corral.cli import agents, daemon, git, run, sessions, tasks, ui, view
from corral.cli.common import (
    COMMANDS,
    EXIT_ERROR,
    EXIT_NOT_RUNNING,
    EXIT_USAGE,
    Out,
    UsageError,
)
from corral.paths import default_socket_path

__all__ = ["build_parser", "main"]

#: The command groups (importing one registers its commands), in the order `--help` lists them.
GROUPS = (daemon, sessions, tasks, run, agents, git, view, ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Run many AI coding agents in parallel on one git repository.",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    shared = argparse.ArgumentParser(add_help=False)
    default = str(default_socket_path()).replace("%", "%%")  # help text is %-formatted
    shared.add_argument(
        "--socket",
        help=f"daemon socket (default: {default}; env CORRAL_SOCKET)",
    )
    shared.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    rank = {group.__name__: i for i, group in enumerate(GROUPS)}
    ordered = sorted(COMMANDS.items(), key=lambda item: rank[item[1][0].__module__])
    for name, (_fn, add_args, help_text) in ordered:  # by group, then as each group declares
        add_args(sub.add_parser(name, help=help_text, description=help_text, parents=[shared]))
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
