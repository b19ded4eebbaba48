"""Following one agent's output live: the history first, then its log events, no gap.

The subscription starts before the history is read, and a line is written
only if its offset is past the last one written, so a line is never missed
or shown twice. Lines are written in batches on a short timer: a run that
floods its output costs one redraw per batch, not one per line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Static

from corral import errors
from corral.client import Client
from corral.models import Event, LogEntry

if TYPE_CHECKING:
    from corral.ui.app import CorralApp

__all__ = ["LogScreen", "log_line"]

#: Lines kept on screen (the whole log stays in the daemon's file).
KEEP = 5000
#: New lines are drawn together, this often: each draw re-lays and repaints the
#: screen, which is nearly all of the view's CPU (a line at a time, or ten
#: draws a second, took a third of a core for one agent's 25 lines/s).
FLUSH_SECS = 0.25


def log_line(stream: str, offset: int, line: str) -> Text:
    """A log line; stderr is marked with `!` (and red), so it shows without colour too."""
    if stream == "stderr":
        return Text.assemble(("! ", "bold red"), (line, "red"))
    if stream == "daemon":
        return Text.assemble(("# ", "bold yellow"), (line, "yellow"))
    return Text.assemble(("  ", ""), line)


class LogScreen(Screen[None]):
    """One agent's log, live until the screen is closed (Escape)."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    DEFAULT_CSS = """
    LogScreen #title { height: 1; background: $boost; padding: 0 1; }
    LogScreen RichLog { height: 1fr; }
    """

    def __init__(self, agent_id: str, task_id: str) -> None:
        super().__init__()
        self.agent_id = agent_id
        self.task_id = task_id
        self.next_offset = 0  # the first offset not yet written
        self.lines_shown = 0
        self._batch: list[Text] = []
        self._early: list[tuple[str, int, str]] = []  # events that came before the history
        self._history_done = False

    @property
    def dash(self) -> CorralApp:
        return cast("CorralApp", self.app)

    def compose(self) -> ComposeResult:
        yield Static(
            Text.assemble(
                ("log ", "bold"),
                (self.task_id, "bold cyan"),
                f"  agent {self.agent_id}  (! marks stderr)",
            ),
            id="title",
        )
        yield RichLog(max_lines=KEEP, wrap=False, markup=False, id="log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.set_interval(FLUSH_SECS, self._flush)
        self.run_worker(self._follow(), group="log", exclusive=True)

    async def _follow(self) -> None:
        link = self.dash.link
        stream = link.events(["log"], agent_id=self.agent_id, on_state=self._on_state)
        try:
            await self._read(stream)
        except errors.CorralError as exc:
            self._batch.append(Text(f"log stream: {exc.message}", style="red"))

    async def _read(self, stream: AsyncIterator[Event]) -> None:
        async for event in stream:
            p = event.payload
            if event.type == "log.skipped" and p.get("agentId") == self.agent_id:
                self._batch.append(
                    Text(f"… {p.get('lines')} lines not announced (they are in the log file)")
                )
                self.next_offset = max(self.next_offset, int(p.get("last", 0)) + 1)
            elif event.type == "log" and p.get("agentId") == self.agent_id:
                item = (str(p.get("stream")), int(p.get("offset", 0)), str(p.get("line", "")))
                if self._history_done:
                    self._take(*item)
                else:
                    self._early.append(item)

    def _on_state(self, state: str) -> None:
        if state == "connected" and not self._history_done:
            self.run_worker(self._history(), group="history", exclusive=True)

    async def _history(self) -> None:
        offset = 0
        try:
            while True:
                page: list[LogEntry] = await self.dash.link.call(
                    Client.parallel_get_agent_logs, agent_id=self.agent_id, offset=offset
                )
                for entry in page:
                    self._take(entry.stream, entry.offset, entry.line)
                if len(page) < 500:
                    break
                offset = page[-1].offset + 1
        except errors.CorralError as exc:
            self.notify(f"log: {exc.message}", severity="error")
        self._history_done = True
        for item in self._early:
            self._take(*item)
        self._early.clear()

    def _take(self, stream: str, offset: int, line: str) -> None:
        if offset < self.next_offset:
            return
        self.next_offset = offset + 1
        self._batch.append(log_line(stream, offset, line))

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch[-KEEP:], []
        log = self.query_one(RichLog)
        for text in batch:
            log.write(text)
        self.lines_shown += len(batch)
