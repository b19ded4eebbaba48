"""The integration queue of one session: merge, gate, compare-and-swap, policies.

A completed task's branch waits in the queue (`integrationStatus: queued`).
The session's integrator (one task of the pool's nursery, started when there
is something to integrate, gone when there is not) takes up to `gateBatch`
of them in dependency-then-priority order and:

1. marks them `gating` (durable: after a restart the batch is gated again);
2. merges them one after another onto the integration head, in memory
   (`git.merge.integrate.candidates`); a branch that conflicts is left out;
3. runs `gateCommand` once on the last candidate, in a scratch worktree,
   supervised like an agent (its own process group, `gateTimeoutSecs`, the
   memory limit, the tree kill, a log). If it fails, bisects: the longest
   passing prefix goes in, the first failing branch is the culprit, and the
   branches after it wait for the next batch. At most 1 + ceil(log2(n))
   gate runs for a batch of n;
4. moves the integration branch to the result by compare-and-swap;
5. sends conflicting and culprit branches through the policy
   (`onConflict`/`onGateFailure`): the integration head is merged into the
   task's worktree (markers left in place) and the engine either reopens the
   task for a resolution attempt or parks it.

A gate that cannot run at all (its executable is missing) is not the
branches' fault: the batch goes back to the queue and the queue stops,
saying why (`integration_status.blocked`), until the session's gate changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from corral import errors
from corral.models import (
    EndReason,
    ErrorCategory,
    IntegrationBatch,
    IntegrationStatus,
    LogEntry,
    ResourceLimits,
    Violation,
)
from corrald.agents.parsers import PlainParser
from corrald.core.graph import merge_order
from corrald.core.taskrow import TaskRow
from corrald.git import worktrees
from corrald.git.merge import integrate
from corrald.process.executor import RunHandle
from corrald.process.lines import Skipped
from corrald.process.spec import NoEvents, RunSpec
from corrald.state.engine import SessionState, Setback

if TYPE_CHECKING:
    from corrald.pool.pool import AgentPool

log = logging.getLogger("corrald.integration")

#: Lines of gate output kept with a failure (the prompt and the report show them).
GATE_TAIL_LINES = 40
#: Set to make the daemon exit right before a compare-and-swap (crash tests only).
CRASH_BEFORE_CAS = "CORRAL_TEST_CRASH_BEFORE_CAS"


class _GateBlocked(Exception):
    """The gate cannot run at all; the queue stops until the gate changes."""


class _Interrupted(Exception):
    """The daemon is stopping: the batch goes back to the queue untouched."""


@dataclass(frozen=True)
class GateResult:
    ok: bool
    detail: str = ""


class _GateLog(NoEvents):
    """A gate run's output, announced as log lines of the run (agent id `gate-...`)."""

    def __init__(self, pool: AgentPool, state: SessionState, run_id: str) -> None:
        self.pool = pool
        self.state = state
        self.run_id = run_id

    def log(self, entry: LogEntry) -> None:
        self.pool.engine.gate_log(self.state, self.run_id, entry)

    def log_skipped(self, skipped: Skipped) -> None:
        self.pool.engine.log_skipped(self.state.id, self.run_id, "", skipped.as_tuple())

    def violation(self, violation: Violation) -> None:
        self.pool.engine.violation(self.state.id, violation)


