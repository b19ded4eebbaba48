"""Agents: `corral agents` and `corral logs` (-f follows a live agent).

Like every command module, it imports rich, the models and `corral.watch`
inside the commands that use them: `corral` imports all command modules at
start-up, and a simple command must not pay for them.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from corral import errors
from corral.cli.common import EXIT_OK, Out, UsageError, command, connect, session_arg

if TYPE_CHECKING:
    from corral.client import Client
    from corral.models import Agent, LogEntry


def _agents_args(parser: argparse.ArgumentParser) -> None:
    session_arg(parser)
    parser.add_argument("--live", action="store_true", help="only agents running now")


@command("agents", "list a session's agents (one per attempt)", _agents_args)
def cmd_agents(args: argparse.Namespace, out: Out) -> int:
    from corral.watch import duration

    with connect(args) as c:
        agents = c.parallel_list_agents(session_id=args.session, live=args.live)
    if out.as_json:
        out.data(agents)
        return EXIT_OK
    now = time.time()
    out.table(
        "agents",
        [
            "id",
            "task",
            "type",
            "lifecycle",
            "activity",
            "runtime",
            "tokens",
            "cost",
            "CPU",
            "memory",
            "end",
        ],
        [
            [
                a.id,
                a.task_id,
                a.agent_type,
                a.lifecycle.value,
                a.status.value,
                duration((a.ended_at or now) - a.started_at),
                a.tokens,
                f"${a.cost:.4f}",
                f"{a.cpu_percent:.0f}%",
                f"{a.memory_mb:.0f} MB",
                a.end_reason.value if a.end_reason else "",
            ]
            for a in agents
        ],
    )
    return EXIT_OK


def _logs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", help="agent id (see `corral agents`)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the agent ends"
    )
    parser.add_argument("--offset", type=int, default=0, metavar="N", help="start at line N")


def _find_agent(c: Client, agent_id: str) -> Agent:
    for session in c.session_list():
        for agent in c.parallel_list_agents(session_id=session.id):
            if agent.id == agent_id:
                return agent
    raise errors.AgentNotFound(f"no agent {agent_id!r}", {"agentId": agent_id})


@command("logs", "print an agent's output (-f follows it until the agent ends)", _logs_args)
def cmd_logs(args: argparse.Namespace, out: Out) -> int:
    if args.offset < 0:
        raise UsageError("--offset must be 0 or more")
    from rich.text import Text

    from corral.models import AgentLifecycle, LogEntry
    from corral.watch import EventFeed

    ended_states = (AgentLifecycle.EXITED, AgentLifecycle.KILLED)

    def show(entry: LogEntry) -> None:
        if out.as_json and args.follow:
            print(json.dumps(entry.to_wire()), flush=True)
        elif not out.as_json:
            style = "red" if entry.stream == "stderr" else "dim" if entry.stream == "daemon" else ""
            out.console.print(Text(entry.line, style=style), soft_wrap=True)

    with connect(args) as c:
        if not args.follow:
            entries = _read_logs(c, args.agent, args.offset)
            if out.as_json:
                out.data(entries)
            else:
                for entry in entries:
                    show(entry)
            return EXIT_OK
        # Subscribe before reading what is there, then skip what was read: no gap, no repeat.
        with EventFeed(c.path, ["log", "agent.status"], agent_id=args.agent) as feed:
            offset = args.offset
            for entry in _read_logs(c, args.agent, offset):
                show(entry)
                offset = entry.offset + 1
            ended = _find_agent(c, args.agent).lifecycle in ended_states
            while not ended:
                for event in feed.get(timeout=1.0):
                    p = event.payload
                    if p.get("agentId") != args.agent:
                        continue
                    if event.type == "log" and int(p.get("offset", -1)) >= offset:
                        entry = LogEntry.model_validate(p)
                        show(entry)
                        offset = entry.offset + 1
                    elif event.type == "agent.status" and p.get("lifecycle") in ended_states:
                        ended = True
            for entry in _read_logs(c, args.agent, offset):  # lines that raced the end
                show(entry)
    return EXIT_OK


def _read_logs(c: Client, agent_id: str, offset: int) -> list[LogEntry]:
    entries: list[LogEntry] = []
    while True:
        page = c.parallel_get_agent_logs(agent_id=agent_id, offset=offset, limit=1000)
        entries += page
        if len(page) < 1000:
            return entries
        offset = page[-1].offset + 1


def _doctor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--type", action="append", metavar="NAME", help="only these agent types (repeatable)"
    )


@command("doctor", "check each agent type's CLI: found, version, argv known good", _doctor_args)
def cmd_doctor(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        checks = c.agents_check()
    if args.type:
        checks = [k for k in checks if k.agent_type in args.type]
    if out.as_json:
        out.data(checks)
        return EXIT_OK
    out.table(
        "agent types",
        ["type", "status", "executable", "version", "verified with", "detail"],
        [
            [
                k.agent_type,
                k.status.value,
                k.path or k.executable or "",
                k.version or "",
                k.verified or "",
                k.detail,
            ]
            for k in checks
        ],
    )
    return EXIT_OK
