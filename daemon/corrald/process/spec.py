"""What a run is given (`RunSpec`), what it reports as it goes (`RunEvents`), how it ended.

Shared by the runner (`process.run`), the executors and the pool, so none of
them needs another's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from corral.models import (
    AgentActivity,
    EndReason,
    ErrorCategory,
    LogEntry,
    ResourceLimits,
    Violation,
)
from corrald.agents.output import OutputParser
from corrald.process.lines import Skipped

#: Environment variable set in every agent; finds descendants that escaped.
MARK_ENV = "CORRAL_RUN_TOKEN"


@dataclass(frozen=True)
class OutputBounds:
    """What a run's output may cost: the log file, the ring in memory, the events.

    The log file keeps the first `log_cap_bytes`; the ring the last
    `ring_lines` lines within `ring_bytes`; at most `log_events_per_sec`
    lines a second (bursts of `log_events_burst`) become `log` events, the
    rest one `log.skipped` summary (0: every line).
    """

    log_cap_bytes: int = 10 * 1024 * 1024
    ring_lines: int = 2000
    ring_bytes: int = 4 * 1024 * 1024
    log_events_per_sec: float = 200.0
    log_events_burst: int = 2000


@dataclass(frozen=True)
class RepoSource:
    """Where a run gets its checkout when it does not run beside the repository.

    `bundle` is a git bundle holding `branch` (the task's branch: every
    earlier attempt's work); the run checks out `branch` at `base_commit` in
    a scratch directory of its node. On success, when `commit_message` is
    set (autoCommit), the runner commits what the agent left and hands the
    branch back as a bundle (`RunResult.artifact`).
    """

    bundle: bytes
    branch: str
    base_commit: str
    commit_message: str | None = None

    def __repr__(self) -> str:
        return f"RepoSource({self.branch}@{self.base_commit[:12]}, {len(self.bundle)} bytes)"


@dataclass(kw_only=True)
class RunSpec:
    """Everything needed to run one agent attempt.

    `env` is the complete environment of the agent (the caller merges the
    daemon's environment and the agent type's). `parser` is a fresh parser
    for this run; it also watches for the completion marker.

    Where the repository is: a local run gets `cwd`, a checkout the daemon
    made (its worktree); a run on another node gets `source` (a bundle and
    the base commit) and the runner checks it out there (`process.runner`).
    """

    agent_id: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    stdin_data: bytes | None
    limits: ResourceLimits
    log_path: Path
    parser: OutputParser
    output: OutputBounds = field(default_factory=OutputBounds)
    completion_marker: str | None = None
    task_id: str = ""
    token: str = ""  # set in the run's environment (MARK_ENV); generated when empty
    use_cgroup: bool = True
    pids_max: int | None = 4096
    source: RepoSource | None = None


@dataclass
class Usage:
    """What a run used: CPU time of its whole tree and its peak memory (RSS summed)."""

    cpu_seconds: float = 0.0
    peak_memory_mb: float = 0.0


@dataclass(frozen=True)
class Artifact:
    """The task's branch as a run on another node left it: a git bundle and its head."""

    bundle: bytes
    branch: str
    head: str

    def __repr__(self) -> str:
        return f"Artifact({self.branch}@{self.head[:12]}, {len(self.bundle)} bytes)"


@dataclass
class RunResult:
    """How one run ended."""

    exit_code: int | None
    end_reason: EndReason
    error_category: ErrorCategory | None
    error: str | None
    tokens: int
    cost: float
    rate_limited: bool
    rate_limit_reset: float | None
    ended_at: float
    usage: Usage = field(default_factory=Usage)
    artifact: Artifact | None = None  # the branch, when the run had a `source`

    @property
    def success(self) -> bool:
        return self.end_reason is EndReason.OK


@dataclass
class RunStats:
    """Live figures of one run (updated by the sampler and the output readers)."""

    cpu_percent: float = 0.0
    memory_mb: float = 0.0
    tokens: int = 0
    cost: float = 0.0
    activity: AgentActivity = AgentActivity.IDLE
    lines: int = 0
    bytes_out: int = 0
    peak_memory_mb: float = 0.0
    cpu_seconds: float = 0.0


class RunEvents(Protocol):
    """What a run reports while it runs. A failing sink never stops the run.

    A sink may also have `log_lines(first, stream, lines, at)`, the `log` of
    consecutive lines read at once (offsets `first`..): the run then hands
    them over together (`process.run`).
    """

    def log(self, entry: LogEntry) -> None: ...
    def log_skipped(self, skipped: Skipped) -> None: ...
    def activity(self, activity: AgentActivity) -> None: ...
    def tokens(self, tokens: int, cost: float) -> None: ...
    def rate_limit(self, reset_at: float | None, detail: str) -> None: ...
    def violation(self, violation: Violation) -> None: ...


class NoEvents:
    """A sink that ignores everything (tests and tools that only want the result)."""

    def log(self, entry: LogEntry) -> None:
        pass

    def log_skipped(self, skipped: Skipped) -> None:
        pass

    def activity(self, activity: AgentActivity) -> None:
        pass

    def tokens(self, tokens: int, cost: float) -> None:
        pass

    def rate_limit(self, reset_at: float | None, detail: str) -> None:
        pass

    def violation(self, violation: Violation) -> None:
        pass
