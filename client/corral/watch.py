"""Live views of a session: `corral watch`, and the progress of `corral run`/`demo`.

A view is a `Snapshot` (what the daemon says now, gathered with a few RPC
calls) drawn by `render`. It is redrawn when events arrive (an `EventFeed` on
a background thread) and on a 1 s tick, so runtimes advance and a missed
event costs at most a second. The conflict matrix is a merge per pair of
branches, so it is recomputed only when a task completes, not every tick.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from corral import errors
from corral.client import Client, _Socket
from corral.models import (
    Agent,
    ConflictMatrix,
    Event,
    MatrixState,
    PoolStats,
    SchedulerStats,
    Session,
    SessionStatus,
    Task,
    TaskStatus,
    Violation,
)
from corral.paths import socket_path
from corral.transport import Subscription

FINISHED = (SessionStatus.COMPLETED, SessionStatus.FAILED)
#: The events a view redraws on (log lines are far too many to redraw on).
VIEW_TOPICS = ["task", "agent", "violation", "session", "conflicts", "merge"]

# --- events ---------------------------------------------------------------------------


class EventFeed:
    """Subscribe on a connection of its own and queue the events; stoppable.

    `Client.events()` blocks in `recv` forever, which a command cannot stop
    cleanly; this feed polls its socket with a short timeout so `close()`
    ends its thread at once. It drives `transport.Subscription`: after a
    dropped connection it reconnects, and after a `lagged` notice it
    resubscribes, from the last seq it queued, so nothing is missed or
    repeated.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        topics: list[str] | None = None,
        session_id: str | None = None,
    ) -> None:
        self.path = socket_path(path)
        self.topics = topics
        self.session_id = session_id
        self.queue: queue.Queue[Event] = queue.Queue()
        self.error: errors.CorralError | None = None
        self._sub = Subscription(topics, session_id)
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
                    conn = _Socket.open(self.path, 5.0)
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

    def _follow(self, conn: _Socket) -> None:
        """Subscribe on `conn` and queue its events until it drops or the feed stops."""
        sub = self._sub
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
                if event is not None:
                    self.queue.put(event)
        except errors.ConnectionLost:
            return  # reconnect and resume

    def _fail(self, error: errors.CorralError) -> None:
        self.error = error
        self._stop.set()
        self._subscribed.set()

    def __repr__(self) -> str:
        return f"EventFeed({self.path}, topics={self.topics}, last_seq={self.last_seq})"


# --- snapshot -------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What a view shows, as the daemon reported it at `at`."""

    session: Session
    stats: SchedulerStats
    pool: PoolStats
    agents: list[Agent]
    tasks: list[Task]
    violations: list[Violation]
    matrix: ConflictMatrix | None = None
    at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return (
            f"Snapshot({self.session.id}, {self.session.status.value}, agents={len(self.agents)})"
        )


def gather(c: Client, session_id: str, matrix: ConflictMatrix | None = None) -> Snapshot:
    """Ask the daemon for everything a view draws (the matrix is passed in: it is costly)."""
    return Snapshot(
        session=c.session_get(session_id=session_id),
        stats=c.parallel_get_scheduler_stats(session_id=session_id),
        pool=c.parallel_get_pool_stats(session_id=session_id),
        agents=c.parallel_list_agents(session_id=session_id, live=True),
        tasks=c.parallel_list_tasks(session_id=session_id),
        violations=c.parallel_check_violations(session_id=session_id),
        matrix=matrix,
    )


def fetch_matrix(c: Client, session_id: str) -> ConflictMatrix | None:
    """The session's conflict matrix, or None when it cannot be computed right now."""
    try:
        return c.conflicts_matrix(session_id=session_id)
    except errors.CorralError:
        return None


# --- rendering ------------------------------------------------------------------------

_STATUS_STYLE = {
    TaskStatus.COMPLETED: "green",
    TaskStatus.IN_PROGRESS: "cyan",
    TaskStatus.FAILED: "red",
    TaskStatus.BLOCKED: "red",
    TaskStatus.CANCELLED: "yellow",
    TaskStatus.RETRY_WAIT: "yellow",
    TaskStatus.RATE_LIMITED: "magenta",
}


def bar(value: float, limit: float, width: int = 10) -> Text:
    """A text gauge of `value` against `limit`, red past 80%."""
    frac = 0.0 if limit <= 0 else max(0.0, value / limit)
    filled = min(width, round(frac * width))
    style = "red" if frac >= 0.8 else "yellow" if frac >= 0.5 else "green"
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    return text


