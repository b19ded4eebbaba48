"""`TaskRow`: the daemon's compact task, held to the wire `Task` it stands for."""

from __future__ import annotations

import json

from corral.models import ErrorCategory, IntegrationStatus, Task, TaskState
from corrald.core.taskrow import FIELDS, TaskRow


def test_fields_are_the_wire_tasks_in_order() -> None:
    assert list(FIELDS) == list(Task.model_fields)


def test_json_is_what_the_model_encodes_and_follows_every_assignment() -> None:
    row = TaskRow("t1", "title", priority=3, dependencies=("t0",), paths=("src/**",))
    first = row.json()
    assert first == row.model().model_dump_json(by_alias=True, exclude_none=True).encode()
    assert json.loads(first)["status"] == "pending"
    row.state = TaskState.FAILED
    row.error = "boom"
    row.error_category = ErrorCategory.CRASH
    row.started_at = 1_800_000_000.5
    row.conflict_files = ("a.txt",)
    row.integration_status = IntegrationStatus.CONFLICT
    wire = json.loads(row.json())
    assert wire["state"] == "failed" and wire["status"] == "failed"
    assert wire["error"] == "boom" and wire["errorCategory"] == "crash"
    assert wire["startedAt"] == "2027-01-15T08:00:00.500000Z"
    assert wire["conflictFiles"] == ["a.txt"] and wire["integrationStatus"] == "conflict"


def test_a_row_survives_the_store_round_trip() -> None:
    row = TaskRow("t2", "x", description="d", estimated_tokens=10, agent_type="claude")
    row.attempts = 2
    row.retry_at = 1_800_000_100.25
    back = TaskRow.of(Task.model_validate_json(row.json()))
    assert back.json() == row.json()
    assert [getattr(back, f) for f in FIELDS] == [getattr(row, f) for f in FIELDS]


def test_model_is_a_copy() -> None:
    row = TaskRow("t3", "x", dependencies=("a",))
    model = row.model()
    model.dependencies.append("b")
    row.title = "y"
    assert row.dependencies == ("a",) and model.title == "x"
