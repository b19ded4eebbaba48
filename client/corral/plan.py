"""Plan files for `corral run`: a list of tasks, and optional scheduler settings.

Accepted shapes:

- TOML with `[[tasks]]` tables, or JSON `{"tasks": [...]}`; each task has
  `id`, `title`, `description`, `priority`, `dependencies` (also spelled
  `deps` or `after`), `agent` (or `agentType`), `estimatedTokens` and
  `paths` (globs the task expects to touch: tasks whose paths overlap never
  run at the same time). An optional top-level `[config]` table (`"config"`
  object) is merged into the session's SchedulerConfig.
- A Ralph-style `prd.json`: `{"branchName", "verificationCommands",
  "userStories": [{"id", "title", "description", "priority", "dependencies",
  "paths", "acceptanceCriteria", "notes"}]}`. Stories already marked
  `"passes": true` are done and left out; `acceptanceCriteria` and `notes`
  are appended to the description (so they reach the agent's prompt);
  `branchName` names the integration branch (`integrationBranch`); each of
  `verificationCommands` is split into an argv with `shlex` (never run
  through a shell) and appended to `gateCommands`, so all must pass before a
  story's branch is integrated. A top-level `"config"` object is honoured as
  in the JSON plan; the prd's own fields win over it.

Everything is validated here, before the daemon sees it, so a bad plan is a
usage error (exit 2) that names the file and the offending task.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral.models import SchedulerConfig, TaskSpec, check_task_id


class PlanError(ValueError):
    """The plan file cannot be used; the message names the file and the problem."""


@dataclass
class Plan:
    """Tasks (TaskSpec wire dicts, in file order) and SchedulerConfig overrides."""

    path: Path
    tasks: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Plan({self.path}, tasks={len(self.tasks)}, config={sorted(self.config)})"


_DEP_KEYS = ("dependencies", "deps", "after", "dependsOn", "depends_on")
_AGENT_KEYS = ("agent", "agentType", "agent_type")


def slugify(title: str) -> str:
    """A valid task id made from a title: lowercase words joined by '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:64].rstrip("-.")
    return slug or "task"


