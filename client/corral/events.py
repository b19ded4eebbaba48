"""Event payloads: one model per event type, and a parser for the `event` notification.

Every state change the daemon makes is announced as an event
`{seq, type, sessionId, payload, at}`. `corral.models.Event` is the untyped
envelope; this module types it: one payload model and one event class per
type, and `AnyEvent`, their union discriminated by `type`. The daemon
publishes a payload; its type follows from `TYPE_OF`.
`parse_event` turns a notification's params into the typed event; an event
type this client does not know becomes an `UnknownEvent` (a newer daemon),
never an error.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, get_args

from pydantic import Discriminator, Field, Tag, TypeAdapter

from corral.models import (
    AgentActivity,
    AgentLifecycle,
    CleanupReport,
    ConflictResolutionResult,
    EndReason,
    ErrorCategory,
    IntegrationBatch,
    IntegrationStatus,
    MergeReport,
    SessionStatus,
    TaskState,
    TaskStatus,
    Timestamp,
    Violation,
    Wire,
    WorktreeAllocation,
)


class Payload(Wire):
    """Base of every event payload."""


class SessionStatusPayload(Payload):
    status: SessionStatus


class SessionCreatedPayload(SessionStatusPayload):
    """A session was created (its first status)."""


class SessionReinitPayload(SessionStatusPayload):
    """A session's config was replaced by init_parallel_scheduler."""


class TaskStatusPayload(Payload):
    task_id: str
    state: TaskState
    status: TaskStatus  # the seed's, derived from state
    attempts: int = 0
    error: str | None = None
    error_category: ErrorCategory | None = None
    integration_status: IntegrationStatus | None = None
    integration_attempts: int = 0


class AgentStatusPayload(Payload):
    agent_id: str
    task_id: str
    lifecycle: AgentLifecycle
    end_reason: EndReason | None = None
    pid: int | None = None


class AgentActivityPayload(Payload):
    agent_id: str
    task_id: str
    activity: AgentActivity


class AgentTokensPayload(Payload):
    agent_id: str
    task_id: str = ""
    tokens: int
    cost: float


class AgentRateLimitPayload(Payload):
    agent_id: str
    task_id: str
    reset_at: Timestamp | None = None
    detail: str = ""


class LogPayload(Payload):
    """One output line. `line` is cut at 2,000 characters (`truncated`); the logs have it whole."""

    agent_id: str
    task_id: str
    offset: int
    stream: str
    line: str
    at: Timestamp
    truncated: bool = False


class LogSkippedPayload(Payload):
    """Lines of a flooding run that were not announced: offsets `first`..`last`, all of them.

    Each run's lines are announced up to a rate (`daemon.log_events_per_sec`);
    the rest are in its ring and log file, readable with
    `parallel_get_agent_logs(offset=first)`. Summaries come before the next
    announced line, within a sampling tick, and when the run ends.
    """

    agent_id: str
    task_id: str
    first: int
    last: int
    lines: int
    bytes: int


class ViolationPayload(Violation, Payload):
    """A limit was hit; the action taken is in `action`."""


class WorktreeAllocatedPayload(WorktreeAllocation, Payload):
    """A task's worktree was created or reused."""


class WorktreeReleasedPayload(WorktreeAllocation, Payload):
    """A worktree was removed (its branch is kept)."""


class WorktreeCleanupPayload(CleanupReport, Payload):
    """Orphan worktrees were cleaned up."""


class IntegrationBatchPayload(IntegrationBatch, Payload):
    """The integration queue finished a batch: who went in, who went back, gate runs."""


class IntegrationBlockedPayload(Payload):
    """The integration queue cannot move (or can again: `reason` is None)."""

    reason: str | None = None


class ConflictsDetectedPayload(Payload):
    branches: list[str]
    target: str | None = None
    conflicts: int
    overlaps: int


class ConflictsResolvedPayload(ConflictResolutionResult, Payload):
    """conflicts_resolve made (or described) a resolution."""


class MergeCompletedPayload(MergeReport, Payload):
    """merge_completed_branches moved the target."""


class EventBase(Wire):
    """The envelope of every event: `{seq, type, sessionId, payload, at}`."""

    seq: int
    session_id: str | None = None
    at: Timestamp = 0.0


class SessionStatusEvent(EventBase):
    type: Literal["session.status"] = "session.status"
    payload: SessionStatusPayload


class SessionCreatedEvent(EventBase):
    type: Literal["session.created"] = "session.created"
    payload: SessionCreatedPayload


class SessionReinitEvent(EventBase):
    type: Literal["session.reinit"] = "session.reinit"
    payload: SessionReinitPayload


class TaskStatusEvent(EventBase):
    type: Literal["task.status"] = "task.status"
    payload: TaskStatusPayload


class AgentStatusEvent(EventBase):
    type: Literal["agent.status"] = "agent.status"
    payload: AgentStatusPayload


class AgentActivityEvent(EventBase):
    type: Literal["agent.activity"] = "agent.activity"
    payload: AgentActivityPayload


class AgentTokensEvent(EventBase):
    type: Literal["agent.tokens"] = "agent.tokens"
    payload: AgentTokensPayload


