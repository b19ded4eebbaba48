"""What a parser learns from one output line, and the parser protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from corral.models import AgentActivity

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class ParsedEvent:
    """Something learned from one output line; unset fields mean "nothing new"."""

    tokens_delta: int = 0
    tokens_total: int | None = None
    cost_total: float | None = None
    activity: AgentActivity | None = None
    rate_limited: bool = False
    rate_limit_reset: float | None = None  # epoch seconds
    completion_marker_seen: bool = False
    detail: str = ""


class OutputParser(Protocol):
    """Turns output lines of one agent run into events (one instance per run)."""

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]: ...
