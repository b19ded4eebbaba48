"""Every timestamp on the wire is an RFC 3339 string, as the seed's types say."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from corral import events, models
from corral.models import Task, Timestamp, rfc3339

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TIME_LIKE = re.compile(r"(^at$|_at$)")


def _wire_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for module in (models, events):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, models.Wire) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def _is_timestamp(annotation: Any) -> bool:
    return "Timestamp" in str(annotation) or annotation is Timestamp


def test_every_time_like_field_is_a_timestamp() -> None:
    checked = 0
    for cls in _wire_models():
        for name, field in cls.model_fields.items():
            if TIME_LIKE.search(name):
                schema = cls.model_json_schema(by_alias=True)
                if "$ref" in schema:  # a recursive model (Agent.subagents) is all in $defs
                    schema = schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
                prop = schema["properties"][field.serialization_alias or field.alias or name]
                options = prop.get("anyOf", [prop])
                assert {"type": "string", "format": "date-time"} in [
                    {k: o.get(k) for k in ("type", "format")} for o in options
                ], f"{cls.__name__}.{name} is not a Timestamp on the wire"
                checked += 1
    assert checked >= 12  # every model with a time in it was looked at


def test_timestamps_serialize_as_rfc3339_and_parse_back() -> None:
    when = 1_733_081_423.123456
    task = Task(id="a", title="t", started_at=when, completed_at=when + 1)
    wire = task.to_wire()
    assert RFC3339.match(wire["startedAt"]) and wire["startedAt"] == "2024-12-01T19:30:23.123456Z"
    again = Task.model_validate(wire)
    assert again.started_at == pytest.approx(when, abs=1e-6)
    # Numbers are still accepted on input (older peers, stored rows).
    assert Task.model_validate({**wire, "startedAt": when}).started_at == when
    assert rfc3339(when) == datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize("bad", ["yesterday", "2024-12-01T19:30:23", float("inf")])
def test_bad_timestamps_are_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        Task.model_validate({"id": "a", "title": "t", "startedAt": bad})


def test_task_status_is_the_seeds_and_state_is_corrals() -> None:
    seed = {"pending", "in_progress", "completed", "failed"}
    for state in models.TaskState:
        task = Task(id="a", title="t", state=state)
        wire = task.to_wire()
        assert wire["state"] == state.value and wire["status"] in seed
    # A row stored before `state` existed carries the fine value in `status`.
    assert Task.model_validate({"id": "a", "title": "t", "status": "retry_wait"}).state.value == (
        "retry_wait"
    )
