"""The agent pool: turns ready tasks into supervised agent runs and results back into state.

One pool per daemon owns the agent nursery. Each started session has a
runner task that starts agents the moment a slot and resources allow and
sleeps on an event otherwise: completions, new tasks and status changes wake
it at once (no polling); only retry/rate-limit timers and resource gates
wake it on a deadline.

Admission per session: `maxParallel` (scheduler), `maxAgents`, and the
session's summed CPU and memory against `maxTotalCpu` (% of the machine:
100 = every core busy) and `maxTotalMemoryMb`. A running session over its
total memory loses its most recently started agent, whose task is requeued
without consuming a retry.
"""

from __future__ import annotations

import collections
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio

from corral import errors
from corral.models import (
    Agent,
    AgentActivity,
    AgentLifecycle,
    CleanupReport,
    CompletedAgent,
    EndReason,
    ErrorCategory,
    LogEntry,
    PoolStats,
    ResourceLimits,
    SessionStatus,
    Task,
    TaskStatus,
    Violation,
    WorktreeAllocation,
)
from corrald.agents import types as agent_types
from corrald.agents.parsers import make_parser
from corrald.agents.types import AgentTypeConfig
from corrald.git import worktrees
from corrald.process import cgroups
from corrald.process.executor import Executor, LocalExecutor, RunHandle
from corrald.process.run import RunResult, RunSpec
from corrald.state.engine import Engine, SessionState

log = logging.getLogger("corrald.pool.pool")

COMPLETED_KEPT = 10_000
FINISHED_RUNS_KEPT = 200
#: Longest log line carried by an event; bounds the replay window's memory.
EVENT_LINE_CAP = 2000


@dataclass
class Running:
    """A live agent: its record, its run handle, and why we stopped it (if we did)."""

    agent: Agent
    state: SessionState
    task_id: str
    run: RunHandle | None = None
    requeue: bool = False  # stop without consuming a retry (stop_all, total memory, shutdown)
    cancel_task: bool = False
    started_mono: float = field(default_factory=time.monotonic)


