"""Events for the views: a subscription on a thread of its own that a command can stop."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from corral import errors
from corral.connection import Connection
from corral.models import Event
from corral.paths import socket_path
from corral.transport import Subscription

__all__ = ["EventFeed"]


class EventFeed:
    """Subscribe on a connection of its own and queue the events; stoppable.

    `Client.events()` blocks in `recv` forever, which a command cannot stop
    cleanly; this feed polls its socket with a short timeout so `close()`
    ends its thread at once. It drives `transport.Subscription`: after a
    dropped connection it reconnects, and after a `lagged` notice it
    resubscribes, from the last seq it queued, so nothing is missed or
    repeated. If the daemon no longer keeps the events since then
    (`EventsExpired`, a long absence) it subscribes again from now.

    `resets` counts the times a view kept up by events cannot trust them
    alone: each reconnection (the daemon restarted: its runs and live
    figures are new) and each lost stretch of events. A view that sees it
    move fetches its snapshot again.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        topics: list[str] | None = None,
        session_id: str | None = None,
        *,
        agent_id: str | None = None,
        batch_secs: float = 0.0,
    ) -> None:
        self.path = socket_path(path)
        self.batch_secs = batch_secs
        self.topics = topics
        self.session_id = session_id
        self.agent_id = agent_id
        self.queue: queue.Queue[Event] = queue.Queue()
        self.error: errors.CorralError | None = None
        self.resets = 0
        self._sub = Subscription(topics, session_id, agent_id=agent_id)
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-events", daemon=True)

    @property
    def last_seq(self) -> int | None:
        """The seq of the last event queued (where a resubscription resumes)."""
        return self._sub.last_seq

    def start(self, timeout: float = 10.0) -> EventFeed:
        """Start the thread and return once subscribed (raise if that failed)."""
        self._thread.start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise errors.ConnectionLost("timed out subscribing to events")
        if self.error is not None:
            self.close()
            raise self.error
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def __enter__(self) -> EventFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, timeout: float) -> list[Event]:
        """Wait up to `timeout` for events; return every one queued (maybe none)."""
        out: list[Event] = []
        try:
            out.append(self.queue.get(timeout=timeout))
            while True:
                out.append(self.queue.get_nowait())
        except queue.Empty:
            return out

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    conn = Connection.open(self.path, 5.0)
                except errors.DaemonNotRunning:
                    if not self._subscribed.is_set():
                        raise  # never got going: start() reports it
                    self._stop.wait(0.1)  # a restart: wait for the daemon to be back
                    continue
                with conn:
                    self._follow(conn)
        except errors.CorralError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(errors.ConnectionLost(str(exc)))

    def _follow(self, conn: Connection) -> None:
        """Subscribe on `conn` and queue its events until it drops or the feed stops."""
        sub = self._sub
        resumed = sub.subscribed > 0  # subscribed before, on a connection now gone
        sub.new_connection()
        try:
            while not self._stop.is_set():
                if sub.wants_subscribe:
                    conn.send(sub.subscribe())
                message = conn.poll(0.2)
                if message is None:
                    continue
                event = sub.receive(message)
                if sub.active:
                    self._subscribed.set()
                    if resumed:
                        resumed = False
                        self.resets += 1
                if event is not None:
                    self.queue.put(event)
                    if self.batch_secs and not conn.buffered:
                        # Let the next events gather in the socket: one read (and one
                        # wake-up of the view) takes them all, rather than one per event.
                        self._stop.wait(self.batch_secs)
        except errors.ConnectionLost:
            return  # reconnect and resume
        except errors.EventsExpired:
            # Missed for good: start again from now; the view fetches afresh (`resets`).
            self._sub = Subscription(self.topics, self.session_id, agent_id=self.agent_id)
            self.resets += 1

    def _fail(self, error: errors.CorralError) -> None:
        self.error = error
        self._stop.set()
        self._subscribed.set()

    def __repr__(self) -> str:
        return (
            f"EventFeed({self.path}, topics={self.topics}, last_seq={self.last_seq},"
            f" resets={self.resets})"
        )
