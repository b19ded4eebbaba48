"""The Agents screen (the seed's AgentComparison): summary cards, a sortable table, bars."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from corral.models import Agent
from corral.ui.base import DashScreen
from corral.ui.state import Board
from corral.ui.widgets import Cards, HeaderLine, lifecycle_badge, share_bar
from corral.watch.render import duration

__all__ = ["COLUMNS", "AgentsScreen", "per_1k"]


def per_1k(agent: Agent) -> float | None:
    """Cost per 1,000 tokens (None before the agent reported tokens)."""
    return agent.cost / agent.tokens * 1000 if agent.tokens else None


def _runtime(agent: Agent, now: float) -> float:
    return (agent.ended_at or now) - agent.started_at


#: column key -> (title, sort key)
COLUMNS: dict[str, tuple[str, Callable[[Agent, float], Any]]] = {
    "task": ("task", lambda a, now: a.task_id),
    "type": ("type", lambda a, now: a.agent_type),
    "status": ("status", lambda a, now: (a.lifecycle.value, a.status.value)),
    "runtime": ("runtime", _runtime),
    "tokens": ("tokens", lambda a, now: a.tokens),
    "cost": ("cost", lambda a, now: a.cost),
    "per1k": ("$/1K tok", lambda a, now: per_1k(a) or 0.0),
    "iterations": ("iter", lambda a, now: a.iteration_count),
    "end": ("end", lambda a, now: a.end_reason.value if a.end_reason else ""),
}


class AgentsScreen(DashScreen):
    """Every attempt of the session side by side; Enter follows an agent's log."""

    BINDINGS = [
        Binding("a", "app.switch_mode('agents')", "Agents", show=False),  # here already
        Binding("l", "open_log", "Log"),
        Binding("o", "sort_next", "Sort next"),
        Binding("$", "sort('cost')", "By cost"),
        Binding("t", "sort('tokens')", "By tokens"),
    ]

    DEFAULT_CSS = """
    AgentsScreen #agents { height: 1fr; }
    AgentsScreen #bars { height: auto; max-height: 8; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.sort_key = "task"
        self.descending = False
        self.rows: list[Agent] = []

    def compose(self) -> ComposeResult:
        yield HeaderLine(id="header")
        yield Cards(["agents", "tokens", "cost", "iterations"], id="cards")
        table: DataTable[Text | str] = DataTable(id="agents", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="bars")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, (title, _) in COLUMNS.items():
            table.add_column(title, key=key)

    def show(self, board: Board) -> None:
        self.query_one(HeaderLine).show(board, "Agents")
        agents = board.agents
        self.query_one(Cards).set(
            {
                "agents": f"{sum(a.lifecycle.value == 'running' for a in agents)}/{len(agents)}",
                "tokens": f"{sum(a.tokens for a in agents):,}",
                "cost": f"${sum(a.cost for a in agents):.4f}",
                "iterations": str(sum(a.iteration_count for a in agents)),
            }
        )
        now = time.time()
        _, key = COLUMNS[self.sort_key]
        self.rows = sorted(agents, key=lambda a: key(a, now), reverse=self.descending)
        table = self.query_one(DataTable)
        selected = self.selected_agent()
        table.clear()
        for a in self.rows:
            ratio = per_1k(a)
            table.add_row(
                a.task_id,
                a.agent_type,
                lifecycle_badge(a.lifecycle, a.end_reason) + Text(f" {a.status.value}"),
                duration(_runtime(a, now)),
                f"{a.tokens:,}",
                f"${a.cost:.4f}",
                "-" if ratio is None else f"${ratio:.4f}",
                str(a.iteration_count),
                a.end_reason.value if a.end_reason else "",
                key=a.id,
            )
        for i, a in enumerate(self.rows):
            if a.id == selected:
                table.move_cursor(row=i)
        mark = "↓" if self.descending else "↑"
        for key_, column in table.columns.items():
            title = COLUMNS[str(key_.value)][0]
            column.label = Text(f"{title}{mark}" if key_.value == self.sort_key else title)
        self._bars()

    def _bars(self) -> None:
        top = max((a.tokens for a in self.rows), default=0)
        text = Text("tokens by agent\n", style="bold")
        for a in self.rows[:6]:
            text.append(f"{a.task_id[:14]:<14} ")
            text.append_text(share_bar(a.tokens, top, 30))
            text.append(f" {a.tokens:,}\n")
        self.query_one("#bars", Static).update(text)

    def selected_agent(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row >= len(self.rows) or table.cursor_row < 0:
            return None
        return self.rows[table.cursor_row].id

    def action_sort(self, key: str) -> None:
        if key == self.sort_key:
            self.descending = not self.descending
        else:
            self.sort_key, self.descending = key, key in ("cost", "tokens", "runtime", "per1k")
        self.show(self.dash.board)

    def action_sort_next(self) -> None:
        keys = list(COLUMNS)
        self.action_sort(keys[(keys.index(self.sort_key) + 1) % len(keys)])

    def on_data_table_header_selected(self, message: DataTable.HeaderSelected) -> None:
        self.action_sort(str(message.column_key.value))

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        self.action_open_log()

    def action_open_log(self) -> None:
        agent = self.selected_agent()
        if agent is None:
            self.notify("no agent to open", severity="warning")
            return
        self.dash.open_log(agent)
