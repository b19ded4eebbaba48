"""Supervisor tests: real processes (tests/fake_agent.py), real signals, no sleeps.

Every test checks at the end that no process the fake agent created is
alive, by pid *and* start ticks (so a reused pid cannot fake a survivor).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from corral.models import (
    AgentActivity,
    EndReason,
    ErrorCategory,
    LogEntry,
    ResourceLimits,
    Violation,
)
from corrald.agents.parsers import make_parser
from corrald.core.accounting import RunAccounting
from corrald.process.cgroups import detect
from corrald.process.executor import LocalExecutor
from corrald.process.lines import Skipped
from corrald.process.run import AgentRun, kill_leftovers, run_agent
from corrald.process.sampler import SampleHub
from corrald.process.spec import (
    MARK_ENV,
    NoEvents,
    OutputBounds,
    RunEvents,
    RunResult,
    RunSpec,
)
from tests import procs
from tests.waits import wait_until

FAKE = Path(__file__).with_name("fake_agent.py")
BASE_LIMITS: dict[str, Any] = {
    "sample_interval_secs": 0.1,
    "kill_grace_secs": 0.5,
    "cpu_window_secs": 1.0,
    "max_runtime_secs": 30,
    "max_cpu_per_agent": 400.0,  # effectively off unless a test sets it
    "max_memory_mb_per_agent": 1024,
}


class Agent:
    """Builds a RunSpec for the fake agent and inspects the processes it made."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.pidfile = tmp_path / "pids"
        self.log_path = tmp_path / "agent.log"
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.violations: list[Violation] = []

    def spec(
        self,
        *args: str,
        parser: str = "plain",
        marker: str | None = None,
        stdin: bytes | None = None,
        argv: list[str] | None = None,
        **limits: Any,
    ) -> RunSpec:
        return RunSpec(
            agent_id="agent-1",
            task_id="task-1",
            argv=argv or [sys.executable, str(FAKE), "--pidfile", str(self.pidfile), *args],
            cwd=str(self.tmp),
            env=dict(os.environ),
            stdin_data=stdin,
            limits=ResourceLimits(**{**BASE_LIMITS, **limits}),
            log_path=self.log_path,
            parser=make_parser(parser, completion_marker=marker),
            completion_marker=marker,
            output=OutputBounds(log_cap_bytes=1024 * 1024),
        )

    # --- RunEvents: what the run reports, recorded in order -------------------
    def log(self, entry: LogEntry) -> None:
        self.events.append(("log", entry.to_wire()))

    def log_skipped(self, skipped: Skipped) -> None:
        self.events.append(("log.skipped", dataclasses.asdict(skipped)))

    def activity(self, activity: AgentActivity) -> None:
        self.events.append(("activity", {"activity": activity.value}))

    def tokens(self, tokens: int, cost: float) -> None:
        self.events.append(("tokens", {"tokens": tokens, "cost": cost}))

    def rate_limit(self, reset_at: float | None, detail: str) -> None:
        self.events.append(("rate_limit", {"resetAt": reset_at, "detail": detail}))

    def violation(self, violation: Violation) -> None:
        self.violations.append(violation)
        self.events.append(("violation", violation.to_wire()))

    def pids(self) -> list[tuple[int, int, str]]:
        return procs.recorded(self.pidfile)

    async def wait_roles(self, *roles: str) -> None:
        """Wait until every role named has written its pid."""
        with trio.fail_after(10):
            await wait_until(lambda: set(roles) <= {r for _, _, r in self.pids()})

    def alive(self) -> list[tuple[int, str]]:
        return procs.survivors(self.pidfile)

    def assert_all_dead(self, *roles: str) -> None:
        procs.assert_all_dead(self.pidfile, *roles)


def read_text(path: str) -> str:
    return Path(path).read_text()


def exists(path: str) -> bool:
    return Path(path).exists()


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(tmp_path)


async def start(
    nursery: trio.Nursery,
    spec: RunSpec,
    events: RunEvents,
    hub: SampleHub | None = None,
) -> AgentRun:
    run: AgentRun = await nursery.start(_run, spec, events, hub)
    return run


async def _run(
    spec: RunSpec,
    events: RunEvents,
    hub: SampleHub | None = None,
    task_status: trio.TaskStatus[AgentRun] = trio.TASK_STATUS_IGNORED,
) -> RunResult:
    return await run_agent(spec, events=events, hub=hub, task_status=task_status)


