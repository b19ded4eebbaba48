"""The RPC methods, one module per area; importing this package registers them all."""

from corrald.api import (
    agents,
    conflicts,
    daemon,
    events,
    integration,
    landing,
    sessions,
    tasks,
    worktrees,
)
from corrald.api.context import Call, ClientState, DaemonInfo, methods

__all__ = [
    "Call",
    "ClientState",
    "DaemonInfo",
    "agents",
    "conflicts",
    "daemon",
    "events",
    "integration",
    "landing",
    "methods",
    "sessions",
    "tasks",
    "worktrees",
]