def _task(raw: Any, where: str, *, story: bool = False) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PlanError(f"{where}: a task must be a table/object, not {type(raw).__name__}")
    item = dict(raw)
    title = item.pop("title", None)
    tid = item.pop("id", None)
    if tid is None and isinstance(title, str):
        tid = slugify(title)
    if not isinstance(tid, str | int) or isinstance(tid, bool):
        raise PlanError(f"{where}: missing task id")
    tid = str(tid)
    where = f"{where} ({tid})"
    spec: dict[str, Any] = {"id": tid, "title": title if title is not None else tid}
    description = item.pop("description", "")
    if story:
        criteria = item.pop("acceptanceCriteria", None)
        if isinstance(criteria, list) and criteria:
            description = f"{description}\n\nAcceptance criteria:\n" + "\n".join(
                f"- {c}" for c in criteria
            )
        notes = item.pop("notes", None)
        if isinstance(notes, list):
            notes = "\n".join(f"- {n}" for n in notes if str(n).strip())
        if isinstance(notes, str) and notes.strip():
            description = f"{description}\n\nNotes:\n{notes.strip()}"
        item.pop("passes", None)
    spec["description"] = description
    if "priority" in item:
        spec["priority"] = item.pop("priority")
    deps: list[Any] = []
    for key in _DEP_KEYS:
        value = item.pop(key, None)
        if value is None:
            continue
        deps += [value] if isinstance(value, str) else list(value)
    spec["dependencies"] = [str(d) for d in deps]
    for key in _AGENT_KEYS:
        value = item.pop(key, None)
        if value is not None:
            spec["agentType"] = value
    for key in ("estimatedTokens", "estimated_tokens"):
        if key in item:
            spec["estimatedTokens"] = item.pop(key)
    if "paths" in item:
        paths = item.pop("paths")
        spec["paths"] = [paths] if isinstance(paths, str) else paths
    if item:
        raise PlanError(f"{where}: unknown key(s) {', '.join(sorted(item))}")
    try:
        check_task_id(tid)
        return TaskSpec.model_validate(spec).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
    except (ValidationError, ValueError) as exc:
        raise PlanError(f"{where}: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"{loc}: {err['msg']}" if loc else str(err["msg"])
    return str(exc)


def _prd_integration(data: dict[str, Any], name: str, config: dict[str, Any]) -> dict[str, Any]:
    """What a prd.json says about integration, as SchedulerConfig fields.

    `branchName` is the integration branch; `verificationCommands` (strings,
    as a person types them) become argvs with `shlex`, appended to any
    `gateCommands` the config already has: every one must pass.
    """
    out: dict[str, Any] = {}
    branch = data.get("branchName")
    if branch is not None:
        if not isinstance(branch, str) or not branch.strip():
            raise PlanError(f"{name}: `branchName` must be a non-empty string")
        out["integrationBranch"] = branch.strip()
    commands = data.get("verificationCommands")
    if commands is not None:
        if isinstance(commands, str):
            commands = [commands]
        if not isinstance(commands, list):
            raise PlanError(f"{name}: `verificationCommands` must be a list of commands")
        gates: list[list[str]] = []
        for i, command in enumerate(commands):
            where = f"{name}: verificationCommands[{i}]"
            if not isinstance(command, str):
                raise PlanError(
                    f"{where}: a command must be a string, not {type(command).__name__}"
                )
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                raise PlanError(f"{where}: cannot split {command!r} into words: {exc}") from None
            if not argv:
                raise PlanError(f"{where}: the command is empty")
            gates.append(argv)
        if gates:
            earlier = config.get("gateCommands", config.get("gate_commands")) or []
            out["gateCommands"] = [*earlier, *gates]
    return out


def parse_plan(data: Any, path: Path) -> Plan:
    """Build a Plan from already-decoded TOML/JSON `data` (see the module doc)."""
    name = str(path)
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict):
        raise PlanError(f"{name}: expected a table with `tasks` (or `userStories`)")
    if "userStories" in data:
        stories = data["userStories"]
        if not isinstance(stories, list):
            raise PlanError(f"{name}: `userStories` must be a list")
        pending = [s for s in stories if not (isinstance(s, dict) and s.get("passes") is True)]
        done = {str(s.get("id")) for s in stories if isinstance(s, dict) and s not in pending}
        tasks = [_task(s, f"{name}: userStories[{i}]", story=True) for i, s in enumerate(pending)]
        for t in tasks:  # a story that already passes is not a dependency any more
            t["dependencies"] = [d for d in t["dependencies"] if d not in done]
        config: Any = data.get("config", {})  # our extension; Ralph's other keys are ignored
        if isinstance(config, dict):
            prd = _prd_integration(data, name, config)
            snake = {"gateCommands": "gate_commands", "integrationBranch": "integration_branch"}
            config = {k: v for k, v in config.items() if k not in {snake[f] for f in prd}}
            config.update(prd)
    else:
        raw_tasks = data.get("tasks")
        if not isinstance(raw_tasks, list):
            raise PlanError(f'{name}: no `tasks` list ([[tasks]] in TOML, "tasks" in JSON)')
        extra = sorted(set(data) - {"tasks", "config"})
        if extra:
            raise PlanError(f"{name}: unknown top-level key(s) {', '.join(extra)}")
        tasks = [_task(t, f"{name}: tasks[{i}]") for i, t in enumerate(raw_tasks)]
        config = data.get("config", {})
    if not tasks:
        raise PlanError(f"{name}: the plan has no tasks")
    if not isinstance(config, dict):
        raise PlanError(f"{name}: `config` must be a table")
    try:
        SchedulerConfig.model_validate(config)
    except ValidationError as exc:
        raise PlanError(f"{name}: config.{_first_error(exc)}") from None
    seen: set[str] = set()
    for t in tasks:
        if t["id"] in seen:
            raise PlanError(f"{name}: duplicate task id {t['id']!r}")
        seen.add(t["id"])
    for t in tasks:
        missing = [d for d in t["dependencies"] if d not in seen]
        if missing:
            raise PlanError(
                f"{name}: task {t['id']!r} depends on unknown task(s) {', '.join(missing)}"
            )
    return Plan(path, tasks, config)


def load_plan(path: str | Path) -> Plan:
    """Read a `.toml` or `.json` plan file; raises PlanError with a clear message."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise PlanError(f"{path}: a plan must be a .toml or .json file")
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path} is not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path} is not valid JSON: {exc}") from None
    return parse_plan(data, path)
