"""`CorralApp`: the dashboard, one client of the daemon like any other.

Two workers talk to the daemon: one follows the event stream (resuming
with `sinceSeq` after a restart, and saying "reconnecting" meanwhile); the
other applies its events to the `Board` (`watch.model.apply`) and fetches
what they left out (one task, one agent, the stats...). Events are taken
in rounds, at most one per `ROUND` seconds, so a burst costs one round of
requests and one redraw, and only the screen in view is drawn.
CPU and memory change without events, so while agents run they are
fetched on a `TICK`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.filter import Monochrome, NoColor

from corral import errors
from corral.client import Client, _Rpc
from corral.models import Event, Session, SessionStatus
from corral.params import InitParams
from corral.plan import Plan
from corral.transport import Subscription
from corral.ui.agents import AgentsScreen
from corral.ui.base import DashScreen
from corral.ui.conflicts import ConflictsScreen
from corral.ui.form import SessionForm
from corral.ui.integration import IntegrationScreen
from corral.ui.link import Link
from corral.ui.logview import LogScreen
from corral.ui.run import RunScreen
from corral.ui.state import PARTS, TOPICS, Board
from corral.watch.model import LIVE, Needs, apply, latest

__all__ = ["COALESCE", "ROUND", "TICK", "CorralApp"]

#: Seconds a burst of events is gathered before one round of fetches and one redraw.
COALESCE = 0.1
#: The shortest time between two rounds (however many events come).
ROUND = 0.5
#: How long the event stream lets events gather before it reads them (one read for many).
BATCH = 0.1
#: Seconds between refreshes of the figures that have no events, while agents run.
TICK = 2.0


class CorralApp(App[None]):
    """The dashboard: Run, Agents, Conflicts and Integration screens over one daemon."""

    TITLE = "corral"
    MODES = {
        "run": RunScreen,
        "agents": AgentsScreen,
        "conflicts": ConflictsScreen,
        "integration": IntegrationScreen,
    }
    DEFAULT_MODE = "run"
    BINDINGS = [
        Binding("r", "switch_mode('run')", "Run"),
        Binding("a", "switch_mode('agents')", "Agents"),
        Binding("c", "switch_mode('conflicts')", "Conflicts"),
        Binding("i", "switch_mode('integration')", "Queue"),
        Binding("ctrl+q", "quit", "Quit", show=False),
    ]
    ENABLE_COMMAND_PALETTE = False
    # Without colour a cursor drawn as a background is invisible: draw it reversed.
    CSS = """
    App:nocolor Tree > .tree--cursor, App:nocolor DataTable > .datatable--cursor {
        text-style: reverse bold;
    }
    """

    def __init__(self, socket: str | None = None, session_id: str | None = None) -> None:
        super().__init__()
        if self.no_color:
            # Textual's NO_COLOR draws colours as greys by their luminance, which makes
            # red text (failures, violations) near-black on a dark background. NO_COLOR
            # means "no colour": the terminal's own colours, keeping bold and reverse.
            self._filters = [f for f in self._filters if not isinstance(f, Monochrome)]
            self._filters.append(NoColor())
        self.link = Link(socket)
        self.session_id = session_id
        self.board = Board()
        self.fetches = 0  # rounds of fetching (tests and the bench read it)
        self._needs = Needs(parts=set(PARTS))  # what the board lacks: everything at first
        self._events: list[Event] = []  # taken, not yet applied to the board
        self._wake = asyncio.Event()
        self._shown: DashScreen | None = None
        #: The dashboard's event stream: `last_seq` is where it stands (resumes from).
        self.subscription = Subscription(TOPICS)

    # --- lifecycle -----------------------------------------------------------------

    def on_mount(self) -> None:
        self.start_following()

    def start_following(self) -> None:
        """Start the workers that talk to the daemon (the event stream, the fetcher)."""
        self.run_worker(self._follow(), group="events", exclusive=True)
        self.run_worker(self._refresher(), group="refresh", exclusive=True)
        self.set_interval(TICK, self._tick)
        self._wake.set()  # the first fetch: everything is stale

    async def on_unmount(self) -> None:
        await self.link.aclose()

    async def _follow(self) -> None:
        """Follow the event stream forever; mark what each event makes stale.

        If the daemon no longer keeps the events since the last one seen (a long
        absence), the stream starts again from now and everything is fetched
        afresh: the board is right again, though the events between are not shown.
        """
        try:
            while True:
                try:
                    stream = self.link.follow(self.subscription, self._link_state, batch_secs=BATCH)
                    async for event in stream:
                        self._take(event)
                except errors.EventsExpired:
                    self.notify("missed events expired: everything was fetched again")
                    self.subscription = Subscription(TOPICS)
                    self.mark_stale(set(PARTS))
        except errors.CorralError as exc:
            self.board.link = f"lost: {exc.message}"
            self.notify(f"event stream: {exc.message}", severity="error", timeout=30)
            self._redraw()

    def _take(self, event: Event) -> None:
        self.board.last_seq = event.seq
        self.board.events += 1
        if event.type == "session.created" and self.session_id is None:
            self.session_id = event.session_id
            self.mark_stale(set(PARTS))
            return
        if event.session_id is not None and event.session_id != self.session_id:
            return
        if event.type == "violation":
            p = event.payload
            self.notify(
                f"{p.get('taskId')}: {p.get('kind')} {p.get('value')} > {p.get('limit')}"
                f" → {p.get('action')}",
                title="limit violated",
                severity="warning",
            )
        self._events.append(event)  # applied by the next round (`_apply_events`)
        self._wake.set()

    def _link_state(self, state: str) -> None:
        was = self.board.link
        self.board.link = state
        self.board.last_seq = self.subscription.last_seq
        if state == "connected" and was == "reconnecting":
            self.mark_stale(set(PARTS))  # live figures (pids, CPU) changed with the restart
        self._redraw()

    def _tick(self) -> None:
        if self.board.running:
            self.mark_stale({LIVE})

    def mark_stale(self, parts: set[str]) -> None:
        """Fetch these parts of the board in the next round."""
        if parts:
            self._needs.parts |= parts
            self._wake.set()

    async def _refresher(self) -> None:
        """Fetch what the board lacks, at most once per `ROUND`, and redraw once."""
        loop = asyncio.get_running_loop()
        last = loop.time() - ROUND
        while True:
            await self._wake.wait()
            # Gather the rest of a burst, and keep rounds at least ROUND apart.
            await asyncio.sleep(max(COALESCE, last + ROUND - loop.time()))
            self._wake.clear()
            self._apply_events()
            needs = self._take_needs()
            if not (needs or needs.changed):
                continue
            last = loop.time()
            try:
                await self._fetch(needs)
            except (errors.ConnectionLost, errors.DaemonNotRunning):
                self._needs.update(needs)  # fetched again once the stream reconnects
                continue
            except errors.CorralError as exc:
                self.notify(f"refresh: {exc.message} [{exc.code}]", severity="error")
            self._redraw()

    def _apply_events(self) -> None:
        """Apply the events taken since the last round (a figure only as last reported)."""
        events, self._events = self._events, []
        for event in latest(events):
            if event.session_id is None or event.session_id == self.session_id:
                self._needs.update(apply(self.board, event))

    def _take_needs(self) -> Needs:
        """What to fetch now: the costly conflicts only when a screen shows them."""
        needs = self._needs.take()
        shown = self._shown.NEEDS if self._shown is not None else frozenset()
        if "conflicts" in needs.parts and "conflicts" not in shown:
            needs.parts.discard("conflicts")
            self._needs.parts.add("conflicts")  # kept for when such a screen is shown
        return needs

    async def _fetch(self, needs: Needs) -> None:
        parts = needs.parts
        if self.session_id is None:
            await self._pick_session()
            if self.session_id is None:
                return
            parts = set(PARTS) - {"conflicts"} | (parts & {"conflicts"})
        sid, link, b = self.session_id, self.link, self.board
        if parts >= set(PARTS) - {"conflicts"}:
            needs.tasks.clear()  # a new board: every row comes whole
            needs.agents.clear()
        calls: dict[str, Any] = {
            "session": link.call(Client.session_get, session_id=sid),
            "stats": link.call(Client.parallel_get_scheduler_stats, session_id=sid),
            "pool": link.call(Client.parallel_get_pool_stats, session_id=sid),
            "agents": link.call(Client.parallel_list_agents, session_id=sid),
            "tasks": link.call(Client.parallel_list_tasks, session_id=sid),
            "violations": link.call(Client.parallel_list_violations, session_id=sid),
            "integration": link.call(Client.integration_status, session_id=sid),
            "conflicts": self._fetch_conflicts(sid),
        }
        if LIVE in parts:  # CPU and memory: the pool, and the running agents' rows
            parts = parts | {"pool"}
            if "agents" not in parts:
                calls[LIVE] = link.call(Client.parallel_list_agents, session_id=sid, live=True)
        chosen = [p for p in calls if p in parts]
        for p in set(calls) - set(chosen):
            calls[p].close()  # never awaited: close the coroutine
        rows = [self._fetch_task(sid, t) for t in sorted(needs.tasks)]
        rows += [self._fetch_agent(a) for a in sorted(needs.agents)]
        results = await asyncio.gather(*(calls[p] for p in chosen), *rows)
        for part, value in zip(chosen, results, strict=False):
            if part in ("tasks", "agents"):
                getattr(b, part).replace(value)
            elif part == LIVE:
                for agent in value:
                    b.agents.put(agent)
            elif part != "conflicts":
                setattr(b, part, value)
        self.fetches += 1

    async def _fetch_task(self, sid: str, task_id: str) -> None:
        try:
            self.board.tasks.put(
                await self.link.call(Client.parallel_get_task, session_id=sid, task_id=task_id)
            )
        except errors.TaskNotFound:
            self.board.tasks.drop(task_id)

    async def _fetch_agent(self, agent_id: str) -> None:
        try:
            agent = await self.link.call(Client.parallel_get_agent, agent_id=agent_id)
        except errors.AgentNotFound:
            self.board.agents.drop(agent_id)
            return
        if agent.session_id == self.session_id:
            self.board.agents.put(agent)

    async def _fetch_conflicts(self, sid: str) -> None:
        b, link = self.board, self.link
        b.matrix = await link.call(Client.conflicts_matrix, session_id=sid)
        b.conflicts = await link.call(Client.conflicts_detect, session_id=sid)
        b.summary = await link.call(Client.conflicts_get_summary, conflicts=b.conflicts)

    async def _pick_session(self) -> None:
        """No session named: the newest running one, else the newest (or none yet)."""
        sessions: list[Session] = await self.link.call(Client.session_list)
        if not sessions:
            return
        running = [s for s in sessions if s.status is SessionStatus.RUNNING]
        self.session_id = max(running or sessions, key=lambda s: s.created_at).id

    def _redraw(self) -> None:
        if not self.is_running:
            return  # closing: its screens are being taken down, a late round draws nothing
        screen = self.screen
        # A screen just switched to has no widgets until it is mounted; it draws
        # the board itself then (`DashScreen.on_screen_resume`).
        if isinstance(screen, DashScreen) and screen.is_mounted:
            screen.show(self.board)

    def screen_shown(self, screen: DashScreen) -> None:
        """A screen came into view: fetch what it alone needs, if stale."""
        self._shown = screen
        if screen.NEEDS & self._needs.parts:
            self._wake.set()

    # --- actions the screens ask for --------------------------------------------------

    def act(self, label: str, rpc: _Rpc[..., Any], **params: Any) -> None:
        """Run one RPC on the session in a worker; its error becomes a notification."""
        self.run_worker(self._act(label, rpc, params), group="actions")

    async def _act(self, label: str, rpc: _Rpc[..., Any], params: dict[str, Any]) -> None:
        try:
            await self.link.call(rpc, session_id=self.session_id, **params)
        except errors.CorralError as exc:
            self.notify(f"{label}: {exc.message} [{exc.code}]", severity="error", timeout=8)
            return
        self.notify(f"{label}: done", timeout=3)

    def open_form(self) -> None:
        def created(session_id: str | None) -> None:
            if session_id is not None:
                self.notify(f"session {session_id} created (s: start)")

        self.push_screen(SessionForm(), created)

    async def create_session(self, params: InitParams, plan: Plan | None) -> str:
        """Create a session from the form (and add the plan's tasks); show it from now on."""
        config: dict[str, Any] = {}
        if params.config is not None:
            config = params.config.model_dump(by_alias=True, exclude_unset=True)
        if plan is not None:
            config = {**plan.config, **config}
        session = await self.link.call(
            Client.init_parallel_scheduler, repo_path=params.repo_path, config=config
        )
        if plan is not None and plan.tasks:
            await self.link.call(Client.parallel_add_tasks, session_id=session.id, tasks=plan.tasks)
        self.session_id = session.id
        self.board = Board(link=self.board.link, last_seq=self.board.last_seq)
        self.mark_stale(set(PARTS))
        return session.id

    def open_log(self, agent_id: str) -> None:
        agent = next((a for a in self.board.agents if a.id == agent_id), None)
        task = agent.task_id if agent is not None else "?"
        self.push_screen(LogScreen(agent_id, task))

    def __repr__(self) -> str:
        # Textual takes the repr while __init__ is still running: say what is known.
        return f"CorralApp({getattr(self, 'link', None)!r}, {getattr(self, 'board', None)!r})"
