"""What a finished run did: `summarize` (a JSON-ready dict) and its table (`print_summary`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.client import Client
from corral.models import Agent, IntegrationStatus, TaskState
from corral.watch.render import INTEGRATION_STYLE, STATUS_STYLE, duration

__all__ = ["print_summary", "summarize"]


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
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    integrating = session.config.integrate and session.integration_branch is not None
    report = c.integration_status(session_id=session_id) if integrating else None
    return {
        "sessionId": session.id,
        "repoPath": session.repo_path,
        "status": session.status.value,
        # With integration on, a task is done once its work is in the integration branch.
        "ok": bool(tasks)
        and all(
            t.state is TaskState.COMPLETED
            and (not integrating or t.integration_status is IntegrationStatus.INTEGRATED)
            for t in tasks
        ),
        "wallSecs": round(wall_secs, 2),
        "counts": counts,
        "tokens": sum(a.tokens for a in agents),
        "cost": round(sum(a.cost for a in agents), 6),
        "tasks": [
            {
                "id": t.id,
                "status": t.state.value,
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
                "integrationStatus": t.integration_status.value if t.integration_status else None,
                "integrationAttempts": t.integration_attempts,
                **({"error": t.error} if t.error else {}),
                **({"errorCategory": t.error_category.value} if t.error_category else {}),
            }
            for t in tasks
        ],
        "failures": [
            {
                "taskId": t.id,
                "status": t.state.value,
                "errorCategory": t.error_category.value if t.error_category else None,
                "error": t.error,
            }
            for t in tasks
            if t.state is not TaskState.COMPLETED
        ],
        "integration": None
        if report is None
        else {
            "branch": report.branch,
            "head": report.head,
            "integrated": report.integrated,
            "queue": report.queue,
            "parked": [p.task_id for p in report.parked],
            "blocked": report.blocked,
        },
    }


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The human form of `summarize`."""
    table = Table(
        title=f"session {summary['sessionId']}: {summary['status']}", title_justify="left"
    )
    integration = summary.get("integration")
    for column in ("task", "status", "attempts", "end reasons", "time", "tokens", "error"):
        table.add_column(column)
    for t in summary["tasks"]:
        status = Text(t["status"], style=STATUS_STYLE.get(TaskState(t["status"]), ""))
        way_in = t.get("integrationStatus")
        if integration and t["status"] == TaskState.COMPLETED.value and way_in:
            # A completed task's news is where its work is: integrated, or not yet.
            status = Text(way_in, style=INTEGRATION_STYLE.get(way_in, ""))
        table.add_row(
            t["id"],
            status,
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
    if integration:
        waiting = len(integration["queue"]) + len(integration["parked"])
        console.print(
            f"integration branch {integration['branch']}: {len(integration['integrated'])}"
            f" integrated, head {(integration['head'] or '')[:12]}"
            + (f", {waiting} not yet in" if waiting else "")
            + (f"; blocked: {integration['blocked']}" if integration["blocked"] else ""),
            highlight=False,
            soft_wrap=True,
        )
