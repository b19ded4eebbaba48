"""Run one agent process tree under limits and report how it ended.

`run_agent` spawns the agent in its own session (process group) and, where
cgroup v2 is writable, its own cgroup. It reads stdout and stderr in large
chunks, splits them into lines for a bounded ring, the capped log file and
the agent type's parser, samples the whole tree, and enforces the limits as
cancel scopes: runtime is the scope's deadline, CPU and memory breaches
cancel it with a reason. However the run ends, the termination ladder
(`process.terminate`) runs, shielded.

A limit hit is a result (`RunResult.end_reason`), never an exception. The
caller's cancellation is re-raised after the ladder. Nothing the agent
prints can raise out of here: a parser that fails ends this run with
category `internal` and the cause in its log.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import math
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import trio

from corral.models import (
    AgentLifecycle,
    EndReason,
    ErrorCategory,
    LogEntry,
    Violation,
)
from corrald.agents.output import (
    Found,
    ParsedEvent,
    PartialParse,
    Stream,
    feed_block,
    telling_line,
)
from corrald.agents.parsers import MAX_TOKENS
from corrald.core.accounting import RunAccounting
from corrald.core.outcome import CATEGORY
from corrald.process import proctree
from corrald.process.cgroups import AgentCgroup, detect, run_cgroup_name
from corrald.process.lines import FloodGate, LineRing
from corrald.process.logfile import LogWriter, make_log_entry
from corrald.process.sampler import SampleHub, next_tick
from corrald.process.spec import (
    MARK_ENV,
    NoEvents,
    RunEvents,
    RunResult,
    RunSpec,
    RunStats,
    Usage,
)
from corrald.process.terminate import Ladder, TerminationStage, wait_gone

log = logging.getLogger(__name__)

#: Longest line kept; the rest of a longer line is dropped (and marked).
LINE_CAP = 64 * 1024
_CUT = f" [corral: line truncated at {LINE_CAP} bytes]"
_READ_CHUNK = 256 * 1024
#: Pipe buffer asked for once a read finds the pipe full (Linux's default is
#: 64 KiB): fewer, larger reads and fewer switches between a flooding agent
#: and us. Only then: every user has a budget of pipe pages (pipe-user-pages-soft,
#: 64 MiB), and past it each new pipe it makes, the agents' own, gets 8 KiB.
_PIPE_SIZE = 256 * 1024
_FULL_PIPE = 64 * 1024
_DRAIN_SECS = 2.0
_CLEANUP_SLACK = 10.0
_AFTER_KILL_SECS = 2.0
_STDERR_TAIL = 40  # stderr lines kept to explain a crash
_STDERR_LINE = 300  # chars kept of each


class AgentRun:
    """One running agent: its output ring, live stats, and how to stop it."""

    def __init__(self, spec: RunSpec, events: RunEvents | None = None) -> None:
        self.spec = spec
        self.events: RunEvents = events or NoEvents()
        bounds = spec.output
        self.ring = LineRing(bounds.ring_lines, bounds.ring_bytes)
        self._gate = FloodGate(bounds.log_events_per_sec, bounds.log_events_burst, time.monotonic)
        self.stats = RunStats()
        self.pid: int | None = None
        self.create_time: float | None = None
        self.lifecycle = AgentLifecycle.STARTING
        self.started_at = time.time()
        self.result: RunResult | None = None
        self.cgroup: AgentCgroup | None = None
        self.sampler: proctree.TreeSampler | None = None
        self.ladder: Ladder | None = None
        self._stage = TerminationStage.RUNNING  # the ladder's last stage, once it is let go
        self.token = spec.token or uuid.uuid4().hex
        self._scope = trio.CancelScope()
        self._reason: EndReason | None = None
        self._reason_detail = ""
        self._category: ErrorCategory | None = None
        self._hard_kill = False
        self._grace: float | None = None
        self._ending = False
        self._done = trio.Event()
        self._offset = 0
        self._tokens_sum = 0
        self._tokens_total: int | None = None
        self._rate_limited = False
        self._rate_limit_reset: float | None = None
        self._completion_seen = False
        # the last stderr lines, to name the one that says why a crash happened
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self._parser_ok = True
        self._log = LogWriter(spec.log_path, bounds.log_cap_bytes)
        if self._log.failure:
            self._ring_note(self._log.failure)

    # --- public -------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        return self.spec.agent_id

    @property
    def stage(self) -> TerminationStage:
        """How far the termination ladder got (`running` until it starts)."""
        return self.ladder.stage if self.ladder is not None else self._stage

    @property
    def start_ticks(self) -> int | None:
        """The root's start in clock ticks (its identity with its pid)."""
        return self.sampler.root_start if self.sampler is not None else None

    @property
    def completion_seen(self) -> bool:
        """True once the parser saw the completion marker."""
        return self._completion_seen

    @property
    def log_truncated(self) -> bool:
        """True once the log file reached its cap."""
        return self._log.truncated

    @property
    def end_reason(self) -> EndReason | None:
        """Why the run is being stopped (None while it runs on its own)."""
        return self._reason

    def cancel(
        self, reason: EndReason = EndReason.CANCELLED, detail: str = "", grace: float | None = None
    ) -> None:
        """Stop the run (termination ladder) and record why; the first reason wins.

        `grace` replaces the limits' `kill_grace_secs` for this stop.
        """
        if self._reason is None and self.result is None:
            self._reason = reason
            self._reason_detail = detail or f"stopped: {reason.value}"
            self._hard_kill = reason is EndReason.LIMIT_MEMORY
            self._grace = grace
        self._scope.cancel(reason=f"{reason.value}: {detail}" if detail else reason.value)

    def fail_internal(self, why: str) -> None:
        """End the run because corral's own code failed on it (never retried)."""
        if self._reason is None and self.result is None:
            self._category = ErrorCategory.INTERNAL
            self.note(why)
        self.cancel(EndReason.FAILED, why)

    async def wait(self) -> RunResult:
        """Wait until the run has ended and its whole tree is dead."""
        await self._done.wait()
        assert self.result is not None
        return self.result

    def tail(self, n: int | None = None, since_offset: int | None = None) -> list[LogEntry]:
        """The last `n` ring entries, or those at or after `since_offset`."""
        return self.ring.tail(n, since_offset)

    def new_members(self) -> list[tuple[int, int]]:
        """(pid, start ticks) of tree members seen since the last call (for the record)."""
        return self.sampler.drain_new() if self.sampler is not None else []

    def note(self, text: str) -> None:
        """Add a daemon line (stream "daemon") to the ring and the log."""
        log.info("agent %s: %s", self.spec.agent_id, text)
        self._append("daemon", text)

    def __repr__(self) -> str:
        return (
            f"<AgentRun {self.spec.agent_id} pid={self.pid} {self.lifecycle.value} "
            f"stage={self.stage.value} reason={self._reason and self._reason.value} "
            f"cpu={self.stats.cpu_percent:.0f}% mem={self.stats.memory_mb:.0f}MB "
            f"lines={self.stats.lines} tokens={self.stats.tokens}>"
        )

    # --- the SampleHub's view (process.sampler.Sampled) --------------------------

    @property
    def sample_interval(self) -> float:
        return self.spec.limits.sample_interval_secs

    @property
    def ending(self) -> bool:
        return self._ending

    # --- output ---------------------------------------------------------------

    def _ring_note(self, text: str) -> None:
        entry = make_log_entry(self._offset, "daemon", text, time.time())
        self._offset += 1
        self.ring.append(entry)

    def _append(self, stream: str, text: str) -> None:
        self._hand_over(stream, text, 1)

    def _hand_over(self, stream: str, text: str, count: int) -> None:
        """`count` consecutive lines of one stream, joined by newlines in `text` (a read's worth).

        The ring and the log file take them at once; the flood gate says how
        many become `log` events (the first ones) and sums up the rest; each
        line's event goes out before what the parser learned from that line.
        Only the announced lines become objects of their own.
        """
        first, at = self._offset, time.time()
        self._offset += count
        self.stats.lines += count
        self.ring.extend(first, stream, at, text, count)
        failed_before = self._log.failure
        if count == 1:
            self._log.write(stream, text)
        else:
            self._log.write_lines(stream, text)
        if self._log.failure and not failed_before:
            self._ring_note(self._log.failure)
        if stream == "stderr":
            tail = text.rsplit("\n", _STDERR_TAIL)[-_STDERR_TAIL:] if count > 1 else [text]
            self._stderr_tail.extend(t[:_STDERR_LINE] for t in tail if t.strip())
        found, failure = self._parse(stream, text, count)
        announced = self._gate.take(count, always=stream == "daemon")
        if announced:
            self._flush_skipped()
        lines = [text] if count == 1 else text.split("\n", announced)
        done = j = 0  # lines announced, parser results applied
        while j < len(found) and found[j][0] < announced:
            index, events = found[j]
            self._announce(first + done, stream, lines[done : index + 1], at)
            self._apply_all(events)
            done, j = index + 1, j + 1
        self._announce(first + done, stream, lines[done:announced], at)
        if announced < count:  # the rest, lines[announced], holds count - announced lines
            rest = len(lines[announced]) - (count - announced - 1)
            self._gate.skip(first + announced, count - announced, rest)
        for _, events in found[j:]:
            self._apply_all(events)
        if failure is not None:
            # The run is a failure boundary: a parser bug ends this run, nothing else.
            log.error("output parser of agent %s failed", self.spec.agent_id, exc_info=failure)
            self._parser_ok = False
            self.fail_internal(f"internal error: output parser failed on a line: {failure!r}"[:500])

    def _announce(self, first: int, stream: str, lines: list[str], at: float) -> None:
        """`log` events for consecutive lines (offsets `first`..), together if the sink can."""
        if not lines:
            return
        together = getattr(self.events, "log_lines", None)
        if together is not None:
            _safely(together, first, stream, lines, at)
            return
        for offset, line in enumerate(lines, first):
            _safely(self.events.log, make_log_entry(offset, stream, line, at))

    def _parse(self, stream: str, text: str, count: int) -> tuple[list[Found], Exception | None]:
        """What the parser learns from agent lines (daemon notes are not the agent's)."""
        if not self._parser_ok or stream == "daemon":
            return [], None
        kind: Stream = "stdout" if stream == "stdout" else "stderr"
        try:
            return feed_block(self.spec.parser, kind, text, count), None
        except PartialParse as partial:
            return partial.found, partial.cause
        except Exception as exc:
            return [], exc

    def _flush_skipped(self) -> None:
        """Announce the lines left out since the last announced one (if any)."""
        skipped = self._gate.flush()
        if skipped is not None:
            _safely(self.events.log_skipped, skipped)

    def _apply_all(self, events: list[ParsedEvent]) -> None:
        for ev in events:
            self._apply(ev)

    def _apply(self, ev: ParsedEvent) -> None:
        tokens_before, cost_before = self.stats.tokens, self.stats.cost
        if ev.tokens_delta:
            self._tokens_sum += ev.tokens_delta
        if ev.tokens_total is not None:
            self._tokens_total = ev.tokens_total
        self.stats.tokens = min(max(self._tokens_sum, self._tokens_total or 0), MAX_TOKENS)
        if ev.cost_total is not None:
            self.stats.cost = ev.cost_total
        sink = self.events
        if (self.stats.tokens, self.stats.cost) != (tokens_before, cost_before):
            _safely(sink.tokens, self.stats.tokens, self.stats.cost)
        if ev.activity is not None and ev.activity is not self.stats.activity:
            self.stats.activity = ev.activity
            _safely(sink.activity, ev.activity)
        if ev.completion_marker_seen:
            self._completion_seen = True
        if ev.rate_limited:
            self._rate_limited = True
            if ev.rate_limit_reset is not None:
                self._rate_limit_reset = ev.rate_limit_reset
            _safely(sink.rate_limit, ev.rate_limit_reset, ev.detail)

    async def _pump(self, stream: trio.lowlevel.FdStream, name: str) -> None:
        """Read one pipe in large chunks and hand its lines over a read at a time.

        Reads go into this thread's buffer (`_ReadBuffer`), and a read's
        complete lines are decoded at once from there into one string
        (`_hand_over`): no copy per read, none per line. A line is cut at
        LINE_CAP: the unfinished last line waits for its end only up to there.
        """
        fd, buf = stream.fileno(), _READ_BUFFER.data
        view = memoryview(buf)
        head: bytes = b""  # the unfinished last line so far
        dropping = False  # within a line that was cut: its rest is dropped
        try:
            while True:
                try:
                    n = os.readv(fd, [buf])
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(fd)  # (raises if the pipe is closed)
                    continue
                except OSError:  # the pipe broke: its output ends here
                    break
                if not n:
                    break
                # Until the next await `buf` is ours; what must wait is copied out.
                self.stats.bytes_out += n
                if n == _FULL_PIPE:
                    _grow_pipe(stream)
                last = buf.rfind(b"\n", 0, n)
                if last < 0:
                    head, dropping = self._unfinished(name, head + view[:n], dropping)
                else:
                    if not dropping:  # the kept line and the read's complete ones, at once
                        self._hand_over(name, *_decode(head + view[:last] if head else view[:last]))
                    elif (first := buf.find(b"\n", 0, n)) < last:  # the cut line ends there
                        self._hand_over(name, *_decode(view[first + 1 : last]))
                    head, dropping = self._unfinished(name, bytes(view[last + 1 : n]), False)
                await trio.lowlevel.checkpoint()
            if head and not dropping:
                self._hand_over(name, *_decode(head))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _unfinished(self, name: str, head: bytes, dropping: bool) -> tuple[bytes, bool]:
        """The unfinished line kept (and whether its rest is dropped); cut once over LINE_CAP."""
        if dropping:
            return b"", True
        if len(head) > LINE_CAP:
            self._hand_over(name, str(head[:LINE_CAP], "utf-8", "replace") + _CUT, 1)
            return b"", True
        return head, False

    # --- limits -------------------------------------------------------------

    def _violation(self, kind: str, value: float, limit: float, action: str) -> None:
        v = Violation(
            agent_id=self.spec.agent_id,
            task_id=self.spec.task_id,
            kind=kind,
            value=round(value, 2),
            limit=limit,
            action=action,
            at=time.time(),
        )
        _safely(self.events.violation, v)

    def check(self) -> bool:
        """Sample the tree once; a breach cancels the run with a reason.

        One tick of supervision, run by the `SampleHub` (or by `_watch`, a
        task of this run, when there is no hub). False once the run needs no
        more samples (it is ending, or a limit was hit).
        """
        sampler = self.sampler
        if sampler is None:
            return False
        lim = self.spec.limits
        self._flush_skipped()  # a flood that stopped is summed up within a tick
        cpu, rss = sampler.sample()
        self.stats.cpu_percent, self.stats.memory_mb = cpu, rss
        self.stats.peak_memory_mb = max(self.stats.peak_memory_mb, rss)
        self.stats.cpu_seconds = sampler.cpu_seconds
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

    async def _watch(self) -> None:
        """Sample the tree on its interval in a task of its own (no `SampleHub` given)."""
        interval = self.spec.limits.sample_interval_secs
        while not self._ending:
            if not self.check():
                return
            await trio.sleep_until(next_tick(trio.current_time(), interval))

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
        category = category or self._category
        detail = error
        if reason is None:
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
                if self._stderr_tail:
                    detail += f": {telling_line(self._stderr_tail)}"
        elif detail is None:
            detail = self._reason_detail or reason.value
        if category is None and reason is not EndReason.OK:
            category = CATEGORY.get(reason, ErrorCategory.UNKNOWN)
        return RunResult(
            exit_code=exit_code,
            end_reason=reason,
            error_category=category,
            error=None if reason is EndReason.OK else detail,
            tokens=self.stats.tokens,
            cost=self.stats.cost,
            rate_limited=self._rate_limited,
            rate_limit_reset=self._rate_limit_reset,
            ended_at=time.time(),
            usage=Usage(self.stats.cpu_seconds, self.stats.peak_memory_mb),
        )

    def finish(self, result: RunResult) -> RunResult:
        """Record the result (the first one wins) and wake whoever waits; idempotent."""
        if self.result is None:
            self.result = result
            self.lifecycle = (
                AgentLifecycle.EXITED
                if result.end_reason in (EndReason.OK, EndReason.FAILED, EndReason.RATE_LIMIT)
                else AgentLifecycle.KILLED
            )
        self._ending = True
        self._log.close()
        self._flush_skipped()
        if self.ladder is not None:
            # The ladder holds `self.note`: a cycle that would keep this run's
            # ring (megabytes) alive until a full garbage collection, which an
            # idle daemon may never make.
            self._stage, self.ladder = self.ladder.stage, None
        self._done.set()
        return self.result


