"""What a view shows and how it is drawn: a `Snapshot` of the daemon, and rich renderables.

Pure drawing apart from `gather`/`fetch_matrix`, which ask the daemon for a
snapshot; the rest turns one into text, so it is the same for the live view,
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
    ConflictMatrix,
    IntegrationReport,
    IntegrationStatus,
    MatrixState,
    PoolStats,
    SchedulerStats,
    Session,
    Task,
    TaskState,
    Violation,
)

__all__ = [
    "INTEGRATION_STYLE",
    "STATUS_STYLE",
    "Snapshot",
    "bar",
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
    """What a view shows, as the daemon reported it at `at`."""

    session: Session
    stats: SchedulerStats
    pool: PoolStats
    agents: list[Agent]
    tasks: list[Task]
    violations: list[Violation]
    matrix: ConflictMatrix | None = None
    integration: IntegrationReport | None = None  # None when the session does not integrate
    at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return (
            f"Snapshot({self.session.id}, {self.session.status.value}, agents={len(self.agents)})"
        )


def gather(c: Client, session_id: str, matrix: ConflictMatrix | None = None) -> Snapshot:
    """Ask the daemon for everything a view draws (the matrix is passed in: it is costly)."""
    session = c.session_get(session_id=session_id)
    integrating = session.config.integrate and session.integration_branch is not None
    return Snapshot(
        session=session,
        stats=c.parallel_get_scheduler_stats(session_id=session_id),
        pool=c.parallel_get_pool_stats(session_id=session_id),
        agents=c.parallel_list_agents(session_id=session_id, live=True),
        tasks=c.parallel_list_tasks(session_id=session_id),
        violations=c.parallel_list_violations(session_id=session_id),
        matrix=matrix,
        integration=c.integration_status(session_id=session_id) if integrating else None,
    )


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
    if snap.integration is not None:
        parts.append(render_integration(snap.integration, snap.tasks))
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


def render_tasks(tasks: Iterable[Task]) -> Text:
    """Task ids grouped by status, one line per status (with any integration status)."""
    by: dict[TaskState, list[str]] = {}
    for t in tasks:
        label = t.id if t.attempts <= 1 else f"{t.id} (attempt {t.attempts})"
        way_in = t.integration_status
        if way_in is not None and way_in is not IntegrationStatus.INTEGRATED:
            label += f" [{way_in.value}]"
        by.setdefault(t.state, []).append(label)
    text = Text()
    for status in TaskState:
        if status in by:
            text.append(f"{status.value:>12} ", style=STATUS_STYLE.get(status, "dim"))
            text.append(" ".join(by[status]) + "\n")
    return text
