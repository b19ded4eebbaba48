"""Following a session: the live view (`corral watch`), and plain or quiet progress lines.

A view is a `render.Snapshot` fetched again when events arrive (a
`feed.EventFeed` on a background thread), at most every `FETCH_SECS` however
many come (one fetch for all that came meanwhile). Between events it is only
redrawn, once a second, while an agent runs (its runtime advances); with
nothing running and nothing happening there is no work at all: no fetch, no
redraw (rich's own refresh thread is off). The conflict matrix is a merge
per pair of branches, so it is recomputed only when a task completes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Literal

from rich.console import Console
from rich.live import Live

from corral.client import Client
from corral.models import AgentLifecycle, Event, SessionStatus
from corral.watch.feed import EventFeed
from corral.watch.render import Snapshot, fetch_matrix, gather, render

__all__ = ["FINISHED", "VIEW_TOPICS", "Mode", "follow", "watch"]

FINISHED = (SessionStatus.COMPLETED, SessionStatus.FAILED)
#: The events a view redraws on (log lines are far too many to redraw on).
VIEW_TOPICS = ["task", "agent", "violation", "session", "conflicts", "merge", "integration"]

Mode = Literal["live", "plain", "quiet"]

#: The shortest time between two fetches of the snapshot (a burst of events is one fetch).
FETCH_SECS = 0.5


def follow(
    c: Client,
    session_id: str,
    console: Console,
    *,
    mode: Mode,
    until_finished: bool = True,
    show_tasks: bool = False,
    on_event: Callable[[Event], None] | None = None,
    start: Callable[[], object] | None = None,
) -> Snapshot:
    """Show a session until it completes or fails (or forever), return the last snapshot.

    `live` redraws a rich Live view; `plain` prints one line per task status
    change (for logs and pipes); `quiet` prints nothing. `start` is called
    once subscribed, so `on_event` sees every event of a run it starts.
    Ctrl-C propagates.
    """
    started = time.time()
    matrix = fetch_matrix(c, session_id) if mode == "live" else None
    with EventFeed(c.path, VIEW_TOPICS, session_id) as feed:
        if start is not None:
            start()
        snap = gather(c, session_id, matrix)
        fetched = time.monotonic()
        live: Live | None = None
        if mode == "live":
            compact = console.size.height < 40
            live = Live(
                render(snap, tasks=show_tasks, started=started, compact=compact),
                console=console,
                auto_refresh=False,  # drawn below, when something changed
                transient=False,
            )
            live.start()
        try:
            while not (until_finished and snap.session.status in FINISHED):
                events = feed.get(timeout=1.0)
                if events:  # coalesce: everything until FETCH_SECS after the last fetch
                    while (wait := fetched + FETCH_SECS - time.monotonic()) > 0:
                        events += feed.get(timeout=wait)
                for event in events:
                    if on_event is not None:
                        on_event(event)
                    if mode == "plain":
                        _plain_line(console, event)
                if events:
                    completed = any(
                        e.type == "task.status" and e.payload.get("state") == "completed"
                        for e in events
                    )
                    if mode == "live" and completed:
                        matrix = fetch_matrix(c, session_id)
                    snap = gather(c, session_id, matrix)
                    fetched = time.monotonic()
                elif not _running(snap):
                    continue  # nothing happened and no runtime to advance
                if live is not None:
                    compact = console.size.height < 40
                    view = render(snap, tasks=show_tasks, started=started, compact=compact)
                    live.update(view, refresh=True)
        finally:
            if live is not None:
                live.stop()
    return snap


def _running(snap: Snapshot) -> bool:
    return any(
        a.lifecycle in (AgentLifecycle.STARTING, AgentLifecycle.RUNNING) for a in snap.agents
    )


def _plain_line(console: Console, event: Event) -> None:
    p = event.payload
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at or time.time()))
    if event.type == "task.status":
        extra = f" ({p['error']})" if p.get("error") and p.get("state") != "completed" else ""
        way_in = p.get("integrationStatus")
        integration = f", integration {way_in}" if way_in else ""
        console.print(
            f"{stamp} task {p.get('taskId')}: {p.get('state')}{integration}"
            f" (attempts {p.get('attempts', 0)}){extra}",
            highlight=False,
            soft_wrap=True,
        )
    elif event.type == "violation":
        console.print(
            f"{stamp} limit {p.get('kind')} on {p.get('taskId')}: {p.get('value')} >"
            f" {p.get('limit')} → {p.get('action')}",
            highlight=False,
        )
    elif event.type == "session.status":
        console.print(f"{stamp} session: {p.get('status')}", highlight=False)
    elif event.type == "integration.batch":
        went_back = [*p.get("conflicted", []), *p.get("gateFailed", [])]
        console.print(
            f"{stamp} integration: batch {' '.join(p.get('taskIds', []))},"
            f" {p.get('gateRuns', 0)} gate run(s); integrated"
            f" {' '.join(p.get('integrated', [])) or 'none'}"
            + (f"; sent back {' '.join(went_back)}" if went_back else ""),
            highlight=False,
            soft_wrap=True,
        )
    elif event.type == "integration.blocked":
        why = p.get("reason")
        console.print(
            f"{stamp} integration: {f'blocked: {why}' if why else 'moving again'}",
            highlight=False,
        )


def watch(path: str | None, session_id: str | None, *, once: bool, console: Console) -> int:
    """`corral watch`: a live view of one session until Ctrl-C (or one frame with `once`)."""
    with Client(path) as c:
        sid = c.session_get(session_id=session_id).id
        if once:
            console.print(render(gather(c, sid, fetch_matrix(c, sid)), tasks=True))
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            follow(c, sid, console, mode="live", until_finished=False, show_tasks=True)
    return 0
