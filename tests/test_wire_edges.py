"""Input that used to answer -32603 or lose a connection now gets a clear error.

Non-finite numbers, relative or over-long paths, over-long branch names and
flag-like model names are refused where they come in, naming the field, and
nothing of a refused request is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import errors
from tests.daemon_proc import DaemonProcess
from tests.test_rpc_bad_input import Raw, error_of


@pytest.fixture
def daemon_on_repo(repo: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    with DaemonProcess() as d:
        yield d, repo


def answers_by_id(raw: Raw, count: int) -> dict[Any, Any]:
    got = [raw.receive() for _ in range(count)]
    return {a["id"]: a for a in got}


def error_locs(answer: Any, code: int = -32602) -> list[str]:
    return [e["loc"] for e in error_of(answer, code)["data"]["errors"]]


# --- numbers: finite, in range ----------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "loc"),
    [
        ('{"backoff": {"multiplier": 1e400}}', "config.backoff.multiplier"),
        ('{"backoff": {"multiplier": 1e200}}', "config.backoff.multiplier"),
        ('{"backoff": {"baseSecs": 1e400}}', "config.backoff.baseSecs"),
        ('{"backoff": {"capSecs": 172800}}', "config.backoff.capSecs"),
        ('{"resourceLimits": {"maxCpuPerAgent": 1e400}}', "config.resourceLimits.maxCpuPerAgent"),
        ('{"resourceLimits": {"killGraceSecs": -1e400}}', "config.resourceLimits.killGraceSecs"),
        ('{"resourceLimits": {"sampleIntervalSecs": 1e-300}}',
         "config.resourceLimits.sampleIntervalSecs"),
        ('{"maxRetries": 100000}', "config.maxRetries"),
        ('{"maxParallel": 100000000000000000000}', "config.maxParallel"),
        ('{"model": "--dangerously-skip-permissions"}', "config.model"),
        ('{"model": "-m"}', "config.model"),
        ('{"model": ""}', "config.model"),
    ],
)  # fmt: skip
def test_bad_config_values_are_refused_naming_the_field(
    daemon_on_repo: tuple[DaemonProcess, Path], config: str, loc: str
) -> None:
    d, repo = daemon_on_repo
    with Raw(d.socket) as raw:
        raw.send(
            b'{"jsonrpc": "2.0", "method": "init_parallel_scheduler", "id": 1, "params":'
            b' {"repoPath": %s, "config": %s}}\n'
            % (json.dumps(str(repo)).encode(), config.encode())
        )
        assert error_locs(raw.receive()) == [loc]
        # Nothing was kept, and listing sessions still works for everyone.
        raw.request({"jsonrpc": "2.0", "method": "session_list", "id": 2})
        assert raw.receive()["result"] == []


def test_a_model_name_that_is_no_flag_is_accepted(
    daemon_on_repo: tuple[DaemonProcess, Path],
) -> None:
    d, repo = daemon_on_repo
    with d.client(timeout=10) as c:
        session = c.init_parallel_scheduler(
            repo_path=str(repo), config={"model": "claude-opus-4-1", "backoff": {"multiplier": 100}}
        )
        assert session.config.model == "claude-opus-4-1"
        assert session.config.backoff.multiplier == 100


def test_non_finite_default_in_the_daemon_config_stops_it_naming_the_key(tmp_path: Path) -> None:
    d = DaemonProcess(config="[defaults.backoff]\nmultiplier = inf\n")
    with pytest.raises(RuntimeError) as info:
        d.start(timeout=20)
    assert "defaults.backoff.multiplier" in str(info.value)
    assert "finite" in str(info.value)


# --- paths and branch names ------------------------------------------------------------


@pytest.mark.parametrize(
    "repo_path", ["", ".", "relative/repo", "./repo", "~/repo"], ids=repr
)  # fmt: skip
def test_relative_repo_path_is_refused(
    daemon_on_repo: tuple[DaemonProcess, Path], repo_path: str
) -> None:
    d, _ = daemon_on_repo
    with d.client(timeout=10) as c:
        with pytest.raises(errors.InvalidParams) as info:
            c.init_parallel_scheduler(repo_path=repo_path)
        [error] = info.value.data["errors"]
        assert error["loc"] == "repo_path"  # as the client spelt it
        assert "absolute" in error["msg"]
        assert c.session_list() == []


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("init_parallel_scheduler", "repoPath", "/" + "a" * 5000),
        ("init_parallel_scheduler", "repoPath", "/tmp/" + "b" * 300),
        ("init_parallel_scheduler", "repoPath", "/tmp/nul\x00byte"),
        ("worktree_deallocate", "worktreePath", "c" * 5000),
        ("worktree_deallocate", "worktreePath", "/tmp/" + "d" * 256 + "/x"),
    ],
    ids=["5000-chars", "long-name", "nul", "wt-5000-chars", "wt-long-name"],
)
def test_paths_the_kernel_cannot_take_are_refused(
    daemon_on_repo: tuple[DaemonProcess, Path], method: str, field: str, value: str
) -> None:
    d, repo = daemon_on_repo
    with d.client(timeout=10) as c:
        if method == "worktree_deallocate":
            c.init_parallel_scheduler(repo_path=str(repo))
        with pytest.raises(errors.InvalidParams) as info:
            c.call(method, **{field: value})
        assert [e["loc"] for e in info.value.data["errors"]] == [field]
    assert "Traceback" not in d.log()


@pytest.mark.parametrize("length", [251, 5000, 100_000])
def test_long_branch_name_is_an_invalid_branch_name(
    daemon_on_repo: tuple[DaemonProcess, Path], length: int
) -> None:
    d, repo = daemon_on_repo
    with d.client(timeout=10) as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        with pytest.raises(errors.InvalidBranchName) as info:
            c.worktree_allocate(agent_id="a1", task_id="t1", branch="x" * length)
        assert info.value.data["maxBytes"] == 250
        assert len(info.value.message) < 200
        assert c.worktree_get_allocations() == []
        # At the limit it works.
        alloc = c.worktree_allocate(agent_id="a1", task_id="t1", branch="y" * 250)
        assert alloc.branch == "y" * 250
