"""The `corral` command: every workflow of the daemon from a terminal.

Conventions: data goes to stdout (a rich table, or JSON with `--json`),
errors go to stderr as one line, `NO_COLOR` is honoured (rich does it), and
the exit code says what happened: 0 ok, 1 the daemon reported an error,
2 usage error, 3 the daemon is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from corral import __version__, errors
from corral.client import Client

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
        print(json.dumps(_plain(value), indent=2, sort_keys=False))

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


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


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
