"""Methods about the daemon itself: status, shutdown, self-description."""

from __future__ import annotations

import os
import time
from typing import Any

from corral import __version__
from corral.models import DaemonStatus
from corral.params import NoParams
from corrald.api.context import Call, methods
from corrald.rpc.dispatch import openrpc_document


@methods.method()
async def daemon_status(call: Call, p: NoParams) -> DaemonStatus:
    """Report the daemon's version, pid, uptime, connections, sessions and cgroup support.

    Result: DaemonStatus. `cgroup` says whether per-agent cgroups (v2) are
    available here, with which controllers, and why not if they are not;
    `executor` is what runs agents and its capacity (cores, memory);
    `storage` says whether the state file takes writes (ok, full, readOnly,
    gone, error), since when it has not, and where a vanished file's contents
    were rescued to. While it is not ok every mutating method answers 7002,
    7003, 7004 or 7001 and keeps nothing of the request.
    """
    info = call.daemon
    # Validating is cheaper than `model_construct` (6 against 15 us: pydantic-core does it
    # in Rust, `model_construct` walks the fields in Python); the nested models pass as is.
    return DaemonStatus(
        version=__version__,
        pid=os.getpid(),
        uptime_secs=round(time.monotonic() - info.started_at, 3),
        connections=info.connections(),
        sessions=len(call.engine.sessions),
        subscribers=call.engine.subscribers,
        event_seq=call.engine.event_seq,
        executor=call.pool.capacity(),
        socket_path=info.socket_path,
        state_dir=info.state_dir,
        cgroup=info.cgroup,
        storage=call.engine.storage,
    )


@methods.method()
async def daemon_shutdown(call: Call, p: NoParams) -> bool:
    """Shut the daemon down gracefully.

    Accepting stops at once; running agents are stopped and their tasks go back
    to `ready` (worktrees and branches kept); in-flight requests finish within
    the shutdown grace. Result: true (sent before the daemon exits).
    """
    call.daemon.request_shutdown()
    return True


@methods.method("rpc.discover")
async def rpc_discover(call: Call, p: NoParams) -> dict[str, Any]:
    """Return the OpenRPC document describing every method, its params and result."""
    return openrpc_document(
        methods,
        title="corrald",
        version=__version__,
        description="corral daemon: parallel AI coding agents in git worktrees",
    )
