"""Wire models shared by the daemon and every client.

Wire names are camelCase (the field names the TypeScript frontends already
use); Python attributes are snake_case; both spellings are accepted on input.
Enum values are snake_case strings. Result models ignore unknown fields so an
older client keeps working against a newer daemon; parameter models forbid
them so a typo is a clear -32602 instead of a silent no-op.

Timestamps are epoch seconds (floats) in Python and RFC 3339 strings on the
wire (`2026-12-01T19:30:23.123456Z`), as the seed's TypeScript types say;
either form is accepted on input.
"""

from __future__ import annotations

import math
import re
import string
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    computed_field,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_task_id(value: str) -> str:
    """Reject ids that cannot be used safely in paths and branch names."""
    if not TASK_ID_RE.fullmatch(value) or ".." in value or value.endswith((".lock", ".")):
        raise ValueError(
            f"invalid task id {value!r}: use 1-64 of [A-Za-z0-9._-], starting with a letter"
            " or digit, without '..' and not ending in '.' or '.lock'"
        )
    return value


TaskId = Annotated[str, AfterValidator(check_task_id)]


def check_path_glob(value: str) -> str:
    """A glob of paths a task expects to touch: relative, inside the repository."""
    if not value or len(value) > 1000 or "\0" in value:
        raise ValueError("a path glob must be 1-1000 characters")
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"path glob {value!r} must be relative and stay inside the repository")
    return value


