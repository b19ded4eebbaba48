"""The Run screen (the seed's ParallelExecutionPage): controls, stat cards, limits, task tree."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Static, Tree
from textual.widgets.tree import TreeNode

from corral.client import Client
from corral.models import Task, TaskState
from corral.ui.base import DashScreen
from corral.ui.state import Board
from corral.ui.widgets import Cards, HeaderLine, gauge, show_text
from corral.watch.render import STATUS_STYLE

__all__ = ["RunScreen", "task_forest"]

CARDS = ["pending", "ready", "running", "completed", "failed", "blocked"]


def task_forest(tasks: Sequence[Task]) -> list[tuple[Task, str | None]]:
    """Each task with the task it hangs under in the tree: its first known dependency.

    Parents come before children (a dependency order), so a tree can be built
    in one pass; a task with several dependencies names the others in its label.
    """
    by_id = {t.id: t for t in tasks}
    placed: set[str] = set()
    out: list[tuple[Task, str | None]] = []
    pending = list(tasks)
    while pending:
        rest = []
        for t in pending:
            deps = [d for d in t.dependencies if d in by_id]
            if all(d in placed for d in deps):
                out.append((t, deps[0] if deps else None))
                placed.add(t.id)
            else:
                rest.append(t)
        if len(rest) == len(pending):  # a cycle the daemon would have refused: show flat
            out += [(t, None) for t in rest]
            break
        pending = rest
    return out


def _label(task: Task) -> Text:
    text = Text(task.id, style="bold")
    text.append(f" {task.state.value}", style=STATUS_STYLE.get(task.state, ""))
    if task.attempts > 1:
        text.append(f" attempt {task.attempts}", style="dim")
    if task.integration_status is not None:
        text.append(f" ⇢{task.integration_status.value}", style="dim")
    others = task.dependencies[1:]
    if others:
        text.append(f" (also after {', '.join(others)})", style="dim")
    if task.error and task.state is not TaskState.COMPLETED:
        text.append(f" {task.error[:60]}", style="red")
    return text


class RunScreen(DashScreen):
    """Create, start, pause, resume and stop a session; see its tasks and its limits."""

    BINDINGS = [
        Binding("r", "app.switch_mode('run')", "Run", show=False),  # here already
        Binding("n", "new_session", "New"),
        Binding("s", "start", "Start"),
        Binding("p", "pause", "Pause"),
        Binding("u", "resume", "Resume"),
        Binding("x", "stop_all", "Stop"),
        Binding("k", "cancel_task", "Cancel"),
    ]

    DEFAULT_CSS = """
    RunScreen #middle { height: 5; }
    RunScreen #bars { width: 1fr; padding: 0 1; }
    RunScreen #violations { width: 1fr; padding: 0 1; }
    RunScreen #tasks { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._tree_key: tuple[int, int] | None = None
        self._task_nodes: dict[str, TreeNode[str]] = {}  # by task id
        self._drawn: dict[str, Task] = {}  # each task as its node shows it

    def compose(self) -> ComposeResult:
        yield HeaderLine(id="header")
        yield Cards(CARDS, id="cards")
        with Horizontal(id="middle"):
            yield Static(id="bars")
            yield Static(id="violations")
        yield Tree[str]("tasks", id="tasks")
        yield Footer(compact=True)

    def show(self, board: Board) -> None:
        self.query_one(HeaderLine).show(board, "Run")
        stats = board.stats
        if stats is not None:
            values = {
                "pending": stats.pending + stats.retry_wait + stats.rate_limited,
                "ready": stats.ready,
                "running": stats.in_progress,
                "completed": stats.completed,
                "failed": stats.failed,
                "blocked": stats.blocked,
            }
            self.query_one(Cards).set(
                {k: str(v) for k, v in values.items()},
                {"running": "cyan", "completed": "green", "failed": "red", "blocked": "red"},
            )
        self._bars(board)
        self._violations(board)
        self._tree(board)

    def _bars(self, board: Board) -> None:
        pool = board.pool
        if pool is None:
            show_text(self.query_one("#bars", Static), Text("limits: -", style="dim"))
            return
        lines = Text("utilization\n", style="bold")
        lines.append_text(gauge("agents", pool.active_agents, pool.max_agents, ""))
        lines.append("\n")
        lines.append_text(gauge("CPU", pool.total_cpu_percent, pool.max_total_cpu, "%"))
        lines.append("\n")
        lines.append_text(gauge("memory", pool.total_memory_mb, pool.max_total_memory_mb, " MB"))
        show_text(self.query_one("#bars", Static), lines)

    def _violations(self, board: Board) -> None:
        text = Text("violations\n", style="bold")
        if not board.violations:
            text.append("none", style="dim")
        for v in board.violations[-4:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(v.at))
            text.append(
                f"! {stamp} {v.task_id} {v.kind} {v.value:.0f}>{v.limit:.0f} → {v.action}\n",
                style="red",
            )
        show_text(self.query_one("#violations", Static), text)

    def _tree(self, board: Board) -> None:
        key = (id(board.tasks), board.tasks.version)  # the rows change only with their version
        if key == self._tree_key:
            return
        self._tree_key = key
        tree = self.query_one(Tree)
        if len(board.tasks) == len(self._drawn) and all(
            t.id in self._task_nodes for t in board.tasks
        ):
            # The same tasks: relabel the changed ones (a row changes by being replaced),
            # rather than rebuild a tree of thousands of nodes.
            for task in board.tasks:
                drawn = self._drawn[task.id]
                if drawn is not task and drawn != task:
                    self._task_nodes[task.id].set_label(_label(task))
                self._drawn[task.id] = task
            return
        selected = tree.cursor_node.data if tree.cursor_node is not None else None
        tree.clear()
        tree.root.expand()
        self._task_nodes.clear()
        for task, parent in task_forest(board.tasks):
            under = self._task_nodes.get(parent, tree.root) if parent is not None else tree.root
            self._task_nodes[task.id] = under.add(_label(task), data=task.id, expand=True)
        self._drawn = {t.id: t for t in board.tasks}
        if selected in self._task_nodes:
            tree.move_cursor(self._task_nodes[selected])
        tree.root.set_label(Text(f"tasks ({len(board.tasks)})", style="bold"))

    def selected_task(self) -> str | None:
        node = self.query_one(Tree).cursor_node
        return node.data if node is not None else None

    # --- controls: each is one RPC, its error shown as a notification -------------------

    def action_new_session(self) -> None:
        self.dash.open_form()

    def action_start(self) -> None:
        self.dash.act("start", Client.session_start)

    def action_pause(self) -> None:
        self.dash.act("pause", Client.session_pause)

    def action_resume(self) -> None:
        self.dash.act("resume", Client.session_resume)

    def action_stop_all(self) -> None:
        self.dash.act("stop all", Client.parallel_stop_all)

    def action_cancel_task(self) -> None:
        task = self.selected_task()
        if task is None:
            self.notify("select a task in the tree first", severity="warning")
            return
        self.dash.act(f"cancel {task}", Client.parallel_cancel_task, task_id=task)
