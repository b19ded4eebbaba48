"""Run one agent process tree under limits and report how it ended.

`run_agent` spawns the agent in its own session (process group), reads stdout
and stderr line by line into a bounded ring and a capped log file, feeds the
agent type's parser, samples the whole tree, and enforces the limits as
cancel scopes: runtime is the scope's deadline, CPU and memory breaches cancel
it with a reason. However the run ends (exit, limit, `AgentRun.cancel`, or
the caller's own cancellation) the same shielded termination ladder runs:

1. SIGTERM to the group and every tracked descendant (skipped for memory
   breaches: memory keeps growing during a grace, so those die at once);
2. wait up to ``kill_grace_secs`` for the child and every tracked process;
3. SIGKILL to the group, to every descendant ever seen (pid + create_time),
   ``cgroup.kill`` when the agent has a cgroup, and to any process still
   carrying this run's marker in its environment.

Step 3 always runs, also after a normal exit: ``trio.run_process`` style
cleanup stops at the direct child, and grandchildren that ignore SIGTERM or
escaped with ``setsid`` would survive it.

A limit hit is a result (``RunResult.end_reason``), never an exception. The
caller's cancellation is re-raised after the ladder.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
import trio

from corral.models import (
    AgentActivity,
    AgentLifecycle,
    EndReason,
    ErrorCategory,
    LogEntry,
    ResourceLimits,
    Violation,
)
from corrald.agents.output import OutputParser, ParsedEvent
from corrald.process import proctree
from corrald.process.cgroups import AgentCgroup, cgroup_of, detect

log = logging.getLogger(__name__)

#: Environment variable set in every agent; finds descendants that escaped.
MARK_ENV = "CORRAL_RUN_TOKEN"
#: Longest line kept; the rest of a longer line is dropped (and marked).
LINE_CAP = 64 * 1024
_READ_CHUNK = 256 * 1024
_POLL = 0.02
_DRAIN_SECS = 2.0
_CLEANUP_SLACK = 10.0

EventCallback = Callable[[str, dict[str, Any]], None]

_LOG_FIELDS = frozenset(LogEntry.model_fields)
_new = object.__new__
_setattr = object.__setattr__


def _fast_log_entry(offset: int, stream: str, line: str, at: float) -> LogEntry:
    """What `LogEntry.model_construct` builds, 4x cheaper (one per output line).

    Used only if it produces an equal model (checked at import), so a
    pydantic upgrade that changes model internals falls back safely.
    """
    entry: LogEntry = _new(LogEntry)
    _setattr(entry, "__dict__", {"offset": offset, "stream": stream, "line": line, "at": at})
    _setattr(entry, "__pydantic_fields_set__", set(_LOG_FIELDS))
    _setattr(entry, "__pydantic_extra__", None)
    _setattr(entry, "__pydantic_private__", None)
    return entry


def _slow_log_entry(offset: int, stream: str, line: str, at: float) -> LogEntry:
    return LogEntry.model_construct(offset=offset, stream=stream, line=line, at=at)


def _pick_log_entry() -> Callable[[int, str, str, float], LogEntry]:
    try:
        probe = _fast_log_entry(1, "stdout", "probe", 2.0)
        if probe == _slow_log_entry(1, "stdout", "probe", 2.0) and probe.to_wire() == {
            "offset": 1,
            "stream": "stdout",
            "line": "probe",
            "at": 2.0,
        }:
            return _fast_log_entry
    except Exception:  # pragma: no cover - depends on pydantic internals
        pass
    return _slow_log_entry  # pragma: no cover


make_log_entry = _pick_log_entry()

_CATEGORY = {
    EndReason.TIMEOUT: ErrorCategory.TIMEOUT,
    EndReason.LIMIT_MEMORY: ErrorCategory.LIMIT_MEMORY,
    EndReason.LIMIT_CPU: ErrorCategory.LIMIT_CPU,
    EndReason.CANCELLED: ErrorCategory.CANCELLED,
    EndReason.RATE_LIMIT: ErrorCategory.RATE_LIMIT,
    EndReason.LOST: ErrorCategory.UNKNOWN,
}


@dataclass(kw_only=True)
class RunSpec:
    """Everything needed to run one agent attempt.

    `env` is the complete environment of the agent (the caller merges the
    daemon's environment and the agent type's). `parser` is a fresh parser
    for this run.
    """

    agent_id: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    stdin_data: bytes | None
    limits: ResourceLimits
    log_path: Path
    log_cap_bytes: int = 10 * 1024 * 1024
    ring_lines: int = 2000
    parser: OutputParser
    completion_marker: str | None = None
    task_id: str = ""
    use_cgroup: bool = True
    pids_max: int | None = 4096


@dataclass
class RunResult:
    """How one agent run ended."""

    exit_code: int | None
    end_reason: EndReason
    error_category: ErrorCategory | None
    error: str | None
    tokens: int
    cost: float
    rate_limit_reset: float | None
    completion_seen: bool
    violations: list[Violation]
    pid: int | None
    started_at: float
    ended_at: float
    rate_limited: bool = False
    create_time: float | None = None
    log_truncated: bool = False
    cgroup: str | None = None

    @property
    def success(self) -> bool:
        return self.end_reason is EndReason.OK


@dataclass
class RunStats:
    """Live figures of one run (updated by the sampler and the output readers)."""

    cpu_percent: float = 0.0
    memory_mb: float = 0.0
    tokens: int = 0
    cost: float = 0.0
    activity: AgentActivity = AgentActivity.IDLE
    lines: int = 0
    bytes_out: int = 0


class _LogFile:
    """Append-only log capped at `cap` bytes (counting what the file already had)."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.truncated = False
        self._fh: IO[str] | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Blocking writes are to the page cache (microseconds); a thread
            # hop per line would cost far more than it saves.
            self._fh = open(path, "a", encoding="utf-8", errors="replace", buffering=1 << 20)  # noqa: SIM115
            self.size = self._fh.tell()
        except OSError as exc:
            log.warning("cannot open agent log %s: %s", path, exc)
            self.size = 0

    def write(self, text: str) -> None:
        if self._fh is None or self.truncated:
            return
        data = text + "\n"
        n = len(data.encode("utf-8", "replace")) if not data.isascii() else len(data)
        if self.size + n > self.cap:
            self.truncated = True
            self._fh.write(f"[corral] log truncated at {self.size} bytes (cap {self.cap})\n")
            self._fh.flush()
            return
        self._fh.write(data)
        self.size += n

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def __repr__(self) -> str:
        return f"<_LogFile {self.path} size={self.size} truncated={self.truncated}>"