def rfc3339(value: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp with microseconds (`...Z`)."""
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _epoch(value: Any) -> Any:
    """An RFC 3339 string (with its offset) or a number, as epoch seconds."""
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an RFC 3339 timestamp: {value[:40]!r}") from None
        if stamp.tzinfo is None:
            raise ValueError(f"timestamp without a UTC offset: {value[:40]!r}")
        return stamp.timestamp()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("timestamp must be finite")
    return value


#: A point in time: epoch seconds in Python, an RFC 3339 string on the wire.
Timestamp = Annotated[
    float,
    BeforeValidator(_epoch),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
#: Upper bounds of configuration values: what a machine can have, or a day.
MAX_COUNT = 10_000
MAX_CPU_PERCENT = 100_000.0  # % of one core: a thousand cores
MAX_MEMORY_MB = 1 << 30  # a PiB
MAX_RUNTIME_SECS = 366 * 86_400
DAY_SECS = 86_400.0
M = TypeVar("M", bound=BaseModel)


class Wire(BaseModel):
    """Base of every result model: camelCase on the wire, lenient on input.

    `defer_build`: a model's validator and serializer are built on its first
    use, not when this module is imported, so a program pays only for the
    models it uses (the CLI's start-up, the daemon's first answer).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=False,
        defer_build=True,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def to_jsonable(value: Any) -> Any:
    """Models (camelCase, no nulls), lists and dicts of them, as plain JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


class Params(Wire):
    """Base of every RPC params model: unknown keys are an error, numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoParams(Params):
    """Methods that take no parameters."""


# --- enums -----------------------------------------------------------------


class SessionStatus(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"


class TaskState(StrEnum):
    """corral's own task states (`Task.state`); the seed's coarser `status` derives from it."""

    PENDING = "pending"
    READY = "ready"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    RETRY_WAIT = "retry_wait"
    RATE_LIMITED = "rate_limited"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_TASK_STATES


TERMINAL_TASK_STATES = frozenset(
    {
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.BLOCKED,
        TaskState.CANCELLED,
        TaskState.SKIPPED,
    }
)


class TaskStatus(StrEnum):
    """The seed's task status: `pending | in_progress | completed | failed`, never more."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


#: How each state shows in the seed's status. Waiting to start (ready, backing
#: off, parked on a rate limit) is pending; a task that will not complete
#: (blocked, cancelled, skipped past a failure) is failed.
SEED_STATUS: dict[TaskState, TaskStatus] = {
    TaskState.PENDING: TaskStatus.PENDING,
    TaskState.READY: TaskStatus.PENDING,
    TaskState.RETRY_WAIT: TaskStatus.PENDING,
    TaskState.RATE_LIMITED: TaskStatus.PENDING,
    TaskState.IN_PROGRESS: TaskStatus.IN_PROGRESS,
    TaskState.COMPLETED: TaskStatus.COMPLETED,
    TaskState.FAILED: TaskStatus.FAILED,
    TaskState.BLOCKED: TaskStatus.FAILED,
    TaskState.CANCELLED: TaskStatus.FAILED,
    TaskState.SKIPPED: TaskStatus.FAILED,
}


class ErrorCategory(StrEnum):
    TIMEOUT = "timeout"
    LIMIT_MEMORY = "limit_memory"
    LIMIT_CPU = "limit_cpu"
    CRASH = "crash"
    RATE_LIMIT = "rate_limit"
    DEPENDENCY = "dependency"
    CANCELLED = "cancelled"
    MISSING_EXECUTABLE = "missing_executable"
    CONFLICT = "conflict"  # its branch kept conflicting with the integration head
    GATE = "gate"  # its branch kept failing the integration gate
    INTERNAL = "internal"  # corral's own code failed during the attempt; never retried
    UNKNOWN = "unknown"


class Strategy(StrEnum):
    PRIORITY = "priority"
    FIFO = "fifo"
    COST_FIRST = "cost_first"
    DEPENDENCY_FIRST = "dependency_first"
    SEQUENTIAL = "sequential"


class IntegrationStatus(StrEnum):
    """Where a completed task's branch is on its way into the integration branch."""

    QUEUED = "queued"
    GATING = "gating"
    INTEGRATED = "integrated"
    CONFLICT = "conflict"
    GATE_FAILED = "gate_failed"


class IntegrationPolicy(StrEnum):
    """What happens to a branch that conflicts with the integration head or fails the gate."""

    AGENT = "agent"  # a new attempt of the task's agent type resolves it
    RESOLVER = "resolver"  # the same, with the configured resolverAgent type
    MANUAL = "manual"  # it parks until a person fixes it and calls task_integrate


class ErrorStrategy(StrEnum):
    RETRY = "retry"
    SKIP = "skip"
    ABORT = "abort"


class AgentActivity(StrEnum):
    IDLE = "idle"
    THINKING = "thinking"
    READING = "reading"
    IMPLEMENTING = "implementing"
    TESTING = "testing"
    COMMITTING = "committing"


class AgentLifecycle(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    KILLED = "killed"


class EndReason(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    LIMIT_MEMORY = "limit_memory"
    LIMIT_CPU = "limit_cpu"
    CANCELLED = "cancelled"
    LOST = "lost"
    RATE_LIMIT = "rate_limit"


# --- configuration ----------------------------------------------------------


class ResourceLimits(Wire):
    # Finite numbers only (1e400 parses as inf), in ranges a machine can have.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_agents: int = Field(5, ge=1, le=MAX_COUNT)
    max_cpu_per_agent: float = Field(50.0, gt=0, le=MAX_CPU_PERCENT)
    max_memory_mb_per_agent: int = Field(2048, gt=0, le=MAX_MEMORY_MB)
    max_total_cpu: float = Field(80.0, gt=0, le=MAX_CPU_PERCENT)
    max_total_memory_mb: int = Field(8192, gt=0, le=MAX_MEMORY_MB)
    max_runtime_secs: int = Field(3600, ge=0, le=MAX_RUNTIME_SECS)
    cpu_window_secs: float = Field(10.0, gt=0, le=DAY_SECS)
    sample_interval_secs: float = Field(0.5, ge=0.05, le=3600)
    kill_grace_secs: float = Field(5.0, ge=0, le=3600)


class Backoff(Wire):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_secs: float = Field(5.0, ge=0, le=DAY_SECS)
    multiplier: float = Field(3.0, ge=1, le=100)
    cap_secs: float = Field(300.0, ge=0, le=DAY_SECS)

    def delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based); never more than `cap_secs`."""
        try:
            raw = self.base_secs * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # (100.0 ** 155 is past a float: the cap holds anyway)
            return float(self.cap_secs)
        return float(min(self.cap_secs, raw))


def check_model_name(value: str | None) -> str | None:
    """A model name is passed after `--model`: one starting with '-' would be read as a flag."""
    if value is not None and (value.startswith("-") or not value.strip()):
        raise ValueError(f"invalid model name {value!r}: it must not be empty or start with '-'")
    return value


def fill_template(template: str, values: dict[str, str], what: str = "branch template") -> str:
    """`template` with its `{name}` fields filled from `values`; ValueError for anything else.

    Not `str.format`: that also runs format specs, conversions and attribute
    lookups, and `{task_id:>99999999999}` runs the daemon out of memory.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid {what} {template[:100]!r}: {exc}") from None
    out = []
    for literal, field, spec, conversion in parts:
        out.append(literal)
        if field is None:
            continue
        if field not in values or spec or conversion:
            names = " or ".join(f"{{{n}}}" for n in values)
            raise ValueError(f"invalid {what} {template[:100]!r}: only {names} may be filled in")
        out.append(values[field])
    return "".join(out)


def fill_branch_template(template: str, task_id: str) -> str:
    """A task's branch: `template` with `{task_id}` (or `{taskId}`) filled in."""
    return fill_template(template, {"task_id": task_id, "taskId": task_id})


def fill_integration_template(template: str, session_id: str) -> str:
    """A session's integration branch: `template` with `{session_id}` filled in."""
    return fill_template(
        template, {"session_id": session_id, "sessionId": session_id}, "integration branch"
    )


def check_branch_template(value: str) -> str:
    fill_branch_template(value, "t")
    return value


def check_integration_template(value: str) -> str:
    fill_integration_template(value, "s")
    return value


#: An agent's permission profile: "workspace" edits files and runs commands in its
#: worktree without prompting, "full" bypasses every check, "ask" leaves the CLI's
#: own prompts on (headless, what would prompt is refused).
Permissions = Literal["workspace", "full", "ask"]


class SchedulerConfig(Wire):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_parallel: int = Field(3, ge=1, le=MAX_COUNT)
    max_iterations: int = Field(10, ge=1, le=MAX_COUNT)
    # multiplier ** retries stays a finite float (100 ** 100 = 1e200).
    max_retries: int = Field(2, ge=0, le=100)
    agent_type: str = "claude"
    strategy: Strategy = Strategy.DEPENDENCY_FIRST
    resource_limits: ResourceLimits = Field(default_factory=ResourceLimits)
    model: Annotated[str | None, AfterValidator(check_model_name)] = Field(None, max_length=200)
    base_branch: str | None = Field(None, min_length=1, max_length=250)
    backoff: Backoff = Field(default_factory=Backoff)
    error_strategy: ErrorStrategy = ErrorStrategy.RETRY
    fallback_agent: str | None = None
    completion_marker: str | None = None
    auto_commit: bool = True
    # What an unattended agent may do without asking (README: permission profiles).
    permissions: Permissions = "workspace"
    branch_template: Annotated[str, AfterValidator(check_branch_template)] = Field(
        "corral/{task_id}", min_length=1, max_length=200
    )
    # Integration: a plan's work composes into one branch (DESIGN §4).
    integrate: bool = True
    integration_branch: Annotated[str, AfterValidator(check_integration_template)] = Field(
        "corral-integration/{session_id}", min_length=1, max_length=200
    )
    gate_command: list[str] | None = Field(None, min_length=1, max_length=64)
    # More checks, each its own argv, run after gateCommand; all must pass (prd.json's
    # verificationCommands land here).
    gate_commands: list[Annotated[list[str], Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=32
    )

    def gates(self) -> list[list[str]]:
        """Every gate command, in the order they run (empty: no gate)."""
        return ([self.gate_command] if self.gate_command else []) + list(self.gate_commands or [])

    gate_timeout_secs: int = Field(600, ge=1, le=86_400)
    gate_batch: int = Field(4, ge=1, le=64)
    on_conflict: IntegrationPolicy = IntegrationPolicy.AGENT
    on_gate_failure: IntegrationPolicy = IntegrationPolicy.AGENT
    resolver_agent: str | None = None
    max_integration_attempts: int = Field(2, ge=0, le=20)


# --- domain -----------------------------------------------------------------


def overlay(base: M, given: M) -> M:
    """`base` with the fields `given` set explicitly, nested models merged the same way."""
    update: dict[str, Any] = {}
    for name in given.model_fields_set:
        value = getattr(given, name)
        current = getattr(base, name)
        if isinstance(value, BaseModel) and isinstance(current, type(value)):
            value = overlay(current, value)
        update[name] = value
    return base.model_copy(update=update)


class Session(Wire):
    id: str
    repo_path: str
    config: SchedulerConfig
    status: SessionStatus
    created_at: Timestamp
    aborted: bool = False  # a failure under errorStrategy "abort": no new task starts
    integration_branch: str | None = None  # the rendered name, when integration is on


class TaskSpec(Params):
    """What a client sends to add a task: the seed's `Task`, or corral's fields.

    The seed's frontends echo a whole `Task` back, read-only fields included
    (`status`, `assignedAgent`, `actualTokens`, `startedAt`, `completedAt`,
    `branch`, `worktreePath`, `error`). Those are type-checked (a wrong type
    is a -32602 naming the field) and then ignored: a new task always starts
    `pending` (or `ready`), with no agent, branch or worktree of its own yet.
    """

    id: TaskId
    title: str = Field(min_length=1, max_length=500)
    description: str = Field("", max_length=200_000)
    priority: int = 0
    dependencies: list[TaskId] = Field(default_factory=list)
    estimated_tokens: int | None = Field(None, ge=0)
    agent_type: str | None = None
    paths: list[Annotated[str, AfterValidator(check_path_glob)]] = Field(
        default_factory=list, max_length=256
    )
    # The seed's read-only Task fields: accepted, type-checked, ignored (see above).
    status: TaskStatus | None = None
    assigned_agent: str | None = None
    actual_tokens: int | None = Field(None, ge=0)
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    branch: str | None = None
    worktree_path: str | None = None
    error: str | None = None


class Task(Wire):
    id: str
    title: str
    description: str = ""
    priority: int = 0
    dependencies: list[str] = Field(default_factory=list)
    estimated_tokens: int | None = None
    actual_tokens: int | None = None
    state: TaskState = TaskState.PENDING
    attempts: int = 0
    assigned_agent: str | None = None
    branch: str | None = None
    worktree_path: str | None = None
    error: str | None = None
    error_category: ErrorCategory | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    agent_type: str | None = None
    retry_at: Timestamp | None = None
    blocked_by: str | None = None
    paths: list[str] = Field(default_factory=list)
    integration_status: IntegrationStatus | None = None
    integration_attempts: int = 0  # resolution attempts spent (capped by maxIntegrationAttempts)
    resolving: str | None = None  # "conflict" or "gate": the next attempt resolves that
    conflict_files: list[str] = Field(default_factory=list)
    integration_error: str | None = None  # what went wrong on the way in (gate output tail)
    rate_limits: int = 0  # rate limits in a row; the backoff for a limit without a reset time

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> TaskStatus:
        """The seed's status, derived from `state`."""
        return SEED_STATUS[self.state]

    @model_validator(mode="before")
    @classmethod
    def _state_from_status(cls, data: Any) -> Any:
        # Rows written before `state` existed, and older peers, carry the
        # fine-grained value in `status`.
        if isinstance(data, dict) and "state" not in data and "status" in data:
            data = {**data, "state": data["status"]}
        return data


class LogLevel(StrEnum):
    """The seed's LogEntry.level."""

    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    DEBUG = "debug"


#: How each output stream shows as a seed log level: what an agent prints is
#: `info`, what it writes to stderr `warn` (CLIs put progress and warnings
#: there as well as errors), corral's own notes about the run `debug`.
#: `error` is never produced from a stream.
STREAM_LEVEL: dict[str, LogLevel] = {
    "stdout": LogLevel.INFO,
    "stderr": LogLevel.WARN,
    "daemon": LogLevel.DEBUG,
}


class LogEntry(Wire):
    """One output line: the seed's `{timestamp, level, message}`, plus `offset` and `stream`.

    In Python the text is `line` and the time `at`; on the wire they are
    `message` and `timestamp` (either spelling is accepted on input). Lines
    read back from a log file (after the ring let them go) have no time of
    their own: their `timestamp` is the epoch.
    """

    offset: int
    stream: str  # stdout | stderr | daemon
    line: str = Field(
        validation_alias=AliasChoices("message", "line"), serialization_alias="message"
    )
    at: Timestamp = Field(
        validation_alias=AliasChoices("timestamp", "at"), serialization_alias="timestamp"
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def level(self) -> LogLevel:
        """The seed's level, derived from `stream` (see STREAM_LEVEL)."""
        return STREAM_LEVEL.get(self.stream, LogLevel.DEBUG)


class Agent(Wire):
    id: str
    session_id: str
    task_id: str
    agent_type: str
    status: AgentActivity = AgentActivity.IDLE
    lifecycle: AgentLifecycle = AgentLifecycle.STARTING
    process_id: int | None = None
    worktree_path: str = ""
    branch: str = ""
    iteration_count: int = 0
    tokens: int = 0
    cost: float = 0.0
    exit_code: int | None = None
    end_reason: EndReason | None = None
    started_at: Timestamp
    ended_at: Timestamp | None = None
    cpu_percent: float = 0.0
    memory_mb: float = 0.0
    # The seed's Agent has these; corral serves logs by `parallel_get_agent_logs`
    # (paged by offset) and runs no subagents, so both are empty here.
    logs: list[LogEntry] = Field(default_factory=list)
    subagents: list[Agent] = Field(default_factory=list)


class SchedulerStats(Wire):
    total: int
    pending: int
    ready: int
    in_progress: int
    completed: int
    failed: int
    blocked: int
    cancelled: int
    retry_wait: int
    rate_limited: int
    skipped: int = 0
    max_parallel: int
    strategy: Strategy
    session_status: SessionStatus
    # Ready tasks waiting because their `paths` overlap a running task's.
    waiting_for_paths: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def running(self) -> int:
        """The seed's name for `inProgress`."""
        return self.in_progress

    tokens: int = 0  # summed over every agent of the session, running ones included
    cost: float = 0.0  # USD, as the agents reported it


class Assignment(Wire):
    """The result of `parallel_schedule_next`: which task starts, or none."""

    task: Task | None = None
    agent: Agent | None = None
    reason: str | None = None


class PoolStats(Wire):
    active_agents: int
    max_agents: int
    total_cpu_percent: float
    total_memory_mb: float
    max_total_cpu: float
    max_total_memory_mb: int
    completed_agents: int = 0
    failed_agents: int = 0
    tokens: int = 0  # summed over every agent of the session, running ones included
    cost: float = 0.0  # USD, as the agents reported it
    # What runs the agents and what it can take: for a cluster, its nodes and free resources.
    executor: dict[str, Any] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def running_agents(self) -> int:
        """The seed's name for `activeAgents`."""
        return self.active_agents

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_cpu_usage(self) -> float:
        """The seed's name for `totalCpuPercent` (percent of one core)."""
        return self.total_cpu_percent


class AgentCheckStatus(StrEnum):
    OK = "ok"  # found, and its version is the one corral's argv was verified with
    MISSING = "missing"  # the executable is not on the daemon's PATH
    UNKNOWN_VERSION = "unknown_version"  # found, another (or an unreadable) version
    UNVERIFIED = "unverified"  # found; corral knows no good version (custom, unverified)
    NO_ARGV = "no_argv"  # "command" without an [agents.command] table


class AgentCheck(Wire):
    """`agents_check` / `corral doctor`: one agent type, as the daemon sees it."""

    agent_type: str
    executable: str | None = None
    path: str | None = None
    version: str | None = None
    verified: str | None = None  # the CLI release corral's builtin argv was run against
    status: AgentCheckStatus = AgentCheckStatus.MISSING
    detail: str = ""


class Violation(Wire):
    agent_id: str
    task_id: str
    kind: str  # timeout | limit_memory | limit_cpu | total_memory
    value: float
    limit: float
    action: str
    at: Timestamp

    def sentence(self) -> str:
        """The violation as one readable sentence (what `parallel_check_violations` returns)."""
        what = {
            "timeout": ("ran for", "s", "the runtime limit"),
            "limit_memory": ("used", " MB of memory", "its memory limit"),
            "limit_cpu": ("used", "% CPU", "its CPU limit"),
            "total_memory": ("brought the session to", " MB of memory", "the total memory limit"),
        }.get(self.kind, ("measured", f" ({self.kind})", "a limit"))
        verb, unit, limit = what
        return (
            f"Agent {self.agent_id} (task {self.task_id}) {verb} {self.value:g}{unit}, over"
            f" {limit} of {self.limit:g}{unit}: {self.action}."
        )


class WorktreeAllocation(Wire):
    session_id: str
    agent_id: str
    task_id: str
    worktree_path: str
    branch: str
    base_branch: str
    created_at: Timestamp


class CleanupReport(Wire):
    """What `worktree_cleanup_report` did: removed, pruned (git metadata), kept because dirty."""

    removed: list[str] = Field(default_factory=list)
    pruned: list[str] = Field(default_factory=list)
    kept_dirty: list[str] = Field(default_factory=list)


class ConflictType(StrEnum):
    """The seed's four conflict types; a rename is said in `MergeConflict.renamed`."""

    FILE_MODIFICATION = "file_modification"
    DELETE_MODIFY = "delete_modify"
    FILE_CREATION = "file_creation"
    DIRECTORY_CONFLICT = "directory_conflict"


class ResolutionStrategy(StrEnum):
    USE_FIRST = "use_first"
    USE_LAST = "use_last"
    USE_PRIORITY = "use_priority"
    AUTO_MERGE = "auto_merge"
    MANUAL = "manual"


class MergeConflict(Wire):
    """One path of one branch pair: the seed's MergeConflict, plus the pair by name.

    `branches` is `[branch1, branch2]`; `agents` the agents of those branches
    that are known, in the same order (empty when none was given). A conflict
    that involves a rename keeps its type (one of the seed's four) and says so
    in `renamed` and `description`. On input (`conflicts_get_summary`,
    `conflicts_resolve`) the seed's shape is enough: `branch1`/`branch2`
    come from `branches`, and `agent1`/`agent2` from `agents` when it has
    one per branch.
    """

    file_path: str
    branch1: str
    branch2: str
    agent1: str | None = None
    agent2: str | None = None
    conflict_type: ConflictType
    auto_resolvable: bool
    recommended_strategy: ResolutionStrategy
    description: str = ""
    renamed: bool = False

    @computed_field  # type: ignore[prop-decorator]
    @property
    def branches(self) -> list[str]:
        return [self.branch1, self.branch2]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def agents(self) -> list[str]:
        return [a for a in (self.agent1, self.agent2) if a]

    @model_validator(mode="before")
    @classmethod
    def _pair_from_seed(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "branch1" in data or "branches" not in data:
            return data
        branches, agents = data["branches"], data.get("agents")
        if not (isinstance(branches, list) and len(branches) == 2):
            raise ValueError("branches must be the pair [branch1, branch2]")
        data = {**data, "branch1": branches[0], "branch2": branches[1]}
        if isinstance(agents, list) and len(agents) == 2 and "agent1" not in data:
            data["agent1"], data["agent2"] = agents
        return data


class ConflictSummary(Wire):
    """The seed's ConflictSummary; `conflictsByType` always holds all four types."""

    total_conflicts: int
    auto_resolvable: int
    manual_required: int
    unique_files: int
    conflicts_by_type: dict[str, int]
    by_branch_pair: dict[str, int] = Field(default_factory=dict)


class ConflictResolutionResult(Wire):
    """The seed's `{filePath, strategyUsed, success, message}`, plus where the result is."""

    success: bool
    strategy_used: ResolutionStrategy
    file_path: str
    branch: str | None = None
    commit: str | None = None
    message: str = ""
    content: str | None = None
    remaining: list[str] = Field(default_factory=list)  # the pair's files still conflicting


class MatrixState(StrEnum):
    """How one pair of branches merges."""

    CLEAN = "clean"
    OVERLAP = "overlap"
    CONFLICT = "conflict"


class MatrixCell(Wire):
    """One unordered pair of the conflict matrix.

    `files` counts the conflicting paths when the state is `conflict`, the
    overlapping paths when it is `overlap`, and is 0 when clean.
    """

    branch1: str
    branch2: str
    state: MatrixState
    files: int = 0
    paths: list[str] = Field(default_factory=list)


class ConflictMatrix(Wire):
    """Every unordered pair of a set of branches, in input order."""

    branches: list[str]
    cells: list[MatrixCell]


class MergeStatus(StrEnum):
    MERGED = "merged"
    FAST_FORWARD = "fast_forward"
    CONFLICT = "conflict"
    FAILED = "failed"
    SKIPPED = "skipped"


class MergeItem(Wire):
    """What happened to one branch of the queue."""

    branch: str
    status: MergeStatus
    commit: str | None = None
    files: list[str] | None = None
    error: str | None = None
    error_code: int | None = None


class MergeReport(Wire):
    """Result of `merge_queue` (`merge_completed_branches`)."""

    target: str
    dry_run: bool = False
    total_branches: int
    merged: int = 0
    failed: int = 0
    skipped: int = 0
    target_commit: str | None = None
    worktree_updated: bool = False
    results: list[MergeItem] = Field(default_factory=list)


class MergeableBranch(Wire):
    """A completed task's branch that can be landed (`get_mergeable_branches`)."""

    task_id: str
    branch: str
    completed_at: Timestamp | None = None
    integration_status: IntegrationStatus | None = None


class AutoMergeItem(Wire):
    """What `auto_merge_completed_branches` did with one task's branch."""

    task_id: str
    branch: str
    success: bool
    message: str
    conflict_files: list[str] | None = None
    branch_deleted: bool = False
    worktree_removed: bool = False
    resolving: bool = False  # handed to an agent to resolve (useAiConflictResolution)


class AutoMergeResult(Wire):
    """The seed's AutoMergeResult: counts and one item per branch."""

    total_branches: int
    merged: int = 0
    failed: int = 0
    skipped: int = 0
    target_branch: str = ""
    target_commit: str | None = None
    results: list[AutoMergeItem] = Field(default_factory=list)


class MergeBranchResult(Wire):
    """`merge_branch_with_ai`: merged now, or handed to the task's agent to resolve."""

    success: bool
    message: str
    source_branch: str
    target_branch: str
    task_id: str | None = None
    commit: str | None = None
    conflict_files: list[str] = Field(default_factory=list)
    resolving: bool = False  # an agent attempt now resolves the conflict
    agent_id: str | None = None


class CompletedAgent(Wire):
    """An agent that finished: the seed's `{agentId, taskId, processId, exitCode, logs}` and more.

    `processId` and `exitCode` are always on the wire, null when there was no
    process (the attempt ended before spawning) or no exit code (killed).
    `logs` is the tail of its output (the last lines `parallel_poll_completed`
    keeps; the whole output is in `parallel_get_agent_logs`).
    """

    agent_id: str
    task_id: str
    session_id: str
    success: bool
    process_id: int | None = None
    exit_code: int | None = None
    end_reason: EndReason | None = None
    error: str | None = None
    tokens: int = 0
    cost: float = 0.0
    ended_at: Timestamp
    logs: list[LogEntry] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _keep_nulls(self, handler: SerializerFunctionWrapHandler, info: Any) -> dict[str, Any]:
        # The seed's type declares these fields; null is their value, not their absence.
        data: dict[str, Any] = handler(self)
        alias = getattr(info, "by_alias", False)
        data.setdefault("processId" if alias else "process_id", self.process_id)
        data.setdefault("exitCode" if alias else "exit_code", self.exit_code)
        return data


class CgroupFeatures(Wire):
    available: bool
    path: str | None = None
    kill: bool = False
    controllers: list[str] = Field(default_factory=list)
    reason: str = ""


class StorageHealth(Wire):
    """Whether the state file takes writes; set by the last write that failed, cleared by a success.

    `state` is ok, full, readOnly, gone (removed or replaced under the daemon:
    sticky until a restart) or error. `rescued` is where a gone file's
    contents were copied.
    """

    path: str
    state: str = "ok"
    error: str | None = None
    since: Timestamp | None = None
    failed_writes: int = 0
    rescued: str | None = None


class DaemonStatus(Wire):
    version: str
    pid: int
    uptime_secs: float
    connections: int
    sessions: int
    subscribers: int = 0
    event_seq: int = 0
    executor: dict[str, Any] = Field(default_factory=dict)
    socket_path: str
    state_dir: str
    cgroup: CgroupFeatures
    storage: StorageHealth | None = None


class ParkedTask(Wire):
    """A task waiting for a person: its branch conflicts or fails the gate (policy manual)."""

    task_id: str
    integration_status: IntegrationStatus
    files: list[str] = Field(default_factory=list)
    error: str | None = None


class IntegrationBatch(Wire):
    """What the queue did with one batch: gate runs, who went in, who went back."""

    task_ids: list[str]
    gate_runs: int
    integrated: list[str] = Field(default_factory=list)
    conflicted: list[str] = Field(default_factory=list)
    gate_failed: list[str] = Field(default_factory=list)
    head: str | None = None
    at: Timestamp = 0.0


class IntegrationReport(Wire):
    """The answer to `integration_status`: the branch, its head, the queue and each task."""

    session_id: str
    enabled: bool
    branch: str | None = None
    head: str | None = None
    queue: list[str] = Field(default_factory=list)  # queued task ids, in the order they go in
    gating: list[str] = Field(default_factory=list)  # the batch being gated now
    parked: list[ParkedTask] = Field(default_factory=list)
    resolving: list[str] = Field(default_factory=list)  # tasks whose agent is resolving
    integrated: list[str] = Field(default_factory=list)  # in insertion order, not merge order
    last_batch: IntegrationBatch | None = None
    blocked: str | None = None  # why the queue cannot move (e.g. the gate cannot run)


class SubscribeResult(Wire):
    """The answer to `events_subscribe`: the subscription and where the stream stands."""

    subscription_id: str
    seq: int
    oldest: int


class Event(Wire):
    seq: int
    type: str
    session_id: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    at: Timestamp = 0.0
