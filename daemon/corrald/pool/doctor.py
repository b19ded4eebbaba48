"""What `agents_check` (`corral doctor`) sees: each agent type's CLI on this daemon."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

import trio

from corral import errors
from corral.models import AgentCheck
from corrald.agents.check import judge
from corrald.agents.types import BUILTIN_TYPES, AgentType, AgentTypeConfig, resolve_type

#: a CLI that takes longer than this to print its version is reported without one
VERSION_TIMEOUT_SECS = 20.0


async def _version(path: str, env: Mapping[str, str]) -> str | None:
    """What ``path --version`` prints (stdout, else stderr), or None if it cannot say."""
    with trio.move_on_after(VERSION_TIMEOUT_SECS):
        try:
            done = await trio.run_process(
                [path, "--version"],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        except OSError as exc:
            return f"cannot run: {exc}"
        out = done.stdout.decode("utf-8", "replace").strip()
        return out or done.stderr.decode("utf-8", "replace").strip()
    return None


async def check_agents(
    custom: Mapping[str, AgentTypeConfig], env: Mapping[str, str]
) -> list[AgentCheck]:
    """Every builtin and configured agent type: found?, its version, argv known good?

    The executable is looked up on the daemon's PATH, as a run would find it.
    Versions are asked in parallel, each bounded by VERSION_TIMEOUT_SECS.
    """
    kinds: list[AgentType] = []
    for name in sorted({*BUILTIN_TYPES, *custom}):
        try:
            kinds.append(resolve_type(name, dict(custom)))
        except errors.UnknownAgentType:  # "command" without a table
            kinds.append(BUILTIN_TYPES[name])
    results: dict[str, AgentCheck] = {}

    async def one(t: AgentType) -> None:
        path = shutil.which(t.argv[0], path=env.get("PATH")) if t.argv else None
        said = await _version(path, env) if path is not None else None
        results[t.name] = judge(t, path, said)

    async with trio.open_nursery() as nursery:
        for t in kinds:
            nursery.start_soon(one, t)
    return [results[t.name] for t in kinds]