class Integrator:
    """Integrates one session's completed branches while there are any."""

    def __init__(self, pool: AgentPool, state: SessionState) -> None:
        self.pool = pool
        self.state = state
        self.gate: RunHandle | None = None
        self.gate_runs = 0  # this daemon's gate runs for the session (names the logs)
        self.unrunnable_gate: tuple[str, ...] | None = None  # a gate that could not start

    def next_batch(self) -> list[TaskRow]:
        """Queued tasks in dependency, then priority, then insertion order; at most gateBatch."""
        config = self.state.session.config
        queued = [
            t
            for t in self.state.scheduler.awaiting_integration()
            if t.integration_status is IntegrationStatus.QUEUED
        ]
        return merge_order(queued)[: config.gate_batch]

    async def run(self) -> None:
        """Integrate batches until none is left (or the queue is blocked, or the daemon stops)."""
        while not self.pool.closing:
            batch = self.next_batch()
            if not batch:
                return
            if not await self.integrate_batch(batch):
                return

    async def integrate_batch(self, batch: Sequence[TaskRow]) -> bool:
        """One batch; False when the queue cannot go on (blocked or interrupted)."""
        state, engine = self.state, self.pool.engine
        session, config = state.session, state.session.config
        repo, branch = session.repo_path, session.integration_branch
        assert branch is not None, "integration is on, so the session has a branch"
        ids = [t.id for t in batch]
        engine.integration_gating(state, ids)
        try:
            base = config.base_branch or await worktrees.head_branch(repo)
            head = await integrate.ensure_branch(repo, branch, base)
            items = [integrate.Item(t.id, t.branch or "", tuple(t.conflict_files)) for t in batch]
            cands = await integrate.candidates(repo, head, items, branch)
            included = [c for c in cands if c.included]
            gate_runs, good, culprit_detail = await self._gate_and_bisect(head, included)
            final = included[good - 1].commit if good else head
            if final != head and os.environ.get(CRASH_BEFORE_CAS):
                os._exit(137)  # the crash test's kill -9, at exactly this point
            await integrate.swap(repo, branch, head, final)
        except _GateBlocked as exc:
            self.unrunnable_gate = tuple(" ".join(g) for g in config.gates())
            engine.integration_outcome(
                state, IntegrationBatch(task_ids=ids, gate_runs=0), requeued=ids
            )
            engine.integration_blocked(state, str(exc))
            return False
        except _Interrupted:
            engine.integration_outcome(
                state, IntegrationBatch(task_ids=ids, gate_runs=0), requeued=ids
            )
            return False
        except trio.Cancelled:
            # Going down hard: the batch is queued again (sync, so it still runs).
            try:
                engine.integration_outcome(
                    state, IntegrationBatch(task_ids=ids, gate_runs=0), requeued=ids
                )
            except Exception:
                log.exception("could not requeue the batch %s of %s", ids, state.id)
            raise
        except errors.CorralError as exc:
            # The branch moved under us, or git failed: nothing went in; try again later.
            log.warning("integration of %s in %s failed: %s", ids, state.id, exc.message)
            engine.integration_outcome(
                state, IntegrationBatch(task_ids=ids, gate_runs=0), requeued=ids
            )
            engine.integration_blocked(state, f"integration failed: {exc.message}")
            return False
        engine.integration_blocked(state, None)
        went_in = [c.task_id for c in included[:good]]
        culprit = included[good] if good < len(included) else None
        later = [c.task_id for c in included[good + 1 :]] if culprit else []
        setbacks: list[Setback] = []
        for cand in cands:
            if not cand.included:
                files = await self._prepare(cand.task_id, cand.files)
                error = (
                    cand.error or f"conflicts with {branch} in {', '.join(files) or 'its files'}"
                )
                setbacks.append(Setback(cand.task_id, gate=False, files=files, error=error))
        if culprit is not None:
            files = await self._prepare(culprit.task_id, [])
            setbacks.append(Setback(culprit.task_id, gate=True, files=files, error=culprit_detail))
        report = IntegrationBatch(
            task_ids=ids,
            gate_runs=gate_runs,
            integrated=went_in,
            conflicted=[s.task_id for s in setbacks if not s.gate],
            gate_failed=[s.task_id for s in setbacks if s.gate],
            head=final,
            at=engine.clock(),
        )
        engine.integration_outcome(state, report, setbacks=setbacks, requeued=later)
        log.info(
            "integration batch of %d in %s: %d gate run(s); integrated %s, conflicts %s,"
            " gate failures %s, back in the queue %s; head %s",
            len(ids),
            state.id,
            gate_runs,
            went_in,
            report.conflicted,
            report.gate_failed,
            later,
            final[:12],
        )
        return True

    async def _gate_and_bisect(
        self, head: str, included: Sequence[integrate.Candidate]
    ) -> tuple[int, int, str]:
        """(gate runs, how many of `included` pass, the culprit's failure detail)."""
        config = self.state.session.config
        if not included:
            return 0, 0, ""
        if not config.gates() or all(c.kind == "already" for c in included):
            return 0, len(included), ""
        runs = 0
        details: dict[int, str] = {}

        async def passes(k: int) -> bool:
            nonlocal runs
            commit = included[k - 1].commit
            if commit == head:
                return True  # nothing new in this prefix
            runs += 1
            result = await self._run_gate(commit)
            if not result.ok:
                details[k] = result.detail
            return result.ok

        if await passes(len(included)):
            return runs, len(included), ""
        lo, hi = 0, len(included)  # prefix lo passes (0: the head), prefix hi fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await passes(mid):
                lo = mid
            else:
                hi = mid
        return runs, hi - 1, details.get(hi, "")

    async def _run_gate(self, commit: str) -> GateResult:
        """Every gate command on `commit`'s tree, in order; the first failure decides."""
        session = self.state.session
        path = await integrate.gate_tree(
            session.repo_path, self.pool.base_dir(session.repo_path), self.state.id, commit
        )
        for argv in session.config.gates():
            result = await self._run_one(argv, path, commit)
            if not result.ok:
                return result
        return GateResult(True)

    async def _run_one(self, argv: list[str], path: str, commit: str) -> GateResult:
        pool, state = self.pool, self.state
        config = state.session.config
        self.gate_runs += 1
        run_id = f"gate-{state.id}-{self.gate_runs}"
        limits: ResourceLimits = config.resource_limits.model_copy(
            update={
                "max_runtime_secs": config.gate_timeout_secs,
                # A test suite may use every core; only memory and time are limited.
                "max_cpu_per_agent": 100.0 * 1024,
            }
        )
        spec = RunSpec(
            agent_id=run_id,
            argv=list(argv),
            cwd=path,
            env={**pool.base_env, "CORRAL_SESSION_ID": state.id, "CORRAL_GATE_COMMIT": commit},
            stdin_data=None,
            limits=limits,
            log_path=pool.log_path(state.id, run_id),
            output=pool.output,
            parser=PlainParser(),
        )
        handle = await pool.executor.local.submit(spec, _GateLog(pool, state, run_id))
        self.gate = handle
        try:
            result = await handle.wait()
        finally:
            self.gate = None
        if result.error_category is ErrorCategory.MISSING_EXECUTABLE:
            raise _GateBlocked(f"the gate cannot run: {result.error}")
        if result.end_reason is EndReason.CANCELLED or pool.closing:
            raise _Interrupted()
        tail = "\n".join(e.line for e in handle.tail(GATE_TAIL_LINES) if e.stream != "daemon")
        if result.success:
            return GateResult(True)
        why = result.error or "the gate failed"
        return GateResult(False, f"{why}\n{tail}".strip())

    async def _prepare(self, task_id: str, files: list[str]) -> list[str]:
        """Merge the integration head into the task's worktree; the files left conflicting."""
        state = self.state
        task = state.scheduler.get(task_id)
        branch = state.session.integration_branch
        if not task.worktree_path or branch is None:
            return files
        try:
            return (
                await integrate.merge_into_worktree(
                    state.session.repo_path, task.worktree_path, branch
                )
                or files
            )
        except errors.CorralError as exc:
            log.warning("could not merge %s into %s's worktree: %s", branch, task_id, exc.message)
            return files

    def stop(self) -> None:
        """Cancel a running gate (the daemon is stopping)."""
        if self.gate is not None:
            self.gate.cancel(EndReason.CANCELLED, "daemon shutting down")

    def __repr__(self) -> str:
        return f"Integrator({self.state.id}, gate_runs={self.gate_runs})"
