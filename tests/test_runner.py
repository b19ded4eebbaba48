"""The remote half of the executor interface, without a cluster: runner, actor, placement, config.

`process.runner` checks a bundle out, runs a real fake agent under the
usual limits, commits and bundles the branch back; `git.bundle` brings it
home. `process.ray_actor.RunActor` is a plain class (Ray only wraps it), so
its numbered event stream and its cancel are tested here in-process.
`core.placement` is pure. The cluster itself is in tests/test_ray.py.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from corral.launch import DaemonStartError
from corral.models import EndReason, ResourceLimits
from corrald.agents.parsers import make_parser
from corrald.config import ConfigError, load_config
from corrald.core.placement import Demand, NodeCapacity, assign, fits
from corrald.git.bundle import apply_bundle, bundle_branch
from corrald.process.ray_actor import RunActor
from corrald.process.runner import run_from_source
from corrald.process.spec import NoEvents, RepoSource, RunSpec
from tests.conftest import git
from tests.daemon_proc import DaemonProcess

FAKE = Path(__file__).with_name("fake_agent.py")


def spec(
    tmp: Path, args: list[str], source: RepoSource | None, parser: str = "plain", **limits: Any
) -> RunSpec:
    import os

    return RunSpec(
        agent_id="a-1",
        task_id="t",
        argv=[sys.executable, str(FAKE), *args],
        cwd=str(tmp),
        env=dict(os.environ),
        stdin_data=None,
        limits=ResourceLimits(**{"kill_grace_secs": 0.5, "sample_interval_secs": 0.1, **limits}),
        log_path=tmp / "a-1.log",
        parser=make_parser(parser),
        source=source,
    )


async def source_of(repo: Path, branch: str = "main") -> RepoSource:
    data, head = await bundle_branch(str(repo), branch)
    return RepoSource(bundle=data, branch=branch, base_commit=head, commit_message="did t")


async def test_a_run_from_a_bundle_comes_home_as_a_commit(repo: Path, tmp_path: Path) -> None:
    git(repo, "switch", "-q", "-c", "corral/t")
    source = await source_of(repo, "corral/t")
    s = spec(tmp_path, ["--require", "README.md", "--edit", "new.txt=from the node"], source)
    result = await run_from_source(s, events=NoEvents())
    assert result.success, result
    assert result.artifact is not None and result.artifact.head != source.base_commit
    assert result.usage.cpu_seconds >= 0 and result.usage.peak_memory_mb > 0
    await apply_bundle(str(repo), result.artifact.bundle, "corral/t", result.artifact.head)
    assert git(repo, "rev-parse", "corral/t") == result.artifact.head
    assert git(repo, "show", "corral/t:new.txt") == "from the node"
    assert git(repo, "log", "-1", "--format=%s", "corral/t") == "did t"
    assert (repo / "new.txt").read_text() == "from the node"  # the worktree moved too


async def test_a_bad_bundle_is_a_failed_run_that_says_why(tmp_path: Path) -> None:
    source = RepoSource(bundle=b"not a bundle", branch="main", base_commit="0" * 40)
    result = await run_from_source(spec(tmp_path, [], source), events=NoEvents())
    assert result.end_reason is EndReason.FAILED
    assert result.error is not None and result.error.startswith("checkout failed: git fetch")


async def test_a_branch_that_moved_meanwhile_is_never_overwritten(
    repo: Path, tmp_path: Path
) -> None:
    source = await source_of(repo)
    result = await run_from_source(spec(tmp_path, ["--edit", "a.txt=a"], source), events=None)
    assert result.artifact is not None
    (repo / "b.txt").write_text("b")
    git(repo, "add", "b.txt")
    git(repo, "commit", "-q", "-m", "moved")
    moved = git(repo, "rev-parse", "main")
    from corral import errors

    with pytest.raises(errors.GitFailure):
        await apply_bundle(str(repo), result.artifact.bundle, "main", result.artifact.head)
    assert git(repo, "rev-parse", "main") == moved


def wait_result(actor: RunActor, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while actor.get_result() is None:
        assert time.monotonic() < deadline, "the actor's run never ended"
        actor.poll(10**9, 0.2)


async def test_the_actor_stream_resumes_from_any_number(repo: Path, tmp_path: Path) -> None:
    source = await source_of(repo)
    lines = [f"--stdout=line {i}" for i in range(30)]
    args = [*lines, "--stream-json", "--tokens", "42"]
    actor = RunActor(spec(tmp_path, args, source, parser="claude-stream-json"))
    await trio.to_thread.run_sync(wait_result, actor)
    first = actor.poll(0, 0)
    assert first["done"] and first["tokens"] == 42
    logs = [p.line for kind, p in first["items"] if kind == "log" and p.stream == "stdout"]
    assert logs[:30] == [f"line {i}" for i in range(30)]
    # asking again from the middle gives exactly the rest: no gap, no repeat
    again = actor.poll(10, 0)
    assert again["items"] == first["items"][10:] and again["next"] == first["next"]
    entry_5 = next(p for kind, p in first["items"] if kind == "log" and p.line == "line 5")
    resume = actor.seq_after_log(entry_5.offset)
    rest = actor.poll(resume, 0)["items"]
    assert next(p.line for k, p in rest if k == "log") == "line 6"
    result = actor.get_result()
    assert result is not None and result.success and result.artifact is not None


async def test_the_actor_cancel_goes_through_the_ladder(repo: Path, tmp_path: Path) -> None:
    source = await source_of(repo)
    pidfile = tmp_path / "pids"
    args = ["--grandchild-ignore-sigterm", "--sleep", "60", "--pidfile", str(pidfile)]
    actor = RunActor(spec(tmp_path, args, source))
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and len(pidfile.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline
        await trio.sleep(0.05)
    # (Ray calls an actor's methods from threads of its own)
    assert await trio.to_thread.run_sync(actor.cancel, EndReason.CANCELLED, "test", 0.2)
    await trio.to_thread.run_sync(wait_result, actor)
    result = actor.get_result()
    assert result is not None and result.end_reason is EndReason.CANCELLED
    from tests import procs

    procs.assert_all_dead(pidfile)


def test_placement_packs_whole_runs_per_node() -> None:
    nodes = [NodeCapacity("a", "", 2.0, 1000.0), NodeCapacity("b", "", 2.0, 1000.0)]
    half = Demand(1.5, 100.0)
    assert fits(nodes, [half], half)  # one on each node
    assert not fits(nodes, [half, half], Demand(1.0, 100.0))  # 1 CPU free in all, 0.5 per node
    assert not fits(nodes, [], Demand(0.5, 1001.0))
    assert not fits([], [], Demand(0.01, 1.0))  # no alive node: nothing is submitted


@given(
    st.lists(st.tuples(st.integers(1, 16), st.integers(1, 64)), min_size=0, max_size=8),
    st.lists(st.tuples(st.integers(1, 16), st.integers(1, 16)), min_size=0, max_size=40),
)
def test_placement_never_over_places(
    nodes_spec: list[tuple[int, int]], runs_spec: list[tuple[int, int]]
) -> None:
    nodes = [NodeCapacity(str(i), "", c / 2, m * 100.0) for i, (c, m) in enumerate(nodes_spec)]
    runs = [Demand(c / 4, m * 100.0) for c, m in runs_spec]
    placed: list[Demand] = []
    for run in runs:  # admission as the pool does it: one at a time, only what fits
        if fits(nodes, placed, run):
            placed.append(run)
    where = assign(nodes, placed)
    assert where is not None
    for k, node in enumerate(nodes):
        mine = [placed[i] for i, w in enumerate(where) if w == k]
        assert sum(d.cpus for d in mine) <= node.cpus + 1e-6
        assert sum(d.memory_mb for d in mine) <= node.memory_mb + 1e-6


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[executor]\nkind = "k8s"\n', "executor.kind"),
        ('[executor]\nkind = "ray"\naddress = "http://x y"\n', "executor.address"),
        ("[executor]\nnodes = 3\n", "executor.nodes: unknown key"),
    ],
)
def test_a_bad_executor_section_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed here")
def test_kind_ray_without_ray_is_a_clear_error(tmp_path: Path) -> None:
    d = DaemonProcess(config='[executor]\nkind = "ray"\n')
    with pytest.raises(DaemonStartError, match=r"exited 2"):
        d.start()
    assert 'needs Ray on this machine: pip install "corral[ray]"' in d.log()