class AgentPool:
    """Starts, watches and ends agent runs for every session."""

    def __init__(
        self,
        engine: Engine,
        *,
        logs_dir: Path,
        worktree_base: Path | None = None,
        custom_types: dict[str, AgentTypeConfig] | None = None,
        log_cap_bytes: int = 10 * 1024 * 1024,
        base_env: dict[str, str] | None = None,
        executor_factory: Callable[[trio.Nursery], Executor] = LocalExecutor,
    ) -> None:
        self.engine = engine
        self.logs_dir = logs_dir
        self.worktree_base = worktree_base
        self.custom_types = custom_types or {}
        self.log_cap_bytes = log_cap_bytes
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.running: dict[str, Running] = {}
        self.finished: collections.OrderedDict[str, RunHandle] = collections.OrderedDict()
        self.completed: collections.deque[tuple[int, CompletedAgent]] = collections.deque(
            maxlen=COMPLETED_KEPT
        )
        self._completed_seq = 0
        self.violations: collections.deque[Violation] = collections.deque(maxlen=1000)
        self._nursery: trio.Nursery | None = None
        self.executor_factory = executor_factory
        self.executor: Executor = _NotStarted()
        self._wakeups: dict[str, trio.Event] = {}  # per session: something changed
        self._ended = trio.Event()  # set (and replaced) whenever an agent run ends
        self._run_started = trio.Event()  # wakes the totals watcher
        self._runners: set[str] = set()
        self._repo_locks: dict[str, trio.Lock] = {}
        self.closing = False
        self._stats = {"completed": 0, "failed": 0}
        engine.on_change.append(self.wake)

    # --- lifecycle ------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the agent nursery until cancelled; recover, then resume running sessions."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.executor = self.executor_factory(nursery)
            self.recover()
            nursery.start_soon(self._watch_totals)
            for state in self.engine.sessions.values():
                self.wake(state)
            task_status.started()
            await trio.sleep_forever()

    def recover(self) -> list[str]:
        """After a restart: kill agents the previous daemon left alive, requeue their tasks.

        An agent is the same process only if pid and process start time both
        match; a reused pid is left alone. Tasks keep worktree and branch and
        no retry is consumed. Returns the ids of the agents found.
        """
        store = self.engine.store
        found = []
        for agent, pid_started in store.live_agent_pids():
            found.append(agent.id)
            killed = False
            if agent.process_id and pid_started:
                killed = self.executor.reattach(agent.process_id, pid_started)
            agent.lifecycle = AgentLifecycle.KILLED if killed else AgentLifecycle.EXITED
            agent.end_reason = EndReason.LOST
            agent.ended_at = time.time()
            state = self.engine.sessions.get(agent.session_id)
            with store.transaction():
                store.put_agent(agent)
                if state is not None:
                    try:
                        task = state.scheduler.get(agent.task_id)
                    except errors.TaskNotFound:
                        continue
                    if task.status is TaskStatus.IN_PROGRESS:
                        self.engine.commit_tasks(state, [state.scheduler.requeue(task.id)])
            log.info("recovered agent %s (pid %s, killed=%s)", agent.id, agent.process_id, killed)
        cgroups.remove_stale()  # empty per-agent cgroups of crashed daemons
        return found

    async def shutdown(self) -> None:
        """Stop every agent (requeued, no retry consumed) and wait for their trees to die."""
        self.closing = True  # nothing new starts from here on
        for running in list(self.running.values()):
            running.requeue = True
            if running.run is not None:
                running.run.cancel(EndReason.CANCELLED, "daemon shutting down")
        while self.running:
            await self._any_ended()

    async def _any_ended(self) -> None:
        await self._ended.wait()

    def _signal_ended(self) -> None:
        self._ended.set()
        self._ended = trio.Event()

    # --- scheduling -----------------------------------------------------------------
    def wake(self, state: SessionState) -> None:
        """Something changed in `state`: let its runner look again (or start one)."""
        event = self._wakeups.pop(state.id, None)
        if event is not None:
            event.set()
        if (
            self._nursery is not None
            and state.session.status is SessionStatus.RUNNING
            and state.id not in self._runners
        ):
            self._runners.add(state.id)
            self._nursery.start_soon(self._runner, state)

    async def _runner(self, state: SessionState) -> None:
        try:
            while state.session.status is SessionStatus.RUNNING and not self.closing:
                event = self._wakeups.setdefault(state.id, trio.Event())
                while self._try_start(state):
                    pass
                if state.session.status is not SessionStatus.RUNNING:
                    break
                wake_at = state.scheduler.next_wakeup()
                timeout = trio.current_time() + 3600
                if wake_at is not None:
                    timeout = trio.current_time() + max(0.0, wake_at - self.engine.clock())
                if self._resource_gated(state):
                    interval = state.session.config.resource_limits.sample_interval_secs
                    timeout = min(timeout, trio.current_time() + interval)
                with trio.move_on_at(timeout):
                    await event.wait()
        finally:
            self._runners.discard(state.id)

    def _session_agents(self, state: SessionState) -> list[Running]:
        return [r for r in self.running.values() if r.state is state]

    def _resource_gated(self, state: SessionState) -> bool:
        limits = state.session.config.resource_limits
        mine = self._session_agents(state)
        if len(mine) >= limits.max_agents:
            return True
        cpu = sum(r.run.stats.cpu_percent for r in mine if r.run is not None)
        mem = sum(r.run.stats.memory_mb for r in mine if r.run is not None)
        machine_pct = cpu / max(1, psutil.cpu_count() or 1)
        return machine_pct >= limits.max_total_cpu or mem >= limits.max_total_memory_mb

    def _try_start(self, state: SessionState) -> bool:
        """Start the next task if a slot and resources allow; True if one started."""
        if self.closing or state.scheduler.aborted or self._resource_gated(state):
            return False
        now = self.engine.clock()
        promoted = state.scheduler.promote_due(now)
        if promoted:
            self.engine.commit_tasks(state, promoted)
        task = state.scheduler.next_task(now)
        if task is None:
            return False
        self._start(state, task)
        return True

    def _start(self, state: SessionState, task: Task) -> Running:
        assert self._nursery is not None, "the pool is not running"
        agent_id = f"a-{uuid.uuid4().hex[:10]}"
        config = state.session.config
        agent_type = task.agent_type or config.agent_type
        started = state.scheduler.start(task.id, self.engine.clock(), agent_id)
        agent = Agent(
            id=agent_id,
            session_id=state.id,
            task_id=task.id,
            agent_type=agent_type,
            started_at=time.time(),
            iteration_count=started.attempts,
        )
        running = Running(agent, state, task.id)
        self.running[agent_id] = running
        state.running_agents.add(agent_id)
        with self.engine.store.transaction():
            self.engine.store.put_agent(agent)
            self.engine.commit_tasks(state, [started])
            self._publish_agent(agent)
        self._nursery.start_soon(self._drive, running)
        return running

    async def schedule_next(self, state: SessionState) -> tuple[Task | None, Agent | None, str]:
        """Start one task by hand (parallel_schedule_next), whatever the session status."""
        if state.scheduler.aborted:
            raise errors.SessionAborted(data={"sessionId": state.id})
        if self.closing:
            raise errors.ShuttingDown()
        if self._resource_gated(state):
            return None, None, "resource limits reached (maxAgents, total CPU or memory)"
        now = self.engine.clock()
        promoted = state.scheduler.promote_due(now)
        self.engine.commit_tasks(state, promoted)
        task = state.scheduler.next_task(now)
        if task is None:
            counts = state.scheduler.counts()
            if counts.get(TaskStatus.READY, 0):
                return None, None, "no free slot (maxParallel reached)"
            return None, None, "no task is ready"
        running = self._start(state, task)
        return state.scheduler.get(task.id), running.agent, ""

    # --- one agent --------------------------------------------------------------------
    async def _drive(self, running: Running) -> None:
        state, agent = running.state, running.agent
        result: RunResult | None = None
        try:
            result = await self._attempt(running)
        except Exception as exc:  # an engine bug must not lose the task
            log.exception("agent %s failed unexpectedly", agent.id)
            self._finish(running, None, f"internal error: {type(exc).__name__}")
        else:
            self._finish(running, result, None)
        finally:
            self.running.pop(agent.id, None)
            state.running_agents.discard(agent.id)
            self._signal_ended()
            self.wake(state)

    async def _attempt(self, running: Running) -> RunResult | None:
        state, agent = running.state, running.agent
        session, config = state.session, state.session.config
        task = state.scheduler.get(running.task_id)
        try:
            alloc = await self.allocate(state, agent.id, task.id, task.branch)
        except errors.CorralError as exc:
            self._note_failure(running, f"worktree: {exc.message}", ErrorCategory.UNKNOWN)
            return None
        task.branch, task.worktree_path = alloc.branch, alloc.worktree_path
        agent.worktree_path, agent.branch = alloc.worktree_path, alloc.branch
        try:
            kind = agent_types.resolve_type(agent.agent_type, self.custom_types)
        except errors.CorralError as exc:
            self._note_failure(running, exc.message, ErrorCategory.UNKNOWN)
            return None
        prompt = agent_types.build_prompt(task.title, task.description, config.completion_marker)
        argv = agent_types.build_argv(
            kind, prompt=prompt, task_id=task.id, worktree=alloc.worktree_path, model=config.model
        )
        env = {
            **self.base_env,
            **kind.env,
            "CORRAL_TASK_ID": task.id,
            "CORRAL_SESSION_ID": session.id,
            "CORRAL_WORKTREE": alloc.worktree_path,
        }
        spec = RunSpec(
            agent_id=agent.id,
            task_id=task.id,
            argv=argv,
            cwd=alloc.worktree_path,
            env=env,
            stdin_data=prompt.encode() if kind.prompt_via == "stdin" else None,
            limits=config.resource_limits,
            log_path=self.log_path(session.id, agent.id),
            log_cap_bytes=self.log_cap_bytes,
            parser=make_parser(kind.parser, config.completion_marker),
            completion_marker=config.completion_marker,
        )

        def on_event(kind_: str, payload: dict[str, Any]) -> None:
            self._on_agent_event(running, kind_, payload)

        run = await self.executor.submit(spec, on_event)
        running.run = run
        self._run_started.set()
        if running.requeue or running.cancel_task:
            run.cancel(EndReason.CANCELLED, "stopped before it started")
        agent.process_id = run.pid
        agent.lifecycle = run.lifecycle
        with self.engine.store.transaction():
            self.engine.store.put_agent(agent, run.create_time)
            self.engine.store.put_tasks(state.id, [task])
            self._publish_agent(agent)
        result = await run.wait()
        if result.success and config.auto_commit and not running.requeue:
            try:
                commit = await worktrees.commit_all(
                    alloc.worktree_path, f"{task.title}\n\ncorral task {task.id}, agent {agent.id}"
                )
            except errors.CorralError as exc:
                result.end_reason = EndReason.FAILED
                result.error_category = ErrorCategory.UNKNOWN
                result.error = f"auto-commit failed: {exc.message}"
            else:
                if commit is not None:
                    run.note(f"auto-committed {commit[:12]} on {alloc.branch}")
        return result

    def _note_failure(self, running: Running, message: str, category: ErrorCategory) -> None:
        running.agent.end_reason = EndReason.FAILED
        running.agent.ended_at = time.time()
        self._fail_task(running, message, category)

    def _fail_task(self, running: Running, message: str, category: ErrorCategory) -> None:
        state = running.state
        changed = state.scheduler.fail(running.task_id, self.engine.clock(), message, category)
        self.engine.commit_tasks(state, changed)

    def _finish(self, running: Running, result: RunResult | None, internal: str | None) -> None:
        """Feed one attempt's outcome to the scheduler, persist, and announce it."""
        state, agent = running.state, running.agent
        engine, now = self.engine, self.engine.clock()
        task = state.scheduler.get(running.task_id)
        if result is not None:
            agent.exit_code = result.exit_code
            agent.end_reason = result.end_reason
            agent.tokens, agent.cost = result.tokens, result.cost
            agent.ended_at = result.ended_at
            agent.lifecycle = (
                AgentLifecycle.EXITED
                if result.end_reason is EndReason.OK
                else AgentLifecycle.KILLED
                if result.end_reason
                in (
                    EndReason.TIMEOUT,
                    EndReason.LIMIT_CPU,
                    EndReason.LIMIT_MEMORY,
                    EndReason.CANCELLED,
                )
                else AgentLifecycle.EXITED
            )
            if running.run is not None:
                self.finished[agent.id] = running.run
                while len(self.finished) > FINISHED_RUNS_KEPT:
                    self.finished.popitem(last=False)
        else:
            agent.ended_at = agent.ended_at or time.time()
            agent.end_reason = agent.end_reason or EndReason.FAILED
            agent.lifecycle = AgentLifecycle.EXITED
        agent.status = AgentActivity.IDLE
        error = internal or (result.error if result else None)
        changed: list[Task] = []
        with engine.store.transaction():
            if task.status is TaskStatus.IN_PROGRESS and task.assigned_agent == agent.id:
                changed = self._outcome(running, result, error)
            engine.store.put_agent(agent)
            engine.commit_tasks(state, changed)
            self._publish_agent(agent)
            success = result is not None and result.success and not running.requeue
            self._completed_seq += 1
            self.completed.append(
                (
                    self._completed_seq,
                    CompletedAgent(
                        agent_id=agent.id,
                        task_id=task.id,
                        session_id=state.id,
                        success=success,
                        exit_code=agent.exit_code,
                        end_reason=agent.end_reason,
                        error=error,
                        tokens=agent.tokens,
                        cost=agent.cost,
                        ended_at=agent.ended_at or now,
                    ),
                )
            )
            self._stats["completed" if success else "failed"] += 1

    def _outcome(self, running: Running, result: RunResult | None, error: str | None) -> list[Task]:
        state = running.state
        scheduler, now = state.scheduler, self.engine.clock()
        task_id = running.task_id
        if running.requeue:
            return [scheduler.requeue(task_id)]
        if running.cancel_task:
            return scheduler.cancel(task_id, now)
        if result is None:
            return scheduler.fail(
                task_id, now, error or "agent did not start", ErrorCategory.UNKNOWN
            )
        if result.rate_limited and not result.success:
            return scheduler.rate_limited(task_id, now, result.rate_limit_reset)
        if result.success:
            tokens = result.tokens or None
            return scheduler.complete(task_id, now, tokens)
        category = result.error_category or ErrorCategory.CRASH
        return scheduler.fail(task_id, now, error or f"agent ended: {result.end_reason}", category)

    # --- events from agents -------------------------------------------------------------
    def _on_agent_event(self, running: Running, kind: str, payload: dict[str, Any]) -> None:
        agent, sid = running.agent, running.state.id
        bus = self.engine.bus
        if kind == "log":
            line = payload["line"]
            if len(line) > EVENT_LINE_CAP:  # the full line stays in the ring and log file
                payload = {**payload, "line": line[:EVENT_LINE_CAP], "truncated": True}
            bus.publish("log", sid, {**payload, "taskId": running.task_id})
        elif kind == "activity":
            agent.status = AgentActivity(payload["activity"])
            bus.publish(
                "agent.activity", sid, {"agentId": agent.id, "taskId": running.task_id, **payload}
            )
        elif kind == "tokens":
            agent.tokens, agent.cost = int(payload["tokens"]), float(payload["cost"])
            bus.publish("agent.tokens", sid, {"agentId": agent.id, **payload})
        elif kind == "violation":
            self.violations.append(Violation.model_validate(payload))
            bus.publish("violation", sid, {**payload, "taskId": running.task_id})
        elif kind == "rate_limit":
            bus.publish(
                "agent.rate_limit", sid, {"agentId": agent.id, "taskId": running.task_id, **payload}
            )

    def _publish_agent(self, agent: Agent) -> None:
        self.engine.bus.publish(
            "agent.status",
            agent.session_id,
            {
                "agentId": agent.id,
                "taskId": agent.task_id,
                "lifecycle": agent.lifecycle.value,
                **({"endReason": agent.end_reason.value} if agent.end_reason else {}),
                **({"pid": agent.process_id} if agent.process_id else {}),
            },
        )

    # --- totals -------------------------------------------------------------------------
    async def _watch_totals(self) -> None:
        """Enforce each session's total memory while it runs; refresh live figures.

        Sleeps until an agent starts when none runs: an idle daemon stays idle.
        """
        while True:
            if not any(r.run is not None for r in self.running.values()):
                await self._run_started.wait()
                self._run_started = trio.Event()
            interval = 0.5
            by_session: dict[str, list[Running]] = collections.defaultdict(list)
            for r in self.running.values():
                if r.run is not None:
                    by_session[r.state.id].append(r)
                    r.agent.cpu_percent = round(r.run.stats.cpu_percent, 1)
                    r.agent.memory_mb = round(r.run.stats.memory_mb, 1)
            for group in by_session.values():
                limits = group[0].state.session.config.resource_limits
                interval = min(interval, limits.sample_interval_secs)
                total = sum(r.run.stats.memory_mb for r in group if r.run is not None)
                if total > limits.max_total_memory_mb:
                    victim = max(group, key=lambda r: r.started_mono)
                    if victim.requeue:
                        continue
                    victim.requeue = True
                    violation = Violation(
                        agent_id=victim.agent.id,
                        task_id=victim.task_id,
                        kind="total_memory",
                        value=round(total, 1),
                        limit=limits.max_total_memory_mb,
                        action="cancelled newest agent; task requeued",
                        at=time.time(),
                    )
                    self.violations.append(violation)
                    self.engine.bus.publish("violation", victim.state.id, violation.to_wire())
                    assert victim.run is not None
                    victim.run.cancel(EndReason.CANCELLED, "session total memory exceeded")
            await trio.sleep(interval)

    # --- worktrees ----------------------------------------------------------------------
    def base_dir(self, repo_path: str) -> Path:
        if self.worktree_base is not None:
            default = worktrees.default_base_dir(repo_path)
            return self.worktree_base / default.name
        return worktrees.default_base_dir(repo_path)

    async def allocate(
        self, state: SessionState, agent_id: str, task_id: str, branch: str | None
    ) -> WorktreeAllocation:
        """The task's worktree and branch, created from baseBranch or reused."""
        session = state.session
        config = session.config
        branch = branch or worktrees.render_branch(config.branch_template, task_id)
        base = config.base_branch or await worktrees.head_branch(session.repo_path)
        # Held until the allocation is recorded, so a concurrent orphan cleanup
        # never sees a fresh worktree that is not yet in the store.
        async with self._coordination(session.repo_path):
            info = await worktrees.allocate(
                session.repo_path, self.base_dir(session.repo_path), task_id, branch, base
            )
            alloc = WorktreeAllocation(
                session_id=session.id,
                agent_id=agent_id,
                task_id=task_id,
                worktree_path=info.path,
                branch=info.branch,
                base_branch=info.base_branch,
                created_at=time.time(),
            )
            with self.engine.store.transaction():
                self.engine.store.put_allocation(alloc)
                self.engine.bus.publish("worktree.allocated", session.id, alloc.to_wire())
        return alloc

    def _coordination(self, repo_path: str) -> trio.Lock:
        lock = self._repo_locks.get(repo_path)
        if lock is None:
            lock = self._repo_locks[repo_path] = trio.Lock()
        return lock

    async def cleanup_orphans(self, repo_path: str) -> CleanupReport:
        """Clean orphans of `repo_path`: worktrees no session on it has allocated."""
        async with self._coordination(repo_path):
            live = {
                a.worktree_path
                for s in self.engine.sessions.values()
                if s.session.repo_path == repo_path
                for a in self.engine.store.allocations(s.id)
            }
            return await worktrees.cleanup_orphans(repo_path, self.base_dir(repo_path), live)

    # --- queries ------------------------------------------------------------------------
    def log_path(self, session_id: str, agent_id: str) -> Path:
        return self.logs_dir / session_id / f"{agent_id}.log"

    def agent_run(self, agent_id: str) -> RunHandle | None:
        running = self.running.get(agent_id)
        if running is not None and running.run is not None:
            return running.run
        return self.finished.get(agent_id)

    def logs(self, agent: Agent, offset: int, limit: int) -> list[LogEntry]:
        """Log lines from `offset`: the ring while kept, else the log file."""
        run = self.agent_run(agent.id)
        ring = run.tail() if run is not None else []
        if ring and ring[0].offset <= offset:
            return [e for e in ring if e.offset >= offset][:limit]
        path = self.log_path(agent.session_id, agent.id)
        out: list[LogEntry] = []
        if path.exists():
            with path.open(encoding="utf-8", errors="replace") as fh:
                for number, line in enumerate(fh):
                    if number < offset:
                        continue
                    if len(out) >= limit:
                        break
                    stream = "stdout"
                    text = line.rstrip("\n")
                    for prefix, name in (("[stderr] ", "stderr"), ("[corral] ", "daemon")):
                        if text.startswith(prefix):
                            stream, text = name, text[len(prefix) :]
                    out.append(LogEntry(offset=number, stream=stream, line=text, at=0.0))
        return out

    def poll_completed(self, cursor: int) -> tuple[list[CompletedAgent], int]:
        return [c for seq, c in self.completed if seq > cursor], self._completed_seq

    def pool_stats(self, state: SessionState | None) -> PoolStats:
        mine = list(self.running.values()) if state is None else self._session_agents(state)
        limits = state.session.config.resource_limits if state is not None else ResourceLimits()
        return PoolStats(
            active_agents=len(mine),
            max_agents=limits.max_agents,
            total_cpu_percent=round(sum(r.run.stats.cpu_percent for r in mine if r.run), 1),
            total_memory_mb=round(sum(r.run.stats.memory_mb for r in mine if r.run), 1),
            max_total_cpu=limits.max_total_cpu,
            max_total_memory_mb=limits.max_total_memory_mb,
            completed_agents=self._stats["completed"],
            failed_agents=self._stats["failed"],
        )

    # --- stopping -------------------------------------------------------------------------
    def stop(self, state: SessionState, task_id: str | None = None, *, cancel: bool) -> int:
        """Stop the session's agents (or the one on `task_id`). Returns how many."""
        count = 0
        for running in self._session_agents(state):
            if task_id is not None and running.task_id != task_id:
                continue
            if cancel:
                running.cancel_task = True
            else:
                running.requeue = True
            if running.run is not None:
                running.run.cancel(EndReason.CANCELLED, "cancelled" if cancel else "stopped")
            count += 1
        return count

    async def wait_stopped(self, state: SessionState, task_id: str | None = None) -> None:
        while any(task_id in (None, r.task_id) for r in self._session_agents(state)):
            await self._any_ended()

    def __repr__(self) -> str:
        return f"AgentPool(running={len(self.running)}, runners={len(self._runners)})"


class _NotStarted:
    """The executor before `AgentPool.run` has created the real one."""

    name = "none"

    async def submit(self, spec: RunSpec, on_event: Any) -> RunHandle:
        raise RuntimeError("the agent pool is not running")

    def reattach(self, pid: int, create_time: float) -> bool:
        raise RuntimeError("the agent pool is not running")

    def capacity(self) -> dict[str, Any]:
        return {"executor": self.name}
