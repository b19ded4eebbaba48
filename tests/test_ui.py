"""`corral ui` driven by Textual's pilot against a real daemon running fake agents.

Each test is a plain function that runs its scenario with `asyncio.run`:
Textual runs on asyncio, the rest of the suite on trio. Waits are for
conditions on what the app shows (its board, its widgets), never fixed times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, RichLog, Select, Static, Tree
from textual.widgets.tree import TreeNode

from corral.models import TaskState
from corral.ui.agents import AgentsScreen
from corral.ui.app import CorralApp
from corral.ui.base import DashScreen
from corral.ui.conflicts import ConflictsScreen, hunks
from corral.ui.form import SessionForm, form_params
from corral.ui.integration import IntegrationScreen
from corral.ui.link import Link
from corral.ui.logview import LogScreen
from corral.ui.run import RunScreen, task_forest
from corral.ui.state import Board
from corral.ui.widgets import HeaderLine
from tests.conftest import git
from tests.daemon_proc import DaemonProcess
from tests.ui_plan import CONFIG, TASKS, daemon_for, repo_for

SIZE = (120, 40)
#: The screens a key switches to (a mode each), and their header's title.
MODES: dict[str, tuple[type[DashScreen], str]] = {
    "agents": (AgentsScreen, "Agents"),
    "conflicts": (ConflictsScreen, "Conflicts"),
    "integration": (IntegrationScreen, "Integration"),
}


async def until(
    pilot: Pilot[None],
    predicate: Callable[[], object],
    what: str,
    secs: float = 60.0,
    seen: Callable[[], str] | None = None,
) -> None:
    """Let the app run until `predicate()` is true (a condition, never a fixed sleep);
    `seen()` says what the screen showed instead, should it time out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + secs
    while not predicate():
        if loop.time() > deadline:
            shown = f" (it shows: {seen()})" if seen is not None else ""
            raise AssertionError(f"timed out waiting for {what}{shown}")
        await pilot.pause(0.05)


def log_tail(d: DaemonProcess, lines: int = 15) -> str:
    """The end of the daemon's log, for a timeout's message."""
    log = d.dir / "corrald.log"
    return "log: " + " | ".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def states(board: Board) -> dict[str, str]:
    return {t.id: t.state.value for t in board.tasks}


def counts(board: Board) -> tuple[int, int, int] | None:
    """(completed, failed, blocked) as the stats say."""
    s = board.stats
    return None if s is None else (s.completed, s.failed, s.blocked)


def status(board: Board) -> str | None:
    return board.session.status.value if board.session is not None else None


def text_of(widget: Static) -> str:
    content = widget.content
    return content.plain if isinstance(content, Text) else str(content)


def log_text(log: RichLog) -> str:
    return "\n".join(strip.text for strip in log.lines)


class Label(str):
    """A tree node's text, and the task it hangs under."""

    parent: str | None = None


def tree_labels(tree: Tree[str]) -> dict[str, Label]:
    out: dict[str, Label] = {}
    stack: list[tuple[TreeNode[str], str | None]] = [(n, None) for n in tree.root.children]
    while stack:
        node, parent = stack.pop()
        label = Label(str(node.label))
        label.parent = parent
        out[str(node.data)] = label
        stack += [(child, str(node.data)) for child in node.children]
    return out


async def task_events(link: Link, since: int, task: str, secs: float = 30.0) -> list[Any]:
    """The payloads of `task`'s events after `since`, until it is parked again or `secs` pass."""
    out: list[Any] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(secs):
            events = link.events(["task"], since_seq=since)
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.payload.get("taskId") == task:
                        out.append(event.payload)
                        if len(out) > 1 and event.payload.get("integrationStatus") == "conflict":
                            break
    return out


def notes(app: CorralApp) -> str:
    """The notifications the app shows (what an action said when it failed)."""
    return "; ".join(n.message for n in app._notifications)


SETTLED = {
    "alpha": "completed",
    "beta": "completed",
    "gamma": "completed",
    "delta": "failed",
    "epsilon": "blocked",
}


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"tasks": TASKS, "config": CONFIG}))
    return path