class AgentRun:
    """One running agent: its output ring, live stats, and how to stop it."""

    def __init__(self, spec: RunSpec, on_event: EventCallback | None) -> None:
        self.spec = spec
        self.ring: collections.deque[LogEntry] = collections.deque(maxlen=max(1, spec.ring_lines))
        self.stats = RunStats()
        self.violations: list[Violation] = []
        self.pid: int | None = None
        self.create_time: float | None = None
        self.lifecycle = AgentLifecycle.STARTING
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.result: RunResult | None = None
        self.cgroup: AgentCgroup | None = None
        self.sampler: proctree.TreeSampler | None = None
        self.token = uuid.uuid4().hex
        self._on_event = on_event
        self._scope = trio.CancelScope()
        self._reason: EndReason | None = None
        self._reason_detail = ""
        self._hard_kill = False
        self._ending = False
        self._done = trio.Event()
        self._pumps_left = 0
        self._pumps_done = trio.Event()
        self._offset = 0
        self._tokens_sum = 0
        self._tokens_total: int | None = None
        self._rate_limited = False
        self._rate_limit_reset: float | None = None
        self._completion_seen = False
        self._last_stderr = ""
        self._log = _LogFile(spec.log_path, spec.log_cap_bytes)

    # --- public -------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        return self.spec.agent_id

    @property
    def end_reason(self) -> EndReason | None:
        """Why the run is being stopped (None while it runs on its own)."""
        return self._reason

    def cancel(self, reason: EndReason = EndReason.CANCELLED, detail: str = "") -> None:
        """Stop the run (termination ladder) and record why; the first reason wins."""
        if self._reason is None and self.result is None:
            self._reason = reason
            self._reason_detail = detail or f"stopped: {reason.value}"
            self._hard_kill = reason is EndReason.LIMIT_MEMORY
        self._scope.cancel(reason=f"{reason.value}: {detail}" if detail else reason.value)

    async def wait(self) -> RunResult:
        """Wait until the run has ended and its whole tree is dead."""
        await self._done.wait()
        assert self.result is not None
        return self.result

    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[LogEntry]:
        """The last `n` ring entries, or those at or after `since_offset`."""
        entries = list(self.ring)
        if since_offset is not None:
            entries = [e for e in entries if e.offset >= since_offset]
        return entries if n is None else entries[-n:]

    def __repr__(self) -> str:
        return (
            f"<AgentRun {self.spec.agent_id} pid={self.pid} {self.lifecycle.value} "
            f"reason={self._reason and self._reason.value} cpu={self.stats.cpu_percent:.0f}% "
            f"mem={self.stats.memory_mb:.0f}MB lines={self.stats.lines} tokens={self.stats.tokens}>"
        )

    # --- events and output ----------------------------------------------------

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, payload)
        except Exception:
            # A consumer bug must not take the agent (and its cleanup) down.
            log.exception("on_event(%r) failed for agent %s", kind, self.spec.agent_id)

    def _append(self, stream: str, text: str) -> None:
        now = time.time()
        entry = make_log_entry(self._offset, stream, text, now)
        self._offset += 1
        self.ring.append(entry)
        self.stats.lines += 1
        if stream == "stdout":
            self._log.write(text)
        else:
            self._log.write(f"[{'stderr' if stream == 'stderr' else 'corral'}] {text}")
        if self._on_event is not None:
            self._emit(
                "log",
                {
                    "agentId": self.spec.agent_id,
                    "offset": entry.offset,
                    "stream": stream,
                    "line": text,
                    "at": now,
                },
            )

    def note(self, text: str) -> None:
        """Add a daemon line (stream "daemon") to the ring and the log."""
        log.info("agent %s: %s", self.spec.agent_id, text)
        self._append("daemon", text)

    def _line(self, stream: str, raw: bytes | bytearray, truncated: bool = False) -> None:
        text = raw.decode("utf-8", "replace")
        if text.endswith("\r"):
            text = text[:-1]
        if truncated:
            text += f" [corral: line truncated at {LINE_CAP} bytes]"
        self._append(stream, text)
        if stream == "stderr" and text.strip():
            self._last_stderr = text
        marker = self.spec.completion_marker
        if marker and not self._completion_seen and marker in text:
            self._completion_seen = True
        for ev in self.spec.parser.feed("stdout" if stream == "stdout" else "stderr", text):
            self._apply(ev)

    def _apply(self, ev: ParsedEvent) -> None:
        tokens_before, cost_before = self.stats.tokens, self.stats.cost
        if ev.tokens_delta:
            self._tokens_sum += ev.tokens_delta
        if ev.tokens_total is not None:
            self._tokens_total = ev.tokens_total
        self.stats.tokens = max(self._tokens_sum, self._tokens_total or 0)
        if ev.cost_total is not None:
            self.stats.cost = ev.cost_total
        if (self.stats.tokens, self.stats.cost) != (tokens_before, cost_before):
            self._emit("tokens", {"tokens": self.stats.tokens, "cost": self.stats.cost})
        if ev.activity is not None and ev.activity is not self.stats.activity:
            self.stats.activity = ev.activity
            self._emit("activity", {"activity": ev.activity.value})
        if ev.completion_marker_seen:
            self._completion_seen = True
        if ev.rate_limited:
            self._rate_limited = True
            if ev.rate_limit_reset is not None:
                self._rate_limit_reset = ev.rate_limit_reset
            self._emit("rate_limit", {"resetAt": ev.rate_limit_reset, "detail": ev.detail})

    async def _pump(self, stream: trio.abc.ReceiveStream, name: str) -> None:
        """Read one pipe line by line; over-long lines are cut at LINE_CAP."""
        buf = bytearray()
        dropping = False
        try:
            while True:
                chunk = await stream.receive_some(_READ_CHUNK)
                if not chunk:
                    break
                self.stats.bytes_out += len(chunk)
                buf += chunk
                start = 0
                while (nl := buf.find(b"\n", start)) >= 0:
                    if dropping:
                        dropping = False
                    else:
                        self._line(name, buf[start:nl])
                    start = nl + 1
                if start:
                    del buf[:start]
                if len(buf) > LINE_CAP:
                    if not dropping:
                        self._line(name, buf[:LINE_CAP], truncated=True)
                        dropping = True
                    buf.clear()
            if buf and not dropping:
                self._line(name, buf)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self._pumps_left -= 1
            if self._pumps_left <= 0:
                self._pumps_done.set()

    # --- limits -------------------------------------------------------------

    def _violation(self, kind: str, value: float, limit: float, action: str) -> Violation:
        v = Violation(
            agent_id=self.spec.agent_id,
            task_id=self.spec.task_id,
            kind=kind,
            value=round(value, 2),
            limit=limit,
            action=action,
            at=time.time(),
        )
        self.violations.append(v)
        self._emit("violation", v.to_wire())
        return v

    def _check(self, sampler: proctree.TreeSampler) -> bool:
        """Sample the tree once; a breach cancels the run with a reason.

        One tick of supervision, shared by `_watch` (a task per run) and
        `SampleHub` (one task for many runs). False once the run needs no
        more samples (it is ending, or a limit was hit).
        """
        lim = self.spec.limits
        cpu, rss = sampler.sample()
        self.stats.cpu_percent, self.stats.memory_mb = cpu, rss
        if self._ending:
            return False
        if rss > lim.max_memory_mb_per_agent:
            self._violation("limit_memory", rss, lim.max_memory_mb_per_agent, "killed")
            self.cancel(
                EndReason.LIMIT_MEMORY,
                f"memory {rss:.0f} MB > limit {lim.max_memory_mb_per_agent} MB",
            )
            return False
        if sampler.window_full and cpu > lim.max_cpu_per_agent:
            self._violation("limit_cpu", cpu, lim.max_cpu_per_agent, "killed")
            self.cancel(
                EndReason.LIMIT_CPU,
                f"cpu {cpu:.0f}% over {lim.cpu_window_secs:g}s > limit {lim.max_cpu_per_agent:g}%",
            )
            return False
        return True

    async def _watch(self, sampler: proctree.TreeSampler) -> None:
        """Sample the tree every interval in a task of its own (no `SampleHub` given)."""
        interval = self.spec.limits.sample_interval_secs
        while not self._ending:
            if not self._check(sampler):
                return
            await trio.sleep_until(_next_tick(trio.current_time(), interval))

    # --- termination ----------------------------------------------------------

    async def _terminate(self, proc: trio.Process, sampler: proctree.TreeSampler) -> None:
        """The ladder: SIGTERM, grace, then the SIGKILL sweep (always)."""
        pgid = proc.pid
        sampler.refresh()
        grace = self.spec.limits.kill_grace_secs
        if not self._hard_kill and grace > 0 and (proc.poll() is None or sampler.alive()):
            proctree.killpg(pgid, signal.SIGTERM)
            proctree.kill_procs(sampler.alive(), signal.SIGTERM)
            self.note(f"SIGTERM sent; grace {grace:g}s")
            deadline = trio.current_time() + grace
            while trio.current_time() < deadline:
                sampler.refresh()
                if proc.poll() is not None and not sampler.alive():
                    break
                await trio.sleep(_POLL)
        survivors = [p.pid for p in sampler.alive()]
        sampler.kill_all(signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()
        escaped = await trio.to_thread.run_sync(proctree.find_marked, MARK_ENV, self.token)
        escaped = [p for p in escaped if p.pid != os.getpid()]
        proctree.kill_procs(escaped, signal.SIGKILL)
        if survivors or escaped:
            self.note(f"SIGKILL sent to {sorted({*survivors, *(p.pid for p in escaped)})}")
        with trio.move_on_after(2.0):
            await proc.wait()
        # Wait for the killed processes to be gone, so "ended" means "dead".
        with trio.move_on_after(2.0):
            await wait_until(
                lambda: not sampler.alive() and not any(proctree.is_alive(p) for p in escaped)
            )
        if self.cgroup is not None:
            cgroup = self.cgroup
            with trio.move_on_after(2.0):
                await wait_until(lambda: not cgroup.populated())
            if not self.cgroup.remove():
                log.warning("cgroup %s not removed", self.cgroup.path)

    # --- result -------------------------------------------------------------

    def _result(
        self,
        exit_code: int | None,
        *,
        error: str | None = None,
        category: ErrorCategory | None = None,
        reason: EndReason | None = None,
    ) -> RunResult:
        reason = reason or self._reason
        detail = error
        if reason is None and category is None:
            marker = self.spec.completion_marker
            oom = self.cgroup is not None and self.cgroup.oom_killed()
            if oom:
                reason, detail = EndReason.LIMIT_MEMORY, "killed by the kernel: cgroup memory.max"
            elif exit_code == 0 and (not marker or self._completion_seen):
                reason = EndReason.OK
            elif self._rate_limited:
                reason, detail = (
                    EndReason.RATE_LIMIT,
                    "rate limited"
                    + (f" until {self._rate_limit_reset:.0f}" if self._rate_limit_reset else ""),
                )
            elif exit_code == 0:
                reason, category = EndReason.FAILED, ErrorCategory.UNKNOWN
                detail = f"exited 0 without printing the completion marker {marker!r}"
            else:
                reason, category = EndReason.FAILED, ErrorCategory.CRASH
                detail = _describe_exit(exit_code)
                if self._last_stderr:
                    detail += f": {self._last_stderr[-300:]}"
        elif reason is not None and detail is None:
            detail = self._reason_detail or reason.value
        assert reason is not None
        if category is None and reason is not EndReason.OK:
            category = _CATEGORY.get(reason, ErrorCategory.UNKNOWN)
        self.ended_at = time.time()
        return RunResult(
            exit_code=exit_code,
            end_reason=reason,
            error_category=category,
            error=None if reason is EndReason.OK else detail,
            tokens=self.stats.tokens,
            cost=self.stats.cost,
            rate_limit_reset=self._rate_limit_reset,
            completion_seen=self._completion_seen,
            violations=list(self.violations),
            pid=self.pid,
            started_at=self.started_at,
            ended_at=self.ended_at,
            rate_limited=self._rate_limited,
            create_time=self.create_time,
            log_truncated=self._log.truncated,
            cgroup=str(self.cgroup.path) if self.cgroup else None,
        )

    def _finish(self, result: RunResult) -> RunResult:
        if self.result is None:
            self.result = result
            self.lifecycle = (
                AgentLifecycle.EXITED
                if result.end_reason in (EndReason.OK, EndReason.FAILED, EndReason.RATE_LIMIT)
                else AgentLifecycle.KILLED
            )
            self._emit(
                "exit",
                {
                    "exitCode": result.exit_code,
                    "endReason": result.end_reason.value,
                    "error": result.error,
                },
            )
        self._log.close()
        self._done.set()
        return self.result


def _next_tick(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now`.

    Every sampler with the same interval then wakes at the same instant:
    one scheduler tick (and, with a `SampleHub`, one task wakeup) for all.
    """
    return (math.floor(now / interval) + 1) * interval


class SampleHub:
    """One task that samples every registered run, instead of one task per run.

    With dozens of sleeping agents, a sampler task per run spent more of the
    daemon's idle CPU on trio bookkeeping (fifty deadlines, fifty task
    wakeups per tick) than on reading /proc. The hub wakes once per tick and
    runs each due run's `AgentRun._check` synchronously, so a breach is
    handled exactly as with a task per run. Runs keep their own
    ``sample_interval_secs``: each has its own next due time, aligned to its
    interval, and the hub sleeps until the earliest.

    Owned by a nursery (the local executor's, i.e. the pool's): start it with
    ``await nursery.start(hub.run)`` and pass it to `run_agent`.
    """

    def __init__(self) -> None:
        self._due: dict[AgentRun, float] = {}  # run -> trio time of its next sample
        self._wakeup = trio.Event()
        self.ticks = 0
        self.samples = 0

    def add(self, run: AgentRun) -> None:
        """Supervise `run` (its sampler must be set); its first sample is taken at once."""
        assert run.sampler is not None, "add a run once it has a sampler"
        self._due[run] = -math.inf
        self._wakeup.set()

    def discard(self, run: AgentRun) -> None:
        """Stop supervising `run` (no-op if it is not registered)."""
        self._due.pop(run, None)

    def __len__(self) -> int:
        return len(self._due)

    def tick(self) -> float:
        """Check every run that is due; return the trio time of the next due sample."""
        now = trio.current_time()
        self.ticks += 1
        for run, due in list(self._due.items()):
            if due > now:
                continue
            sampler = run.sampler
            assert sampler is not None
            if run._ending:
                del self._due[run]
                continue
            self.samples += 1
            try:
                keep = run._check(sampler)
            except Exception:
                # One run's failure must not stop the sampling of every other run:
                # it ends that run (its limits can no longer be enforced).
                log.exception("sampling agent %s failed; stopping it", run.agent_id)
                run.cancel(EndReason.FAILED, "internal error while sampling its process tree")
                keep = False
            if keep:
                self._due[run] = _next_tick(now, run.spec.limits.sample_interval_secs)
            else:
                del self._due[run]
        return min(self._due.values(), default=math.inf)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample registered runs until cancelled; idle (no wakeups) while there are none."""
        task_status.started()
        while True:
            next_due = self.tick()
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            # Wake at the earliest due sample, or at once when a run is added.
            with trio.move_on_at(next_due):
                await self._wakeup.wait()

    def statistics(self) -> dict[str, int]:
        return {"runs": len(self._due), "ticks": self.ticks, "samples": self.samples}

    def __repr__(self) -> str:
        return f"<SampleHub runs={len(self._due)} ticks={self.ticks} samples={self.samples}>"


async def wait_until(predicate: Callable[[], bool], interval: float = _POLL) -> None:
    """Poll `predicate` until true: process death has no event to wait on."""
    while True:
        if predicate():
            return
        await trio.sleep(interval)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _spawn_error(exc: BaseException, spec: RunSpec) -> tuple[ErrorCategory, str]:
    if isinstance(exc, FileNotFoundError | PermissionError | NotADirectoryError):
        filename = getattr(exc, "filename", None)
        if filename is not None and os.fspath(filename) == spec.cwd:
            return ErrorCategory.UNKNOWN, f"cannot enter working directory {spec.cwd}: {exc}"
        what = spec.argv[0] if spec.argv else "(empty argv)"
        how = "not found" if isinstance(exc, FileNotFoundError) else "not executable"
        return ErrorCategory.MISSING_EXECUTABLE, f"agent executable {what!r} {how}: {exc}"
    if isinstance(exc, IndexError | ValueError):
        return ErrorCategory.MISSING_EXECUTABLE, f"agent has no command: {exc}"
    return ErrorCategory.UNKNOWN, f"cannot start agent: {exc}"


async def run_agent(
    spec: RunSpec,
    *,
    on_event: EventCallback | None = None,
    hub: SampleHub | None = None,
    task_status: trio.TaskStatus[AgentRun] = trio.TASK_STATUS_IGNORED,
) -> RunResult:
    """Run one agent to the end; `task_status.started(run)` once spawned.

    Started with ``nursery.start``, the caller gets the `AgentRun` (to
    inspect, `cancel`, or `await run.wait()` for the result). A spawn failure
    is a result too (``MISSING_EXECUTABLE``); the handle is still delivered.
    The tree is sampled by `hub` when one is given (a daemon with many
    agents), else by a task of this run.
    """
    run = AgentRun(spec, on_event)
    env = dict(spec.env)
    env[MARK_ENV] = run.token
    env.setdefault("CORRAL_AGENT_ID", spec.agent_id)
    if spec.use_cgroup and detect().available:
        try:
            run.cgroup = AgentCgroup.create(f"{spec.agent_id}-{run.token[:8]}")
            run.cgroup.set_limits(
                # Headroom so our sampler normally acts first (and says why).
                memory_max_mb=math.ceil(spec.limits.max_memory_mb_per_agent * 1.1),
                cpu_percent=spec.limits.max_cpu_per_agent,
                pids_max=spec.pids_max,
            )
        except OSError as exc:
            run.note(f"no cgroup for this agent: {exc}")
            run.cgroup = None
    try:
        proc = await trio.lowlevel.open_process(
            spec.argv,
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.PIPE if spec.stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException as exc:
        if run.cgroup is not None:
            run.cgroup.remove()
        if not isinstance(exc, OSError | ValueError | IndexError):
            run._finish(run._result(None, reason=EndReason.CANCELLED))
            raise
        category, message = _spawn_error(exc, spec)
        run.note(message)
        if run.cgroup is not None:
            run.cgroup.remove()
        result = run._finish(
            run._result(None, error=message, category=category, reason=EndReason.FAILED)
        )
        task_status.started(run)
        return result

    run.pid = proc.pid
    if run.cgroup is not None:
        try:
            run.cgroup.add(proc.pid)
        except OSError as exc:
            run.note(f"cannot move agent into {run.cgroup.path}: {exc}")
    sampler = proctree.TreeSampler(proc.pid, window_secs=spec.limits.cpu_window_secs)
    run.sampler = sampler
    run.create_time = sampler.root_create_time
    run.lifecycle = AgentLifecycle.RUNNING
    if spec.limits.max_runtime_secs > 0:
        run._scope.deadline = trio.current_time() + spec.limits.max_runtime_secs
    run._emit("spawn", {"pid": proc.pid, "createTime": run.create_time, "argv0": spec.argv[0]})
    task_status.started(run)
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stdout is not None and proc.stderr is not None
            run._pumps_left = 2
            nursery.start_soon(run._pump, proc.stdout, "stdout")
            nursery.start_soon(run._pump, proc.stderr, "stderr")
            if spec.stdin_data is not None:
                nursery.start_soon(_feed_stdin, proc, spec.stdin_data)
            if hub is not None:
                hub.add(run)
            else:
                nursery.start_soon(run._watch, sampler)
            try:
                with run._scope:
                    await proc.wait()
                if run._scope.cancelled_caught and run._reason is None:
                    limit = spec.limits.max_runtime_secs
                    run._violation("timeout", time.time() - run.started_at, limit, "killed")
                    run._reason = EndReason.TIMEOUT
                    run._reason_detail = f"runtime limit of {limit}s reached"
            finally:
                run._ending = True
                if hub is not None:
                    hub.discard(run)
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = (
                        trio.current_time() + spec.limits.kill_grace_secs + _CLEANUP_SLACK
                    )
                    await run._terminate(proc, sampler)
                    with trio.move_on_after(_DRAIN_SECS):
                        await run._pumps_done.wait()
                    nursery.cancel_scope.cancel()
                    for pipe in (proc.stdin, proc.stdout, proc.stderr):
                        if pipe is not None:
                            with contextlib.suppress(trio.ClosedResourceError, OSError):
                                await pipe.aclose()
    except BaseException:
        # The caller cancelled us (or something broke): the tree is dead by
        # now; record the outcome for anyone waiting, then re-raise.
        run._finish(run._result(proc.returncode, reason=run._reason or EndReason.CANCELLED))
        raise
    return run._finish(run._result(proc.returncode))


async def _feed_stdin(proc: trio.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        await proc.stdin.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()


def kill_stale(pid: int, create_time: float) -> bool:
    """Kill a previous daemon's agent tree if `pid` still is that process.

    Used on restart with the pid and start time stored for the agent; a pid
    reused by an unrelated process is left alone. True if anything was killed.
    """
    root = proctree.same_process(pid, create_time)
    if root is None:
        return False
    victims = [root]
    with contextlib.suppress(psutil.Error):
        victims += root.children(recursive=True)
    token = None
    with contextlib.suppress(psutil.Error):
        token = root.environ().get(MARK_ENV)
    cg = cgroup_of(pid)
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            proctree.killpg(pid, signal.SIGKILL)
    killed = proctree.kill_procs(victims, signal.SIGKILL)
    if token:
        killed += proctree.kill_procs(proctree.find_marked(MARK_ENV, token), signal.SIGKILL)
    if cg is not None:
        AgentCgroup(cg, detect()).kill()
    return killed > 0 or not proctree.is_alive(root)
