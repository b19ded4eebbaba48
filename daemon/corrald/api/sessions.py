"""Session methods: create, list, start, pause, resume."""

from __future__ import annotations

import os
import shutil

from corral import errors
from corral.models import IntegrationPolicy, SchedulerConfig, Session, SessionStatus, overlay
from corral.params import InitParams, NoParams, SessionParams
from corrald.api.context import Call, methods
from corrald.git import worktrees
from corrald.git.merge import integrate
from corrald.git.repo import repo_root


@methods.method()
async def init_parallel_scheduler(call: Call, p: InitParams) -> Session:
    """Create a session (one scheduler run on one repository).

    Params: `config` (SchedulerConfig; fields not given come from the daemon
    config's `[defaults]`, then the built-in defaults), `repoPath` (a git work
    tree), `sessionId` (optional; generated if omitted). Calling it again with
    an existing `sessionId` replaces that session's config and keeps its tasks,
    unless agents are running: then it fails with 1002 SessionBusy.
    With integration on (`integrate`, the default) the session's integration
    branch (`integrationBranch`, default `corral-integration/{session_id}`)
    is created from `baseBranch` now, or reused if it exists; it must be a
    valid branch name that no task branch can collide with (3004). A
    `gateCommand` whose program is not on PATH (or not executable) is refused
    here, and so is policy `resolver` without `resolverAgent` (5001).
    Errors: 1010 NotAGitRepository, 1002 SessionBusy, 1007 for a bad id,
    3004 InvalidBranchName, 3008 BaseBranchNotFound, 5001 ConfigInvalid.
    """
    defaults = call.daemon.defaults
    config = defaults if p.config is None else overlay(defaults, p.config)
    root = await repo_root(p.repo_path)
    session_id = p.session_id or call.engine.new_session_id()
    branch = None
    if config.integrate:
        check_integration_config(config)
        branch = worktrees.integration_branch_name(
            config.integration_branch, session_id, config.branch_template
        )
        base = config.base_branch or await worktrees.head_branch(root)
        await integrate.ensure_branch(root, branch, base)
    return call.engine.init_session(config, root, session_id, branch)


def check_integration_config(config: SchedulerConfig) -> None:
    """Refuse an integration setup that cannot work, before anything is created."""
    for gate in config.gates():
        program = gate[0]
        if "/" not in program and shutil.which(program) is None:
            raise errors.ConfigInvalid(
                f"gateCommand: {program!r} is not on PATH", {"field": "gateCommand"}
            )
        if os.path.isabs(program) and not os.access(program, os.X_OK):
            raise errors.ConfigInvalid(
                f"gateCommand: {program!r} is not an executable file", {"field": "gateCommand"}
            )
    policies = (config.on_conflict, config.on_gate_failure)
    if IntegrationPolicy.RESOLVER in policies and not config.resolver_agent:
        raise errors.ConfigInvalid(
            "the resolver policy needs resolverAgent (an agent type)", {"field": "resolverAgent"}
        )


@methods.method()
async def session_list(call: Call, p: NoParams) -> list[Session]:
    """List every session, oldest first."""
    return [s.session for s in call.engine.sessions.values()]


@methods.method()
async def session_get(call: Call, p: SessionParams) -> Session:
    """Return one session. `sessionId` may be omitted when exactly one exists.

    Errors: 1001 SessionNotFound, 1009 SessionRequired.
    """
    return call.session(p.session_id).session


@methods.method()
async def session_start(call: Call, p: SessionParams) -> Session:
    """Start scheduling: tasks start by themselves as slots and resources allow.

    Errors: 1001, 1009, 1008 InvalidStateTransition (e.g. from stopping).
    """
    return call.engine.set_status(p.session_id, SessionStatus.RUNNING)


@methods.method()
async def session_pause(call: Call, p: SessionParams) -> Session:
    """Pause a running session: no new task starts; running agents continue.

    Errors: 1001, 1009, 1008 when the session is not running.
    """
    return call.engine.set_status(p.session_id, SessionStatus.PAUSED)


@methods.method()
async def session_resume(call: Call, p: SessionParams) -> Session:
    """Resume a paused session. Errors: 1001, 1009, 1008 when not paused."""
    state = call.session(p.session_id)
    if state.session.status is not SessionStatus.PAUSED:
        raise errors.InvalidStateTransition(
            f"session {state.id} is {state.session.status.value}, not paused",
            {"sessionId": state.id, "from": state.session.status.value, "to": "running"},
        )
    return call.engine.set_status(state.id, SessionStatus.RUNNING)