@pytest.mark.slow
def test_a_session_from_the_form_to_a_resolved_conflict(tmp_path: Path, plan_file: Path) -> None:
    """Create, start, pause, resume; watch it finish; agents by cost; a log; a conflict."""
    repo = repo_for(tmp_path / "repo")

    async def scenario(d: DaemonProcess) -> None:
        app = CorralApp(str(d.socket))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.board.link == "connected", "the event stream")
            assert app.board.session is None
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, SessionForm), "the form")
            form = app.screen
            form.query_one("#repo", Input).value = str(repo)
            form.query_one("#plan", Input).value = str(plan_file)
            form.query_one("#agent", Input).value = "fake"
            form.query_one("#on-conflict", Select).value = "manual"
            # A wrong field is named, and the form keeps what was typed.
            form.query_one("#parallel", Input).value = "lots"
            assert await pilot.click("#create"), "the click missed the Create button"
            error = form.query_one("#error", Static)
            await until(pilot, lambda: "maxParallel" in text_of(error), "the field error")
            assert form.query_one("#repo", Input).value == str(repo)
            form.query_one("#parallel", Input).value = "3"
            # A button ignores clicks while it shows the last one (Textual's `-active`,
            # a timer that a loaded machine runs late): click once it is released.
            create = form.query_one("#create", Button)
            await until(pilot, lambda: not create.has_class("-active"), "the button's release")
            assert await pilot.click("#create"), "the click missed the Create button"
            await until(
                pilot,
                lambda: isinstance(app.screen, RunScreen),
                "the form to close",
                seen=lambda: f"{text_of(error)!r}, {app.link!r}, {log_tail(d)}",
            )
            await until(pilot, lambda: len(app.board.tasks) == 5, "the plan's tasks")
            session = app.board.session
            assert session is not None and session.config.agent_type == "fake"
            assert session.config.on_conflict.value == "manual"

            # Start, pause at once, resume: the board follows each from events.
            await pilot.press("s")
            await until(pilot, lambda: status(app.board) == "running", "running")
            await pilot.press("p")
            await until(pilot, lambda: status(app.board) == "paused", "paused")
            await pilot.press("u")
            await until(pilot, lambda: states(app.board) == SETTLED, "the plan to finish")
            # Events patch the tasks at once; the stats come with the round that follows.
            await until(pilot, lambda: counts(app.board) == (3, 1, 1), "the stats to follow")
            labels = tree_labels(app.screen.query_one(Tree))
            assert "beta completed" in labels["beta"] and labels["beta"].parent == "alpha"
            assert labels["epsilon"].startswith("epsilon blocked")

            # Agents sorted by cost: gamma spent the most, then alpha.
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, AgentsScreen), "the agents")
            agents = app.screen
            assert isinstance(agents, AgentsScreen)
            await until(pilot, lambda: len(agents.rows) == 4, "four agents (epsilon never ran)")
            await pilot.press("$")
            assert [a.task_id for a in agents.rows][:2] == ["gamma", "alpha"]
            table = agents.query_one(DataTable)
            assert table.get_row_at(0)[0] == "gamma"

            # beta's log: its stdout line, and its stderr line marked.
            beta_row = next(i for i, a in enumerate(agents.rows) if a.task_id == "beta")
            table.move_cursor(row=beta_row)
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LogScreen), "the log")
            log = app.screen.query_one(RichLog)
            await until(pilot, lambda: "beta warns" in log_text(log), "beta's lines")
            shown = log_text(log)
            assert "  beta says hello" in shown and "! beta warns" in shown
            await pilot.press("escape")

            # The real conflict between alpha's and gamma's branches, resolved use_first.
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConflictsScreen), "conflicts")
            screen = app.screen
            assert isinstance(screen, ConflictsScreen)
            await until(pilot, lambda: len(screen.rows) >= 1, "the conflict list")
            row = next(
                i
                for i, c in enumerate(screen.rows)
                if {c.branch1, c.branch2} == {"corral/alpha", "corral/gamma"}
            )
            screen.query_one(DataTable).move_cursor(row=row)
            await pilot.press("enter")
            detail = screen.query_one("#hunks", Static)
            await until(pilot, lambda: "<<<<<<<" in text_of(detail), "the hunks")
            assert "alpha" in text_of(detail) and "gamma" in text_of(detail)
            await pilot.press("1")
            await until(pilot, lambda: screen.result is not None, "the resolution")
            result = screen.result
            assert result is not None and result.success and result.commit and result.branch
            assert git(repo, "rev-parse", result.branch) == result.commit
            first = screen.rows[row].branch1.removeprefix("corral/")
            assert git(repo, "show", f"{result.commit}:shared.txt") == first
            assert result.commit[:10] in text_of(screen.query_one("#result", Static))

            # gamma parked on its conflict: re-queue it from the Queue screen.
            await pilot.press("i")
            await until(pilot, lambda: isinstance(app.screen, IntegrationScreen), "the queue")
            queue = app.screen
            assert isinstance(queue, IntegrationScreen)
            await until(pilot, lambda: queue.parked == ["gamma"], "gamma parked")
            since = app.subscription.last_seq
            assert since is not None
            await pilot.press("q")
            await until(
                pilot,
                lambda: app.link.sent["task_integrate"] == 1,
                "the re-queue request",
                seen=lambda: notes(app),
            )
            requeued = await task_events(app.link, since, "gamma")
            statuses = [e.get("integrationStatus") for e in requeued]
            assert "queued" in statuses, (statuses, notes(app), log_tail(d))

    with daemon_for(tmp_path) as d:
        run(scenario(d))


