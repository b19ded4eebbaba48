"""A view's rows kept up to date by events (pure, no I/O): what `watch` and `ui` share.

A view fetches a snapshot once, then `apply`s each event to it: a task's
state, an agent's lifecycle, activity and tokens are patched in place from
the payload, a violation is appended. What an event does not carry is
named in the returned `Needs`, and the view asks the daemon for just that
(one task, one agent, the stats) once per round of events; only a burst
that touches many rows (a whole plan added, a session stopped) asks for
the whole list again. Fetched rows replace patched ones, so the daemon
stays the source of truth and a view never drifts from it.

CPU and memory have no events: a view refreshes them (`LIVE`) on a slow
tick while agents run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload

from corral.models import (
    Agent,
    AgentActivity,
    AgentLifecycle,
    EndReason,
    Event,
    Task,
    Violation,
)

__all__ = ["ENDED", "LIVE", "MANY", "Needs", "Rows", "Tracked", "apply", "latest"]

#: A lifecycle after which an agent's row no longer changes.
ENDED = (AgentLifecycle.EXITED, AgentLifecycle.KILLED)
#: The part that stands for the running agents' live figures and the pool's totals.
LIVE = "live"
#: More single rows than this in one round are fetched as the whole list instead.
MANY = 50


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_HasId)


class Rows(Sequence[R], Generic[R]):
    """Rows in the daemon's order with an index by id: a row is replaced in O(1).

    `version` moves with every change, so what is drawn from the rows can be
    kept until they change.
    """

    def __init__(self, rows: Iterable[R] = ()) -> None:
        self._rows: list[R] = []
        self._at: dict[str, int] = {}
        self.version = 0
        self.replace(rows)

    def replace(self, rows: Iterable[R]) -> None:
        """All rows anew (a fetched list)."""
        self._rows = list(rows)
        self._at = {row.id: i for i, row in enumerate(self._rows)}
        self.version += 1

    def get(self, row_id: str) -> R | None:
        i = self._at.get(row_id)
        return None if i is None else self._rows[i]

    def put(self, row: R) -> None:
        """Replace the row with the same id, or append it."""
        i = self._at.get(row.id)
        self.version += 1
        if i is None:
            self._at[row.id] = len(self._rows)
            self._rows.append(row)
        else:
            self._rows[i] = row

    def drop(self, row_id: str) -> None:
        if row_id in self._at:
            self.replace(row for row in self._rows if row.id != row_id)

    @overload
    def __getitem__(self, i: int) -> R: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[R]: ...
    def __getitem__(self, i: int | slice) -> R | Sequence[R]:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[R]:
        return iter(self._rows)

    def __contains__(self, row: object) -> bool:
        return row in self._rows

    def __repr__(self) -> str:
        return f"Rows({len(self._rows)})"


@dataclass
class Needs:
    """What to ask the daemon after some events: whole parts, single tasks, single agents.

    Parts are the names a view fetches by (`session`, `stats`, `pool`,
    `tasks`, `agents`, `violations`, `integration`, `conflicts`, `LIVE`).
    `changed` says the rows changed already (a redraw is due even if
    nothing is fetched).
    """

    parts: set[str] = field(default_factory=set)
    tasks: set[str] = field(default_factory=set)
    agents: set[str] = field(default_factory=set)
    changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.parts or self.tasks or self.agents)

    def update(self, other: Needs) -> None:
        self.parts |= other.parts
        self.tasks |= other.tasks
        self.agents |= other.agents
        self.changed |= other.changed

    def take(self) -> Needs:
        """Everything needed so far (and forget it): what one round fetches.

        Many single rows become the whole list, which is one request.
        """
        taken = Needs(set(self.parts), set(self.tasks), set(self.agents), self.changed)
        if len(taken.tasks) > MANY:
            taken.parts.add("tasks")
        if len(taken.agents) > MANY:
            taken.parts.add("agents")
        if "tasks" in taken.parts:
            taken.tasks.clear()
        if "agents" in taken.parts:
            taken.agents.clear()
        self.parts, self.tasks, self.agents, self.changed = set(), set(), set(), False
        return taken

    def __repr__(self) -> str:
        return (
            f"Needs(parts={sorted(self.parts)}, tasks={len(self.tasks)},"
            f" agents={len(self.agents)}, changed={self.changed})"
        )


class Tracked(Protocol):
    """What `apply` patches: a view's task and agent rows and its violations."""

    tasks: Rows[Task]
    agents: Rows[Agent]
    violations: list[Violation]


#: Events that carry the whole of a live figure: a later one of the same agent replaces them.
_SUPERSEDED = frozenset({"agent.tokens", "agent.activity"})


