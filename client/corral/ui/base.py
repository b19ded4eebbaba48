"""What every dashboard screen shares: it draws a `Board` when asked, and reaches the app."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen

from corral.ui.state import Board

if TYPE_CHECKING:
    from corral.ui.app import CorralApp

__all__ = ["DashScreen"]


class DashScreen(Screen[None]):
    """A screen of the dashboard. The app calls `show` after each coalesced fetch.

    Only the screen on top is drawn; one coming back into view draws the
    board at once (`on_screen_resume`), so hidden screens cost nothing.
    """

    #: The parts of the board this screen needs besides the common ones (fetched on demand).
    NEEDS: frozenset[str] = frozenset()

    @property
    def dash(self) -> CorralApp:
        return cast("CorralApp", self.app)

    def show(self, board: Board) -> None:
        """Draw `board` (override)."""

    def on_screen_resume(self) -> None:
        self.dash.screen_shown(self)
        self.show(self.dash.board)
