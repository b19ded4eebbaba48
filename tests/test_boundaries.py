"""Every agent run is a failure boundary; scheduler flags survive a kill -9.

Hostile output goes through a real daemon and real agent processes: nothing
an agent prints may end another run, its session or the daemon, and the
hostile task ends with a clear category after at most one attempt.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from corral import errors
from corral.events import LogPayload, SessionCreatedPayload
from corral.models import (
    DAY_SECS,
    Backoff,
    EndReason,
    ErrorCategory,
    ResourceLimits,
    SessionStatus,
    TaskState,
)
from corrald.agents.output import ParsedEvent, Stream
from corrald.agents.parsers import MAX_COST, MAX_TOKENS, PARSERS, PlainParser, make_parser
from corrald.agents.ratelimit import MAX_RESET_SECS, parse_reset, reset_from_value
from corrald.process.executor import LocalExecutor
from corrald.process.run import LINE_CAP, run_agent
from corrald.process.spec import NoEvents, RunSpec
from corrald.state.events import EventBus
from tests.daemon_proc import DaemonProcess
from tests.test_pool import PLAN_AGENT, agent_config, finished, wait_for

FAKE = Path(__file__).with_name("fake_agent.py")

#: Lines that have broken parsers before, or would have (numbers too big for
#: int or float, NaN, wrong types, nesting deeper than the json module can
#: follow, bytes that are not UTF-8, absurd reset times), each on its own
#: line. Every parser gets every line, on stdout and on stderr: lines shaped
#: for one CLI's JSON are hostile noise to the others.
HOSTILE_LINES: list[bytes] = [
    # claude stream-json
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1e400}}',
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":NaN}}',
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":-1e400}}',
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":'
    + b"9" * 400
    + b"}}",
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":"9999-12-31"}}',
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":[1]}}',
    b'{"type":"rate_limit_event","rate_limit_info":{"status":["rejected"]}}',
    b'{"type":"rate_limit_event","rate_limit_info":"rejected"}',
    b'{"type":"assistant","message":{"content":5}}',
    b'{"type":"assistant","message":{"content":"a bare string"}}',
    b'{"type":"assistant","message":{"content":{"type":"text"}}}',
    b'{"type":"assistant","message":{"content":[5,null,[],{"type":7}]}}',
    b'{"type":"assistant","message":{"content":[{"type":"tool_use","name":5,"input":[]}]}}',
    b'{"type":"assistant","message":{"content":[{"type":"text","text":{"nested":1}}]}}',
    b'{"type":"assistant","message":{"id":[],"usage":{"input_tokens":1e400}}}',
    b'{"type":"assistant","message":{"id":{},"usage":{"output_tokens":NaN}}}',
    b'{"type":"assistant","message":{"id":"m","usage":{"input_tokens":' + b"9" * 5000 + b"}}}",
    b'{"type":"assistant","message":{"usage":[1,2]}}',
    b'{"type":"assistant","message":"hello"}',
    b'{"type":"result","total_cost_usd":1e400,"usage":{"input_tokens":-1e400}}',
    b'{"type":"result","total_cost_usd":NaN,"is_error":true,"result":"Retry-After: '
    + b"9" * 400
    + b'"}',
    b'{"type":"result","total_cost_usd":"free","result":{"x":1}}',
    b'{"type":"result","total_cost_usd":' + b"9" * 5000 + b',"usage":"x"}',
    b'{"type":"result","is_error":true,"result":"usage limit reached|9999999999"}',
    # codex json
    b'{"type":"turn.completed","usage":{"input_tokens":1e400,"output_tokens":"x"}}',
    b'{"type":"turn.failed","usage":{"input_tokens":-Infinity},"error":{"message":5}}',
    b'{"type":"turn.failed","error":"rate limit"}',
    b'{"type":"error","message":{"rate":"limit"}}',
    b'{"type":"item.completed","item":{"type":"command_execution","command":[1,2]}}',
    b'{"type":"item.started","item":[]}',
    b'{"type":"item.updated","item":{"item_type":{"x":1},"text":null}}',
    # anyone's
    b"{" + b'"a":[' * 50_000 + b"]" * 50_000 + b"}",
    b'{"type":"assistant","message":' + b'{"a":' * 30_000,
    b"[" * 200_000,
    b'{"type":"assistant","message":{"content":[{"type":"text","text":"\xff\xfe\xc3"}]}}',
    b"\xff\xfe\xfa not utf-8 at all \xc3\x28",
    b"Error: 429 Too Many Requests. Retry-After: " + b"9" * 400,
    b"rate limited; resets at 0001-01-01T00:00:00-23:59",
    b"rate limited; resets at 99999999999999999999",
    b"\x00\x00\x00 \x1b[2J\x1b[31m rate_limit_error \x07",
    b"{}",
    b"null",
]


def _parser_events(name: str) -> list[tuple[str, bytes, list[ParsedEvent]]]:
    parser = make_parser(name, completion_marker="DONE")
    out = []
    for raw in HOSTILE_LINES:
        line = raw[:LINE_CAP].decode("utf-8", "replace")  # what a run hands its parser
        for stream in ("stdout", "stderr"):
            out.append((stream, raw, parser.feed(stream, line)))
    return out


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_no_parser_raises_on_hostile_lines_and_every_number_it_reports_is_sane(
    name: str,
) -> None:
    assert len(HOSTILE_LINES) >= 30
    now = time.time()
    results = _parser_events(name)
    for stream, raw, events in results:
        for ev in events:
            where = f"{name} {stream} {raw[:80]!r}: {ev}"
            assert 0 <= ev.tokens_delta <= MAX_TOKENS, where
            assert ev.tokens_total is None or 0 <= ev.tokens_total <= MAX_TOKENS, where
            assert ev.cost_total is None or 0 <= ev.cost_total <= MAX_COST, where
            if ev.rate_limit_reset is not None:
                assert 0 <= ev.rate_limit_reset <= now + MAX_RESET_SECS + 60, where
            # What the run announces must be JSON: no inf, no NaN.
            json.dumps([ev.tokens_total, ev.cost_total, ev.rate_limit_reset], allow_nan=False)
    limited = [raw for _, raw, events in results if any(e.rate_limited for e in events)]
    # The stderr fallback still reads the absurd Retry-After as a rate limit (clamped).
    assert any(b"Retry-After: 999" in raw for raw in limited), name


def test_absurd_reset_times_are_clamped_or_dropped() -> None:
    now = 1_800_000_000.0
    week = now + MAX_RESET_SECS
    assert parse_reset("Retry-After: " + "9" * 400, now=now) == week
    assert parse_reset("Retry-After: 30", now=now) == now + 30
    assert reset_from_value(float("inf"), now=now) == week
    assert reset_from_value(10**500, now=now) == week
    assert reset_from_value(float("nan"), now=now) is None
    assert reset_from_value(-1e400, now=now) is None
    assert reset_from_value(True, now=now) is None
    assert reset_from_value(now + 60, now=now) == now + 60
    assert reset_from_value((now + 60) * 1000, now=now) == now + 60  # milliseconds
    assert reset_from_value("9999-12-31T00:00:00Z", now=now) == week


def test_backoff_never_overflows() -> None:
    backoff = Backoff(base_secs=DAY_SECS, multiplier=100, cap_secs=60)
    assert [backoff.delay(n) for n in (1, 2, 200, 10_000)] == [60.0, 60.0, 60.0, 60.0]


def _hostile_file(tmp_path: Path, name: str, long_line_mb: int) -> Path:
    path = tmp_path / f"hostile-{name}.bin"
    with path.open("wb") as fh:
        for line in HOSTILE_LINES:
            fh.write(line + b"\n")
        fh.write(b"z" * (long_line_mb * 1024 * 1024))  # a line with no newline at all
    return path


def _parser_config(plan: Path) -> str:
    """One agent type per parser, each running tests/plan_agent.py on `plan`."""
    argv = json.dumps([sys.executable, str(PLAN_AGENT), str(plan)])
    return "".join(
        f'[agents.{name}]\nargv = {argv}\nparser = "{name}"\n' for name in sorted(PARSERS)
    )


@pytest.fixture
def full_log_dir(tmp_path: Path) -> Iterator[Path]:
    """A daemon state directory whose `logs/` is a 256 KiB tmpfs: agent logs hit ENOSPC."""
    state = tmp_path / "state"
    logs = state / "logs"
    logs.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(logs)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


def test_hostile_output_per_parser_and_a_full_log_disk_end_only_those_runs(
    tmp_path: Path, repo: Path, full_log_dir: Path
) -> None:
    """Each parser's hostile task, calm tasks beside them, every agent log on a full disk."""
    hostile = {name: f"hostile-{name}" for name in sorted(PARSERS)}
    plan = tmp_path / "plan.json"
    behaviour: dict[str, list[str]] = {
        task: ["--cat", str(_hostile_file(tmp_path, name, 100 if name == "plain" else 8))]
        for name, task in hostile.items()
    }
    # The calm ones print enough to fill the log disk on their own.
    calm = ["--stream-json", "--tokens", "40", "--flood-mb", "1", "--sleep", "1"]
    behaviour |= {"calm-1": calm, "calm-2": calm}
    plan.write_text(json.dumps(behaviour))
    with DaemonProcess(full_log_dir, config=_parser_config(plan)) as d, d.client() as c:
        c.init_parallel_scheduler(
            repo_path=str(repo),
            session_id="h",
            config={"agentType": "claude-stream-json", "maxParallel": 5, "maxRetries": 2},
        )
        c.parallel_add_tasks(
            tasks=[{"id": t, "title": t, "agentType": n} for n, t in hostile.items()]
            + [{"id": t, "title": t} for t in ("calm-1", "calm-2")]
        )
        c.session_start()
        wait_for(lambda: finished(c, "h"), 180, "the session to finish")
        tasks = {t.id: t for t in c.parallel_list_tasks()}
        agents = c.parallel_list_agents()
        assert d.running() and c.daemon_status().pid == d.pid
        c.daemon_shutdown()
        assert d.proc is not None and d.proc.wait(30) == 0
        daemon_log = d.log()
    assert tasks["calm-1"].state is TaskState.COMPLETED
    assert tasks["calm-2"].state is TaskState.COMPLETED
    assert sum(a.tokens for a in agents if a.task_id.startswith("calm")) == 80
    for task_id in hostile.values():
        runs = [a for a in agents if a.task_id == task_id]
        assert len(runs) == 1, runs  # at most one attempt
        # The parsers take every line without a fault: the agent's own exit decides.
        assert tasks[task_id].state is TaskState.COMPLETED, tasks[task_id]
        assert 0 <= runs[0].tokens <= MAX_TOKENS and 0 <= runs[0].cost <= MAX_COST
    # The disk really was full, and the daemon said so for the runs it cut short.
    assert "disabled: No space left on device" in daemon_log, daemon_log[-3000:]
    logged = sum(f.stat().st_size for f in (full_log_dir / "logs").rglob("*.log"))
    assert logged <= 256 * 1024 < 2 * 1024 * 1024  # two calm runs printed 1 MiB each


