"""What a view shows and how it is drawn: a `Snapshot` of the daemon, and rich renderables.

Pure drawing apart from `gather`/`fetch_matrix`, which ask the daemon for a
snapshot, and `catch_up`, which asks for what events left out (`model.Needs`);
the rest turns one into text, so it is the same for the live view,
`corral watch --once` and the progress of `corral run`/`demo`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from corral import errors
from corral.client import Client
from corral.models import (
    Agent,
    AgentLifecycle,
    ConflictMatrix,
    IntegrationReport,
    IntegrationStatus,
    MatrixState,
    PoolStats,
    ResourceLimits,
    SchedulerStats,
    Session,
    Task,
    TaskState,
    Violation,
)
from corral.watch.model import ENDED, LIVE, Needs, Rows

__all__ = [
    "INTEGRATION_STYLE",
    "STATUS_STYLE",
    "Snapshot",
    "bar",
    "catch_up",
    "duration",
    "fetch_matrix",
    "gather",
    "render",
    "render_integration",
    "render_matrix",
    "render_tasks",
]

# --- snapshot -------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What a view shows: the daemon's answers, kept up to date by events (`model.apply`).

    `agents` are the running ones only; `at` is the time the view is drawn for.
    """

    session: Session
    stats: SchedulerStats
    pool: PoolStats
    agents: Rows[Agent]
    tasks: Rows[Task]
    violations: list[Violation]
    matrix: ConflictMatrix | None = None
    integration: IntegrationReport | None = None  # None when the session does not integrate
    at: float = field(default_factory=time.time)
    #: The task list as last drawn, by (tasks.version, most): kept until a task changes.
    drawn_tasks: tuple[tuple[int, int | None], Text] | None = field(default=None, repr=False)

    @property
    def integrating(self) -> bool:
        return self.session.config.integrate and self.session.integration_branch is not None

    @property
    def running(self) -> bool:
        """True while an agent runs: its runtime, CPU and memory move without events."""
        return any(
            a.lifecycle in (AgentLifecycle.STARTING, AgentLifecycle.RUNNING) for a in self.agents
        )

    def __repr__(self) -> str:
        return (
            f"Snapshot({self.session.id}, {self.session.status.value}, agents={len(self.agents)},"
            f" tasks={len(self.tasks)})"
        )


def gather(c: Client, session_id: str, matrix: ConflictMatrix | None = None) -> Snapshot:
    """Ask the daemon for everything a view draws (the matrix is passed in: it is costly)."""
    session = c.session_get(session_id=session_id)
    integrating = session.config.integrate and session.integration_branch is not None
    return Snapshot(
        session=session,
        stats=c.parallel_get_scheduler_stats(session_id=session_id),
        pool=c.parallel_get_pool_stats(session_id=session_id),
        agents=Rows(c.parallel_list_agents(session_id=session_id, live=True)),
        tasks=Rows(c.parallel_list_tasks(session_id=session_id)),
        violations=c.parallel_list_violations(session_id=session_id),
        matrix=matrix,
        integration=c.integration_status(session_id=session_id) if integrating else None,
    )


def catch_up(c: Client, snap: Snapshot, needs: Needs, *, conflicts: bool = True) -> None:
    """Ask the daemon for what `needs` names (events left it out) and put it into `snap`.

    One request per part or row; `LIVE` is the pool and the running agents'
    figures. `conflicts=False` leaves the costly matrix alone.
    """
    sid, parts = snap.session.id, needs.parts
    if "session" in parts:
        snap.session = c.session_get(session_id=sid)
    if "stats" in parts:
        snap.stats = c.parallel_get_scheduler_stats(session_id=sid)
    if parts & {"pool", LIVE}:
        snap.pool = c.parallel_get_pool_stats(session_id=sid)
    if parts & {"agents", LIVE}:
        snap.agents.replace(c.parallel_list_agents(session_id=sid, live=True))
    else:
        for agent_id in sorted(needs.agents):
            try:
                agent = c.parallel_get_agent(agent_id=agent_id)
            except errors.AgentNotFound:
                agent = None
            if agent is None or agent.lifecycle in ENDED or agent.session_id != sid:
                snap.agents.drop(agent_id)
            else:
                snap.agents.put(agent)
    if "tasks" in parts:
        snap.tasks.replace(c.parallel_list_tasks(session_id=sid))
    else:
        for task_id in sorted(needs.tasks):
            try:
                snap.tasks.put(c.parallel_get_task(session_id=sid, task_id=task_id))
            except errors.TaskNotFound:
                snap.tasks.drop(task_id)
    if "violations" in parts:
        snap.violations = c.parallel_list_violations(session_id=sid)
    if "integration" in parts:
        snap.integration = c.integration_status(session_id=sid) if snap.integrating else None
    if "conflicts" in parts and conflicts:
        snap.matrix = fetch_matrix(c, sid)
    snap.at = time.time()


def fetch_matrix(c: Client, session_id: str) -> ConflictMatrix | None:
    """The session's conflict matrix, or None when it cannot be computed right now."""
    try:
        return c.conflicts_matrix(session_id=session_id)
    except errors.CorralError:
        return None


# --- rendering ------------------------------------------------------------------------

STATUS_STYLE = {
    TaskState.COMPLETED: "green",
    TaskState.IN_PROGRESS: "cyan",
    TaskState.FAILED: "red",
    TaskState.BLOCKED: "red",
    TaskState.CANCELLED: "yellow",
    TaskState.RETRY_WAIT: "yellow",
    TaskState.RATE_LIMITED: "magenta",
}


