"""Every agent run is a failure boundary; scheduler flags survive a kill -9.

Hostile output goes through a real daemon and real agent processes: nothing
an agent prints may end another run, its session or the daemon, and the
hostile task ends with a clear category after at most one attempt.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from corral import errors
from corral.models import EndReason, ErrorCategory, ResourceLimits, TaskState
from corrald.agents.output import ParsedEvent, Stream
from corrald.agents.parsers import PlainParser
from corrald.process.run import run_agent
from corrald.process.spec import RunSpec
from tests.daemon_proc import DaemonProcess
from tests.test_pool import agent_config, finished, wait_for

FAKE = Path(__file__).with_name("fake_agent.py")

#: Lines that have broken parsers before (numbers too big for int or float,
#: NaN, wrong types, nesting deeper than the json module can follow, bytes
#: that are not UTF-8), each on its own line.
HOSTILE_LINES: list[bytes] = [
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1e400}}',
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":NaN}}',
    b'{"type":"assistant","message":{"content":5}}',
    b'{"type":"assistant","message":{"content":[{"type":"tool_use","name":5,"input":[]}]}}',
    b'{"type":"assistant","message":{"id":[],"usage":{"input_tokens":1e400}}}',
    b'{"type":"result","total_cost_usd":1e400,"usage":{"input_tokens":-1e400}}',
    b'{"type":"result","total_cost_usd":"free","result":{"x":1}}',
    b"{" + b'"a":[' * 50_000 + b"]" * 50_000 + b"}",
    b"[" * 200_000,
    b'{"type":"assistant","message":{"content":[{"type":"text","text":"\xff\xfe\xc3"}]}}',
    b"\xff\xfe\xfa not utf-8 at all \xc3\x28",
    b'{"type":"turn.completed","usage":{"input_tokens":1e400,"output_tokens":"x"}}',
]


def _hostile_file(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.bin"
    with path.open("wb") as fh:
        for line in HOSTILE_LINES:
            fh.write(line + b"\n")
        fh.write(b"z" * (100 * 1024 * 1024))  # a 100 MB line with no newline at all
    return path


def test_hostile_output_ends_only_that_run(tmp_path: Path, repo: Path) -> None:
    hostile = _hostile_file(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "hostile": ["--cat", str(hostile)],
                "calm-1": ["--stream-json", "--tokens", "40", "--sleep", "1"],
                "calm-2": ["--stream-json", "--tokens", "60", "--sleep", "1"],
            }
        )
    )
    with DaemonProcess(config=agent_config(plan, "fake")) as d, d.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo),
            session_id="h",
            config={"agentType": "fake", "maxParallel": 3, "maxRetries": 2},
        )
        c.parallel_add_tasks(tasks=[{"id": t, "title": t} for t in ("hostile", "calm-1", "calm-2")])
        c.session_start()
        wait_for(lambda: finished(c, "h"), 120, "the session to finish")
        tasks = {t.id: t for t in c.parallel_list_tasks()}
        agents = c.parallel_list_agents()
        assert d.running() and c.daemon_status().pid == d.pid
    assert tasks["calm-1"].state is TaskState.COMPLETED
    assert tasks["calm-2"].state is TaskState.COMPLETED
    hostile_runs = [a for a in agents if a.task_id == "hostile"]
    assert len(hostile_runs) == 1  # at most one attempt
    task = tasks["hostile"]
    assert task.state in (TaskState.COMPLETED, TaskState.FAILED)
    if task.state is TaskState.FAILED:
        assert task.error_category is ErrorCategory.INTERNAL, task
    assert sum(a.tokens for a in agents if a.task_id != "hostile") == 100


class _RaisingParser:
    """A parser with a bug: it raises on the third line it sees."""

    def __init__(self) -> None:
        self.lines = 0

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        self.lines += 1
        if self.lines == 3:
            raise KeyError("a parser bug")
        return []


def _spec(tmp_path: Path, name: str, parser: Any, *args: str) -> RunSpec:
    return RunSpec(
        agent_id=name,
        task_id=name,
        argv=[sys.executable, str(FAKE), *args],
        cwd=str(tmp_path),
        env=dict(os.environ),
        stdin_data=None,
        limits=ResourceLimits(kill_grace_secs=0.5, max_runtime_secs=60),
        log_path=tmp_path / f"{name}.log",
        parser=parser,
    )


async def test_a_parser_that_raises_ends_only_its_own_run(tmp_path: Path) -> None:
    lines = [arg for i in range(10) for arg in ("--stdout", f"line {i}")]
    async with trio.open_nursery() as nursery:
        broken: list[Any] = []
        calm: list[Any] = []

        async def one(out: list[Any], spec: RunSpec) -> None:
            out.append(await run_agent(spec))

        nursery.start_soon(
            one, broken, _spec(tmp_path, "broken", _RaisingParser(), *lines, "--sleep", "30")
        )
        nursery.start_soon(
            one, calm, _spec(tmp_path, "calm", PlainParser(), *lines, "--sleep", "1")
        )
    (bad,), (good,) = broken, calm
    assert (bad.end_reason, bad.error_category) == (EndReason.FAILED, ErrorCategory.INTERNAL)
    assert bad.error is not None and "output parser failed" in bad.error
    assert "output parser failed" in (tmp_path / "broken.log").read_text()
    assert good.end_reason is EndReason.OK


def test_abort_survives_kill_9_and_restart(tmp_path: Path, repo: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"boom": ["--exit", "3"], "*": ["--sleep", "0.1"]}))
    state = tmp_path / "state"
    config = agent_config(plan, "fake")
    with DaemonProcess(state, config=config) as d, d.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo),
            session_id="ab",
            config={"agentType": "fake", "maxParallel": 1, "errorStrategy": "abort"},
        )
        c.parallel_add_tasks(
            tasks=[
                {"id": "boom", "title": "fails", "priority": -1},
                {"id": "later-1", "title": "never starts"},
                {"id": "later-2", "title": "never starts"},
            ]
        )
        c.session_start()
        wait_for(lambda: c.parallel_get_task(task_id="boom").state is TaskState.FAILED, 30)
        wait_for(lambda: c.session_get().aborted, 10, "the session to be aborted")
        d.kill()
    with DaemonProcess(state, config=config) as d, d.client() as c:
        session = c.session_get(session_id="ab")
        assert session.aborted
        # Nothing new starts, by hand or by itself: a restarted session that
        # is aborted with nothing running is over at once.
        with pytest.raises(errors.SessionAborted):
            c.parallel_schedule_next()
        assert c.session_start().status.value == "failed"
        tasks = {t.id: t for t in c.parallel_list_tasks()}
        assert tasks["later-1"].state is TaskState.READY and tasks["later-1"].attempts == 0
        assert tasks["later-2"].state is TaskState.READY and tasks["later-2"].attempts == 0
        assert [a.task_id for a in c.parallel_list_agents()] == ["boom"]
