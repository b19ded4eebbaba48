"""SVG snapshots of every dashboard screen at 80x24 and 160x50.

The data is what a real daemon answered for `tests/ui_plan.py` (recorded in
`tests/ui_board.json`; `python -m tests.ui_plan` records it again), so the
pictures do not move with run times, ids or temp paths. The app is the real
one; only its link to a daemon is not started. Update the pictures after a
deliberate change with `pytest tests/test_ui_snapshots.py --snapshot-update`
and look at them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import TypeAdapter
from textual.pilot import Pilot

from corral.models import (
    Agent,
    ConflictMatrix,
    ConflictSummary,
    IntegrationReport,
    MergeConflict,
    PoolStats,
    SchedulerStats,
    Session,
    Task,
    Violation,
)
from corral.ui.app import CorralApp
from corral.ui.state import Board
from corral.watch.model import Rows
from tests.ui_plan import BOARD

SnapCompare = Callable[..., bool]

#: Never listened on: the screens that open a stream of their own say so, the same each time.
NO_DAEMON = "/tmp/corral-ui-snapshot-no-daemon.sock"

_PARTS: dict[str, Any] = {
    "session": Session,
    "stats": SchedulerStats,
    "pool": PoolStats,
    "agents": list[Agent],
    "tasks": list[Task],
    "violations": list[Violation],
    "integration": IntegrationReport,
    "matrix": ConflictMatrix,
    "conflicts": list[MergeConflict],
    "summary": ConflictSummary,
}


def recorded_board() -> Board:
    raw = json.loads(BOARD.read_text())
    parts = {k: TypeAdapter(t).validate_python(raw[k]) for k, t in _PARTS.items()}
    parts["agents"], parts["tasks"] = Rows(parts["agents"]), Rows(parts["tasks"])
    return Board(**parts, link="connected")


class RecordedApp(CorralApp):
    """The dashboard drawing a recorded board instead of following a daemon."""

    def __init__(self) -> None:
        super().__init__(NO_DAEMON, "demo")

    def start_following(self) -> None:
        self.board = recorded_board()
        self._redraw()


def press(*keys: str) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        await pilot.press(*keys)
        await pilot.pause()

    return run_before


SCREENS = {"run": (), "agents": ("a",), "conflicts": ("c",), "integration": ("i",)}


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen_snapshot(snap_compare: SnapCompare, screen: str, size: tuple[int, int]) -> None:
    assert snap_compare(RecordedApp(), terminal_size=size, run_before=press(*SCREENS[screen]))


def test_no_color_snapshot(snap_compare: SnapCompare, monkeypatch: pytest.MonkeyPatch) -> None:
    """`NO_COLOR`: a monochrome Run screen, its states still spelled out."""
    monkeypatch.setenv("NO_COLOR", "1")
    app = RecordedApp()
    assert app.no_color
    assert snap_compare(app, terminal_size=(80, 24))


def test_recorded_board_is_the_plan_played_out() -> None:
    """The snapshots draw what they claim: the plan's outcome, as the daemon said it."""
    board = recorded_board()
    states = {t.id: t.state.value for t in board.tasks}
    assert states == {
        "alpha": "completed",
        "beta": "completed",
        "gamma": "completed",
        "delta": "failed",
        "epsilon": "blocked",
    }
    assert board.integration is not None and [p.task_id for p in board.integration.parked] == [
        "gamma"
    ]
    assert any(c.file_path == "shared.txt" for c in board.conflicts)
