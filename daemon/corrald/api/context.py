"""What every RPC method gets, and the registry the methods are declared in.

Each area module (`api.daemon`, `api.sessions`, ...) declares its methods on
`methods` with `@methods.method()`; a method is one thin async function:
validate (its params model does that), call the engine or the pool, return a
model. Its docstring is its documentation: it feeds `rpc.discover`, the
README's RPC reference and the CLI help.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral import errors
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

    def seed_session(self, session_id: str | None, repo_path: str | None) -> SessionState:
        """The corral session a seed call means, from its `sessionId` and repository path.

        In the seed, `sessionId` is the frontend's own session id and
        `projectPath`/`repoPath` the repository. They map onto corral
        sessions in this order: a `sessionId` that names a corral session is
        that session (so a frontend may pass its own id as `sessionId` to
        `init_parallel_scheduler` and use it everywhere); otherwise the path
        picks the one session on that repository (its realpath, so a
        subdirectory or a symlink of the work tree is the same repository);
        otherwise, as everywhere, the only session. Several sessions on the
        repository need a corral `sessionId` (1009 SessionRequired); none is
        1001 SessionNotFound.
        """
        if session_id is not None and session_id in self.engine.sessions:
            return self.engine.sessions[session_id]
        if repo_path is not None:
            want = os.path.realpath(repo_path)
            found = [
                s
                for s in self.engine.sessions.values()
                if want == (root := os.path.realpath(s.session.repo_path))
                or want.startswith(root + os.sep)
            ]
            if len(found) == 1:
                return found[0]
            if found:
                raise errors.SessionRequired(
                    f"{len(found)} sessions work on {repo_path}: name one by its corral sessionId",
                    {"sessions": sorted(s.id for s in found), "repoPath": repo_path},
                )
            raise errors.SessionNotFound(
                f"no session works on {repo_path}", {"repoPath": repo_path, "sessionId": session_id}
            )
        return self.engine.session(None)


methods: Registry[Call] = Registry()