class _RaisingParser:
    """A parser with a bug: it counts 10 tokens a line, and raises on the third line."""

    def __init__(self) -> None:
        self.lines = 0

    def feed(self, stream: Stream, line: str) -> list[ParsedEvent]:
        self.lines += 1
        if self.lines == 3:
            raise KeyError("a parser bug")
        return [ParsedEvent(tokens_delta=10)]


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
    # The two lines it read before the bug count, though all ten came in one read.
    assert bad.tokens == 20
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


async def test_a_finished_run_is_freed_at_once_not_at_a_full_garbage_collection(
    tmp_path: Path,
) -> None:
    """A flooding run's ring (megabytes) goes when the run does, even on an idle daemon.

    An idle daemon allocates little, so Python's cycle collector may not run
    for hours: a finished run caught in a reference cycle kept its whole ring.
    """
    gc.collect()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            executor = LocalExecutor(nursery)
            spec = _spec(tmp_path, "freed", PlainParser(), "--flood-mb", "2")
            handle = await executor.submit(spec, NoEvents())
            result = await handle.wait()
            assert len(handle.ring) > 1000  # what is at stake
            freed = weakref.ref(handle)
            del handle
            nursery.cancel_scope.cancel()  # (the executor's sampling hub)
        assert result.end_reason is EndReason.OK
        assert freed() is None, gc.get_referrers(freed())
    finally:
        gc.enable()


