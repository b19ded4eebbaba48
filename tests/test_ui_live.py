"""The dashboard among other frontends, and across a daemon restart (real daemon, pilot)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Tree

from corral.client import Client
from corral.models import Event
from corral.ui.app import CorralApp
from corral.ui.run import RunScreen
from corral.ui.state import TOPICS
from corral.ui.widgets import HeaderLine
from tests.daemon_proc import DaemonProcess
from tests.test_ui import SIZE, run, states, text_of, until
from tests.ui_plan import daemon_for

pytestmark = pytest.mark.slow

SLEEPER = {"*": ["--stream-json", "--tokens", "10", "--sleep", "60"]}


class RecordingApp(CorralApp):
    """The real app, also noting the seq of every event it takes (what the test checks)."""

    def __init__(self, socket: str) -> None:
        super().__init__(socket)
        self.seen: list[int] = []

    def _take(self, event: Event) -> None:
        self.seen.append(event.seq)
        super()._take(event)


def shows(app: CorralApp, task: str, state: str) -> Callable[[], bool]:
    return lambda: states(app.board).get(task) == state


def cli_states(socket: Path) -> dict[str, str]:
    """`corral tasks --json`, run as a user would, as {id: state}."""
    out = subprocess.run(
        [sys.executable, "-m", "corral.cli", "tasks", "--json", "--socket", str(socket)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {t["id"]: t["state"] for t in json.loads(out)}


def test_two_apps_and_the_cli_see_the_same_state(tmp_path: Path, repo: Path) -> None:
    """A task cancelled in one app shows in the other from that event, and in the CLI.

    Task lists are fetched again only when an event says they changed (the
    tick refreshes CPU and memory only), so the second app showing the
    change is the event at work.
    """

    async def scenario(d: DaemonProcess) -> None:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"})
            c.parallel_add_tasks(tasks=[{"id": n, "title": n} for n in ("one", "two", "three")])
            c.session_start()
        first, second = RecordingApp(str(d.socket)), RecordingApp(str(d.socket))
        async with first.run_test(size=SIZE) as p1, second.run_test(size=SIZE) as p2:
            for app, pilot in ((first, p1), (second, p2)):
                await until(pilot, shows(app, "one", "in_progress"), "one running")
            screen = first.screen
            assert isinstance(screen, RunScreen)
            tree = screen.query_one(Tree)
            node = next(n for n in tree.root.children if n.data == "one")
            tree.move_cursor(node)
            await p1.press("k")
            for app, pilot in ((first, p1), (second, p2)):
                await until(pilot, shows(app, "one", "cancelled"), "one cancelled")
            cli = await asyncio.to_thread(cli_states, d.socket)
            assert cli["one"] == "cancelled"
            assert states(first.board) == states(second.board) == cli
            for app in (first, second):  # one snapshot of the list, then events and single rows
                assert app.link.sent["parallel_list_tasks"] == 1
                assert app.link.sent["parallel_get_task"] >= 1
            with d.client() as c:
                c.session_pause()
                c.parallel_stop_all()

    with daemon_for(tmp_path, SLEEPER) as d:
        run(scenario(d))


def daemon_events(socket: Path, after: int) -> list[int]:
    """Every seq of the dashboard's topics after `after`, as the daemon keeps them."""
    with Client(socket) as c:
        newest = c.daemon_status().event_seq
    seqs: list[int] = []
    if newest <= after:
        return seqs
    for event in Client(socket).events(TOPICS, since_seq=after, reconnect=False):
        seqs.append(event.seq)
        if event.seq >= newest:
            break
    return seqs


def test_a_daemon_restart_shows_reconnecting_then_resumes_with_no_event_lost(
    tmp_path: Path, repo: Path
) -> None:
    async def scenario(d: DaemonProcess) -> None:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"})
            c.parallel_add_tasks(tasks=[{"id": "before", "title": "b"}])
        app = RecordingApp(str(d.socket))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "before" in states(app.board), "the first task")
            first_seq = app.subscription.last_seq
            assert first_seq is not None
            await asyncio.to_thread(d.stop)
            await until(pilot, lambda: app.board.link == "reconnecting", "reconnecting")
            header = app.screen.query_one(HeaderLine)
            await until(pilot, lambda: "reconnecting" in text_of(header), "the header to say so")
            await asyncio.to_thread(d.start)
            with d.client() as c:  # events while the app may still be away
                c.parallel_add_tasks(tasks=[{"id": "after", "title": "a"}])
                c.parallel_add_tasks(
                    tasks=[{"id": "later", "title": "l", "dependencies": ["after"]}]
                )
                c.parallel_cancel_task(task_id="before")
            await until(pilot, lambda: app.board.link == "connected", "connected again")
            await until(
                pilot,
                lambda: (
                    states(app.board)
                    == {"before": "cancelled", "after": "ready", "later": "pending"}
                ),
                "the tasks added while away",
            )
            assert "reconnecting" not in text_of(header)
            expected = await asyncio.to_thread(daemon_events, d.socket, first_seq)
            got = [s for s in app.seen if s > first_seq]
            assert expected and got == expected

    with DaemonProcess(tmp_path / "state") as d:
        run(scenario(d))
