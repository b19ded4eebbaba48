"""Tasks: `corral add`, `tasks`, `stop`."""

from __future__ import annotations

import argparse

from corral.cli.common import (
    EXIT_OK,
    TASK_COLUMNS,
    LazyChoices,
    Out,
    UsageError,
    command,
    connect,
    progress,
    raw_connect,
    session_arg,
    task_rows,
)


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("title", help="what the agent should do (its prompt's first line)")
    session_arg(parser)
    parser.add_argument("--id", help="task id (default: made from the title)")
    parser.add_argument("--desc", default="", help="longer description for the prompt")
    parser.add_argument("--priority", type=int, default=0, help="lower runs first (default 0)")
    parser.add_argument(
        "--after", nargs="+", default=[], metavar="ID", help="tasks that must complete first"
    )
    parser.add_argument("--agent", metavar="TYPE", help="agent type for this task only")
    parser.add_argument(
        "--paths",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="paths the task expects to touch: tasks whose paths overlap never run at once",
    )


@command("add", "add a task to a session", _add_args)
def cmd_add(args: argparse.Namespace, out: Out) -> int:
    from corral.models import TaskSpec, check_task_id  # loaded late (see `corral.cli.agents`)
    from corral.plan import slugify

    task_id = args.id or slugify(args.title)
    try:  # the same checks the daemon makes, so a bad argument is a usage error (exit 2)
        check_task_id(task_id)
        spec = TaskSpec(
            id=task_id,
            title=args.title,
            description=args.desc,
            priority=args.priority,
            dependencies=args.after,
            agent_type=args.agent,
            paths=args.paths,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UsageError(str(exc)) from None
    with connect(args) as c:
        task = c.parallel_add_task(session_id=args.session, task=spec)
    if out.as_json:
        out.data(task)
    else:
        out.line(f"added task [bold]{task.id}[/] ({task.state.value})")
    return EXIT_OK


def _tasks_args(parser: argparse.ArgumentParser) -> None:
    session_arg(parser)
    parser.add_argument(
        "--status",
        choices=LazyChoices("TaskState"),
        metavar="STATUS",  # a metavar keeps argparse from listing the choices at start-up
        help="only tasks in this status: %(choices)s",
    )


@command("tasks", "list a session's tasks", _tasks_args)
def cmd_tasks(args: argparse.Namespace, out: Out) -> int:
    if out.as_json:  # the daemon's JSON as it comes: no models to build, validate and dump
        with raw_connect(args) as raw:
            out.data(raw.call("parallel_list_tasks", sessionId=args.session, state=args.status))
        return EXIT_OK
    with connect(args) as c:
        tasks = c.parallel_list_tasks(session_id=args.session, state=args.status)
    out.table("tasks", TASK_COLUMNS, task_rows(tasks))
    return EXIT_OK


def _stop_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", nargs="?", help="cancel only this task (its dependents block)")
    session_arg(parser)


@command(
    "stop",
    "pause the session and stop its running agents (their tasks go back to ready;"
    " `corral resume` goes on), or cancel one TASK",
    _stop_args,
)
def cmd_stop(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        if args.task:
            with progress(out, f"cancelling {args.task}"):
                changed = c.parallel_cancel_task(session_id=args.session, task_id=args.task)
        else:  # the daemon pauses a running session first, so nothing restarts
            with progress(out, "stopping agents"):
                changed = c.parallel_stop_all(session_id=args.session)
    if out.as_json:
        out.data(changed)
    else:
        out.table("changed tasks", TASK_COLUMNS, task_rows(changed))
    return EXIT_OK
