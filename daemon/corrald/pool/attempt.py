"""One attempt at one task: worktree, agent type, spawn, wait, auto-commit.

`run_attempt` goes through the `AttemptStage`s in order (the pool adds the
last, `finishing`) and returns how the attempt ended; the pool records that
(`pool.finish`). Interrupted at any
stage (stopped, cancelled, the daemon shutting down), it leaves no process
behind and the pool records a requeue, so no retry is spent and the task
keeps its worktree and branch.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from corral import errors
from corral.models import (
    AgentActivity,
    EndReason,
    ErrorCategory,
    LogEntry,
    Violation,
    WorktreeAllocation,
)
from corrald.agents.parsers import make_parser
from corrald.agents.types import (
    AgentTypeConfig,
    build_argv,
    build_prompt,
    permission_env,
    resolution_note,
    resolve_type,
)
from corrald.core.accounting import RunAccounting
from corrald.git import bundle, worktrees
from corrald.pool.finish import AttemptEnd
from corrald.pool.records import AttemptStage, Run
from corrald.process import cgroups
from corrald.process.executor import Executor, RunHandle
from corrald.process.lines import Skipped
from corrald.process.spec import OutputBounds, RepoSource, RunSpec
from corrald.state.engine import Engine, SessionState

StageHook = Callable[[Run, AttemptStage], Awaitable[None]]


class AttemptContext(Protocol):
    """What an attempt needs from the pool."""

    engine: Engine
    custom_types: dict[str, AgentTypeConfig]
    base_env: dict[str, str]
    output: OutputBounds
    stage_hooks: list[StageHook]

    @property
    def executor(self) -> Executor: ...

    def log_path(self, session_id: str, agent_id: str) -> Path: ...

    async def allocate(
        self, state: SessionState, agent_id: str, task_id: str, branch: str | None
    ) -> WorktreeAllocation: ...


class RunSink:
    """What the run reports, announced by the engine as the agent's live figures."""

    def __init__(self, engine: Engine, run: Run) -> None:
        self.engine = engine
        self.run = run

    def log(self, entry: LogEntry) -> None:
        self.engine.agent_log(self.run.agent, entry.offset, entry.stream, entry.line, entry.at)

    def log_lines(self, first: int, stream: str, lines: Sequence[str], at: float) -> None:
        self.engine.agent_log_lines(self.run.agent, first, stream, lines, at)

    def log_skipped(self, skipped: Skipped) -> None:
        agent = self.run.agent
        self.engine.log_skipped(agent.session_id, agent.id, agent.task_id, skipped.as_tuple())

    def activity(self, activity: AgentActivity) -> None:
        self.engine.agent_activity(self.run.agent, activity)

    def tokens(self, tokens: int, cost: float) -> None:
        self.engine.agent_tokens(self.run.agent, tokens, cost)

    def rate_limit(self, reset_at: float | None, detail: str) -> None:
        self.engine.agent_rate_limit(self.run.agent, reset_at, detail)

    def violation(self, violation: Violation) -> None:
        self.engine.violation(self.run.state.id, violation)


async def enter_stage(ctx: AttemptContext, run: Run, stage: AttemptStage) -> None:
    """Move `run` to `stage`; the context's stage hooks see each step (tests cancel there)."""
    run.stage = stage
    for hook in ctx.stage_hooks:
        await hook(run, stage)