def duration(secs: float) -> str:
    secs = max(0.0, secs)
    if secs < 60:
        return f"{secs:.1f}s"
    minutes, s = divmod(int(secs), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _short(branch: str) -> str:
    return branch.removeprefix("corral/")


def render_matrix(matrix: ConflictMatrix | None, *, compact: bool = False) -> RenderableType:
    """The pairwise merge state of the task branches: a grid, or one line when `compact`."""
    if matrix is None:
        return Text("conflicts: not computed yet", style="dim")
    names = matrix.branches
    if len(names) < 2:
        return Text("conflicts: fewer than two task branches", style="dim")
    if compact or len(names) > 8:
        line = Text("conflicts: ", style="bold")
        clean = 0
        for c in matrix.cells:
            if c.state is MatrixState.CLEAN:
                clean += 1
                continue
            style, sep = ("red", " ✗ ") if c.state is MatrixState.CONFLICT else ("yellow", " ~ ")
            line.append(f"{_short(c.branch1)}{sep}{_short(c.branch2)}", style=style)
            line.append(f" ({c.state.value}, {c.files} file{'s' * (c.files != 1)})  ")
        line.append(f"{clean} pair{'s' * (clean != 1)} clean", style="green")
        return line
    cells = {(c.branch1, c.branch2): c for c in matrix.cells}
    cells.update({(c.branch2, c.branch1): c for c in matrix.cells})
    table = Table(title="conflict matrix", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("")
    for name in names:
        table.add_column(_short(name)[:12], justify="center")
    for row in names:
        values: list[Text] = []
        for col in names:
            cell = cells.get((row, col))
            if row == col or cell is None:
                values.append(Text("·", style="dim"))
            elif cell.state is MatrixState.CONFLICT:
                values.append(Text(f"✗{cell.files}", style="bold red"))
            elif cell.state is MatrixState.OVERLAP:
                values.append(Text(f"~{cell.files}", style="yellow"))
            else:
                values.append(Text("ok", style="green"))
        table.add_row(_short(row), *values)
    return table


def render(
    snap: Snapshot, *, tasks: bool = False, started: float | None = None, compact: bool = False
) -> Group:
    """Draw a snapshot: stats, running agents with CPU/memory bars, violations, matrix.

    `compact` (a short terminal) draws the conflict matrix as one line.
    """
    s, stats, limits = snap.session, snap.stats, snap.session.config.resource_limits
    elapsed = f" · {duration(snap.at - started)}" if started is not None else ""
    header = Text.assemble(
        ("session ", "bold"),
        (s.id, "bold cyan"),
        f" · {s.repo_path} · ",
        (s.status.value, "bold"),
        f" · {stats.strategy.value}, {stats.max_parallel} in parallel{elapsed}",
    )
    counts = Text()
    for label in (
        "total",
        "pending",
        "ready",
        "in_progress",
        "retry_wait",
        "rate_limited",
        "completed",
        "failed",
        "blocked",
        "cancelled",
    ):
        value = getattr(stats, label)
        if value or label in ("total", "completed", "in_progress"):
            style = _STATUS_STYLE.get(TaskStatus(label), "") if label != "total" else "bold"
            counts.append(f"{label} ", style="dim")
            counts.append(f"{value}  ", style=style)
    pool = Text(
        f"agents {snap.pool.active_agents}/{snap.pool.max_agents} · "
        f"CPU {snap.pool.total_cpu_percent:.0f}%/{snap.pool.max_total_cpu:.0f}% · "
        f"memory {snap.pool.total_memory_mb:.0f}/{snap.pool.max_total_memory_mb} MB · "
        f"per agent: CPU {limits.max_cpu_per_agent:.0f}%, memory"
        f" {limits.max_memory_mb_per_agent} MB",
        style="dim",
    )
    # One agent type for all: say it in the title and save a column (80-column terminals).
    types = sorted({a.agent_type for a in snap.agents})
    title = f"running agents ({types[0]})" if len(types) == 1 else "running agents"
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1)
    )
    table.add_column("task", no_wrap=True, min_width=8)
    if len(types) > 1:
        table.add_column("type", no_wrap=True)
    for column in ("activity", "runtime", "tokens", "cost", "CPU", "memory"):
        table.add_column(column, no_wrap=True)
    for a in snap.agents:
        cpu = bar(a.cpu_percent, limits.max_cpu_per_agent, 5)
        cpu.append(f"{a.cpu_percent:4.0f}%")
        mem = bar(a.memory_mb, limits.max_memory_mb_per_agent, 5)
        mem.append(f"{a.memory_mb:5.0f}M")
        row: list[RenderableType] = [a.task_id]
        if len(types) > 1:
            row.append(a.agent_type)
        row += [
            a.status.value,
            duration((a.ended_at or snap.at) - a.started_at),
            str(a.tokens),
            f"${a.cost:.3f}",
            cpu,
            mem,
        ]
        table.add_row(*row)
    parts: list[RenderableType] = [header, counts, pool, table]
    if tasks:
        parts.append(render_tasks(snap.tasks))
    if snap.violations:
        lines = Text("recent violations\n", style="bold")
        for v in snap.violations[-5:]:
            lines.append(
                f"  {time.strftime('%H:%M:%S', time.localtime(v.at))} {v.task_id} {v.kind}: "
                f"{v.value:.0f} > {v.limit:.0f} → {v.action}\n",
                style="red",
            )
        parts.append(lines)
    parts.append(render_matrix(snap.matrix, compact=compact))
    return Group(*parts)