def latest(events: Sequence[Event]) -> list[Event]:
    """`events` in order, less each figure a later event of the same agent replaces.

    Applying what is left gives the same rows as applying all of them: a
    busy agent reports its tokens many times between two redraws.
    """
    seen: set[tuple[str, object]] = set()
    kept: list[Event] = []
    for event in reversed(events):
        if event.type in _SUPERSEDED:
            key = (event.type, event.payload.get("agentId"))
            if key in seen:
                continue
            seen.add(key)
        kept.append(event)
    kept.reverse()
    return kept


#: task.status payload (wire name) -> Task attribute: what the event carries of a task.
_TASK_FIELDS = {
    "state": "state",
    "attempts": "attempts",
    "error": "error",
    "errorCategory": "error_category",
    "integrationStatus": "integration_status",
    "integrationAttempts": "integration_attempts",
}

#: Event types (or their prefix) whose news is a whole part, fetched again.
_PARTS = {
    "session": {"session", "stats", "integration", LIVE},
    "integration": {"integration"},
    "conflicts": {"conflicts"},
    "merge": {"conflicts", "integration"},
}


def apply(view: Tracked, event: Event, *, keep_ended: bool = True) -> Needs:
    """Patch `view` with `event`; return what else it needs from the daemon.

    `keep_ended=False` (a view of running agents) drops an agent's row when
    it ends instead of keeping it. An event type a view does not show
    (logs, worktrees, one this client does not know) needs nothing.
    """
    p, kind = event.payload, event.type
    needs = Needs()
    if kind == "task.status":
        _task_status(view, p, needs)
    elif kind.startswith("agent."):
        _agent_event(view, kind, p, needs, keep_ended)
    elif kind == "violation":
        try:
            view.violations.append(Violation.model_validate(p))
        except ValueError:
            needs.parts.add("violations")
        needs.changed = True
    else:
        parts = _PARTS.get(kind.split(".", 1)[0], set())
        needs.parts |= parts
    return needs


def _task_status(view: Tracked, p: dict[str, Any], needs: Needs) -> None:
    task_id = p.get("taskId")
    if not isinstance(task_id, str):
        return
    needs.parts.add("stats")  # the counts moved
    needs.tasks.add(task_id)  # what the event does not carry: branch, times, retry, blocker
    task = view.tasks.get(task_id)
    if task is None:
        return  # a new task: fetched whole
    update = {attr: p.get(key) for key, attr in _TASK_FIELDS.items() if key in p}
    for attr in ("error", "error_category", "integration_status"):
        update.setdefault(attr, None)  # left out of the payload when null
    try:
        patched = Task.model_validate({**task.model_dump(), **update})
    except ValueError:
        return  # a payload we cannot read: the fetch puts the row right
    if patched.integration_status != task.integration_status:
        needs.parts.add("integration")
    if patched.state.value == "completed" and task.state.value != "completed":
        needs.parts.add("conflicts")  # a new branch to compare: the costly matrix
    view.tasks.put(patched)
    needs.changed = True


def _agent_event(
    view: Tracked, kind: str, p: dict[str, Any], needs: Needs, keep_ended: bool
) -> None:
    agent_id = p.get("agentId")
    if not isinstance(agent_id, str):
        return
    agent = view.agents.get(agent_id)
    if kind == "agent.status":
        needs.parts.add(LIVE)  # the pool's count of running agents moved
    try:
        # Converted here rather than validated: tokens and activity come many times a second.
        if kind == "agent.status":
            lifecycle = AgentLifecycle(p["lifecycle"])
            if lifecycle in ENDED and not keep_ended:
                if agent is not None:
                    view.agents.drop(agent_id)
                    needs.changed = True
                return
            needs.agents.add(agent_id)  # its end: exit code, end time, final figures
            pid, end = p.get("pid"), p.get("endReason")
            update: dict[str, Any] = {
                "lifecycle": lifecycle,
                "process_id": pid if isinstance(pid, int) else None,
                "end_reason": EndReason(end) if end is not None else None,
            }
        elif kind == "agent.activity":
            update = {"status": AgentActivity(p["activity"])}
        elif kind == "agent.tokens":
            update = {"tokens": int(p["tokens"]), "cost": float(p["cost"])}
        else:  # agent.rate_limit, and any newer agent event
            needs.agents.add(agent_id)
            return
    except (KeyError, TypeError, ValueError):
        needs.agents.add(agent_id)  # a payload we cannot read: the fetch puts the row right
        return
    if agent is None:
        needs.agents.add(agent_id)  # started after the snapshot: fetched whole
        return
    view.agents.put(agent.model_copy(update=update))
    needs.changed = True
