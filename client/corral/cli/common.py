"""What every command shares: the registry, output, exit codes and small helpers.

A leaf: the command modules import it, it imports none of them, so they can
be split by topic without import circles.

Start-up: `corral status` and `corral tasks --json` must start like a native
tool, so nothing here loads rich, pydantic or the models until a command
uses them (`Out.console`, `connect`); `raw_connect` and `Out.data` of plain
JSON need neither.

Conventions: data goes to stdout (a rich table, or JSON with `--json`),
errors go to stderr as one line, `NO_COLOR` is honoured (rich does it), and
the exit code says what happened: 0 ok, 1 the daemon reported an error,
2 usage error, 3 the daemon is not running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from corral.connection import RawClient

if TYPE_CHECKING:
    from enum import StrEnum

    from rich.console import Console

    from corral.client import Client
    from corral.models import Task

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3

Handler = Callable[[argparse.Namespace, "Out"], int]
#: name -> (handler, argument definitions, help), in the order `corral --help` lists them
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


class UsageError(Exception):
    """A command line that cannot work (exit 2), found after argparse accepted it."""


class Out:
    """Where a command's data goes: JSON or rich, stdout; errors to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    @cached_property
    def console(self) -> Console:
        from rich.console import Console  # loaded late: a command printing JSON never needs it

        return Console(highlight=False)

    @cached_property
    def err(self) -> Console:
        from rich.console import Console  # loaded late, as `console`

        return Console(stderr=True, highlight=False)

    def data(self, value: Any) -> None:
        """Print models (as their wire JSON) or plain JSON values."""
        if "pydantic" in sys.modules:  # without pydantic loaded, `value` cannot hold a model
            from corral.models import to_jsonable

            value = to_jsonable(value)
        print(json.dumps(value, indent=2, sort_keys=False))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich.table import Table  # loaded late, as `console`

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.console.print(table)

    def pairs(self, title: str, rows: Sequence[tuple[str, Any]]) -> None:
        """A title and aligned `name  value` lines, in plain text (no rich to load)."""
        width = max((len(name) for name, _ in rows), default=0)
        print(title)
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")

    def line(self, text: str) -> None:
        self.console.print(text)

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/] {text}", soft_wrap=True)


def connect(args: argparse.Namespace) -> Client:
    """A typed client: its results are models."""
    from corral.client import Client  # loaded late: it builds the models' validators

    return Client(args.socket).connect()


def raw_connect(args: argparse.Namespace) -> RawClient:
    """A client whose results are the daemon's JSON as sent: for commands that print it."""
    return RawClient(args.socket).connect()


class LazyChoices:
    """argparse `choices` from an enum of `corral.models`, imported only when argparse
    looks at them (the option is given, or help is printed), not at every start-up."""

    def __init__(self, enum_name: str) -> None:
        self.enum_name = enum_name

    def _values(self) -> list[str]:
        from corral import models

        enum: type[StrEnum] = getattr(models, self.enum_name)
        return [member.value for member in enum]

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __repr__(self) -> str:
        return f"LazyChoices({self.enum_name})"


def session_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--session",
        metavar="ID",
        help="the session to act on (may be omitted when exactly one exists)",
    )


def progress(out: Out, text: str) -> contextlib.AbstractContextManager[Any]:
    """A spinner on stderr for a long operation (nothing with --json or off a terminal)."""
    if out.as_json:
        return contextlib.nullcontext()
    return out.err.status(text)


def ago(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def task_rows(tasks: Sequence[Task]) -> list[list[Any]]:
    return [
        [
            t.id,
            t.state.value,
            t.priority,
            ", ".join(t.dependencies),
            t.attempts,
            t.agent_type or "",
            t.branch or "",
            f"{t.error_category.value}: {t.error}" if t.error_category else (t.error or ""),
        ]
        for t in tasks
    ]


TASK_COLUMNS = ["id", "status", "priority", "after", "attempts", "agent", "branch", "error"]


def config_from(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
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
    if getattr(args, "no_integrate", False):
        config["integrate"] = False
    return config


def integration_args(parser: argparse.ArgumentParser) -> None:
    """The flags that set up integration (shared by `init` and `run`)."""
    parser.add_argument(
        "--no-integrate",
        action="store_true",
        help="leave each task on its own branch (no integration branch, no queue)",
    )
