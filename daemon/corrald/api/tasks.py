"""Task methods: add, list, complete, fail, cancel, retry, schedule, agent results, stop, stats."""

from __future__ import annotations

from corral import errors
from corral.models import (
    Agent,
    Assignment,
    ErrorCategory,
    SchedulerStats,
    SessionStatus,
    Task,
    TaskState,
)
from corral.params import (
    AddTaskParams,
    AddTasksParams,
    AgentResultParams,
    CompleteParams,
    FailParams,
    ListTasksParams,
    ScheduleParams,
    SessionParams,
    TaskRef,
)
from corrald.api.context import Call, methods
from corrald.rpc.dispatch import Encoded, encode_items
from corrald.state.engine import SessionState


@methods.method()
async def parallel_add_task(call: Call, p: AddTaskParams) -> Encoded[Task]:
    """Add one task to a session: the seed's `{task}`, or corral's flat form.

    Params: `task` (the seed's Task: `id`, `title`, `description`, `status`,
    `priority`, `dependencies`, optionally `estimatedTokens` and the fields
    a frontend echoes back) and `sessionId`; or the same fields flat beside
    `sessionId`. Giving `task` together with flat fields is a -32602 naming
    them. The read-only fields of a seed Task (`status`, `assignedAgent`,
    `actualTokens`, `startedAt`, `completedAt`, `branch`, `worktreePath`,
    `error`) are type-checked, then ignored: a new task starts `pending` (or
    `ready`), with no agent, branch or worktree yet. corral's own
    `agentType` and `paths` may be given too.
    Errors: 1004 UnknownDependency, 1006 DuplicateTaskId, -32602 for an
    invalid id (ids match [A-Za-z0-9][A-Za-z0-9._-]{0,63}, no '..').
    """
    return Encoded[Task](call.engine.add_tasks(p.session_id, [p.task])[0].json())


@methods.method()
async def parallel_add_tasks(call: Call, p: AddTasksParams) -> Encoded[list[Task]]:
    """Add a batch of tasks (`tasks`: seed Tasks or corral's TaskSpecs), all or nothing.

    Each task is read as in `parallel_add_task` (echoed read-only fields
    ignored).
    The whole batch is validated first: duplicate ids (1006), unknown
    dependencies (1004, `data.missing`) and cycles (1005, `data.cycle` lists the
    cycle in order) reject the batch and nothing of it is kept.
    """
    return await encode_items(call.engine.add_tasks(p.session_id, p.tasks))


@methods.method()
async def parallel_list_tasks(call: Call, p: ListTasksParams) -> Encoded[list[Task]]:
    """List a session's tasks in insertion order, optionally only one `state` or seed `status`.

    `state` is corral's own (pending, ready, in_progress, retry_wait,
    rate_limited, completed, failed, blocked, cancelled, skipped); `status`
    the seed's four (pending, in_progress, completed, failed).

    Paging: `limit` (1-100000) returns at most that many; `cursor`, the id of
    the last task of the previous page, starts after it. A page shorter than
    `limit` is the last. Without either, every task comes in one answer.
    Errors: 1003 TaskNotFound (a `cursor` that names no task).
    """
    tasks = call.engine.list_tasks(p.session_id, p.state, p.status, limit=p.limit, cursor=p.cursor)
    return await encode_items(tasks)


@methods.method()
async def parallel_get_task(call: Call, p: TaskRef) -> Encoded[Task]:
    """Return one task. Errors: 1003 TaskNotFound."""
    return Encoded[Task](call.engine.get_task(p.session_id, p.task_id).json())


async def _stop_agent_of(call: Call, state: SessionState, task_id: str) -> None:
    """Stop the agent still running on a task that has just left in_progress.

    Its end no longer moves the task (it is not the task's current state);
    the worktree and branch are kept with whatever the agent left in them.
    """
    if call.pool.stop(state, task_id, cancel=False):
        await call.pool.wait_stopped(state, task_id)


