"""`corral watch` in a real terminal (a pty): the agents' rows appear, Ctrl-C quits."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from corral import errors
from corral.cli import main
from corral.client import Client
from corral.models import Event
from corral.watch import EventFeed, follow
from corral.watch.live import ctrl_c_flag
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, wait_for

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Z0-9]|[=>])")


@pytest.fixture
def running(tmp_path: Path, repo: Path) -> Iterator[DaemonProcess]:
    """A daemon with two agents that sleep (they are stopped with the daemon)."""
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({"*": ["--stream-json", "--tokens", "40", "--sleep", "60"]}))
    with DaemonProcess(config=agent_config(behaviour, "fake")) as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"})
            c.parallel_add_tasks(
                tasks=[{"id": "alpha-task", "title": "a"}, {"id": "beta-task", "title": "b"}]
            )
            c.session_start()
            wait_for(lambda: len(c.parallel_list_agents(live=True)) == 2, 20, "two agents")
        yield d
        # Stop the agents first: on SIGTERM with agents running, corrald restarts the
        # requeued tasks and waits its whole shutdown grace (reported; not ours to fix).
        with d.client() as c:
            c.session_pause()
            c.parallel_stop_all()
        assert d.stop() == 0


def read_for(fd: int, secs: float, done: Callable[[str], bool] = lambda _: False) -> str:
    """What the terminal shows (ANSI stripped) after `secs`, once `done(screen)`, or at EOF."""
    raw = b""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
            if done(ANSI.sub("", raw.decode(errors="replace"))):
                break
    return ANSI.sub("", raw.decode(errors="replace"))


def read_until(fd: int, wanted: list[str], timeout: float) -> str:
    """Read the terminal until every string in `wanted` shows (ANSI stripped)."""
    screen = read_for(fd, timeout, lambda shown: all(w in shown for w in wanted))
    if not all(w in screen for w in wanted):
        raise AssertionError(f"never saw {wanted}; screen:\n{screen}")
    return screen


def test_watch_in_a_pty_shows_both_agents_and_quits_on_ctrl_c(running: DaemonProcess) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: a real terminal of 120x40
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        # A run started in the background (`cmd &` in a script) ignores SIGINT, and
        # an ignored signal stays ignored across exec: Ctrl-C would do nothing.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack (see below)
        argv = [sys.executable, "-m", "corral.cli", "watch", "--socket", str(running.socket)]
        os.execve(sys.executable, argv, env)
    try:
        screen = read_until(fd, ["alpha-task", "beta-task", "running agents"], 20)
        assert "memory" in screen and "CPU" in screen and "in_progress 2" in screen
        os.write(fd, b"\x03")  # Ctrl-C, through the terminal's line discipline
        deadline = time.monotonic() + 10
        after = b""  # what it printed after Ctrl-C
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            with_data, _, _ = select.select([fd], [], [], 0.1)
            if with_data:
                with contextlib.suppress(OSError):
                    after = (after + os.read(fd, 65536))[-4096:]
        else:
            os.kill(pid, signal.SIGABRT)  # where is it stuck? faulthandler says, on the terminal
            stacks = read_for(fd, 3.0)
            shown = ANSI.sub("", after.decode(errors="replace"))
            raise AssertionError(
                f"corral watch did not exit on Ctrl-C; it printed:\n{shown}\nits threads:\n{stacks}"
            )
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_watch_once_draws_one_frame(
    running: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["watch", "--once", "--socket", str(running.socket)]) == 0
    out = capsys.readouterr().out
    assert "alpha-task" in out and "beta-task" in out and "running agents (fake)" in out
    assert "conflict" in out
    assert main(["watch", "--json", "--socket", str(running.socket)]) == 0
    frame = json.loads(capsys.readouterr().out)
    assert sorted(a["taskId"] for a in frame["agents"]) == ["alpha-task", "beta-task"]


# --- the event feed behind the views ---------------------------------------------------------


def _take(feed: EventFeed, n: int, timeout: float = 20.0) -> list[Event]:
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += feed.get(0.2)
    return got


def test_event_feed_queues_each_event_once_across_a_restart(repo: Path) -> None:
    with DaemonProcess() as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), session_id="s")
        with EventFeed(d.socket, ["task"], "s") as feed:
            with d.client() as c:
                c.parallel_add_tasks(tasks=[{"id": f"a{i}", "title": "a"} for i in range(3)])
            got = _take(feed, 3)
            d.kill()
            d.start()  # same socket and state: the feed reconnects and resumes by itself
            with d.client() as c:
                c.parallel_add_tasks(tasks=[{"id": f"b{i}", "title": "b"} for i in range(3)])
            got += _take(feed, 3)
            assert feed.last_seq == got[-1].seq
            assert feed.get(0.05) == []  # nothing repeated after the last one either
        assert [e.payload["taskId"] for e in got] == [f"{p}{i}" for p in "ab" for i in range(3)]


def test_event_feed_start_fails_fast_without_a_daemon_and_close_is_prompt(
    daemon: DaemonProcess,
) -> None:
    absent = daemon.dir / "absent.sock"
    with pytest.raises(errors.DaemonNotRunning):
        EventFeed(absent, ["task"]).start()
    feed = EventFeed(daemon.socket, ["task"]).start()
    t0 = time.monotonic()
    feed.close()
    assert time.monotonic() - t0 < 2.0  # it polls; it does not sit in recv
    assert not feed._thread.is_alive()


# --- the view kept up by events ---------------------------------------------------------------


class CountingClient(Client):
    """A real client that counts the requests it sends, by method."""

    def __init__(self, socket: Path) -> None:
        super().__init__(socket)
        self.sent: Counter[str] = Counter()

    def _request(self, method: str, params: dict[str, Any]) -> Any:
        self.sent[method] += 1
        return super()._request(method, params)


def test_follow_fetches_the_task_list_once_and_ends_equal_to_the_daemon(
    tmp_path: Path, repo: Path
) -> None:
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({"*": ["--stream-json", "--tokens", "40"]}))
    tasks = [{"id": "root", "title": "r"}] + [
        {"id": f"leaf{i}", "title": "l", "dependencies": ["root"]} for i in range(4)
    ]
    with DaemonProcess(config=agent_config(behaviour, "fake")) as d:
        c = CountingClient(d.socket)
        with c:
            sid = c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"}).id
            c.parallel_add_tasks(session_id=sid, tasks=tasks)
            console = Console(file=io.StringIO())
            seen: list[Event] = []
            snap = follow(
                c, sid, console, mode="quiet", on_event=seen.append, start=lambda: c.session_start()
            )
            assert snap.session.status.value == "completed"
            assert any(e.type == "agent.tokens" for e in seen)  # the agents' news came as events
            # One snapshot of the list; every change after it came from events and single rows.
            assert c.sent["parallel_list_tasks"] == 1
            assert c.sent["parallel_get_task"] >= len(tasks)
            assert list(snap.tasks) == c.parallel_list_tasks(session_id=sid)
            assert snap.stats == c.parallel_get_scheduler_stats(session_id=sid)
            assert list(snap.agents) == [] == c.parallel_list_agents(session_id=sid, live=True)


def test_event_feed_counts_a_restart_and_lost_events_as_resets(repo: Path) -> None:
    with DaemonProcess() as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), session_id="s")
        with EventFeed(d.socket, ["task"]) as feed:
            with d.client() as c:
                c.parallel_add_tasks(tasks=[{"id": "a0", "title": "a"}])
            assert [e.payload["taskId"] for e in _take(feed, 1)] == ["a0"]
            assert feed.resets == 0
            d.kill()
            d.start()  # the same state: the feed resumes, and says a view should refetch
            wait_for(lambda: feed.resets == 1, 20, "the resubscription")
            d.kill()
            shutil.rmtree(d.dir / "state")  # a daemon that has not kept the events since then
            d.start()
            wait_for(lambda: feed.resets == 2, 20, "a new subscription, from now")
            with d.client() as c:
                c.init_parallel_scheduler(repo_path=str(repo), session_id="s")
                c.parallel_add_tasks(tasks=[{"id": "b0", "title": "b"}])
            assert [e.payload["taskId"] for e in _take(feed, 1)] == ["b0"]
            assert feed.error is None and feed.resets == 2


def test_a_ctrl_c_python_drops_in_a_finalizer_still_ends_the_view() -> None:
    """A KeyboardInterrupt raised in a finalizer is dropped ("Exception ignored"); the flag stays.

    A view spends much of its time in rich's generators, and a SIGINT that
    lands while one is collected would otherwise be lost: the view goes on.
    """

    def finalized() -> Iterator[None]:
        try:
            yield
        finally:
            signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the finalizer

    dropped: list[type[BaseException]] = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: dropped.append(u.exc_type)
    # Python's own handler, as an interactive command has it (a run started in the
    # background ignores SIGINT, and then `ctrl_c_flag` rightly leaves it ignored).
    was = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ctrl_c_flag() as interrupted:
            try:
                gen = finalized()
                next(gen)
                del gen  # collected now: its `finally` runs as a finalizer
            except KeyboardInterrupt:
                pytest.fail("the interrupt was not dropped, so this shows nothing")
            assert dropped == [KeyboardInterrupt]  # what Python did with it
            assert interrupted.is_set()  # what the view goes by
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, was)
