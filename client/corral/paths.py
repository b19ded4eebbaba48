"""Where things are by default: the daemon's socket (one definition for daemon and clients)."""

from __future__ import annotations

import os
from pathlib import Path


def default_socket_path() -> Path:
    """`$CORRAL_SOCKET`, else `$XDG_RUNTIME_DIR/corral/corrald.sock` (`/tmp/corral-<uid>/...`)."""
    env = os.environ.get("CORRAL_SOCKET")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/corral-{os.getuid()}"
    return Path(runtime) / "corral" / "corrald.sock"


def socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit` when given, else `default_socket_path()`."""
    return Path(explicit) if explicit else default_socket_path()