def render_tasks(tasks: Iterable[Task]) -> Text:
    """Task ids grouped by status, one line per status."""
    by: dict[TaskStatus, list[str]] = {}
    for t in tasks:
        label = t.id if t.attempts <= 1 else f"{t.id} (attempt {t.attempts})"
        by.setdefault(t.status, []).append(label)
    text = Text()
    for status in TaskStatus:
        if status in by:
            text.append(f"{status.value:>12} ", style=_STATUS_STYLE.get(status, "dim"))
            text.append(" ".join(by[status]) + "\n")
    return text


# --- following a session ----------------------------------------------------------------

Mode = Literal["live", "plain", "quiet"]


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
        live: Live | None = None
        if mode == "live":
            compact = console.size.height < 40
            live = Live(
                render(snap, tasks=show_tasks, started=started, compact=compact),
                console=console,
                refresh_per_second=8,
                transient=False,
            )
            live.start()
        try:
            while not (until_finished and snap.session.status in FINISHED):
                events = feed.get(timeout=1.0)
                for event in events:
                    if on_event is not None:
                        on_event(event)
                    if mode == "plain":
                        _plain_line(console, event)
                completed = any(
                    e.type == "task.status" and e.payload.get("status") == "completed"
                    for e in events
                )
                if mode == "live" and completed:
                    matrix = fetch_matrix(c, session_id)
                snap = gather(c, session_id, matrix)
                if live is not None:
                    compact = console.size.height < 40
                    live.update(render(snap, tasks=show_tasks, started=started, compact=compact))
        finally:
            if live is not None:
                live.stop()
    return snap


def _plain_line(console: Console, event: Event) -> None:
    p = event.payload
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at or time.time()))
    if event.type == "task.status":
        extra = f" ({p['error']})" if p.get("error") and p.get("status") != "completed" else ""
        console.print(
            f"{stamp} task {p.get('taskId')}: {p.get('status')}"
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


# --- summary --------------------------------------------------------------------------


def summarize(c: Client, session_id: str, wall_secs: float | None = None) -> dict[str, Any]:
    """What a finished run did: per task outcome and attempts, time, tokens, cost, failures."""
    session = c.session_get(session_id=session_id)
    tasks = c.parallel_list_tasks(session_id=session_id)
    agents = c.parallel_list_agents(session_id=session_id)
    by_task: dict[str, list[Agent]] = {}
    for a in agents:
        by_task.setdefault(a.task_id, []).append(a)
    starts = [a.started_at for a in agents]
    ends = [a.ended_at for a in agents if a.ended_at is not None]
    if wall_secs is None:
        wall_secs = (max(ends) - min(starts)) if starts and ends else 0.0
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    return {
        "sessionId": session.id,
        "repoPath": session.repo_path,
        "status": session.status.value,
        "ok": bool(tasks) and all(t.status is TaskStatus.COMPLETED for t in tasks),
        "wallSecs": round(wall_secs, 2),
        "counts": counts,
        "tokens": sum(a.tokens for a in agents),
        "cost": round(sum(a.cost for a in agents), 6),
        "tasks": [
            {
                "id": t.id,
                "status": t.status.value,
                "attempts": len(by_task.get(t.id, [])),
                "branch": t.branch,
                "endReasons": [
                    a.end_reason.value if a.end_reason else None for a in by_task.get(t.id, [])
                ],
                "secs": round(
                    sum((a.ended_at or a.started_at) - a.started_at for a in by_task.get(t.id, [])),
                    2,
                ),
                "tokens": sum(a.tokens for a in by_task.get(t.id, [])),
                "dependencies": t.dependencies,
                "startedAt": t.started_at,
                "completedAt": t.completed_at,
                **({"error": t.error} if t.error else {}),
                **({"errorCategory": t.error_category.value} if t.error_category else {}),
            }
            for t in tasks
        ],
        "failures": [
            {
                "taskId": t.id,
                "status": t.status.value,
                "errorCategory": t.error_category.value if t.error_category else None,
                "error": t.error,
            }
            for t in tasks
            if t.status is not TaskStatus.COMPLETED
        ],
    }


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The human form of `summarize`."""
    table = Table(
        title=f"session {summary['sessionId']}: {summary['status']}", title_justify="left"
    )
    for column in ("task", "status", "attempts", "end reasons", "time", "tokens", "error"):
        table.add_column(column)
    for t in summary["tasks"]:
        style = _STATUS_STYLE.get(TaskStatus(t["status"]), "")
        table.add_row(
            t["id"],
            Text(t["status"], style=style),
            str(t["attempts"]),
            ", ".join(r or "-" for r in t["endReasons"]),
            duration(t["secs"]),
            str(t["tokens"]),
            f"{t.get('errorCategory', '')} {t.get('error', '')}".strip(),
        )
    console.print(table)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items()))
    console.print(
        f"{len(summary['tasks'])} tasks ({counts}) in {duration(summary['wallSecs'])};"
        f" {summary['tokens']} tokens, ${summary['cost']:.4f}",
        highlight=False,
    )