def test_a_round_that_lands_while_a_screen_is_being_switched_to_waits_for_it(
    tmp_path: Path,
) -> None:
    """A redraw between a key and the screen's mount draws nothing, then the screen does.

    The refresher's round used to draw a screen that had no widgets yet (or
    none left, as the app closed): its `NoMatches` ended the worker, and with
    it the dashboard.
    """

    async def switch(app: CorralApp, pilot: Pilot[None], mode: str) -> None:
        screen_type, title = MODES[mode]
        switched = app.switch_mode(mode)
        screen = app.screen
        assert isinstance(screen, screen_type) and not screen.is_mounted
        app._redraw()  # a round landing now, before the screen is composed
        await switched
        header = screen.query_one(HeaderLine)
        await until(pilot, lambda: text_of(header).startswith(title), "the header")

    async def scenario() -> None:
        app = CorralApp(str(tmp_path / "nobody.sock"))
        async with app.run_test(size=SIZE) as pilot:
            for mode in MODES:
                await switch(app, pilot, mode)
        # A round that ends after the app has closed (its screens gone) draws nothing.
        app._redraw()

    run(scenario())


def test_stop_all_from_the_run_screen(tmp_path: Path, repo: Path) -> None:
    """Two agents that would run for a minute: `x` stops both, their tasks go back to ready."""
    sleeper = {"*": ["--stream-json", "--tokens", "10", "--sleep", "60"]}

    async def scenario(d: DaemonProcess) -> None:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"})
            c.parallel_add_tasks(tasks=[{"id": "one", "title": "1"}, {"id": "two", "title": "2"}])
            c.session_start()
        app = CorralApp(str(d.socket))
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: app.board.stats and app.board.stats.in_progress == 2, "two running"
            )
            await pilot.press("p")  # paused first, so the stopped tasks are not started again
            await until(pilot, lambda: status(app.board) == "paused", "paused")
            await pilot.press("x")
            await until(
                pilot,
                lambda: set(states(app.board).values()) == {"ready"} and not app.board.running,
                "both tasks back to ready",
            )

    with daemon_for(tmp_path, sleeper) as d:
        run(scenario(d))


# --- the command ---------------------------------------------------------------------


def test_bad_command_lines_and_a_missing_daemon_are_clear_errors(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    from corral.cli import main

    sock = ["--socket", str(daemon.socket)]
    assert main(["ui", "--json", *sock]) == 2
    assert "interactive" in capsys.readouterr().err
    assert main(["ui", "--web", "--port", "70000", *sock]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["ui", "--session", "nope", *sock]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["ui", "--socket", "/tmp/corral-ui-no-such.sock"]) == 3
    assert "not running" in capsys.readouterr().err


def test_only_the_ui_command_imports_textual() -> None:
    """`corral status` and friends do not pay for Textual (imported inside `corral ui`)."""
    code = "import sys, corral.cli; sys.exit('textual' in sys.modules or 'aiohttp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- pure pieces ---------------------------------------------------------------------


def test_form_params_use_the_wire_models_and_name_the_wrong_field() -> None:
    values = {"agent": "fake", "parallel": "4", "cpu": "75", "gate": "pytest -q"}
    params = form_params("/srv/repo", values, "fifo", True, "manual")
    assert params.repo_path == "/srv/repo" and params.config is not None
    assert params.config.max_parallel == 4 and params.config.strategy.value == "fifo"
    assert params.config.resource_limits.max_cpu_per_agent == 75.0
    assert params.config.gate_command == ["pytest", "-q"]
    for field, value, named in (
        ("parallel", "0", "maxParallel"),
        ("memory", "-5", "maxMemoryMbPerAgent"),
        ("gate", "'unclosed", "gate command"),
    ):
        with pytest.raises(ValueError, match=named):
            form_params("/srv/repo", {**values, field: value}, "fifo", True, "agent")
    with pytest.raises(ValueError, match="repoPath"):
        form_params("", values, "fifo", True, "agent")


def test_task_forest_puts_each_task_under_its_first_dependency() -> None:
    from corral.models import Task

    tasks = [
        Task(id="c", title="c", dependencies=["a", "b"]),
        Task(id="a", title="a"),
        Task(id="b", title="b", dependencies=["a"]),
    ]
    assert [(t.id, p) for t, p in task_forest(tasks)] == [("a", None), ("b", "a"), ("c", "a")]
    assert TaskState.PENDING.value == tasks[0].state.value


def test_hunks_cut_the_marked_blocks_with_context() -> None:
    content = "one\ntwo\n<<<<<<< a\nx\n=======\ny\n>>>>>>> b\nthree\nfour\nfive\n"
    assert hunks(content, context=1) == [
        ["two", "<<<<<<< a", "x", "=======", "y", ">>>>>>> b", "three"]
    ]
    assert hunks("no markers\n") == []