async def run_to_end(spec: RunSpec, events: RunEvents | None = None) -> tuple[AgentRun, RunResult]:
    """Run `spec` to its end; the handle too, for what it knows beyond the result."""
    async with trio.open_nursery() as nursery:
        run = await start(nursery, spec, events or NoEvents())
        return run, await run.wait()


async def test_exit_code_and_success(agent: Agent) -> None:
    run, ok = await run_to_end(agent.spec("--stdout", "hello"), agent)
    assert (ok.end_reason, ok.exit_code, ok.error_category, ok.error) == (
        EndReason.OK,
        0,
        None,
        None,
    )
    assert ok.success and run.pid is not None and ok.ended_at >= run.started_at
    assert ("log", "hello") in [(k, p.get("message")) for k, p in agent.events]
    bad = await run_agent(agent.spec("--exit", "3", "--stderr", "boom"))
    assert (bad.end_reason, bad.exit_code, bad.error_category) == (
        EndReason.FAILED,
        3,
        ErrorCategory.CRASH,
    )
    assert bad.error is not None and "code 3" in bad.error and "boom" in bad.error
    agent.assert_all_dead("agent")


async def test_crash_names_the_stderr_line_that_says_why(agent: Agent) -> None:
    # codex 0.171 given a flag it no longer knows (clap's message, verbatim)
    clap = [
        "error: unexpected argument '--full-auto' found",
        "",
        "  tip: to pass '--full-auto' as a value, use '-- --full-auto'",
        "",
        "Usage: codex exec --json [PROMPT]",
        "",
        "For more information, try '--help'.",
    ]
    stderr = [arg for line in clap for arg in ("--stderr", line)]
    res = await run_agent(agent.spec("--exit", "2", *stderr))
    assert res.error_category is ErrorCategory.CRASH and res.error is not None
    assert res.error.endswith(": error: unexpected argument '--full-auto' found"), res.error


async def test_completion_marker_required(agent: Agent) -> None:
    run, missing = await run_to_end(agent.spec(marker="TASK_DONE_7"))
    assert missing.end_reason is EndReason.FAILED and not run.completion_seen
    assert missing.error is not None and "TASK_DONE_7" in missing.error
    run, seen = await run_to_end(agent.spec("--print-marker", "TASK_DONE_7", marker="TASK_DONE_7"))
    assert seen.end_reason is EndReason.OK and run.completion_seen
    agent.assert_all_dead("agent")


async def test_runtime_limit_is_timeout(agent: Agent) -> None:
    t0 = time.monotonic()
    res = await run_agent(agent.spec("--sleep", "60", max_runtime_secs=1), events=agent)
    assert res.end_reason is EndReason.TIMEOUT
    assert res.error_category is ErrorCategory.TIMEOUT
    assert [v.kind for v in agent.violations] == ["timeout"]
    assert 1.0 <= time.monotonic() - t0 < 5
    agent.assert_all_dead("agent")


async def test_memory_limit_on_grandchild(agent: Agent) -> None:
    res = await run_agent(
        agent.spec("--grandchild-mem", "300", "--sleep", "60", max_memory_mb_per_agent=150),
        events=agent,
    )
    assert res.end_reason is EndReason.LIMIT_MEMORY
    assert res.error_category is ErrorCategory.LIMIT_MEMORY
    (v,) = agent.violations
    assert v.kind == "limit_memory" and v.value > 150 and v.limit == 150
    agent.assert_all_dead("agent", "hog")


async def test_cpu_limit(agent: Agent) -> None:
    t0 = time.monotonic()
    res = await run_agent(agent.spec("--spin-cpu", "60", max_cpu_per_agent=50.0), events=agent)
    assert res.end_reason is EndReason.LIMIT_CPU
    assert agent.violations[0].kind == "limit_cpu" and agent.violations[0].value > 50
    # The window (1 s) has to fill before the CPU limit may act.
    assert 1.0 <= time.monotonic() - t0 < 5
    agent.assert_all_dead("agent")