async def run_attempt(ctx: AttemptContext, run: Run) -> AttemptEnd:
    """Run one attempt to its end (see the module docstring)."""
    state, engine = run.state, ctx.engine
    config = state.session.config
    task = state.scheduler.get(run.task_id)
    await enter_stage(ctx, run, AttemptStage.ALLOCATING)
    try:
        alloc = await ctx.allocate(state, run.agent_id, task.id, task.branch)
    except errors.CorralError as exc:
        return AttemptEnd.not_started(f"worktree: {exc.message}", ErrorCategory.UNKNOWN)
    run.placed_at = (alloc.worktree_path, alloc.branch)
    run.placed.set()
    try:
        kind = resolve_type(run.agent.agent_type, ctx.custom_types)
        parser = make_parser(kind.parser, config.completion_marker)
    except errors.CorralError as exc:
        return AttemptEnd.not_started(exc.message, ErrorCategory.UNKNOWN)
    await enter_stage(ctx, run, AttemptStage.SPAWNING)
    if run.stop is not None:
        return AttemptEnd.not_started("stopped before it started", ErrorCategory.CANCELLED)
    prompt = build_prompt(task.title, task.description, config.completion_marker)
    if task.resolving:
        prompt += resolution_note(
            task.resolving,
            # A landing conflict (integration off) is with the target, the base branch.
            branch=state.session.integration_branch or config.base_branch or "the target branch",
            files=list(task.conflict_files),
            gate_argv=[" ".join(g) for g in config.gates()] or None,
            detail=task.integration_error,
        )
    argv = build_argv(
        kind,
        prompt=prompt,
        task_id=task.id,
        worktree=alloc.worktree_path,
        model=config.model,
        permissions=config.permissions,
    )
    commit_message = f"{task.title}\n\ncorral task {task.id}, agent {run.agent_id}"
    source = None
    if ctx.executor.remote:
        # The run is not beside the repository: it gets the task's branch as a
        # bundle, and hands it back as one (`process.runner`).
        try:
            data, head = await bundle.bundle_branch(alloc.worktree_path, alloc.branch)
        except errors.CorralError as exc:
            return AttemptEnd.not_started(f"source bundle: {exc.message}", ErrorCategory.UNKNOWN)
        source = RepoSource(
            bundle=data,
            branch=alloc.branch,
            base_commit=head,
            commit_message=commit_message if config.auto_commit else None,
        )
    spec = RunSpec(
        agent_id=run.agent_id,
        task_id=task.id,
        argv=argv,
        cwd=alloc.worktree_path,
        env={
            **ctx.base_env,
            **kind.env,
            **permission_env(kind, config.permissions, root=os.geteuid() == 0),
            "CORRAL_TASK_ID": task.id,
            "CORRAL_SESSION_ID": state.id,
            "CORRAL_WORKTREE": alloc.worktree_path,
        },
        stdin_data=prompt.encode() if kind.prompt_via == "stdin" else None,
        limits=config.resource_limits,
        log_path=ctx.log_path(state.id, run.agent_id),
        output=ctx.output,
        parser=parser,
        completion_marker=config.completion_marker,
        source=source,
    )
    # Recorded before the process exists: a crash right after the spawn still
    # leaves a restart the token and the cgroup to find it by.
    spec.token = uuid.uuid4().hex
    run.accounting = RunAccounting(
        token=spec.token,
        cgroup=cgroups.planned_path(cgroups.run_cgroup_name(run.agent_id, spec.token)),
    )
    engine.run_accounting([(run.agent_id, run.accounting)])
    handle = await ctx.executor.submit(spec, RunSink(engine, run))
    run.handle = handle
    run.accounting.pid, run.accounting.start = handle.pid, handle.start_ticks
    run.accounting.descendants = [m for m in handle.new_members() if m[0] != handle.pid]
    if run.stop is not None:
        handle.cancel(EndReason.CANCELLED, "stopped before it started")
    run.agent = engine.agent_spawned(
        state,
        run.agent.model_copy(update={"worktree_path": alloc.worktree_path, "branch": alloc.branch}),
        pid=handle.pid,
        create_time=handle.create_time,
        lifecycle=handle.lifecycle,
        accounting=run.accounting,
    )
    await enter_stage(ctx, run, AttemptStage.RUNNING)
    return await finish_run(ctx, run, handle, alloc.worktree_path, alloc.branch, commit_message)


async def finish_run(
    ctx: AttemptContext,
    run: Run,
    handle: RunHandle,
    worktree_path: str,
    branch: str,
    commit_message: str,
) -> AttemptEnd:
    """Wait for the run; bring its branch home (a remote run's artifact) and auto-commit."""
    config = run.state.session.config
    result = await handle.wait()
    artifact = result.artifact
    if artifact is not None and artifact.bundle:
        await enter_stage(ctx, run, AttemptStage.COMMITTING)
        try:
            await bundle.apply_bundle(
                worktree_path, artifact.bundle, artifact.branch, artifact.head
            )
        except errors.CorralError as exc:
            handle.note(f"fetching the run's branch failed: {exc.message}")
            if result.success:
                result = dataclasses.replace(
                    result,
                    end_reason=EndReason.FAILED,
                    error_category=ErrorCategory.UNKNOWN,
                    error=f"fetching the run's branch failed: {exc.message}",
                )
        else:
            handle.note(f"fetched {artifact.head[:12]} on {branch} from the run's node")
    # A remote run committed on its node (the runner); only a local one is committed here.
    if result.success and config.auto_commit and run.stop is None and artifact is None:
        await enter_stage(ctx, run, AttemptStage.COMMITTING)
        try:
            commit = await worktrees.commit_all(worktree_path, commit_message)
        except errors.CorralError as exc:
            result = dataclasses.replace(
                result,
                end_reason=EndReason.FAILED,
                error_category=ErrorCategory.UNKNOWN,
                error=f"auto-commit failed: {exc.message}",
            )
        else:
            if commit is not None:
                handle.note(f"auto-committed {commit[:12]} on {branch}")
    return AttemptEnd(result)
