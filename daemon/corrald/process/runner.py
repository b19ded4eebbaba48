"""The runner: one agent attempt from a repository source to a branch artifact.

A run that has a `RepoSource` (it does not run beside the repository, e.g.
on a Ray node) goes through the same steps wherever it runs:

1. checkout: the source bundle is fetched into a scratch repository and the
   task's branch is checked out at the base commit;
2. the agent runs there under `process.run.run_agent`: the same limits as
   a local run (tree sampling, the TERM → grace → KILL ladder with setsid
   escapers found by token, a cgroup where the node has a writable one);
3. commit: on success, with autoCommit, what the agent left is committed;
4. the branch goes back as an artifact (a bundle of base..head) that the
   daemon fetches into the repository (`git.bundle`).

A local run (no source) is given the daemon's worktree instead, and the
daemon commits there; `run_agent` is the same code in both cases.

Bundles need the git program: libgit2 (pygit2) cannot read or write them.
Git runs with argv lists, never a shell, in the scratch directory only.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from corral.models import EndReason, ErrorCategory
from corrald.process.run import AgentRun, run_agent
from corrald.process.spec import Artifact, RepoSource, RunEvents, RunResult, RunSpec

#: Author of a commit the runner makes when the node's git has no identity.
_FALLBACK_IDENTITY = ("corral", "corral@localhost")


class CheckoutError(RuntimeError):
    """The source could not be checked out (a bad bundle, an unknown commit)."""


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=False, check=False
    )
    if out.returncode != 0:
        raise CheckoutError(
            f"git {args[0]} failed: {out.stderr.decode('utf-8', 'replace').strip()[-400:]}"
        )
    return out.stdout.decode("utf-8", "replace").strip()


def _git_env(env: dict[str, str]) -> dict[str, str]:
    """The agent's environment for git, without prompts (nothing can answer them)."""
    return {**env, "GIT_TERMINAL_PROMPT": "0"}


def checkout(source: RepoSource, workdir: Path, env: dict[str, str]) -> Path:
    """Check out `source.branch` at `source.base_commit` in `workdir/repo`; return that path."""
    genv = _git_env(env)
    repo = workdir / "repo"
    repo.mkdir(parents=True)
    bundle = workdir / "source.bundle"
    bundle.write_bytes(source.bundle)
    _git(repo, genv, "init", "-q", "-b", "corral-scratch")
    ref = f"refs/heads/{source.branch}"
    _git(repo, genv, "fetch", "-q", str(bundle), f"+{ref}:{ref}")
    _git(repo, genv, "checkout", "-q", "-B", source.branch, source.base_commit)
    bundle.unlink()
    return repo


def commit(repo: Path, env: dict[str, str], message: str) -> str | None:
    """Commit every change (respecting .gitignore); the new commit, or None if clean."""
    genv = _git_env(env)
    if not _git(repo, genv, "status", "--porcelain"):
        return None
    _git(repo, genv, "add", "-A")
    ident: list[str] = []
    if not subprocess.run(
        ["git", "config", "user.email"], cwd=repo, env=genv, capture_output=True, check=False
    ).stdout.strip():
        name, email = _FALLBACK_IDENTITY
        ident = ["-c", f"user.name={name}", "-c", f"user.email={email}"]
    _git(repo, genv, *ident, "commit", "-q", "--no-verify", "-m", message)
    return _git(repo, genv, "rev-parse", "HEAD")


def bundle_back(repo: Path, env: dict[str, str], source: RepoSource) -> Artifact:
    """The branch as an artifact: a bundle of the commits since the base (empty if none)."""
    genv = _git_env(env)
    head = _git(repo, genv, "rev-parse", "HEAD")
    if head == source.base_commit:
        return Artifact(b"", source.branch, head)
    out = repo.parent / "result.bundle"
    ref = f"refs/heads/{source.branch}"
    _git(repo, genv, "bundle", "create", "-q", str(out), f"^{source.base_commit}", ref)
    data = out.read_bytes()
    out.unlink()
    return Artifact(data, source.branch, head)


def _failed(why: str, category: ErrorCategory) -> RunResult:
    return RunResult(
        exit_code=None,
        end_reason=EndReason.FAILED,
        error_category=category,
        error=why[:500],
        tokens=0,
        cost=0.0,
        rate_limited=False,
        rate_limit_reset=None,
        ended_at=time.time(),
    )


async def run_from_source(
    spec: RunSpec,
    *,
    events: RunEvents | None = None,
    scratch: Path | None = None,
    task_status: trio.TaskStatus[AgentRun | None] = trio.TASK_STATUS_IGNORED,
) -> RunResult:
    """Check out `spec.source`, run the agent there, commit and bundle the branch back.

    `task_status.started(run)` once the agent is spawned (None if the
    checkout failed: the result says why). The scratch directory is removed
    at the end, whatever happened.
    """
    source = spec.source
    if source is None:
        raise ValueError("run_from_source needs a spec with a source")
    workdir = Path(tempfile.mkdtemp(prefix="corral-run-", dir=scratch))
    try:
        try:
            repo = await trio.to_thread.run_sync(checkout, source, workdir, spec.env)
        except (CheckoutError, OSError) as exc:
            task_status.started(None)
            return _failed(f"checkout failed: {exc}", ErrorCategory.UNKNOWN)
        env = {**spec.env, "CORRAL_WORKTREE": str(repo)}
        # The node's own log (the daemon keeps the real one from the streamed lines).
        local = dataclasses.replace(
            spec, cwd=str(repo), env=env, source=None, log_path=workdir / "agent.log"
        )
        async with trio.open_nursery() as nursery:
            run: AgentRun = await nursery.start(_run, local, events)
            task_status.started(run)
        result = await run.wait()
        return await trio.to_thread.run_sync(_finish, result, repo, env, source)
    finally:
        await trio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))


async def _run(
    spec: RunSpec, events: RunEvents | None, *, task_status: trio.TaskStatus[AgentRun]
) -> None:
    await run_agent(spec, events=events, task_status=task_status)


def _finish(result: RunResult, repo: Path, env: dict[str, str], source: RepoSource) -> RunResult:
    """Commit on success (autoCommit) and attach the branch; a git failure fails the run."""
    try:
        if result.success and source.commit_message:
            commit(repo, env, source.commit_message)
        return dataclasses.replace(result, artifact=bundle_back(repo, env, source))
    except (CheckoutError, OSError) as exc:
        return dataclasses.replace(
            result,
            end_reason=EndReason.FAILED if result.success else result.end_reason,
            error_category=ErrorCategory.UNKNOWN if result.success else result.error_category,
            error=f"auto-commit failed: {exc}"[:500] if result.success else result.error,
        )


def default_scratch() -> Path | None:
    """Where runs check out on this node (`$CORRAL_SCRATCH`, else the system temp dir)."""
    value = os.environ.get("CORRAL_SCRATCH")
    return Path(value) if value else None


__all__ = [
    "CheckoutError",
    "bundle_back",
    "checkout",
    "commit",
    "default_scratch",
    "run_from_source",
]
