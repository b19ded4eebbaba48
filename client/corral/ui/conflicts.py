"""The Conflicts screen (the seed's ConflictResolution): matrix, summary, list, hunks, resolve.

The detail pane shows the conflicting hunks of the file as `conflicts_resolve`
with the `manual` strategy returns it (the marked-up file, no commit); picking
another strategy runs `conflicts_resolve` for real and shows its commit.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Static

from corral import errors
from corral.client import Client
from corral.models import (
    ConflictMatrix,
    ConflictResolutionResult,
    MatrixState,
    MergeConflict,
    ResolutionStrategy,
)
from corral.ui.base import DashScreen
from corral.ui.state import Board
from corral.ui.widgets import HeaderLine

__all__ = ["ConflictsScreen", "hunks"]


def hunks(content: str, context: int = 2) -> list[list[str]]:
    """The conflict-marker blocks of a marked-up file, each with `context` lines around it."""
    lines = content.splitlines()
    out: list[list[str]] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("<<<<<<<"):
            start = max(0, i - context)
            j = i
            while j < len(lines) and not lines[j].startswith(">>>>>>>"):
                j += 1
            end = min(len(lines), j + 1 + context)
            out.append(lines[start:end])
            i = j + 1
        else:
            i += 1
    return out


def _short(branch: str) -> str:
    return branch.removeprefix("corral/")


def matrix_text(matrix: ConflictMatrix | None) -> Text:
    """The pairwise matrix as a small grid: ✗n conflict, ~n overlap, ok clean."""
    if matrix is None or len(matrix.branches) < 2:
        return Text("matrix: fewer than two task branches", style="dim")
    names = matrix.branches[:8]
    cells = {(c.branch1, c.branch2): c for c in matrix.cells}
    cells.update({(c.branch2, c.branch1): c for c in matrix.cells})
    width = max(len(_short(n)[:10]) for n in names) + 1
    text = Text(" " * width, style="bold")
    for col in names:
        text.append(f"{_short(col)[:6]:>7}", style="bold")
    text.append("\n")
    for row in names:
        text.append(f"{_short(row)[:10]:<{width}}", style="bold")
        for col in names:
            cell = cells.get((row, col))
            if row == col or cell is None:
                text.append(f"{'·':>7}", style="dim")
            elif cell.state is MatrixState.CONFLICT:
                text.append(f"{'✗' + str(cell.files):>7}", style="bold red")
            elif cell.state is MatrixState.OVERLAP:
                text.append(f"{'~' + str(cell.files):>7}", style="yellow")
            else:
                text.append(f"{'ok':>7}", style="green")
        text.append("\n")
    if len(matrix.branches) > len(names):
        text.append(f"(+{len(matrix.branches) - len(names)} more branches)", style="dim")
    return text


class ConflictsScreen(DashScreen):
    """Every conflict between the session's task branches, and its resolution."""

    NEEDS = frozenset({"conflicts"})

    BINDINGS = [
        Binding("c", "app.switch_mode('conflicts')", "Conflicts", show=False),  # here already
        Binding("1", "resolve('use_first')", "Use first"),
        Binding("2", "resolve('use_last')", "Use last"),
        Binding("3", "resolve('auto_merge')", "Auto merge"),
        Binding("m", "resolve('manual')", "Marked"),
        Binding("d", "detect", "Detect"),
    ]

    DEFAULT_CSS = """
    ConflictsScreen #top { height: auto; max-height: 10; }
    ConflictsScreen #matrix { width: 1fr; padding: 0 1; }
    ConflictsScreen #summary { width: 34; padding: 0 1; border-left: solid $primary-darken-2; }
    ConflictsScreen #list { height: 1fr; min-height: 4; }
    ConflictsScreen #detail { height: 1fr; border-top: solid $primary-darken-2; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[MergeConflict] = []
        self.result: ConflictResolutionResult | None = None

    def compose(self) -> ComposeResult:
        yield HeaderLine(id="header")
        with Horizontal(id="top"):
            yield Static(id="matrix")
            yield Static(id="summary")
        table: DataTable[Text | str] = DataTable(id="list", cursor_type="row")
        yield table
        with VerticalScroll(id="detail"):
            yield Static("Enter on a conflict shows its hunks here", id="hunks")
            yield Static(id="result")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for title in ("file", "branches", "type", "badges"):
            table.add_column(title, key=title)

    def show(self, board: Board) -> None:
        self.query_one(HeaderLine).show(board, "Conflicts")
        self.query_one("#matrix", Static).update(matrix_text(board.matrix))
        s = board.summary
        summary = Text("summary\n", style="bold")
        if s is None:
            summary.append("not detected yet (d)", style="dim")
        else:
            summary.append(f"total {s.total_conflicts}  ")
            summary.append(f"auto {s.auto_resolvable}  ", style="green")
            summary.append(
                f"manual {s.manual_required}\n", style="red" if s.manual_required else ""
            )
            for kind, n in sorted(s.conflicts_by_type.items()):
                if n:
                    summary.append(f"{kind} {n}\n", style="dim")
        self.query_one("#summary", Static).update(summary)
        if board.conflicts == self.rows:
            return
        selected = self.selected()
        self.rows = list(board.conflicts)
        table = self.query_one(DataTable)
        table.clear()
        for c in self.rows:
            badges = Text()
            if c.auto_resolvable:
                badges.append("[auto] ", style="bold green")
            badges.append(f"[{c.recommended_strategy.value}]", style="cyan")
            table.add_row(
                c.file_path,
                f"{_short(c.branch1)} vs {_short(c.branch2)}",
                c.conflict_type.value,
                badges,
            )
        for i, c in enumerate(self.rows):
            if c == selected:
                table.move_cursor(row=i)

    def selected(self) -> MergeConflict | None:
        table = self.query_one(DataTable)
        if not self.rows or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        self.action_resolve("manual")

    def action_detect(self) -> None:
        self.dash.mark_stale({"conflicts"})

    def action_resolve(self, strategy: str) -> None:
        conflict = self.selected()
        if conflict is None:
            self.notify("no conflict selected", severity="warning")
            return
        self.run_worker(
            self._resolve(conflict, ResolutionStrategy(strategy)), group="resolve", exclusive=True
        )

    async def _resolve(self, conflict: MergeConflict, strategy: ResolutionStrategy) -> None:
        box = self.query_one("#result", Static)
        try:
            result = await self.dash.link.call(
                Client.conflicts_resolve,
                session_id=self.dash.session_id,
                conflict=conflict,
                strategy=strategy,
            )
        except errors.CorralError as exc:
            box.update(Text(f"{strategy.value} failed: {exc.message} [{exc.code}]", style="red"))
            return
        if strategy is ResolutionStrategy.MANUAL:
            self._show_hunks(conflict, result.content or "")
            return
        self.result = result
        text = Text(f"{strategy.value}: ", style="bold")
        if result.success:
            text.append("resolved", style="bold green")
            text.append(f"  commit {result.commit or '-'} on {result.branch or '-'}\n")
        else:
            text.append("not resolved\n", style="bold red")
        text.append(result.message, style="dim")
        box.update(text)
        self.notify(f"{conflict.file_path}: {strategy.value} → {result.commit or 'no commit'}")

    def _show_hunks(self, conflict: MergeConflict, content: str) -> None:
        text = Text(f"{conflict.file_path}", style="bold")
        text.append(f"  {conflict.description}\n", style="dim")
        blocks = hunks(content)
        if not blocks:
            text.append(content or "(no content: the file is deleted on one side)")
        for n, block in enumerate(blocks, 1):
            text.append(f"hunk {n}\n", style="bold")
            for line in block:
                style = "bold" if line[:7] in ("<<<<<<<", "=======", ">>>>>>>") else ""
                if line.startswith("|||||||"):
                    style = "dim"
                text.append(line + "\n", style=style)
        self.query_one("#hunks", Static).update(text)
