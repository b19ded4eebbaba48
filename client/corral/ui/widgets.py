"""Small pieces every screen draws with: stat cards, gauges, badges, the header line.

Text, not colour alone, carries every meaning (a badge says `auto`, a stderr
line starts with `!`), so the dashboard reads the same under `NO_COLOR`,
where Textual draws in monochrome.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from corral.models import AgentLifecycle, EndReason, TaskState
from corral.ui.state import Board
from corral.watch.render import STATUS_STYLE, bar

__all__ = [
    "Cards",
    "HeaderLine",
    "gauge",
    "lifecycle_badge",
    "share_bar",
    "show_text",
    "state_text",
]


def show_text(widget: Static, text: Text) -> None:
    """Put `text` in `widget` unless it shows that already: an update redraws the widget."""
    if widget.content != text:
        widget.update(text)


class Cards(Horizontal):
    """A row of stat cards: a label and a number each, updated in place."""

    DEFAULT_CSS = """
    Cards { height: 3; }
    Cards > Static {
        width: 1fr; height: 3; border: round $primary-darken-2; padding: 0;
        content-align: center middle;
    }
    """

    def __init__(self, labels: list[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.labels = labels

    def compose(self) -> ComposeResult:
        for label in self.labels:
            yield Static(f"{label} -", id=f"card-{label.replace(' ', '-').replace('/', '')}")

    def set(self, values: dict[str, str], styles: dict[str, str] | None = None) -> None:
        for label, card in zip(self.labels, self.query(Static), strict=True):
            text = Text(f"{label} ", style="dim")
            text.append(values.get(label, "-"), style=f"bold {(styles or {}).get(label, '')}")
            show_text(card, text)


class HeaderLine(Static):
    """One line: the session, its status, and whether the daemon is reachable."""

    DEFAULT_CSS = "HeaderLine { height: 1; background: $boost; padding: 0 1; }"

    def show(self, board: Board, title: str) -> None:
        text = Text(f"{title} ", style="bold")
        if board.session is None:
            text.append("no session (n: new session)", style="dim")
        else:
            s = board.session
            text.append(s.id, style="bold cyan")
            text.append(f" {s.status.value} ", style="bold")
            config = s.config
            text.append(f"{config.strategy.value}, {config.max_parallel} parallel, {s.repo_path}")
        if board.link != "connected":
            text.append(f"  [{board.link}…]", style="bold reverse red")
        show_text(self, text)


def gauge(label: str, value: float, limit: float, unit: str, width: int = 20) -> Text:
    """`label ████░░ value/limit unit`: a bar against a limit, red past 80%."""
    text = Text(f"{label:<7}", style="bold")
    text.append_text(bar(value, limit, width))
    text.append(f" {value:.0f}/{limit:.0f}{unit}")
    return text


def share_bar(value: float, top: float, width: int) -> Text:
    """A bar of `value` against the largest of its peers (one colour: a share, not a limit)."""
    filled = 0 if top <= 0 else min(width, round(value / top * width))
    return Text("█" * filled, style="cyan") + Text("░" * (width - filled), style="dim")


def state_text(state: TaskState) -> Text:
    return Text(state.value, style=STATUS_STYLE.get(state, ""))


_LIFECYCLE_STYLE = {
    AgentLifecycle.STARTING: "cyan",
    AgentLifecycle.RUNNING: "bold cyan",
    AgentLifecycle.EXITED: "green",
    AgentLifecycle.KILLED: "red",
}


def lifecycle_badge(lifecycle: AgentLifecycle, end: EndReason | None) -> Text:
    """`[running]`, `[exited]`, `[killed]`: the brackets make it a badge without colour."""
    style = _LIFECYCLE_STYLE.get(lifecycle, "")
    if lifecycle is AgentLifecycle.EXITED and end not in (None, EndReason.OK):
        style = "red"
    return Text(f"[{lifecycle.value}]", style=style)
