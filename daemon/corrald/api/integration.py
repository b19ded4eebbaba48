"""Integration methods: the queue's state, and putting a parked task back in."""

from __future__ import annotations

from corral.models import IntegrationReport, IntegrationStatus, ParkedTask, Task, TaskState
from corral.params import SessionParams, TaskRef
from corrald.api.context import Call, methods
from corrald.core.graph import merge_order
from corrald.git.merge import integrate
from corrald.rpc.dispatch import Encoded


@methods.method()
async def integration_status(call: Call, p: SessionParams) -> IntegrationReport:
    """The session's integration branch, its head, the queue, the batch being gated, each task.

    Result: IntegrationReport: `branch` and `head` (the commit it points at),
    `queue` (queued task ids in the order they go in), `gating` (the batch
    whose gate runs now), `parked` (tasks waiting for a person: policy
    `manual`, with their conflicting files or the gate's output),
    `resolving` (tasks whose agent is resolving a conflict or gate failure),
    `integrated` (in insertion order), `lastBatch` (gate runs, who went in,
    who went back) and `blocked` (why the queue cannot move, if it cannot).
    With integration off, `enabled` is false and the rest is empty.
    """
    state = call.session(p.session_id)
    session = state.session
    report = IntegrationReport(
        session_id=state.id, enabled=session.config.integrate, branch=session.integration_branch
    )
    if not session.config.integrate or session.integration_branch is None:
        return report
    report.head = await integrate.head_of(session.repo_path, session.integration_branch)
    for task in state.scheduler.tasks():
        status = task.integration_status
        if task.resolving and task.state is not TaskState.FAILED:
            report.resolving.append(task.id)
        elif status is IntegrationStatus.QUEUED:
            report.queue.append(task.id)
        elif status is IntegrationStatus.GATING:
            report.gating.append(task.id)
        elif status is IntegrationStatus.INTEGRATED:
            report.integrated.append(task.id)
        elif status in (IntegrationStatus.CONFLICT, IntegrationStatus.GATE_FAILED) and (
            task.state is TaskState.COMPLETED
        ):
            report.parked.append(
                ParkedTask(
                    task_id=task.id,
                    integration_status=status,
                    files=list(task.conflict_files),
                    error=task.integration_error,
                )
            )
    queued = {t.id: t for t in state.scheduler.awaiting_integration()}
    report.queue = [t.id for t in merge_order([queued[i] for i in report.queue])]
    report.last_batch = call.engine.last_batch.get(state.id)
    report.blocked = call.engine.blocked.get(state.id)
    return report


@methods.method()
async def task_integrate(call: Call, p: TaskRef) -> Encoded[Task]:
    """Put a parked task back into the integration queue, after a person fixed it.

    A task parks (policy `manual`) when its branch conflicts with the
    integration head or fails the gate; its worktree then holds the merge
    with conflict markers. Resolve them, commit in the worktree, then call
    this. Result: the task, `integrationStatus: queued`. Errors: 1003
    TaskNotFound, 1008 InvalidStateTransition when the task is not parked.
    """
    state = call.session(p.session_id)
    call.engine.task_integrate(state.id, p.task_id)
    return Encoded[Task](state.scheduler.get(p.task_id).json())
