"""What every RPC method gets, and the registry the methods are declared in.

Each area module (`api.daemon`, `api.sessions`, ...) declares its methods on
`methods` with `@methods.method()`; a method is one thin async function:
validate (its params model does that), call the engine or the pool, return a
model. Its docstring is its documentation: it feeds `rpc.discover`, the
README's RPC reference and the CLI help.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.models import CgroupFeatures, SchedulerConfig
from corrald.pool.pool import AgentPool
from corrald.rpc.dispatch import Registry
from corrald.rpc.server import Connection
from corrald.state.engine import Engine, SessionState


@dataclass
class DaemonInfo:
    """Facts about the running daemon that `daemon_status` reports."""

    socket_path: str
    state_dir: str
    cgroup: CgroupFeatures
    request_shutdown: Callable[[], None]
    defaults: SchedulerConfig = field(default_factory=SchedulerConfig)
    started_at: float = field(default_factory=time.monotonic)
    connections: Callable[[], int] = lambda: 0


@dataclass
class ClientState:
    """What the methods remember per connection (the transport never looks inside)."""

    poll_cursor: int = 0  # parallel_poll_completed: the last completion this client saw
    subscriptions: set[str] = field(default_factory=set)


@dataclass
class Call:
    """What every handler gets: engine, pool, daemon facts, the calling connection."""

    engine: Engine
    pool: AgentPool
    daemon: DaemonInfo
    conn: Connection[ClientState]

    def session(self, session_id: str | None) -> SessionState:
        """The named session, or the only one (SessionNotFound, SessionRequired)."""
        return self.engine.session(session_id)


methods: Registry[Call] = Registry()
