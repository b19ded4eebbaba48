"""The daemon's TOML configuration, validated by pydantic.

Looked up at `--config`, else `$XDG_CONFIG_HOME/corral/config.toml`; a missing
default file means all defaults. An unknown key or a wrong type is an error
that names the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.models import SchedulerConfig
from corrald.agents.types import AgentTypeConfig


class ConfigError(RuntimeError):
    """The configuration file cannot be used; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DaemonSection(_Strict):
    socket: Path | None = None
    state_dir: Path | None = None
    worktree_base: Path | None = None
    # Worktrees checked out ahead of time per repository, so a task starts without waiting.
    spare_worktrees: int = Field(1, ge=0, le=8)
    max_frame_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_connections: int = Field(512, ge=1)
    frame_timeout_secs: float = Field(10.0, gt=0)
    # A write to a client that does not read ends its connection after this long.
    write_timeout_secs: float = Field(30.0, gt=0, le=3600)
    max_batch_items: int = Field(1000, ge=1, le=100_000)
    shutdown_grace_secs: float = Field(10.0, ge=0)
    event_window: int = Field(50_000, ge=100)
    subscriber_queue: int = Field(100_000, ge=10)
    event_window_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)
    # Of which output lines may take this much (a flood of them evicts older events).
    event_window_log_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    subscriber_queue_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    log_cap_bytes: int = Field(10 * 1024 * 1024, ge=0)
    ring_lines: int = Field(2000, ge=1, le=1_000_000)
    ring_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    # Lines per second per run announced as `log` events (0: all); the rest are summed up.
    log_events_per_sec: float = Field(200.0, ge=0, le=1_000_000)
    log_events_burst: int = Field(2000, ge=1, le=1_000_000)
    durability: Literal["normal", "full"] = "normal"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ExecutorSection(_Strict):
    """Where agents run: `local` (this machine) or `ray` (a Ray cluster, `corral[ray]`)."""

    kind: Literal["local", "ray"] = "local"
    # "auto" (a cluster started on this machine with `ray start`), "host:port" or "ray://host:port".
    address: str = Field("auto", min_length=1, pattern=r"^(auto|ray://\S+|[^\s/]+:\d+)$")


class Config(_Strict):
    daemon: DaemonSection = Field(default_factory=DaemonSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    defaults: SchedulerConfig = Field(default_factory=SchedulerConfig)
    agents: dict[str, AgentTypeConfig] = Field(default_factory=dict)


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "corral" / "config.toml"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "corral"


def _describe(exc: ValidationError, path: Path) -> str:
    lines = [f"invalid configuration in {path}:"]
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) if loc else "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: Path | None) -> tuple[Config, Path | None]:
    """Load and validate; returns the config and the file used (None: defaults)."""
    explicit = path is not None
    path = path or default_config_path()
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return Config(), None
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        return Config.model_validate(raw), path
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