INTEGRATION_STYLE = {
    IntegrationStatus.QUEUED.value: "yellow",
    IntegrationStatus.GATING.value: "cyan",
    IntegrationStatus.INTEGRATED.value: "green",
    IntegrationStatus.CONFLICT.value: "red",
    IntegrationStatus.GATE_FAILED.value: "red",
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
    snap: Snapshot,
    *,
    tasks: bool = False,
    started: float | None = None,
    compact: bool = False,
    most: int | None = None,
) -> Group:
    """Draw a snapshot: stats, running agents with CPU/memory bars, violations, matrix.

    `compact` (a short terminal) draws the conflict matrix as one line;
    `most` caps the task ids listed per status (a live view of a big session).
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
            style = STATUS_STYLE.get(TaskState(label), "") if label != "total" else "bold"
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
    table = render_agents(snap.agents, limits, snap.at, title, with_type=len(types) > 1)
    parts: list[RenderableType] = [header, counts, pool, table]
    if snap.integration is not None:
        parts.append(render_integration(snap.integration, snap.tasks))
    if tasks:
        key = (snap.tasks.version, most)
        if snap.drawn_tasks is None or snap.drawn_tasks[0] != key:
            snap.drawn_tasks = (key, render_tasks(snap.tasks, most=most))
        parts.append(snap.drawn_tasks[1])
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


def render_agents(
    agents: Iterable[Agent], limits: ResourceLimits, at: float, title: str, *, with_type: bool
) -> Text:
    """The agents as an aligned table in one `Text`, with CPU/memory bars against the limits.

    A rich `Table` measures every cell on every frame: ten times the cost of
    the whole rest of a live frame, for the same columns.
    """
    rows: list[list[Text]] = []
    for a in agents:
        cpu = bar(a.cpu_percent, limits.max_cpu_per_agent, 5)
        cpu.append(f"{a.cpu_percent:4.0f}%")
        mem = bar(a.memory_mb, limits.max_memory_mb_per_agent, 5)
        mem.append(f"{a.memory_mb:5.0f}M")
        task = a.task_id if len(a.task_id) <= 32 else a.task_id[:31] + "…"
        cells = [Text(task)]
        if with_type:
            cells.append(Text(a.agent_type))
        cells += [
            Text(a.status.value),
            Text(duration((a.ended_at or at) - a.started_at)),
            Text(str(a.tokens)),
            Text(f"${a.cost:.3f}"),
            cpu,
            mem,
        ]
        rows.append(cells)
    heads = ["task", *(["type"] if with_type else []), "activity", "runtime", "tokens", "cost"]
    heads += ["CPU", "memory"]
    widths = [len(h) for h in heads]
    for cells in rows:
        widths = [max(w, cell.cell_len) for w, cell in zip(widths, cells, strict=True)]
    text = Text(f"{title}\n", style="italic")
    text.append(
        " ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip() + "\n",
        style="bold",
    )
    text.append("─" * (sum(widths) + len(widths) - 1) + "\n", style="dim")
    for cells in rows:
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            text.append_text(cell)
            if i < len(cells) - 1:
                text.append(" " * (width - cell.cell_len + 1))
        text.append("\n")
    text.rstrip()
    return text


def render_integration(report: IntegrationReport, tasks: Iterable[Task]) -> Text:
    """The integration branch: its head, what is queued, gated, parked or resolving."""
    text = Text("integration ", style="bold")
    text.append(report.branch or "-", style="bold cyan")
    text.append(f" @ {(report.head or '')[:10]} · ")
    text.append(f"{len(report.integrated)} integrated", style="green")
    for label, ids, style in (
        ("gating", report.gating, "cyan"),
        ("queued", report.queue, "yellow"),
        ("resolving", report.resolving, "magenta"),
        ("parked", [p.task_id for p in report.parked], "red"),
    ):
        if ids:
            text.append(f" · {label} ", style="dim")
            text.append(" ".join(ids), style=style)
    batch = report.last_batch
    if batch is not None:
        text.append(
            f" · last batch {len(batch.task_ids)}: {batch.gate_runs} gate run"
            f"{'s' * (batch.gate_runs != 1)}",
            style="dim",
        )
        sent_back = batch.conflicted + batch.gate_failed
        if sent_back:
            text.append(f", sent back {' '.join(sent_back)}", style="red")
    if report.blocked:
        text.append(f"\n  blocked: {report.blocked}", style="bold red")
    return text


def render_tasks(tasks: Iterable[Task], most: int | None = None) -> Text:
    """Task ids grouped by status, one line per status (with any integration status).

    With `most`, a status lists at most that many ids and then how many more.
    """
    by: dict[TaskState, list[Task]] = {}
    for t in tasks:
        by.setdefault(t.state, []).append(t)
    text = Text()
    for status in TaskState:
        if status not in by:
            continue
        group = by[status]
        shown = group if most is None else group[:most]
        labels = []
        for t in shown:
            label = t.id if t.attempts <= 1 else f"{t.id} (attempt {t.attempts})"
            way_in = t.integration_status
            if way_in is not None and way_in is not IntegrationStatus.INTEGRATED:
                label += f" [{way_in.value}]"
            labels.append(label)
        if len(group) > len(shown):
            labels.append(f"… {len(group) - len(shown)} more")
        text.append(f"{status.value:>12} ", style=STATUS_STYLE.get(status, "dim"))
        text.append(" ".join(labels) + "\n")
    return text
