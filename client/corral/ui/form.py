"""The new-session form: a repository, a plan, and the scheduler's settings.

What is typed is checked by the wire models themselves (`InitParams`, with
its `SchedulerConfig`), so the form accepts exactly what the daemon accepts
and names the field that is wrong. A refused form stays open with
everything typed in it.
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch

from corral import errors
from corral.models import IntegrationPolicy, Strategy
from corral.params import InitParams
from corral.plan import Plan, PlanError, load_plan

if TYPE_CHECKING:
    from corral.ui.app import CorralApp

__all__ = ["SessionForm", "form_params"]

#: input id -> (label, the config path it sets, its initial text)
FIELDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "agent": ("agent type", ("agentType",), "claude"),
    "parallel": ("max parallel", ("maxParallel",), "3"),
    "max-agents": ("max agents", ("resourceLimits", "maxAgents"), "5"),
    "cpu": ("CPU % per agent", ("resourceLimits", "maxCpuPerAgent"), "50"),
    "memory": ("memory MB per agent", ("resourceLimits", "maxMemoryMbPerAgent"), "2048"),
    "runtime": ("max runtime s (0: none)", ("resourceLimits", "maxRuntimeSecs"), "3600"),
    "gate": ("gate command", ("gateCommand",), ""),
}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}"


def form_params(
    repo: str, values: dict[str, str], strategy: str, integrate: bool, on_conflict: str
) -> InitParams:
    """The form's text as `InitParams`; `ValueError` names the first wrong field."""
    config: dict[str, Any] = {"strategy": strategy, "integrate": integrate}
    if integrate:
        config["onConflict"] = on_conflict
    for key, (_label, path, _default) in FIELDS.items():
        text = values.get(key, "").strip()
        if not text:
            continue
        value: Any = text
        if key == "gate":
            try:
                value = shlex.split(text)
            except ValueError as exc:
                raise ValueError(f"gate command: {exc}") from None
        target = config
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    repo_path = os.path.abspath(os.path.expanduser(repo.strip())) if repo.strip() else ""
    try:
        return InitParams.model_validate({"repoPath": repo_path, "config": config})
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None


class SessionForm(ModalScreen[str | None]):
    """Create a session: the answer is its id, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "create", "Create")]

    DEFAULT_CSS = """
    SessionForm { align: center middle; }
    SessionForm #form {
        width: 76; max-width: 100%; height: 100%; max-height: 40;
        border: round $primary; background: $surface; padding: 0 1;
    }
    SessionForm #fields { height: 1fr; }
    SessionForm .row { height: 3; }
    SessionForm .row Label { width: 24; padding: 1 1 0 0; }
    SessionForm .row Input, SessionForm .row Select { width: 1fr; }
    SessionForm #error { color: $error; height: auto; }
    SessionForm #buttons { height: 3; align-horizontal: right; }
    """

    def __init__(self, repo: str | None = None, plan: str | None = None) -> None:
        super().__init__()
        self.repo = repo or os.getcwd()
        self.plan = plan or ""

    @property
    def dash(self) -> CorralApp:
        return cast("CorralApp", self.app)

    def compose(self) -> ComposeResult:
        with Vertical(id="form"):
            yield Static(Text("new session  (ctrl+s: create, esc: cancel)", style="bold"))
            yield from self._fields()
            yield Static(id="error")
            with Horizontal(id="buttons"):
                yield Button("Create", variant="primary", id="create")
                yield Button("Cancel", id="cancel")

    def _fields(self) -> ComposeResult:
        with VerticalScroll(id="fields"):
            with Horizontal(classes="row"):
                yield Label("repository")
                yield Input(self.repo, id="repo")
            with Horizontal(classes="row"):
                yield Label("plan file (.toml/.json)")
                yield Input(self.plan, placeholder="optional", id="plan")
            with Horizontal(classes="row"):
                yield Label("strategy")
                yield Select(
                    [(s.value, s.value) for s in Strategy],
                    value=Strategy.DEPENDENCY_FIRST.value,
                    allow_blank=False,
                    id="strategy",
                )
            for key, (label, _path, default) in FIELDS.items():
                with Horizontal(classes="row"):
                    yield Label(label)
                    yield Input(default, id=key)
            with Horizontal(classes="row"):
                yield Label("integrate")
                yield Switch(value=True, id="integrate")
            with Horizontal(classes="row"):
                yield Label("on conflict")
                yield Select(
                    [(p.value, p.value) for p in IntegrationPolicy],
                    value=IntegrationPolicy.AGENT.value,
                    allow_blank=False,
                    id="on-conflict",
                )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "create":
            self.action_create()
        else:
            self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_create(self) -> None:
        error = self.query_one("#error", Static)
        try:
            params = form_params(
                self.query_one("#repo", Input).value,
                {key: self.query_one(f"#{key}", Input).value for key in FIELDS},
                str(self.query_one("#strategy", Select).value),
                self.query_one("#integrate", Switch).value,
                str(self.query_one("#on-conflict", Select).value),
            )
            plan_path = self.query_one("#plan", Input).value.strip()
            plan = load_plan(os.path.expanduser(plan_path)) if plan_path else None
        except (ValueError, PlanError) as exc:
            error.update(f"! {exc}")
            return
        error.update("creating…")
        self.run_worker(self._create(params, plan), group="create", exclusive=True)

    async def _create(self, params: InitParams, plan: Plan | None) -> None:
        try:
            session_id = await self.dash.create_session(params, plan)
        except errors.CorralError as exc:
            self.query_one("#error", Static).update(f"! {exc.message} [{exc.code}]")
            return
        self.dismiss(session_id)
