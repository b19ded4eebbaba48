"""Following a session: the live view (`corral watch`), and plain or quiet progress lines.

A view fetches a `render.Snapshot` once, then applies each event to it
(`model.apply`, from a `feed.EventFeed` on a background thread) and asks
the daemon only for what an event leaves out: one task, one agent, the
stats. Events are taken in rounds, at most one per `DRAW_SECS` however many
come, and each round is one redraw. CPU and memory have no events: while an
agent runs they are fetched every `TICK_SECS`, and the view is redrawn once
a second (runtimes advance). With nothing running and nothing happening
there is no work at all (rich's own refresh thread is off). The conflict
matrix is a merge per pair of branches, so it is recomputed only when a
task completes. When the feed cannot vouch for its events (a reconnection,
events missed for good: `EventFeed.resets`) the snapshot is fetched anew.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Literal

from rich.console import Console, Group
from rich.live import Live

from corral.client import Client
from corral.models import Event, SessionStatus
from corral.watch.feed import EventFeed
from corral.watch.model import LIVE, Needs, apply, latest
from corral.watch.render import Snapshot, catch_up, fetch_matrix, gather, render

__all__ = ["FINISHED", "VIEW_TOPICS", "Mode", "ctrl_c_flag", "follow", "watch"]

FINISHED = (SessionStatus.COMPLETED, SessionStatus.FAILED)
#: The events a view redraws on (log lines are far too many to redraw on).
VIEW_TOPICS = ["task", "agent", "violation", "session", "conflicts", "merge", "integration"]

Mode = Literal["live", "plain", "quiet"]

#: The shortest time between two rounds of events (each is at most one fetch and one redraw).
DRAW_SECS = 1.0
#: How long the feed lets events gather before it reads them (one read for many).
BATCH_SECS = 0.25
#: Seconds between fetches of the running agents' CPU and memory (they have no events).
TICK_SECS = 2.0
#: Task ids listed per status in the live view (a terminal shows a few lines of them).
MOST_TASKS = 40


@contextlib.contextmanager
def ctrl_c_flag() -> Iterator[threading.Event]:
    """Ctrl-C raises `KeyboardInterrupt` as usual, and also sets the flag yielded.

    Python can lose a `KeyboardInterrupt`: one raised while a finalizer runs
    (a generator of rich's, collected mid-render) is printed as "Exception
    ignored" and dropped, and the view would go on. The flag outlives that,
    and a view checks it every round. Only in the main thread, and only over
    Python's own handler (a caller's handler is left alone).
    """
    flag = threading.Event()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield flag
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        flag.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
    with (
        ctrl_c_flag() as interrupted,
        EventFeed(c.path, VIEW_TOPICS, session_id, batch_secs=BATCH_SECS) as feed,
    ):
        if start is not None:
            start()
        snap = gather(c, session_id, fetch_matrix(c, session_id) if mode == "live" else None)
        resets = feed.resets
        needs = Needs()
        last_round = ticked = time.monotonic()
        live: Live | None = None
        if mode == "live":
            live = Live(
                _draw(snap, console, show_tasks, started), console=console, auto_refresh=False
            )
            live.start()
        try:
            while not (until_finished and snap.session.status in FINISHED):
                if interrupted.is_set():
                    raise KeyboardInterrupt  # one Python dropped (see `ctrl_c_flag`)
                events = feed.get(timeout=1.0)
                if feed.error is not None:  # e.g. the session is gone from a restarted daemon
                    raise feed.error
                if events:  # coalesce: everything until DRAW_SECS after the last round
                    # Sleep rather than wait on the queue: a wait wakes for each event.
                    time.sleep(max(0.0, last_round + DRAW_SECS - time.monotonic()))
                    events += feed.get(timeout=0)
                for event in events:
                    if on_event is not None:
                        on_event(event)
                    if mode == "plain":
                        _plain_line(console, event)
                for event in latest(events):
                    needs.update(apply(snap, event, keep_ended=False))
                now = time.monotonic()
                if snap.running and now - ticked >= TICK_SECS:
                    needs.parts.add(LIVE)
                    ticked = now
                if feed.resets != resets:  # the events alone cannot be trusted: start afresh
                    resets = feed.resets
                    snap = gather(c, session_id, snap.matrix)
                    needs = Needs(changed=True)
                if not (events or needs or needs.changed or snap.running):
                    continue  # nothing happened and no runtime to advance
                last_round = now
                catch_up(c, snap, needs.take(), conflicts=mode == "live")
                if live is not None:
                    live.update(_draw(snap, console, show_tasks, started), refresh=True)
        finally:
            if live is not None:
                live.stop()
    return snap


def _draw(snap: Snapshot, console: Console, show_tasks: bool, started: float) -> Group:
    snap.at = time.time()  # runtimes advance between fetches
    compact = console.size.height < 40
    return render(snap, tasks=show_tasks, started=started, compact=compact, most=MOST_TASKS)


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
