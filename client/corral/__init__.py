"""corral: the wire contract, the client and the CLI for the corrald daemon.

`corral.models` and `corral.errors` are the wire contract and import no trio;
`corral.Client` / `corral.AsyncClient` load the client on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from corral import client

        return getattr(client, name)
    raise AttributeError(name)