def test_output_lines_take_only_their_share_of_the_replay_window() -> None:
    """A flood of log events keeps at most `window_log_bytes` of them for resuming."""
    bus = EventBus(None, window_log_bytes=64 * 1024)
    created = bus.make("s", SessionCreatedPayload(status=SessionStatus.IDLE))
    bus.fan_out([created])
    for n in range(1000):
        line = "x" * 1000
        log = LogPayload(agent_id="a", task_id="t", offset=n, stream="stdout", line=line, at=0)
        bus.fan_out([bus.make("s", log)])
    logged = sum(len(r.data) for r in bus.window if r.span is not None)
    assert 60 * 1024 < logged <= 64 * 1024
    assert bus.window[-1].seq == bus.seq  # the newest lines are kept, the oldest went first
    assert bus.oldest > created.seq  # (and what came before them: the window is in order)
    quiet = EventBus(None)  # without a flood the window keeps its 50,000 events
    for n in range(2000):
        quiet.fan_out([quiet.make(f"s{n}", SessionCreatedPayload(status=SessionStatus.IDLE))])
    assert len(quiet.window) == 2000


def test_two_sessions_with_one_task_id_get_a_clear_error_not_a_storage_fault(repo: Path) -> None:
    """The method fuzzer's find: a shared worktree answered 7001, a disk fault that was not one."""
    with DaemonProcess() as d, d.client() as c:
        for session in ("one", "two"):
            c.init_parallel_scheduler(repo_path=str(repo), session_id=session)
        first = c.worktree_allocate(session_id="one", agent_id="a1", task_id="t")
        with pytest.raises(errors.WorktreeInUse) as info:
            c.worktree_allocate(session_id="two", agent_id="a2", task_id="t")
        assert info.value.data == {
            "worktreePath": first.worktree_path,
            "sessionId": "one",
            "taskId": "t",
        }
        storage = c.daemon_status().storage
        assert storage is None or (storage.error is None and storage.failed_writes == 0)
        other = c.worktree_allocate(session_id="two", agent_id="a2", task_id="u")  # goes on
        assert other.session_id == "two" and other.worktree_path != first.worktree_path
