"""The Integration screen: the queue, the batch being gated with its output, parked tasks.

The gate's output comes as log events of runs named `gate-...`; this screen
follows them while it is open. A parked task (policy `manual`) goes back
into the queue with `task_integrate` once a person fixed it (`q`).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, RichLog, Static

from corral import errors
from corral.client import Client
from corral.ui.base import DashScreen
from corral.ui.logview import log_line
from corral.ui.state import Board
from corral.ui.widgets import HeaderLine

__all__ = ["IntegrationScreen"]


class IntegrationScreen(DashScreen):
    """Where each completed task's branch is on its way into the integration branch."""

    BINDINGS = [
        Binding("i", "app.switch_mode('integration')", "Queue", show=False),  # here already
        Binding("q", "requeue", "Re-queue"),
    ]

    DEFAULT_CSS = """
    IntegrationScreen #top { height: auto; max-height: 8; }
    IntegrationScreen #queue { width: 1fr; padding: 0 1; }
    IntegrationScreen #batch { width: 1fr; padding: 0 1; }
    IntegrationScreen #parked { height: auto; max-height: 8; }
    IntegrationScreen #gate { height: 1fr; border-top: solid $primary-darken-2; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.parked: list[str] = []
        self._batch: list[Text] = []

    def compose(self) -> ComposeResult:
        yield HeaderLine(id="header")
        with Horizontal(id="top"):
            yield Static(id="queue")
            yield Static(id="batch")
        table: DataTable[str] = DataTable(id="parked", cursor_type="row")
        yield table
        yield RichLog(max_lines=2000, markup=False, id="gate")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for title in ("parked task", "status", "files", "error"):
            table.add_column(title, key=title)
        self.set_interval(0.2, self._flush)
        self.run_worker(self._follow_gate(), group="gate", exclusive=True)

    async def _follow_gate(self) -> None:
        stream = self.dash.link.events(["log"], session_id=self.dash.session_id)
        try:
            async for event in stream:
                p = event.payload
                if event.type == "log" and str(p.get("agentId", "")).startswith("gate-"):
                    self._batch.append(
                        log_line(str(p.get("stream")), int(p.get("offset", 0)), str(p.get("line")))
                    )
        except errors.CorralError as exc:  # the header shows the daemon's state
            self._batch.append(Text(f"gate output: {exc.message}", style="dim"))

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            log = self.query_one(RichLog)
            for line in batch:
                log.write(line)

    def show(self, board: Board) -> None:
        self.query_one(HeaderLine).show(board, "Integration")
        r = board.integration
        queue = Text("queue\n", style="bold")
        batch = Text("gating\n", style="bold")
        if r is None or not r.enabled:
            queue.append("integration is off for this session", style="dim")
        else:
            queue.append(f"branch {r.branch} @ {(r.head or '-')[:10]}\n", style="dim")
            queue.append(" → ".join(r.queue) if r.queue else "empty", style="cyan")
            if r.resolving:
                queue.append(f"\nresolving: {', '.join(r.resolving)}", style="yellow")
            queue.append(f"\nintegrated: {len(r.integrated)}", style="green")
            if r.blocked:
                queue.append(f"\n! blocked: {r.blocked}", style="bold red")
            batch.append(", ".join(r.gating) if r.gating else "nothing", style="bold cyan")
            if r.last_batch is not None:
                b = r.last_batch
                batch.append(
                    f"\nlast batch: {len(b.integrated)} in, {len(b.conflicted)} conflicted,"
                    f" {len(b.gate_failed)} failed the gate ({b.gate_runs} gate runs)",
                    style="dim",
                )
        self.query_one("#queue", Static).update(queue)
        self.query_one("#batch", Static).update(batch)
        parked = r.parked if r is not None else []
        ids = [p.task_id for p in parked]
        if ids != self.parked:
            self.parked = ids
            table = self.query_one(DataTable)
            table.clear()
            for p in parked:
                table.add_row(
                    p.task_id,
                    p.integration_status.value,
                    ", ".join(p.files)[:40],
                    (p.error or "")[:60],
                )

    def action_requeue(self) -> None:
        table = self.query_one(DataTable)
        if not self.parked or not 0 <= table.cursor_row < len(self.parked):
            self.notify("no parked task selected", severity="warning")
            return
        task = self.parked[table.cursor_row]
        self.dash.act(f"re-queue {task}", Client.task_integrate, task_id=task)