@methods.method()
async def parallel_complete_task(call: Call, p: CompleteParams) -> Encoded[list[Task]]:
    """Mark an in-progress task completed (for work finished elsewhere).

    If corral's own agent is still running on the task, that agent is
    stopped (its worktree and branch are kept as they are; no auto-commit)
    and the answer comes once it has ended: no agent ever runs on a task
    that is no longer in progress. `actualTokens` is optional.
    Result: every task whose status changed (the task and newly ready
    dependents). Errors: 1003, 1008 InvalidStateTransition.
    """
    state = call.session(p.session_id)
    changed = call.engine.complete_task(state.id, p.task_id, p.actual_tokens)
    await _stop_agent_of(call, state, p.task_id)
    return await encode_items(changed)


@methods.method()
async def parallel_fail_task(call: Call, p: FailParams) -> Encoded[list[Task]]:
    """Report an in-progress task as failed (`error`); the session's errorStrategy decides.

    retry: `retry_wait` with backoff while retries remain, else `failed` and
    every transitive dependent `blocked`. skip: `skipped`, dependents proceed.
    abort: `failed`, dependents blocked, no new task starts in the session.
    A corral agent still running on the task is stopped first, keeping its
    worktree, as in `parallel_complete_task`.
    Result: every task whose status changed. Errors: 1003, 1008.
    """
    state = call.session(p.session_id)
    changed = call.engine.fail_task(state.id, p.task_id, p.error, p.error_category)
    await _stop_agent_of(call, state, p.task_id)
    return await encode_items(changed)


@methods.method()
async def parallel_handle_agent_result(call: Call, p: AgentResultParams) -> Agent | None:
    """The seed's report that an agent finished: record it, then start the next task.

    Params: `agentId`, `taskId`, `sessionId` (mapped as in
    `parallel_schedule_next`), `success`, `error`. When the task is still in
    progress on that agent, it is completed (`success`) or failed with
    `error` (as `parallel_fail_task`), and a corral agent still running on
    it is stopped, keeping its worktree. corral supervises its own agents and
    records their ends itself, so a report for an attempt that has already
    ended changes nothing. Then the next task starts as in
    `parallel_schedule_next`. Result: the seed's Agent that started, or
    null (no slot, nothing ready, paused, aborted).
    Errors: 1003 TaskNotFound, 1008 when the task is in progress on another
    agent (`data.assignedAgent`).
    """
    state = call.seed_session(p.session_id, None)
    task = state.scheduler.get(p.task_id)
    if task.state is TaskState.IN_PROGRESS:
        if task.assigned_agent != p.agent_id:
            raise errors.InvalidStateTransition(
                f"task {p.task_id} is in progress on agent {task.assigned_agent}, not {p.agent_id}",
                {"taskId": p.task_id, "agentId": p.agent_id, "assignedAgent": task.assigned_agent},
            )
        if p.success:
            call.engine.complete_task(state.id, p.task_id)
        else:
            call.engine.fail_task(state.id, p.task_id, p.error or "failed", ErrorCategory.UNKNOWN)
        await _stop_agent_of(call, state, p.task_id)
    try:
        _, agent, _ = await call.pool.schedule_next(state, placed=True)
    except errors.SessionAborted:
        return None
    return agent


@methods.method()
async def parallel_cancel_task(call: Call, p: TaskRef) -> Encoded[list[Task]]:
    """Cancel a task (stopping its agent if one runs); its dependents become blocked.

    Errors: 1003, 1008 when the task already ended.
    """
    state = call.session(p.session_id)
    task = state.scheduler.get(p.task_id)
    if call.pool.stop(state, p.task_id, cancel=True):
        await call.pool.wait_stopped(state, p.task_id)
        blocked = [t for t in state.scheduler.tasks(TaskState.BLOCKED) if t.blocked_by == p.task_id]
        return await encode_items([state.scheduler.get(p.task_id), *blocked])
    if task.state.terminal:
        raise errors.InvalidStateTransition(
            f"task {p.task_id} already ended ({task.state.value})",
            {"taskId": p.task_id, "from": task.state.value, "to": "cancelled"},
        )
    return await encode_items(call.engine.cancel_task(state.id, p.task_id))