def _safely(fn: Callable[..., None], *args: object) -> None:
    """Call a sink method; a consumer bug is logged, never raised into the run."""
    try:
        fn(*args)
    except Exception:
        log.exception("run event %s failed", getattr(fn, "__name__", fn))


def _grow_pipe(pipe: trio.lowlevel.FdStream) -> None:
    """Ask for a larger buffer on an output pipe; where the system refuses, what it has stays."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class _ReadBuffer(threading.local):
    """Where output pipes are read into: one buffer a thread, shared by every run's pumps.

    A pump hands a read over before its next await, so no other pump can
    read into the buffer meanwhile; a buffer per read (or per pipe) would
    cost an allocation each time (or idle memory for every quiet agent).
    """

    def __init__(self) -> None:
        self.data = bytearray(_READ_CHUNK)


_READ_BUFFER = _ReadBuffer()


def _decode(data: bytes | memoryview) -> tuple[str, int]:
    """Complete lines (newlines between them, none after) as one string, and how many.

    CRLF reads as LF, and a line over LINE_CAP is cut there. Decoding the
    block whole gives what decoding each line would: a newline is never part
    of a UTF-8 sequence, and a broken one ends at it.
    """
    text = str(data, "utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if text.endswith("\r"):
            text = text[:-1]
    if _has_long_line(text):
        cut = [
            line if len(line) <= LINE_CAP else line[:LINE_CAP] + _CUT for line in text.split("\n")
        ]
        text = "\n".join(cut)
    return text, _count_lines(text)


def _count_lines(text: str) -> int:
    """Newlines in `text`, plus one.

    `str.count` looks at every character; `find` jumps to the next newline
    (memchr), so a loop of finds is faster while lines are long (3x at 1 KiB).
    Once they prove short (under 128 characters on average) the rest is counted.
    """
    lines, find, at = 1, text.find, text.find("\n")
    while at >= 0:
        lines += 1
        if lines % 64 == 0 and at < 128 * lines:
            return lines + text.count("\n", at + 1)
        at = find("\n", at + 1)
    return lines


def _has_long_line(text: str) -> bool:
    """True if some line of `text` is longer than LINE_CAP (a few searches a megabyte)."""
    pos = 0
    while len(text) - pos > LINE_CAP:
        newline = text.rfind("\n", pos, pos + LINE_CAP + 1)
        if newline < 0:
            return True
        pos = newline + 1
    return False


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
    events: RunEvents | None = None,
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
    run = AgentRun(spec, events)
    env = dict(spec.env)
    env[MARK_ENV] = run.token
    env.setdefault("CORRAL_AGENT_ID", spec.agent_id)
    if spec.use_cgroup and detect().available:
        try:
            run.cgroup = AgentCgroup.create(run_cgroup_name(spec.agent_id, run.token))
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
            run.finish(run._result(None, reason=EndReason.CANCELLED))
            raise
        category, message = _spawn_error(exc, spec)
        run.note(message)
        result = run.finish(
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
    run.ladder = Ladder(proc, sampler, run.cgroup, run.token, run.note)
    if spec.limits.max_runtime_secs > 0:
        run._scope.deadline = trio.current_time() + spec.limits.max_runtime_secs
    task_status.started(run)
    try:
        async with trio.open_nursery() as nursery:
            pumped = trio.Event()

            async def pump_all() -> None:
                async with trio.open_nursery() as pumps:
                    assert isinstance(proc.stdout, trio.lowlevel.FdStream)
                    assert isinstance(proc.stderr, trio.lowlevel.FdStream)
                    pumps.start_soon(run._pump, proc.stdout, "stdout")
                    pumps.start_soon(run._pump, proc.stderr, "stderr")
                pumped.set()

            nursery.start_soon(pump_all)
            if spec.stdin_data is not None:
                nursery.start_soon(_feed_stdin, proc, spec.stdin_data)
            if hub is not None:
                hub.add(run)
            else:
                nursery.start_soon(run._watch)
            try:
                with run._scope:
                    await proc.wait()
                # A process that exited while the daemon was not looking (stopped,
                # or busy) is no timeout, even if the deadline passed since.
                timed_out = run._scope.cancelled_caught and proc.poll() is None
                if timed_out and run._reason is None:
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
                    grace = spec.limits.kill_grace_secs if run._grace is None else run._grace
                    await run.ladder.run(grace=grace, hard=run._hard_kill)
                    with trio.move_on_after(_DRAIN_SECS):
                        await pumped.wait()
                    nursery.cancel_scope.cancel()
                    for pipe in (proc.stdin, proc.stdout, proc.stderr):
                        if pipe is not None:
                            with contextlib.suppress(trio.ClosedResourceError, OSError):
                                await pipe.aclose()
    except Exception as exc:
        # Our own code broke while supervising: the tree is dead by now (the
        # ladder ran). The run fails with category internal; the executor
        # contains the exception.
        why = f"internal error: {type(exc).__name__}: {exc}"[:500]
        run.finish(
            run._result(
                proc.returncode, reason=EndReason.FAILED, error=why, category=ErrorCategory.INTERNAL
            )
        )
        raise
    except BaseException:
        # The caller cancelled us: the tree is dead by now; record the
        # outcome for anyone waiting, then re-raise.
        run.finish(run._result(proc.returncode, reason=run._reason or EndReason.CANCELLED))
        raise
    return run.finish(run._result(proc.returncode))


async def _feed_stdin(proc: trio.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        await proc.stdin.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()


async def kill_leftovers(record: RunAccounting) -> int:
    """End every process a previous daemon's run left behind; how many it found.

    By the record, not by memory (`core.accounting`): the run's cgroup
    (`cgroup.kill`), every process carrying its token (setsid escapers
    included), every recorded (pid, start time) pair and the root's process
    group. A pid now used by another process never matches. Waits (bounded)
    until they are gone, then removes the cgroup.
    """
    victims, cgroup = await trio.to_thread.run_sync(_signal_leftovers, record)
    with trio.move_on_after(_AFTER_KILL_SECS):
        await wait_gone(victims)
    if cgroup is not None:
        with trio.move_on_after(_AFTER_KILL_SECS):
            await wait_gone(_members(cgroup))
        cgroup.remove()
    return len(victims)


def _signal_leftovers(
    record: RunAccounting,
) -> tuple[list[psutil.Process], AgentCgroup | None]:
    """SIGKILL what `record` names (in a thread: it reads every process's environment)."""
    victims: list[psutil.Process] = []  # distinct processes, alive now
    for pid, started in record.processes():
        proc = proctree.same_process(pid, started)
        if proc is not None:
            victims.append(proc)
    if record.token:
        marked = proctree.find_marked(MARK_ENV, record.token)
        seen = {p.pid for p in victims}
        victims += [p for p in marked if p.pid != os.getpid() and p.pid not in seen]
    if victims and victims[0].pid == record.pid:
        with contextlib.suppress(OSError):
            if os.getpgid(victims[0].pid) == victims[0].pid:
                proctree.killpg(victims[0].pid, signal.SIGKILL)
    cgroup = None
    if record.cgroup and os.path.isdir(record.cgroup):
        cgroup = AgentCgroup(Path(record.cgroup), detect())
        cgroup.kill()
    proctree.kill_procs(victims, signal.SIGKILL)
    return victims, cgroup


def _members(cgroup: AgentCgroup) -> list[psutil.Process]:
    out = []
    for pid in cgroup.pids():
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid))
    return out