async def test_sigterm_ignored_then_sigkill_after_grace(agent: Agent) -> None:
    async with trio.open_nursery() as nursery:
        run = await start(nursery, agent.spec("--ignore-sigterm", "--sleep", "60"), agent)
        await agent.wait_roles("agent")
        t0 = time.monotonic()
        run.cancel(EndReason.CANCELLED, "stop_all")
        res = await run.wait()
    assert time.monotonic() - t0 >= 0.5  # the grace was given
    assert res.end_reason is EndReason.CANCELLED
    assert res.error_category is ErrorCategory.CANCELLED
    assert res.exit_code == -signal.SIGKILL
    notes = [e.line for e in run.ring if e.stream == "daemon"]
    assert any("SIGTERM" in n for n in notes) and any("SIGKILL" in n for n in notes)
    agent.assert_all_dead("agent")


async def test_grandchild_ignoring_sigterm_dies_after_parent_exits(agent: Agent) -> None:
    res = await run_agent(agent.spec("--grandchild-ignore-sigterm"))
    assert res.end_reason is EndReason.OK
    agent.assert_all_dead("agent", "grandchild")


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["cgroup", "no-cgroup"])
async def test_setsid_escape_is_killed(agent: Agent, use_cgroup: bool) -> None:
    # The escapee leaves the process group at once and its parent exits
    # right away, so neither killpg nor the tree walk can see it: the cgroup
    # or, without one, the run's environment marker finds it.
    spec = agent.spec("--setsid-escape")
    spec.use_cgroup = use_cgroup
    run, res = await run_to_end(spec)
    assert (run.cgroup is not None) == (use_cgroup and detect().available)
    assert res.end_reason is EndReason.OK
    agent.assert_all_dead("agent", "escaped")


async def test_setsid_escape_seen_by_sampler_is_killed(agent: Agent) -> None:
    res = await run_agent(agent.spec("--setsid-escape", "--sleep", "60", max_runtime_secs=1))
    assert res.end_reason is EndReason.TIMEOUT
    agent.assert_all_dead("agent", "escaped")


async def test_flood_100mb_ring_bounded_log_capped(agent: Agent) -> None:
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        run = await start(nursery, agent.spec("--long-line", "1000000", "--flood-mb", "100"), agent)
        res = await run.wait()
    elapsed = time.monotonic() - t0
    assert res.end_reason is EndReason.OK, res.error
    assert run.stats.bytes_out >= 100 * 1024 * 1024
    assert len(run.ring) == 2000
    assert run.stats.lines >= 100 * 1024
    assert run.log_truncated
    size = agent.log_path.stat().st_size
    assert 1024 * 1024 - 2048 < size <= 1024 * 1024 + 200
    assert "log truncated" in agent.log_path.read_text()[-200:]
    long_lines = [
        p["message"] for k, p in agent.events if k == "log" and p["message"].startswith("yyy")
    ]
    assert len(long_lines) == 1 and len(long_lines[0]) < 64 * 1024 + 100
    assert "truncated" in long_lines[0]
    assert elapsed < 30
    agent.assert_all_dead("agent")


async def test_stream_json_tokens_cost_activity(agent: Agent) -> None:
    res = await run_agent(
        agent.spec(
            "--stream-json", "--tokens", "100", "--cost", "0.5", parser="claude-stream-json"
        ),
        events=agent,
    )
    assert res.end_reason is EndReason.OK
    assert (res.tokens, res.cost) == (100, 0.5)
    activities = [p["activity"] for k, p in agent.events if k == "activity"]
    assert activities[:3] == [
        AgentActivity.READING.value,
        AgentActivity.IMPLEMENTING.value,
        AgentActivity.TESTING.value,
    ]
    # The session id holds "429" several times: not a rate limit.
    assert not res.rate_limited and res.rate_limit_reset is None


async def test_rate_limit_reported(agent: Agent) -> None:
    reset = time.time() + 3600
    res = await run_agent(
        agent.spec("--exit", "1", "--rate-limit-resets-at", str(int(reset))),
        events=agent,
    )
    assert res.end_reason is EndReason.RATE_LIMIT
    assert res.error_category is ErrorCategory.RATE_LIMIT
    assert res.rate_limited and res.rate_limit_reset == int(reset)
    assert any(k == "rate_limit" for k, _ in agent.events)


async def test_prompt_via_stdin(agent: Agent) -> None:
    async with trio.open_nursery() as nursery:
        run = await start(nursery, agent.spec("--echo-stdin", stdin=b"line one\nline two\n"), agent)
        res = await run.wait()
    assert res.end_reason is EndReason.OK
    assert [e.line for e in run.ring if e.stream == "stdout"] == [
        "stdin: line one",
        "stdin: line two",
    ]


