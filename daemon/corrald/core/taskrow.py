"""A task as the daemon keeps it: the wire `Task`'s fields in slots, its JSON cached.

A pydantic `Task` costs about 1.8 KB (a 26-key `__dict__`, its fields-set, three
lists); a `TaskRow` about 250 bytes, so a 50k-task session fits in a few tens of
megabytes and a full garbage collection has far fewer objects to walk. Rows are
the scheduler's state, mutated in place as `Task` models were; they become
`Task` models only at the edges (`model()`), and a whole list goes on the wire
from each row's cached JSON (`json()`), which any assignment clears.

List fields are tuples here, so nothing can change a row without assigning
to it (and so clearing its JSON).
"""

from __future__ import annotations

from typing import Any

from corral.models import (
    SEED_STATUS,
    ErrorCategory,
    IntegrationStatus,
    Task,
    TaskState,
    TaskStatus,
)

#: The wire fields, in `Task`'s order (a test holds the two together).
FIELDS = (
    "id",
    "title",
    "description",
    "priority",
    "dependencies",
    "estimated_tokens",
    "actual_tokens",
    "state",
    "attempts",
    "assigned_agent",
    "branch",
    "worktree_path",
    "error",
    "error_category",
    "started_at",
    "completed_at",
    "agent_type",
    "retry_at",
    "blocked_by",
    "paths",
    "integration_status",
    "integration_attempts",
    "resolving",
    "conflict_files",
    "integration_error",
    "rate_limits",
)
_TUPLES = ("dependencies", "paths", "conflict_files")


def _dump_json(task: Task) -> bytes:
    """A task's wire JSON, as the RPC layer encodes a `Task` result."""
    return task.__pydantic_serializer__.to_json(task, by_alias=True, exclude_none=True)


class TaskRow:
    """One task's fields; `model()` is its wire `Task`, `json()` that model's JSON."""

    __slots__ = (*FIELDS, "_json")

    id: str
    title: str
    description: str
    priority: int
    dependencies: tuple[str, ...]
    estimated_tokens: int | None
    actual_tokens: int | None
    state: TaskState
    attempts: int
    assigned_agent: str | None
    branch: str | None
    worktree_path: str | None
    error: str | None
    error_category: ErrorCategory | None
    started_at: float | None
    completed_at: float | None
    agent_type: str | None
    retry_at: float | None
    blocked_by: str | None
    paths: tuple[str, ...]
    integration_status: IntegrationStatus | None
    integration_attempts: int
    resolving: str | None
    conflict_files: tuple[str, ...]
    integration_error: str | None
    rate_limits: int
    _json: bytes | None

    def __init__(
        self,
        id: str,
        title: str,
        *,
        description: str = "",
        priority: int = 0,
        dependencies: tuple[str, ...] = (),
        estimated_tokens: int | None = None,
        agent_type: str | None = None,
        paths: tuple[str, ...] = (),
        state: TaskState = TaskState.PENDING,
    ) -> None:
        """A new task as `parallel_add_tasks` makes it; the other fields at their defaults."""
        values: dict[str, Any] = dict.fromkeys(FIELDS)
        values.update(
            id=id,
            title=title,
            description=description,
            priority=priority,
            dependencies=dependencies,
            estimated_tokens=estimated_tokens,
            agent_type=agent_type,
            paths=paths,
            state=state,
            attempts=0,
            integration_attempts=0,
            conflict_files=(),
            rate_limits=0,
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_json", None)

    @classmethod
    def of(cls, task: Task) -> TaskRow:
        """The row of a `Task` model (restored from the store, or made by a test)."""
        row = cls.__new__(cls)
        for name in FIELDS:
            value = getattr(task, name)
            object.__setattr__(row, name, tuple(value) if name in _TUPLES else value)
        object.__setattr__(row, "_json", None)
        return row

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_json", None)  # the cached JSON no longer says this

    @property
    def status(self) -> TaskStatus:
        """The seed's status, derived from `state`."""
        return SEED_STATUS[self.state]

    def model(self) -> Task:
        """The wire `Task` this row is now (a copy: later changes do not reach it).

        What `Task.model_construct` does, without its per-field Python loop
        (4x slower here): the fields are all there and already valid.
        """
        values = {name: getattr(self, name) for name in FIELDS}
        for name in _TUPLES:
            values[name] = list(values[name])
        task = Task.__new__(Task)
        object.__setattr__(task, "__dict__", values)
        object.__setattr__(task, "__pydantic_fields_set__", set(FIELDS))
        object.__setattr__(task, "__pydantic_extra__", None)
        object.__setattr__(task, "__pydantic_private__", None)
        return task

    def json(self) -> bytes:
        """`model()` as the wire JSON (camelCase, no nulls), encoded once per change."""
        data = self._json
        if data is None:
            data = _dump_json(self.model())
            object.__setattr__(self, "_json", data)
        return data

    def __repr__(self) -> str:
        return f"TaskRow({self.id!r}, {self.state.value})"