class AgentRateLimitEvent(EventBase):
    type: Literal["agent.rate_limit"] = "agent.rate_limit"
    payload: AgentRateLimitPayload


class LogEvent(EventBase):
    type: Literal["log"] = "log"
    payload: LogPayload


class LogSkippedEvent(EventBase):
    type: Literal["log.skipped"] = "log.skipped"
    payload: LogSkippedPayload


class ViolationEvent(EventBase):
    type: Literal["violation"] = "violation"
    payload: ViolationPayload


class WorktreeAllocatedEvent(EventBase):
    type: Literal["worktree.allocated"] = "worktree.allocated"
    payload: WorktreeAllocatedPayload


class WorktreeReleasedEvent(EventBase):
    type: Literal["worktree.released"] = "worktree.released"
    payload: WorktreeReleasedPayload


class WorktreeCleanupEvent(EventBase):
    type: Literal["worktree.cleanup"] = "worktree.cleanup"
    payload: WorktreeCleanupPayload


class IntegrationBatchEvent(EventBase):
    type: Literal["integration.batch"] = "integration.batch"
    payload: IntegrationBatchPayload


class IntegrationBlockedEvent(EventBase):
    type: Literal["integration.blocked"] = "integration.blocked"
    payload: IntegrationBlockedPayload


class ConflictsDetectedEvent(EventBase):
    type: Literal["conflicts.detected"] = "conflicts.detected"
    payload: ConflictsDetectedPayload


class ConflictsResolvedEvent(EventBase):
    type: Literal["conflicts.resolved"] = "conflicts.resolved"
    payload: ConflictsResolvedPayload


class MergeCompletedEvent(EventBase):
    type: Literal["merge.completed"] = "merge.completed"
    payload: MergeCompletedPayload


class UnknownEvent(EventBase):
    """An event type this client does not know (sent by a newer daemon)."""

    type: str
    payload: dict[str, Any] = Field(default_factory=dict)


KnownEvent = (
    SessionStatusEvent
    | SessionCreatedEvent
    | SessionReinitEvent
    | TaskStatusEvent
    | AgentStatusEvent
    | AgentActivityEvent
    | AgentTokensEvent
    | AgentRateLimitEvent
    | LogEvent
    | LogSkippedEvent
    | ViolationEvent
    | WorktreeAllocatedEvent
    | WorktreeReleasedEvent
    | WorktreeCleanupEvent
    | IntegrationBatchEvent
    | IntegrationBlockedEvent
    | ConflictsDetectedEvent
    | ConflictsResolvedEvent
    | MergeCompletedEvent
)
#: event type -> its event class
EVENT_OF: dict[str, type[KnownEvent]] = {
    str(cls.model_fields["type"].default): cls for cls in get_args(KnownEvent)
}
#: payload class -> its event type (what the daemon publishes a payload as)
TYPE_OF: dict[type[Payload], str] = {
    cls.model_fields["payload"].annotation: kind  # type: ignore[misc]
    for kind, cls in EVENT_OF.items()
}


def _tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in EVENT_OF else "unknown"


AnyEvent = Annotated[
    Annotated[UnknownEvent, Tag("unknown")]
    | Annotated[SessionStatusEvent, Tag("session.status")]
    | Annotated[SessionCreatedEvent, Tag("session.created")]
    | Annotated[SessionReinitEvent, Tag("session.reinit")]
    | Annotated[TaskStatusEvent, Tag("task.status")]
    | Annotated[AgentStatusEvent, Tag("agent.status")]
    | Annotated[AgentActivityEvent, Tag("agent.activity")]
    | Annotated[AgentTokensEvent, Tag("agent.tokens")]
    | Annotated[AgentRateLimitEvent, Tag("agent.rate_limit")]
    | Annotated[LogEvent, Tag("log")]
    | Annotated[LogSkippedEvent, Tag("log.skipped")]
    | Annotated[ViolationEvent, Tag("violation")]
    | Annotated[WorktreeAllocatedEvent, Tag("worktree.allocated")]
    | Annotated[WorktreeReleasedEvent, Tag("worktree.released")]
    | Annotated[WorktreeCleanupEvent, Tag("worktree.cleanup")]
    | Annotated[IntegrationBatchEvent, Tag("integration.batch")]
    | Annotated[IntegrationBlockedEvent, Tag("integration.blocked")]
    | Annotated[ConflictsDetectedEvent, Tag("conflicts.detected")]
    | Annotated[ConflictsResolvedEvent, Tag("conflicts.resolved")]
    | Annotated[MergeCompletedEvent, Tag("merge.completed")],
    Discriminator(_tag),
]


@functools.cache
def _adapter() -> TypeAdapter[AnyEvent]:
    # Built on first use: the union of every event type takes ~10% of the daemon's start-up.
    return TypeAdapter(AnyEvent)


def parse_event(params: dict[str, Any]) -> AnyEvent:
    """The typed event of an `event` notification's params (`UnknownEvent` for a new type)."""
    return _adapter().validate_python(params)


def event_type(payload: Payload) -> str:
    """The event type a payload is published as."""
    return TYPE_OF[type(payload)]
