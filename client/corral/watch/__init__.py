"""Live views of a session: `corral watch`, and the progress of `corral run`/`demo`.

- `feed`: `EventFeed`, the events a view redraws on (a stoppable subscription);
- `model`: how a view applies events to its rows, and what it then still needs;
- `render`: `Snapshot` (what the daemon says now) and how it is drawn;
- `summary`: what a finished run did, as data and as a table;
- `live`: `follow` a session (live, plain or quiet) and `watch` (the command).
"""

from __future__ import annotations

from corral.watch.feed import EventFeed
from corral.watch.live import FINISHED, VIEW_TOPICS, Mode, follow, watch
from corral.watch.render import (
    INTEGRATION_STYLE,
    STATUS_STYLE,
    Snapshot,
    bar,
    duration,
    fetch_matrix,
    gather,
    render,
    render_integration,
    render_matrix,
    render_tasks,
)
from corral.watch.summary import print_summary, summarize

__all__ = [
    "FINISHED",
    "INTEGRATION_STYLE",
    "STATUS_STYLE",
    "VIEW_TOPICS",
    "EventFeed",
    "Mode",
    "Snapshot",
    "bar",
    "duration",
    "fetch_matrix",
    "follow",
    "gather",
    "print_summary",
    "render",
    "render_integration",
    "render_matrix",
    "render_tasks",
    "summarize",
    "watch",
]