async def test_missing_executable_is_a_result(agent: Agent) -> None:
    run, res = await run_to_end(agent.spec(argv=["corral-no-such-agent-binary", "-p", "x"]))
    assert res.end_reason is EndReason.FAILED
    assert res.error_category is ErrorCategory.MISSING_EXECUTABLE
    assert run.pid is None and res.error is not None and "corral-no-such-agent" in res.error
    # Through nursery.start the handle is still delivered.
    async with trio.open_nursery() as nursery:
        run = await start(nursery, agent.spec(argv=["/nonexistent/agent"]), agent)
        assert (await run.wait()).error_category is ErrorCategory.MISSING_EXECUTABLE


async def test_external_cancel_kills_tree_and_reraises(agent: Agent) -> None:
    reached_end = False
    box: list[AgentRun] = []

    async def cancel_when_ready(scope: trio.CancelScope) -> None:
        await agent.wait_roles("agent", "grandchild", "escaped")
        scope.cancel()

    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_ready, outer)
            box.append(
                await start(
                    nursery,
                    agent.spec(
                        "--ignore-sigterm",
                        "--grandchild-ignore-sigterm",
                        "--setsid-escape",
                        "--sleep",
                        "60",
                    ),
                    agent,
                )
            )
            await box[0].wait()
            reached_end = True
    assert outer.cancelled_caught and not reached_end
    assert box[0].result is not None and box[0].result.end_reason is EndReason.CANCELLED
    agent.assert_all_dead("agent", "grandchild", "escaped")


async def test_direct_call_reraises_cancelled(agent: Agent) -> None:
    reached_end = False

    async def cancel_when_ready(scope: trio.CancelScope) -> None:
        await agent.wait_roles("agent", "grandchild")
        scope.cancel()

    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_ready, outer)
            await run_agent(agent.spec("--grandchild-ignore-sigterm", "--sleep", "60"))
            reached_end = True
    assert outer.cancelled_caught and not reached_end
    agent.assert_all_dead("agent", "grandchild")


async def test_cgroup_used_when_available(agent: Agent) -> None:
    features = detect()
    async with trio.open_nursery() as nursery:
        run = await start(nursery, agent.spec("--sleep", "60"), agent)
        await agent.wait_roles("agent")
        cgroup_line = read_text(f"/proc/{run.pid}/cgroup")
        run.cancel(EndReason.CANCELLED)
        await run.wait()
    agent.assert_all_dead("agent")
    if not features.available:
        pytest.skip(f"cgroup v2 not available here: {features.reason}")
    assert run.cgroup is not None and run.cgroup.path.name in cgroup_line
    assert not exists(str(run.cgroup.path))  # removed after the run


def _orphan(agent: Agent, token: str, *extra: str) -> subprocess.Popen[bytes]:
    """A fake agent tree started outside any supervisor, as a dead daemon leaves it."""
    return subprocess.Popen(
        [sys.executable, str(FAKE), "--pidfile", str(agent.pidfile), "--sleep", "60", *extra],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, MARK_ENV: token},
    )


async def _roles(agent: Agent, *roles: str) -> None:
    with trio.fail_after(10):
        await wait_until(lambda: set(roles) <= {r for _, _, r in agent.pids()})


async def test_leftovers_are_found_by_pid_and_start_time(agent: Agent) -> None:
    proc = _orphan(agent, "t-one", "--grandchild-ignore-sigterm", "--ignore-sigterm")
    try:
        await _roles(agent, "agent", "grandchild")
        pids = {r: (p, c) for p, c, r in agent.pids()}
        (pid, start), grandchild = pids["agent"], pids["grandchild"]
        # A reused pid (another start time) is never taken for ours.
        stranger = RunAccounting("", pid=pid, start=start + 100)
        assert await kill_leftovers(stranger) == 0 and len(agent.alive()) == 2
        record = RunAccounting("", pid=pid, start=start, descendants=[grandchild])
        assert await kill_leftovers(record) == 2
        proc.wait(timeout=5)
        assert agent.alive() == []
        assert await kill_leftovers(record) == 0  # gone is gone
    finally:
        proc.kill()
        proc.wait()


