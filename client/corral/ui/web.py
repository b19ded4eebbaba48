"""`corral ui --web`: the dashboard in a browser, through textual-serve, behind a token.

textual-serve runs one `corral ui` process per browser tab and relays its
screen over a websocket. It listens on 127.0.0.1 only, and every request
must carry the random token printed at start: in the URL (`?token=`), or in
the cookie the page sets when opened with it, which the page's own asset
and websocket requests then send (SameSite=Strict, so another site cannot
make a browser send it). Without it the answer is 403, so another user of
the machine cannot reach the daemon (whose socket only admits its owner)
through the web port. The page is corral's own template: textual-serve's
loads a font from Google; ours takes it from the static files installed
with textual-serve, so nothing is fetched from the network.
"""

from __future__ import annotations

import hmac
import secrets
import shlex
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from rich.console import Console
from textual_serve.server import Server

from corral.paths import socket_path

__all__ = ["TokenServer", "serve", "ui_command"]

TEMPLATES = Path(__file__).with_name("templates")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ui_command(path: str | None, session_id: str | None) -> str:
    """The shell command textual-serve runs per browser tab (every word quoted)."""
    argv = [sys.executable, "-m", "corral.cli", "ui", "--socket", str(socket_path(path))]
    if session_id:
        argv += ["--session", session_id]
    return shlex.join(argv)


def free_port() -> int:
    """A port nobody listens on now (for `--port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TokenServer(Server):
    """textual-serve on 127.0.0.1 that refuses every request without the token."""

    def __init__(self, command: str, port: int, token: str, console: Console) -> None:
        super().__init__(
            command,
            host="127.0.0.1",
            port=port,
            title="corral",
            templates_path=TEMPLATES,
        )
        self.token = token
        self.cookie = f"corral_ui_{port}"
        self.console = console
        self.refused = 0

    @property
    def url(self) -> str:
        return f"{self.public_url}/?token={self.token}"

    def _allowed(self, request: web.Request) -> tuple[bool, bool]:
        """(allowed, came in the URL): the token, from the query or the cookie."""
        given = request.query.get("token")
        if given is not None and hmac.compare_digest(given, self.token):
            return True, True
        cookie = request.cookies.get(self.cookie)
        return cookie is not None and hmac.compare_digest(cookie, self.token), False

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed, in_url = self._allowed(request)
        if not allowed:
            self.refused += 1
            return web.Response(
                status=403,
                text="corral ui: this page needs the token printed by `corral ui --web`\n",
            )
        response = await handler(request)
        if in_url and request.path == "/":
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
        return response

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    async def on_startup(self, app: web.Application) -> None:
        self.console.print(f"corral ui: open {self.url}", highlight=False, soft_wrap=True)
        self.console.print("(127.0.0.1 only; the token is required. Ctrl-C stops.)")


def serve(path: str | None, session_id: str | None, port: int, console: Console) -> int:
    """Serve the dashboard until Ctrl-C; print the URL with its token first."""
    port = port or free_port()
    server = TokenServer(ui_command(path, session_id), port, secrets.token_urlsafe(24), console)
    server.serve()
    return 0
