"""Big results: encoded by pydantic-core in chunks, the same JSON as before, without
holding the event loop; list methods page with `limit` and `cursor`."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from corral import errors
from corral.models import NoParams, SchedulerConfig, Task, TaskSpec, TaskState, to_jsonable
from corrald.app import FREEZE_EVERY_TASKS, LongLived
from corrald.core.taskrow import TaskRow
from corrald.rpc.dispatch import (
    ENCODE_CHUNK,
    JOIN_CHUNK,
    Dispatcher,
    Encoded,
    Pieces,
    Registry,
    encode_items,
)
from corrald.state.engine import Engine
from corrald.state.events import EventBus
from corrald.state.store import Store
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, wait_for

TASKS = [
    Task(id=f"t{i}", title=f"task {i}", dependencies=[f"t{i - 1}"] if i else [], started_at=i)
    for i in range(ENCODE_CHUNK * 4 + 7)  # five chunks
]


ROW_TASKS = [
    Task(id=f"r{i}", title=f"row {i}", priority=i % 7, started_at=i)
    for i in range(JOIN_CHUNK * 2 + 3)  # three joins
]


def registry() -> Registry[list[str]]:
    reg: Registry[list[str]] = Registry()

    @reg.method()
    async def big(done: list[str], p: NoParams) -> list[Task]:
        return TASKS

    @reg.method()
    async def odd(done: list[str], p: NoParams) -> list[Task]:
        # Not Unicode: pydantic-core cannot encode it, the general path escapes it.
        return [Task(id="x", title="\ud800")]

    @reg.method()
    async def small(done: list[str], p: NoParams) -> str:
        return "small"

    @reg.method()
    async def rows(done: list[str], p: NoParams) -> Encoded[list[Task]]:
        return await encode_items([TaskRow.of(t) for t in ROW_TASKS])

    @reg.method()
    async def one_row(done: list[str], p: NoParams) -> Encoded[list[Task]]:
        return await encode_items([TaskRow.of(TASKS[3])])

    return reg


async def call(d: Dispatcher[list[str]], done: list[str], method: str) -> Any:
    answer = await d.dispatch_text(done, json.dumps({"jsonrpc": "2.0", "id": 9, "method": method}))
    assert answer is not None
    done.append(method)
    if isinstance(answer, Pieces):
        data = answer.join()
        assert len(data) == answer.length
        return json.loads(data)
    return json.loads(answer)


async def test_encoded_rows_are_the_json_the_models_make_in_pieces_or_not() -> None:
    d = Dispatcher(registry())
    answer = await d.dispatch_text([], b'{"jsonrpc":"2.0","id":"x","method":"rows"}')
    assert isinstance(answer, Pieces)  # too long for one join: written as it is made
    data = answer.join()
    assert len(data) == answer.length
    assert json.loads(data) == {"jsonrpc": "2.0", "result": to_jsonable(ROW_TASKS), "id": "x"}
    small = await call(d, [], "one_row")
    assert small == {"jsonrpc": "2.0", "result": to_jsonable([TASKS[3]]), "id": 9}
    # Inside a batch, pieces are joined into the batch's answer.
    batch = await d.dispatch_text([], b'[{"jsonrpc":"2.0","id":1,"method":"rows"}]')
    assert isinstance(batch, bytes)
    assert len(json.loads(batch)[0]["result"]) == len(ROW_TASKS)


async def test_a_chunked_list_is_the_same_json_as_the_general_path() -> None:
    d = Dispatcher(registry())
    answer = await call(d, [], "big")
    assert answer == {"jsonrpc": "2.0", "result": to_jsonable(TASKS), "id": 9}
    assert answer["result"][3]["startedAt"] == "1970-01-01T00:00:03.000000Z"
    assert "assignedAgent" not in answer["result"][0]  # None is left out, as before
    assert (await call(d, [], "odd"))["result"] == [to_jsonable(Task(id="x", title="\ud800"))]


async def test_other_tasks_run_while_a_long_list_is_encoded() -> None:
    d = Dispatcher(registry())
    done: list[str] = []
    turns = 0

    async def other() -> None:
        nonlocal turns
        while "big" not in done:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, d, done, "big")
        nursery.start_soon(other)
    # A turn between each two of the five chunks (one encoding would give at most two).
    assert turns >= 4


def test_list_tasks_pages_with_limit_and_cursor(daemon: DaemonProcess, repo: Path) -> None:
    with daemon.client() as c:
        sid = c.init_parallel_scheduler(repo_path=str(repo)).id
        specs: list[dict[str, Any]] = [{"id": f"t{i:02}", "title": f"task {i}"} for i in range(25)]
        for spec in specs[1::2]:  # every odd one waits for the one before: pending
            spec["dependencies"] = [f"t{int(spec['id'][1:]) - 1:02}"]
        c.parallel_add_tasks(session_id=sid, tasks=specs)
        everything = [t.id for t in c.parallel_list_tasks(session_id=sid)]
        assert everything == [s["id"] for s in specs]  # the unpaged form is unchanged

        def pages(**filters: Any) -> list[list[str]]:
            got: list[list[str]] = []
            cursor = None
            while True:
                page = c.parallel_list_tasks(session_id=sid, limit=10, cursor=cursor, **filters)
                got.append([t.id for t in page])
                if len(page) < 10:
                    return got
                cursor = page[-1].id

        assert pages() == [everything[:10], everything[10:20], everything[20:]]
        pending = [f"t{i:02}" for i in range(1, 25, 2)]
        assert pages(state=TaskState.PENDING) == [pending[:10], pending[10:]]
        assert [t.id for t in c.parallel_list_tasks(session_id=sid, cursor="t23")] == ["t24"]
        with pytest.raises(errors.TaskNotFound):
            c.parallel_list_tasks(session_id=sid, limit=5, cursor="nope")
        for bad in (0, -1, 100_001):
            with pytest.raises(errors.InvalidParams):
                c.parallel_list_tasks(session_id=sid, limit=bad)
        assert [t.id for t in c.parallel_list_tasks(session_id=sid)] == everything  # nothing lost


def test_tasks_a_session_gains_are_frozen_every_thousand(tmp_path: Path, repo: Path) -> None:
    store = Store(tmp_path / "corral.db")
    engine = Engine(store, EventBus(store))
    long_lived = LongLived()
    engine.on_change.append(long_lived.on_change)
    try:
        sid = engine.init_session(SchedulerConfig(integrate=False), str(repo), None).id
        engine.add_tasks(
            sid, [TaskSpec(id=f"a{i}", title="a") for i in range(FREEZE_EVERY_TASKS - 1)]
        )
        assert long_lived.freezes == 0
        engine.add_tasks(sid, [TaskSpec(id="last", title="a")])
        assert long_lived.freezes == 1 and gc.get_freeze_count() > 0
        engine.add_tasks(sid, [TaskSpec(id="more", title="a")])
        assert long_lived.freezes == 1  # the next thousand, not the next task
    finally:
        gc.unfreeze()  # this is pytest's process, not a daemon's
        store.close()


def test_list_agents_pages_with_limit_and_cursor(tmp_path: Path, repo: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"*": ["--sleep", "0"]}))
    with (
        DaemonProcess(tmp_path / "state", config=agent_config(plan, "fake")) as d,
        d.client() as c,
    ):
        sid = c.init_parallel_scheduler(
            repo_path=str(repo), config={"agentType": "fake", "maxParallel": 3}
        ).id
        c.parallel_add_tasks(
            session_id=sid, tasks=[{"id": f"a{i}", "title": f"t{i}"} for i in range(7)]
        )
        c.session_start(session_id=sid)
        wait_for(lambda: c.session_get(session_id=sid).status.value == "completed", 60)
        everything = [a.id for a in c.parallel_list_agents(session_id=sid)]
        assert len(everything) == 7
        got: list[str] = []
        cursor = None
        while True:
            page = c.parallel_list_agents(session_id=sid, limit=3, cursor=cursor)
            got += [a.id for a in page]
            if len(page) < 3:
                break
            cursor = page[-1].id
        assert got == everything
        assert c.parallel_list_agents(session_id=sid, cursor=everything[-1]) == []
        with pytest.raises(errors.AgentNotFound):
            c.parallel_list_agents(session_id=sid, limit=2, cursor="a-nope")
        with pytest.raises(errors.InvalidParams):
            c.parallel_list_agents(session_id=sid, live=True, limit=2)
        with pytest.raises(errors.InvalidParams):
            c.parallel_list_agents(session_id=sid, limit=0)
