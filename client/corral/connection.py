"""A blocking connection to corrald, with neither trio nor pydantic.

What the simplest commands need and nothing more: `corral status` and
`corral tasks --json` print the daemon's JSON as it comes, so they use
`RawClient` and start without building a single model. `corral.client.Client`
adds the typed methods on top of it; `corral.aclient.AsyncClient` is the trio
side.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from corral import errors
from corral.paths import socket_path
from corral.transport import MAX_FRAME, Decoder, encode, request

__all__ = ["Connection", "RawClient", "answer", "not_running", "wait_for_socket"]

#: connect() errors that mean nobody is listening (as opposed to, say, EACCES).
NOT_LISTENING = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK)


def answer(message: dict[str, Any]) -> Any:
    """The result of a response, or its error raised as the `corral.errors` class of its code."""
    if "error" in message and message["error"] is not None:
        raise errors.CorralError.from_wire(message["error"])
    return message.get("result")


def not_running(path: Path, exc: OSError) -> errors.DaemonNotRunning:
    return errors.DaemonNotRunning(
        f"corrald is not running on {path} ({exc.strerror}). Start it with `corral daemon`"
        " (foreground) or `systemctl --user enable --now corrald.socket`.",
        {"socket": str(path)},
    )


class Connection:
    """A blocking NDJSON connection: a Unix socket and the transport's decoder."""

    def __init__(self, sock: socket.socket, path: Path, max_frame: int = MAX_FRAME) -> None:
        self.sock = sock
        self.path = path
        self.timeout = sock.gettimeout()
        self.decoder = Decoder(max_frame)

    @classmethod
    def open(cls, path: Path, timeout: float | None) -> Connection:
        """Connect; `DaemonNotRunning` when nothing listens on `path`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            if exc.errno in NOT_LISTENING:
                raise not_running(path, exc) from None
            raise
        return cls(sock, path)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError as exc:
            raise errors.ConnectionLost(f"send failed: {exc}") from exc

    def receive(self) -> dict[str, Any]:
        """The next message; `ConnectionLost` when the connection ends or times out."""
        while (message := self.decoder.next_message()) is None:
            if not self._fill():
                raise errors.ConnectionLost("timed out waiting for corrald")
        return message

    @property
    def buffered(self) -> bool:
        """True if bytes read are waiting to be taken as messages."""
        return self.decoder.pending > 0

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """The next message if one comes within `timeout`, else None (a read that can stop)."""
        message = self.decoder.next_message()
        if message is None:
            self.sock.settimeout(timeout)
            try:
                if self._fill():
                    message = self.decoder.next_message()
            finally:
                self.sock.settimeout(self.timeout)
        return message

    def _fill(self) -> bool:
        """Read once into the decoder; False if the socket's timeout ran out first."""
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        except OSError as exc:
            raise errors.ConnectionLost(str(exc)) from exc
        if not chunk:
            raise errors.ConnectionLost("corrald closed the connection")
        self.decoder.feed(chunk)
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection({self.path}, {self.decoder!r})"


def wait_for_socket(path: Path, timeout: float = 30.0) -> None:
    """Block until something answers a connect on `path`; `DaemonNotRunning` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            Connection.open(path, 1.0).close()
            return
        except errors.DaemonNotRunning:
            time.sleep(0.1)
    raise errors.DaemonNotRunning(data={"socket": str(path)})


class RawClient:
    """Blocking client that speaks plain JSON values: `call(method, **params)` returns the
    result as the daemon sent it. One request at a time per instance (thread-safe)."""

    def __init__(
        self, socket: str | os.PathLike[str] | None = None, *, timeout: float | None = 60.0
    ) -> None:
        self.path = socket_path(socket)
        self.timeout = timeout
        self._sock: Connection | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.notifications: list[dict[str, Any]] = []  # pushes that arrived between answers

    def connect(self) -> RawClient:
        if self._sock is None:
            self._sock = Connection.open(self.path, self.timeout)
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RawClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` with named params (wire names, plain JSON values; None is left out)
        and return its raw JSON result."""
        return self._request(method, {k: v for k, v in params.items() if v is not None})

    def _request(self, method: str, params: dict[str, Any]) -> Any:
        with self._lock:
            self.connect()
            sock = self._sock
            assert sock is not None
            request_id = next(self._ids)
            try:
                sock.send(request(method, params, request_id))
                while True:
                    message = sock.receive()
                    if message.get("id") == request_id:
                        return answer(message)
                    if "method" in message:
                        self.notifications.append(message)
                    elif message.get("id") is None and "error" in message:
                        raise errors.CorralError.from_wire(message["error"])
            except (errors.ConnectionLost, errors.FrameTooLarge):
                # The stream is out of step or gone: the next call connects afresh.
                self.close()
                raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, connected={self._sock is not None})"