@methods.method()
async def parallel_retry_task(call: Call, p: TaskRef) -> Encoded[list[Task]]:
    """Run a failed, cancelled or blocked task again, with a fresh retry budget.

    Its worktree and branch are kept. Every dependent it blocked comes back
    too, once nothing else it depends on has failed. Result: every task whose
    status changed. Errors: 1003, 1008 (the task has not ended, or a
    dependency of it is still failed: `data.blockedBy`).
    """
    return await encode_items(call.engine.retry_task(p.session_id, p.task_id))


@methods.method()
async def parallel_schedule_next(call: Call, p: ScheduleParams) -> Agent | None:
    """Start the next task the strategy picks, now; the seed's `Agent | null`.

    Params: the seed's `{sessionId, projectPath}`. `sessionId` is the
    frontend's own session id in the seed: it is used when it names a corral
    session; otherwise `projectPath` (the repository) picks the one session
    on it; otherwise the only session is meant. The Agent is answered once
    its worktree and branch exist, so `worktreePath` and `branch` are real.
    Result: the Agent, or null when nothing starts (no slot, nothing ready,
    resource limits; `parallel_start_next` says why).
    Errors: 1011 SessionAborted, 1001/1009 as for the session.
    """
    state = call.seed_session(p.session_id, p.project_path)
    _, agent, _ = await call.pool.schedule_next(state, placed=True)
    return agent


@methods.method()
async def parallel_start_next(call: Call, p: SessionParams) -> Assignment:
    """Start the next task now, as `parallel_schedule_next`, answering why when none starts.

    It answers at once, before the worktree is checked out (a first
    attempt's `agent.worktreePath` may still be empty; the task's `branch`
    and `worktreePath` follow with its events).
    Result: Assignment with `task` and `agent`, or neither and a `reason`
    (no slot, nothing ready, resource limits). Errors: 1011 SessionAborted.
    """
    task, agent, reason = await call.pool.schedule_next(call.session(p.session_id))
    return Assignment(task=task and task.model(), agent=agent, reason=reason or None)


@methods.method()
async def parallel_stop_all(call: Call, p: SessionParams) -> Encoded[list[Task]]:
    """Stop every running agent of the session, and pause it if it was running.

    Their tasks return to `ready` without consuming a retry and keep their
    worktree and branch. A running session is paused first, so the tasks do
    not start again at once; `session_resume` carries on. Result: the
    requeued tasks; a task whose agent finished (completed or failed) before
    the stop reached it is not one of them.
    """
    state = call.session(p.session_id)
    if state.session.status is SessionStatus.RUNNING:
        call.engine.set_status(state.id, SessionStatus.PAUSED)
    stopped = call.pool.stop(state, cancel=False)
    await call.pool.wait_stopped(state)
    after = [state.scheduler.get(run.task_id) for run in stopped]
    return await encode_items(
        [t for t in after if not t.state.terminal and t.state is not TaskState.IN_PROGRESS]
    )


@methods.method()
async def parallel_get_scheduler_stats(call: Call, p: SessionParams) -> SchedulerStats:
    """Counts of tasks by state, the session's strategy and status, and its usage.

    The seed's `{pending, ready, running, completed, failed, total}` are
    there (`running` is `inProgress`), beside corral's finer states.
    `tokens` and `cost` add up every agent of the session (running ones with
    their live figures); they are read from the stored agents, so they
    survive a daemon restart.
    """
    state = call.session(p.session_id)
    tokens, cost = call.pool.usage(state)
    return call.engine.stats(state.id).model_copy(update={"tokens": tokens, "cost": cost})
