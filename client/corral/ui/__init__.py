"""`corral ui`: the interactive dashboard (Textual), in a terminal or a browser.

A client of the daemon like any other: only RPC and the event stream.

- `link`: the asyncio connection (requests, and an event stream that resumes);
- `state`: the `Board` (what the daemon said) and which events make what stale;
- `app`: `CorralApp`, its workers and the screens' actions;
- `run`, `agents`, `conflicts`, `integration`: one screen each; `logview`
  follows one agent's output; `form` creates a session;
- `web`: `corral ui --web`, the same app in a browser behind a token.

Importing this package imports Textual: the CLI imports it only inside `corral ui`.
"""

from __future__ import annotations

from corral.ui.app import CorralApp

__all__ = ["CorralApp"]
