"""Task methods: add, list, complete, fail, cancel, retry, schedule, stop, stats."""

from __future__ import annotations

from corral import errors
from corral.models import Assignment, SchedulerStats, SessionStatus, Task, TaskSpec, TaskState
from corral.params import (
    AddTaskParams,
    AddTasksParams,
    CompleteParams,
    FailParams,
    ListTasksParams,
    SessionParams,
    TaskRef,
)
from corrald.api.context import Call, methods


@methods.method()
async def parallel_add_task(call: Call, p: AddTaskParams) -> Task:
    """Add one task to a session.

    Params: TaskSpec fields (`id`, `title`, `description`, `priority`,
    `dependencies`, `estimatedTokens`, `agentType`) and `sessionId`.
    Errors: 1004 UnknownDependency, 1006 DuplicateTaskId, -32602 for an
    invalid id (ids match [A-Za-z0-9][A-Za-z0-9._-]{0,63}, no '..').
    """
    spec = TaskSpec.model_validate(p.model_dump(exclude={"session_id"}))
    return call.engine.add_tasks(p.session_id, [spec])[0]


@methods.method()
async def parallel_add_tasks(call: Call, p: AddTasksParams) -> list[Task]:
    """Add a batch of tasks, all or nothing.

    The whole batch is validated first: duplicate ids (1006), unknown
    dependencies (1004, `data.missing`) and cycles (1005, `data.cycle` lists the
    cycle in order) reject the batch and nothing of it is kept.
    """
    return call.engine.add_tasks(p.session_id, p.tasks)


@methods.method()
async def parallel_list_tasks(call: Call, p: ListTasksParams) -> list[Task]:
    """List a session's tasks in insertion order, optionally only one `state` or seed `status`.

    `state` is corral's own (pending, ready, in_progress, retry_wait,
    rate_limited, completed, failed, blocked, cancelled, skipped); `status`
    the seed's four (pending, in_progress, completed, failed).

    Paging: `limit` (1-100000) returns at most that many; `cursor`, the id of
    the last task of the previous page, starts after it. A page shorter than
    `limit` is the last. Without either, every task comes in one answer.
    Errors: 1003 TaskNotFound (a `cursor` that names no task).
    """
    return call.engine.list_tasks(p.session_id, p.state, p.status, limit=p.limit, cursor=p.cursor)


@methods.method()
async def parallel_get_task(call: Call, p: TaskRef) -> Task:
    """Return one task. Errors: 1003 TaskNotFound."""
    return call.engine.get_task(p.session_id, p.task_id)


@methods.method()
async def parallel_complete_task(call: Call, p: CompleteParams) -> list[Task]:
    """Mark an in-progress task completed (for externally run work).

    Result: every task whose status changed (the task and newly ready
    dependents). Errors: 1003, 1008 InvalidStateTransition.
    """
    return call.engine.complete_task(p.session_id, p.task_id, p.actual_tokens)


@methods.method()
async def parallel_fail_task(call: Call, p: FailParams) -> list[Task]:
    """Report an in-progress task as failed; the session's errorStrategy decides.

    retry: `retry_wait` with backoff while retries remain, else `failed` and
    every transitive dependent `blocked`. skip: `skipped`, dependents proceed.
    abort: `failed`, dependents blocked, no new task starts in the session.
    Result: every task whose status changed. Errors: 1003, 1008.
    """
    return call.engine.fail_task(p.session_id, p.task_id, p.error, p.error_category)


@methods.method()
async def parallel_cancel_task(call: Call, p: TaskRef) -> list[Task]:
    """Cancel a task (stopping its agent if one runs); its dependents become blocked.

    Errors: 1003, 1008 when the task already ended.
    """
    state = call.session(p.session_id)
    task = state.scheduler.get(p.task_id)
    if call.pool.stop(state, p.task_id, cancel=True):
        await call.pool.wait_stopped(state, p.task_id)
        blocked = [t for t in state.scheduler.tasks(TaskState.BLOCKED) if t.blocked_by == p.task_id]
        return [state.scheduler.get(p.task_id), *blocked]
    if task.state.terminal:
        raise errors.InvalidStateTransition(
            f"task {p.task_id} already ended ({task.state.value})",
            {"taskId": p.task_id, "from": task.state.value, "to": "cancelled"},
        )
    return call.engine.cancel_task(state.id, p.task_id)


@methods.method()
async def parallel_retry_task(call: Call, p: TaskRef) -> list[Task]:
    """Run a failed, cancelled or blocked task again, with a fresh retry budget.

    Its worktree and branch are kept. Every dependent it blocked comes back
    too, once nothing else it depends on has failed. Result: every task whose
    status changed. Errors: 1003, 1008 (the task has not ended, or a
    dependency of it is still failed: `data.blockedBy`).
    """
    return call.engine.retry_task(p.session_id, p.task_id)


@methods.method()
async def parallel_schedule_next(call: Call, p: SessionParams) -> Assignment:
    """Start the next task the strategy picks, now, and return the assignment.

    Result: Assignment with `task` and `agent`, or neither and a `reason`
    (no slot, nothing ready, paused). Errors: 1011 SessionAborted.
    """
    task, agent, reason = await call.pool.schedule_next(call.session(p.session_id))
    return Assignment(task=task, agent=agent, reason=reason or None)


@methods.method()
async def parallel_stop_all(call: Call, p: SessionParams) -> list[Task]:
    """Stop every running agent of the session, and pause it if it was running.

    Their tasks return to `ready` without consuming a retry and keep their
    worktree and branch. A running session is paused first, so the tasks do
    not start again at once; `session_resume` carries on. Result: the
    requeued tasks.
    """
    state = call.session(p.session_id)
    if state.session.status is SessionStatus.RUNNING:
        call.engine.set_status(state.id, SessionStatus.PAUSED)
    stopped = call.pool.stop(state, cancel=False)
    await call.pool.wait_stopped(state)
    return [state.scheduler.get(run.task_id) for run in stopped]


@methods.method()
async def parallel_get_scheduler_stats(call: Call, p: SessionParams) -> SchedulerStats:
    """Counts of tasks by status, plus the session's strategy and status."""
    return call.engine.stats(p.session_id)