async def test_leftovers_are_found_by_token_setsid_escapers_too(agent: Agent) -> None:
    # Nothing but the token on record: the daemon died between spawn and pid.
    proc = _orphan(agent, "t-two", "--setsid-escape", "--grandchild-ignore-sigterm")
    try:
        await _roles(agent, "agent", "escaped", "grandchild")
        assert await kill_leftovers(RunAccounting("t-other")) == 0  # not ours
        assert len(agent.alive()) == 3
        assert await kill_leftovers(RunAccounting("t-two")) == 3
        proc.wait(timeout=5)
        agent.assert_all_dead("agent", "escaped", "grandchild")
    finally:
        proc.kill()
        proc.wait()


# --- one SampleHub for many runs (the daemon's path) ----------------------------


async def test_memory_limit_through_hub(agent: Agent) -> None:
    hub = SampleHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        spec = agent.spec("--grandchild-mem", "300", "--sleep", "60", max_memory_mb_per_agent=150)
        run = await start(nursery, spec, agent, hub)
        res = await run.wait()
        nursery.cancel_scope.cancel()
    assert res.end_reason is EndReason.LIMIT_MEMORY
    assert res.error_category is ErrorCategory.LIMIT_MEMORY
    assert res.error is not None and "memory" in res.error and "limit 150 MB" in res.error
    (v,) = agent.violations
    assert v.kind == "limit_memory" and v.value > 150 and v.limit == 150 and v.action == "killed"
    assert [p["kind"] for k, p in agent.events if k == "violation"] == ["limit_memory"]
    # The hub took every sample (no sampler task of the run's own) and let go of the run.
    assert run.sampler is not None and run.sampler.samples == hub.samples > 0
    assert len(hub) == 0
    agent.assert_all_dead("agent", "hog")


async def test_cpu_limit_through_hub(agent: Agent) -> None:
    hub = SampleHub()
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        run = await start(
            nursery, agent.spec("--spin-cpu", "60", max_cpu_per_agent=50.0), agent, hub
        )
        res = await run.wait()
        nursery.cancel_scope.cancel()
    assert res.end_reason is EndReason.LIMIT_CPU
    assert res.error_category is ErrorCategory.LIMIT_CPU
    assert agent.violations[0].kind == "limit_cpu" and agent.violations[0].value > 50
    # The window (1 s) has to fill before the CPU limit may act, as with a task per run.
    assert 1.0 <= time.monotonic() - t0 < 5
    assert run.sampler is not None and run.sampler.samples == hub.samples
    agent.assert_all_dead("agent")


async def test_hub_runs_keep_their_own_interval(tmp_path: Path) -> None:
    # A run sampled every 30 s shares the hub with one sampled every 0.1 s:
    # the slow one must not delay the fast one's breach, nor be sampled more.
    slow, fast = Agent(tmp_path / "slow"), Agent(tmp_path / "fast")
    slow.tmp.mkdir()
    fast.tmp.mkdir()
    hub = SampleHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        idle = await start(
            nursery, slow.spec("--sleep", "60", sample_interval_secs=30.0), slow, hub
        )
        await slow.wait_roles("agent")
        spec = fast.spec("--grandchild-mem", "300", "--sleep", "60", max_memory_mb_per_agent=150)
        with trio.fail_after(10):
            res = await (await start(nursery, spec, fast, hub)).wait()
        assert res.end_reason is EndReason.LIMIT_MEMORY
        assert idle.sampler is not None and idle.sampler.samples <= 2
        assert idle.result is None and len(hub) == 1
        idle.cancel(EndReason.CANCELLED, "test over")
        assert (await idle.wait()).end_reason is EndReason.CANCELLED
        nursery.cancel_scope.cancel()
    assert len(hub) == 0
    slow.assert_all_dead("agent")
    fast.assert_all_dead("agent", "hog")


async def test_local_executor_samples_through_its_hub(agent: Agent) -> None:
    async with trio.open_nursery() as nursery:
        executor = LocalExecutor(nursery)
        spec = agent.spec("--grandchild-mem", "300", "--sleep", "60", max_memory_mb_per_agent=150)
        run = await executor.submit(spec, agent)
        res = await run.wait()
        nursery.cancel_scope.cancel()
    assert res.end_reason is EndReason.LIMIT_MEMORY
    assert [v.kind for v in agent.violations] == ["limit_memory"]
    assert run.sampler is not None and run.sampler.samples == executor.hub.samples > 0
    agent.assert_all_dead("agent", "hog")
