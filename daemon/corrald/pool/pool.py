"""The agent pool: turns ready tasks into supervised runs and their ends back into state.

One pool per daemon owns the agent nursery (the executor runs in it). Each
running session has a runner task that starts agents the moment a slot and
resources allow, and otherwise sleeps until something happens: the engine
wakes it on every change (completions, new tasks, status changes), the
sampler wakes it after each tick while it waits for resources, and retry or
rate-limit timers wake it on their deadline. Nothing polls.

Admission per session: `maxParallel` (scheduler), `maxAgents`, and the
session's summed CPU and memory (`pool.totals`). A running session over its
total memory loses its most recently started agent, whose task is requeued
without consuming a retry.

The pool writes nothing itself: the engine records every start, spawn and
end (`pool.attempt`, `pool.finish`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from corral import errors
from corral.models import (
    Agent,
    CleanupReport,
    EndReason,
    ErrorCategory,
    IntegrationStatus,
    LogEntry,
    PoolStats,
    ResourceLimits,
    SessionStatus,
    TaskState,
    Violation,
    WorktreeAllocation,
)
from corrald.agents.parsers import PlainParser
from corrald.agents.types import AgentTypeConfig
from corrald.core.accounting import RunAccounting
from corrald.core.outcome import Stop
from corrald.core.taskrow import TaskRow
from corrald.git import worktrees
from corrald.git.repo import repo_key
from corrald.pool import totals
from corrald.pool.attempt import RunSink, StageHook, enter_stage, finish_run, run_attempt
from corrald.pool.finish import AttemptEnd, record
from corrald.pool.integration import Integrator
from corrald.pool.records import AttemptStage, Run, Runs
from corrald.process import cgroups, memory
from corrald.process.executor import Executor, LocalExecutor
from corrald.process.lines import newest_within
from corrald.process.logfile import read_log
from corrald.process.spec import OutputBounds, RunSpec
from corrald.state.engine import Engine, SessionState

log = logging.getLogger("corrald.pool")

#: Finished runs whose last lines stay readable from memory (the rest is in the log file),
#: and how much of each: at most 12.5 MiB for all of them.
FINISHED_RUNS_KEPT = 200
FINISHED_TAIL_LINES = 200
FINISHED_TAIL_BYTES = 64 * 1024
#: How long to wait before retrying to record an end the store refused (a full disk).
_RECORD_RETRY = (0.5, 30.0)


class AgentPool:
    """Starts, watches and ends agent runs for every session."""

    def __init__(
        self,
        engine: Engine,
        *,
        logs_dir: Path,
        worktree_base: Path | None = None,
        spare_worktrees: int = 1,
        custom_types: dict[str, AgentTypeConfig] | None = None,
        output: OutputBounds | None = None,
        base_env: dict[str, str] | None = None,
        executor_factory: Callable[[trio.Nursery], Executor] = LocalExecutor,
    ) -> None:
        self.engine = engine
        self.logs_dir = logs_dir
        self.worktree_base = worktree_base
        self.spare_worktrees = spare_worktrees
        self._refilling: set[str] = set()  # repositories whose spares are being made
        self.custom_types = custom_types or {}
        self.output = output or OutputBounds()
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.executor_factory = executor_factory
        self.runs = Runs()
        self.stage_hooks: list[StageHook] = []
        self._shutting_down = False
        self._executor: Executor | None = None
        self._nursery: trio.Nursery | None = None
        self._rings: dict[str, list[LogEntry]] = {}  # finished runs' rings, oldest first
        self._wakeups: dict[str, trio.Event] = {}  # per session: something changed
        self._runners: set[str] = set()
        self._gated: set[str] = set()  # sessions waiting for CPU or memory to free up
        self._integrators: dict[str, Integrator] = {}  # per session, while it has work
        self._blocked_gate: dict[str, tuple[str, ...]] = {}  # gates that could not run
        self._ended = {"completed": 0, "failed": 0}
        self._cores = os.cpu_count() or 1
        engine.on_change.append(self.wake)

    @property
    def closing(self) -> bool:
        """Nothing new starts: a shutdown began, or the pool's nursery is being cancelled.

        The second matters when the pool is cancelled from outside without a
        shutdown: each run it ends requeues its task, which wakes the runner;
        without this check the runner would start the task again in the dying
        nursery, be cancelled, requeue, and so on, with no end.
        """
        nursery = self._nursery
        return self._shutting_down or (nursery is not None and nursery.cancel_scope.cancel_called)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("the agent pool is not running")
        return self._executor

    # --- lifecycle ------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the agent nursery until cancelled; recover, then resume running sessions."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._executor = self.executor_factory(nursery)
            self._executor.hub.after_tick.append(self._after_sample)
            await self._executor.open()
            await self.recover()
            for state in self.engine.sessions.values():
                self.wake(state)
            task_status.started()
            await trio.sleep_forever()

    async def recover(self) -> list[str]:
        """After a restart: end the runs the previous daemon left, requeue their tasks.

        What to kill comes from each run's stored record (`core.accounting`):
        its cgroup, its token, its recorded processes (pid and start time
        must both match: a reused pid is left alone). Tasks keep worktree and
        branch and no retry is consumed. Returns the ids of the agents found.
        """
        found = []
        for agent, kept in self.engine.left_running():
            found.append(agent.id)
            if kept is not None and await self._reattach(agent, kept):
                log.info("reattached agent %s", agent.id)
                continue
            self.engine.agent_lost(agent, killed=kept is not None)
            log.info("recovered agent %s (pid %s)", agent.id, agent.process_id)
        cgroups.remove_stale()  # empty per-agent cgroups of crashed daemons
        return found

    async def _reattach(self, agent: Agent, kept: RunAccounting) -> bool:
        """Take a run a previous daemon left back, if the executor can (Ray); else end it."""
        state = self.engine.sessions.get(agent.session_id)
        if state is None or not self.executor.remote or not agent.worktree_path:
            await self.executor.reattach(kept)
            return False
        run = Run(state, agent, accounting=kept)
        spec = RunSpec(
            agent_id=agent.id,
            task_id=agent.task_id,
            argv=[],
            cwd=agent.worktree_path,
            env={},
            stdin_data=None,
            limits=state.session.config.resource_limits,
            log_path=self.log_path(state.id, agent.id),
            parser=PlainParser(),
            output=self.output,
            token=kept.token,
        )
        handle = await self.executor.reattach(kept, spec, RunSink(self.engine, run))
        if handle is None:
            return False
        run.handle = handle
        run.stage = AttemptStage.RUNNING
        self.runs.add(run)
        assert self._nursery is not None
        self._nursery.start_soon(self._drive_reattached, run)
        return True

    async def _drive_reattached(self, run: Run) -> None:
        """A reattached run: wait for its end, bring its branch home, record it."""
        assert run.handle is not None
        task = run.state.scheduler.get(run.task_id)
        message = f"{task.title}\n\ncorral task {task.id}, agent {run.agent_id}"
        try:
            end = await finish_run(
                self, run, run.handle, run.agent.worktree_path, run.agent.branch or "", message
            )
        except Exception as exc:  # a bug of ours must not lose the task
            log.exception("agent %s: the reattached run failed inside corral", run.agent_id)
            end = AttemptEnd.not_started(
                f"internal error: {type(exc).__name__}: {exc}"[:500], ErrorCategory.INTERNAL
            )
        try:
            await self._record_durably(run, end)
        finally:
            self._forget(run)

    async def shutdown(self) -> None:
        """Stop every agent (requeued, no retry consumed) and wait for their trees to die."""
        self._shutting_down = True  # nothing new starts from here on
        for run in self.runs:
            self._stop(run, Stop.REQUEUE, "daemon shutting down")
        for integrator in self._integrators.values():
            integrator.stop()
        while len(self.runs):
            await self.runs.wait_ended()

    # --- scheduling -----------------------------------------------------------------
    def wake(self, state: SessionState) -> None:
        """Something changed in `state`: let its runner look again (or start one)."""
        event = self._wakeups.pop(state.id, None)
        if event is not None:
            event.set()
        self._integrate_if_needed(state)
        if (
            self._nursery is not None
            and state.session.status is SessionStatus.RUNNING
            and state.id not in self._runners
            and not self.closing
        ):
            self._runners.add(state.id)
            self._nursery.start_soon(self._runner, state)

    def _integrate_if_needed(self, state: SessionState) -> None:
        """Start the session's integrator when branches wait and none is running."""
        config = state.session.config
        if (
            self._nursery is None
            or self.closing
            or not config.integrate
            or state.session.integration_branch is None
            or state.id in self._integrators
        ):
            return
        gate = tuple(" ".join(g) for g in config.gates())
        if self._blocked_gate.get(state.id) == gate:
            return  # that gate cannot run; wait until the session's gate changes
        self._blocked_gate.pop(state.id, None)
        if not any(
            t.integration_status is IntegrationStatus.QUEUED
            for t in state.scheduler.awaiting_integration()
        ):
            return
        integrator = self._integrators[state.id] = Integrator(self, state)
        self._nursery.start_soon(self._integrate, integrator)

    async def _integrate(self, integrator: Integrator) -> None:
        state = integrator.state
        try:
            await integrator.run()
        except Exception:  # a bug of ours must not take the pool down
            log.exception("the integration queue of %s failed", state.id)
        finally:
            self._integrators.pop(state.id, None)
            if integrator.unrunnable_gate is not None:
                self._blocked_gate[state.id] = integrator.unrunnable_gate
            self._integrate_if_needed(state)  # more may have arrived meanwhile

    def integrator(self, state: SessionState) -> Integrator | None:
        """The session's integrator, while it runs."""
        return self._integrators.get(state.id)

    async def _runner(self, state: SessionState) -> None:
        try:
            while state.session.status is SessionStatus.RUNNING and not self.closing:
                event = self._wakeups.setdefault(state.id, trio.Event())
                while self._try_start(state):
                    pass
                if state.session.status is not SessionStatus.RUNNING:
                    break
                deadline = trio.current_time() + 3600.0
                wake_at = state.scheduler.next_wakeup()
                if wake_at is not None:
                    deadline = trio.current_time() + max(0.0, wake_at - self.engine.clock())
                with trio.move_on_at(deadline):
                    await event.wait()
        finally:
            self._runners.discard(state.id)
            self._gated.discard(state.id)

    def _resource_gated(self, state: SessionState) -> bool:
        limits = state.session.config.resource_limits
        # A cluster executor admits only what its nodes can place (no pending actors).
        gated = totals.gated(self.runs.of(state), limits, self._cores) or not (
            self._can_place(limits)
        )
        if gated:
            self._gated.add(state.id)  # the sampler wakes it as figures change
        else:
            self._gated.discard(state.id)
        return gated

    def _can_place(self, limits: ResourceLimits) -> bool:
        """The executor has room for one more run, counting runs started but not yet submitted."""
        if not self.executor.remote:
            return True  # the local executor's admission is the session totals
        pending = [r.state.session.config.resource_limits for r in self.runs if r.handle is None]
        return self.executor.can_place(limits, pending)

    def _try_start(self, state: SessionState) -> bool:
        """Start the next task if a slot and resources allow; True if one started."""
        if self.closing or state.scheduler.aborted or self._resource_gated(state):
            return False
        self.engine.promote_due(state)
        task = state.scheduler.next_task(self.engine.clock())
        if task is None:
            return False
        self._start(state, task)
        return True

    def _start(self, state: SessionState, task: TaskRow) -> Run:
        assert self._nursery is not None, "the pool is not running"
        agent = self.engine.start_attempt(state, task.id, f"a-{uuid.uuid4().hex[:10]}")
        run = Run(state, agent)
        self.runs.add(run)
        self._nursery.start_soon(self._drive, run)
        return run

    async def schedule_next(
        self, state: SessionState, *, placed: bool = False
    ) -> tuple[TaskRow | None, Agent | None, str]:
        """Start one task by hand (parallel_schedule_next), whatever the session status.

        With `placed`, answer once the agent's worktree and branch exist (the
        seed's Agent names them); otherwise at once, before the checkout.
        """
        if state.scheduler.aborted:
            raise errors.SessionAborted(data={"sessionId": state.id})
        if self.closing:
            raise errors.ShuttingDown()
        if self._resource_gated(state):
            return None, None, "resource limits reached (maxAgents, total CPU or memory)"
        self.engine.promote_due(state)
        task = state.scheduler.next_task(self.engine.clock())
        if task is None:
            if state.scheduler.counts().get(TaskState.READY, 0):
                return None, None, "no free slot (maxParallel reached)"
            return None, None, "no task is ready"
        run = self._start(state, task)
        if not placed:
            return state.scheduler.get(task.id), run.agent, ""
        # Answer once the worktree and branch exist (or the attempt ended
        # without them; its row then says why).
        await run.placed.wait()
        live = self.runs.get(run.agent_id)
        agent = live.view() if live is not None else self.engine.agent(run.agent_id)
        if not agent.worktree_path and run.placed_at is not None:
            agent = agent.model_copy(
                update={"worktree_path": run.placed_at[0], "branch": run.placed_at[1]}
            )
        return state.scheduler.get(task.id), agent, ""

    # --- one attempt ------------------------------------------------------------------
    async def _drive(self, run: Run) -> None:
        """Run an attempt and record its end, whatever happens (a failure boundary)."""
        end: AttemptEnd | None = None
        try:
            try:
                end = await run_attempt(self, run)
                await enter_stage(self, run, AttemptStage.FINISHING)
            except Exception as exc:  # a bug of ours must not lose the task, nor the pool
                log.exception("agent %s: the attempt failed inside corral", run.agent_id)
                end = AttemptEnd.not_started(
                    f"internal error: {type(exc).__name__}: {exc}"[:500], ErrorCategory.INTERNAL
                )
        except BaseException:
            # Cancelled (the daemon is going down hard): the executor's scope
            # kills the tree. An end already known is recorded as it is;
            # otherwise the task goes back to ready, no retry spent.
            if end is None:
                run.stop = Stop.REQUEUE
                end = AttemptEnd(None, "interrupted")
            try:
                self._record(run, end)
            except Exception:
                log.exception("agent %s: could not record its end", run.agent_id)
            self._forget(run)
            raise
        try:
            await self._record_durably(run, end)
        finally:
            self._forget(run)

    def _forget(self, run: Run) -> None:
        run.placed.set()
        self._keep_ring(run)
        # The handle's events sink points back at `run`: let the cycle go now,
        # so its ring is freed at once rather than at a full garbage collection.
        run.handle = None
        self.runs.remove(run)
        if len(self.runs) == 0:
            memory.release()  # idle again: what the runs' output took goes back
        self.wake(run.state)

    def _record(self, run: Run, end: AttemptEnd) -> None:
        row, outcome = record(self.engine, run, end)
        run.agent = row
        self._ended["completed" if outcome.success else "failed"] += 1

    async def _record_durably(self, run: Run, end: AttemptEnd) -> None:
        """Record the end; if the store refuses (a full disk), try again until it takes it.

        The run keeps its slot meanwhile, so the task is never shown as free
        while its end is not durable.
        """
        delay, cap = _RECORD_RETRY
        while True:
            try:
                self._record(run, end)
                return
            except errors.StorageError as exc:
                log.error("agent %s: cannot record its end yet: %s", run.agent_id, exc.message)
                await trio.sleep(delay)
                delay = min(cap, delay * 2)

    def _keep_ring(self, run: Run) -> None:
        if run.handle is not None:
            self._rings[run.agent_id] = newest_within(
                run.handle.tail(FINISHED_TAIL_LINES), FINISHED_TAIL_LINES, FINISHED_TAIL_BYTES
            )
            while len(self._rings) > FINISHED_RUNS_KEPT:
                del self._rings[next(iter(self._rings))]

    # --- totals -------------------------------------------------------------------------
    def _after_sample(self) -> None:
        """After each sampling tick: enforce session totals, wake sessions waiting for room."""
        by_session: dict[str, list[Run]] = {}
        grown: list[tuple[str, RunAccounting]] = []
        for run in self.runs:
            if run.handle is not None:
                by_session.setdefault(run.state.id, []).append(run)
                if run.accounting is not None and (new := run.handle.new_members()):
                    run.accounting.descendants += new
                    grown.append((run.agent_id, run.accounting))
        # Every process of every run is on record before it can be orphaned.
        self.engine.run_accounting(grown)
        for group in by_session.values():
            limits = group[0].state.session.config.resource_limits
            breach = totals.memory_victim(group, limits)
            if breach is None:
                continue
            victim, total = breach
            self.engine.violation(
                victim.state.id,
                Violation(
                    agent_id=victim.agent_id,
                    task_id=victim.task_id,
                    kind="total_memory",
                    value=round(total, 1),
                    limit=limits.max_total_memory_mb,
                    action="cancelled newest agent; task requeued",
                    at=self.engine.clock(),
                ),
            )
            self._stop(victim, Stop.REQUEUE, "session total memory exceeded")
        for sid in list(self._gated):
            state = self.engine.sessions.get(sid)
            if state is not None:
                self.wake(state)

    # --- worktrees ----------------------------------------------------------------------
    def base_dir(self, repo_path: str) -> Path:
        if self.worktree_base is not None:
            default = worktrees.default_base_dir(repo_path)
            return self.worktree_base / default.name
        return worktrees.default_base_dir(repo_path)

    async def allocate(
        self,
        state: SessionState,
        agent_id: str,
        task_id: str,
        branch: str | None,
        *,
        take_over: bool = True,
    ) -> WorktreeAllocation:
        """The task's worktree and branch, created from baseBranch or reused, and recorded.

        `take_over`: see `Engine.record_allocation` (false for a `worktree_allocate`).
        """
        session = state.session
        config = session.config
        branch = branch or worktrees.render_branch(config.branch_template, task_id)
        if config.integrate and session.integration_branch:
            # A new branch starts from everything integrated so far.
            base = session.integration_branch
        else:
            base = config.base_branch or await worktrees.head_branch(session.repo_path)
        recorded: list[WorktreeAllocation] = []

        def keep(info: worktrees.WorktreeInfo) -> None:
            alloc = WorktreeAllocation(
                session_id=session.id,
                agent_id=agent_id,
                task_id=task_id,
                worktree_path=info.path,
                branch=info.branch,
                base_branch=info.base_branch,
                created_at=self.engine.clock(),
            )
            self.engine.record_allocation(state, alloc, take_over=take_over)
            recorded.append(alloc)

        await worktrees.allocate(
            session.repo_path, self.base_dir(session.repo_path), task_id, branch, base, keep
        )
        self._refill_spares(session.repo_path, base)
        return recorded[0]

    def _refill_spares(self, repo: str, base_branch: str) -> None:
        """Check out the next task's worktree ahead of time, off the allocation's path."""
        key = repo_key(repo)
        if self.spare_worktrees <= 0 or key in self._refilling or self.closing:
            return
        if self._nursery is None:
            return  # not running (a test of the allocation alone)
        self._refilling.add(key)
        self._nursery.start_soon(self._fill_spares, repo, base_branch, key)

    async def _fill_spares(self, repo: str, base_branch: str, key: str) -> None:
        try:
            await worktrees.fill_spares(
                repo, self.base_dir(repo), base_branch, self.spare_worktrees
            )
        except Exception:
            # A spare only saves time: failing to make one must not end the pool.
            log.warning("could not prepare a spare worktree for %s", repo, exc_info=True)
        finally:
            self._refilling.discard(key)

    async def cleanup_orphans(self, state: SessionState) -> CleanupReport:
        """Clean orphans of the session's repository: worktrees no session on it has allocated."""
        repo = state.session.repo_path

        def live() -> set[str]:
            key = repo_key(repo)
            return {
                a.worktree_path
                for s in self.engine.sessions.values()
                if repo_key(s.session.repo_path) == key
                for a in self.engine.allocations(s.id)
            }

        report = await worktrees.cleanup_orphans(repo, self.base_dir(repo), live)
        self.engine.worktrees_cleaned(state, report)
        return report

    # --- queries ------------------------------------------------------------------------
    def log_path(self, session_id: str, agent_id: str) -> Path:
        return self.logs_dir / session_id / f"{agent_id}.log"

    def view(self, agent: Agent) -> Agent:
        """The wire Agent: live figures for a running one, else its stored row."""
        run = self.runs.get(agent.id)
        return run.view() if run is not None else agent

    def live_agents(self, state: SessionState) -> list[Agent]:
        return [run.view() for run in self.runs.of(state)]

    def logs(self, agent: Agent, offset: int, limit: int) -> list[LogEntry]:
        """Log lines from `offset`: the ring while kept, else the log file."""
        run = self.runs.get(agent.id)
        ring = run.handle.tail() if run is not None and run.handle is not None else None
        if ring is None:
            ring = self._rings.get(agent.id, [])
        if ring and ring[0].offset <= offset:
            return [e for e in ring if e.offset >= offset][:limit]
        return read_log(self.log_path(agent.session_id, agent.id), offset, limit)

    def tail(self, agent_id: str, n: int) -> list[LogEntry]:
        """The last `n` lines kept in memory for an agent (live or recently finished)."""
        run = self.runs.get(agent_id)
        if run is not None and run.handle is not None:
            return run.handle.tail(n)
        return self._rings.get(agent_id, [])[-n:]

    def pool_stats(self, state: SessionState) -> PoolStats:
        tokens, cost = self.usage(state)
        stats = totals.pool_stats(
            self.runs.of(state),
            state.session.config.resource_limits,
            self._ended["completed"],
            self._ended["failed"],
        ).model_copy(update={"tokens": tokens, "cost": cost})
        if self._executor is not None and self._executor.remote:
            stats.executor = self._executor.capacity()  # the cluster's nodes and free room
        return stats

    def usage(self, state: SessionState) -> tuple[int, float]:
        """Tokens and cost of every agent of the session: stored rows, live figures for runs."""
        agents = [self.view(a) for a in self.engine.agents(state.id)]
        return sum(a.tokens for a in agents), round(sum(a.cost for a in agents), 6)

    def capacity(self) -> dict[str, Any]:
        return self.executor.capacity() if self._executor is not None else {"executor": "none"}

    # --- stopping -------------------------------------------------------------------------
    def _stop(self, run: Run, why: Stop, detail: str) -> None:
        if run.stop is None:
            run.stop = why
        if run.handle is not None:
            run.handle.cancel(EndReason.CANCELLED, detail)

    def stop(self, state: SessionState, task_id: str | None = None, *, cancel: bool) -> list[Run]:
        """Stop the session's agents (or the one on `task_id`); returns the runs stopped."""
        stopped = self.runs.of(state, task_id)
        for run in stopped:
            self._stop(
                run, Stop.CANCEL if cancel else Stop.REQUEUE, "cancelled" if cancel else "stopped"
            )
        return stopped

    async def wait_stopped(self, state: SessionState, task_id: str | None = None) -> None:
        while self.runs.of(state, task_id):
            await self.runs.wait_ended()

    def __repr__(self) -> str:
        return f"AgentPool(runs={len(self.runs)}, runners={len(self._runners)})"
