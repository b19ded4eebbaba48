"""Input that used to answer -32603 or lose a connection now gets a clear error.

Answers are encoded inside the error boundary; strings that are not Unicode,
non-finite numbers, relative or over-long paths, over-long branch names and
flag-like model names are refused where they come in, naming the field, and
nothing of a refused request is kept.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from corral import errors
from corral.models import Params
from corrald.rpc.dispatch import Registry
from corrald.rpc.server import Connection, Server, bind_socket
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


# --- answers that cannot be encoded --------------------------------------------------


class OddParams(Params):
    what: str = "inf"


async def test_unencodable_result_is_a_32603_with_its_id_and_spares_the_others() -> None:
    # No daemon method returns a NaN now that input is validated, so the encoding
    # boundary is shown on the real Server with a method that does.
    registry: Registry[Connection[None]] = Registry()

    @registry.method()
    async def odd(conn: Connection[None], p: OddParams) -> Any:
        return {"inf": float("inf"), "nan": float("nan"), "set": {1}}[p.what]

    @registry.method()
    async def ok(conn: Connection[None], p: OddParams) -> str:
        return "fine"

    tmp = Path(tempfile.mkdtemp(prefix="ue", dir="/tmp"))
    server: Server[Connection[None], None] = Server(registry, lambda conn: conn, lambda: None)
    requests = [
        {"jsonrpc": "2.0", "method": "odd", "id": 1},
        {"jsonrpc": "2.0", "method": "ok", "id": 2},
        {"jsonrpc": "2.0", "method": "odd", "params": {"what": "nan"}, "id": 3},
        [
            {"jsonrpc": "2.0", "method": "odd", "params": {"what": "set"}, "id": 4},
            {"jsonrpc": "2.0", "method": "ok", "id": 5},
        ],
        {"jsonrpc": "2.0", "method": "ok", "id": 6},
    ]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, bind_socket(tmp / "s.sock"))
            stream = await trio.open_unix_socket(str(tmp / "s.sock"))
            async with stream:
                await stream.send_all(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
                buf = bytearray()
                with trio.fail_after(10):
                    while buf.count(b"\n") < len(requests):
                        buf += await stream.receive_some(65536)
                # The connection is still usable afterwards.
                await stream.send_all(b'{"jsonrpc": "2.0", "method": "ok", "id": 7}\n')
                with trio.fail_after(10):
                    while buf.count(b"\n") < len(requests) + 1:
                        buf += await stream.receive_some(65536)
            server.request_shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_id: dict[Any, Any] = {}
    for line in bytes(buf).splitlines():
        answer = json.loads(line)  # strict JSON: no Infinity or NaN came out
        for item in answer if isinstance(answer, list) else [answer]:
            by_id[item["id"]] = item
    for ident in (1, 3, 4):
        error = error_of(by_id[ident], -32603)
        assert error["data"] == {"method": "odd", "reason": "result is not encodable as JSON"}
    assert [by_id[i]["result"] for i in (2, 5, 6, 7)] == ["fine"] * 4


# --- strings that are not Unicode -----------------------------------------------------


def test_lone_surrogates_get_clear_answers_and_lose_nothing(
    daemon_on_repo: tuple[DaemonProcess, Path],
) -> None:
    d, repo = daemon_on_repo
    frames = [
        r'{"jsonrpc": "2.0", "method": "parallel_get_agent", "params": {"agentId": "\ud800"},'
        r' "id": "agent"}',
        r'{"jsonrpc": "2.0", "method": "daemon_\ud800", "id": "method"}',
        r'{"jsonrpc": "2.0", "method": "daemon_status", "id": "\udfff"}',
        r'{"jsonrpc": "2.0", "method": "session_get", "params": {"\ud800": 1}, "id": "key"}',
        r'{"jsonrpc": "2.0", "method": "init_parallel_scheduler", "params": {"repoPath": "'
        + str(repo)
        + r'", "sessionId": "s1", "config": {"model": "m\ud83d"}}, "id": "init"}',
        # A surrogate pair is one real character: that is fine.
        r'{"jsonrpc": "2.0", "method": "parallel_get_agent", "params": {"agentId":'
        r' "\ud83d\ude00"}, "id": "pair"}',
        r'[{"jsonrpc": "2.0", "method": "parallel_get_agent", "params": ["\udc80"], "id": "b1"},'
        r' {"jsonrpc": "2.0", "method": "daemon_status", "id": "b2"}]',
        r'{"jsonrpc": "2.0", "method": "daemon_status", "id": "after"}',
    ]
    with Raw(d.socket) as raw:
        raw.send("".join(f + "\n" for f in frames).encode())
        got: dict[Any, Any] = {}
        while len(got) < 9:
            answer = raw.receive()
            for item in answer if isinstance(answer, list) else [answer]:
                got[item["id"]] = item
    assert error_locs(got["agent"]) == ["agentId"]
    assert error_of(got["agent"], -32602)["data"]["errors"][0]["type"] == "lone_surrogate"
    assert error_of(got["method"], -32601)["data"]["method"] == "daemon_\ud800"
    assert got["\udfff"]["result"]["pid"] == d.pid  # the id comes back as it was sent
    assert error_locs(got["key"]) == ["\ud800"]
    assert error_locs(got["init"]) == ["config.model"]
    error_of(got["pair"], errors.AgentNotFound.code)
    assert error_locs(got["b1"]) == ["0"]
    assert got["b2"]["result"]["pid"] == d.pid
    assert got["after"]["result"]["pid"] == d.pid
    with d.client(timeout=10) as c:
        assert c.session_list() == []  # the refused init kept nothing
    assert "Traceback" not in d.log()


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
        ('{"branchTemplate": "c/{task_id:>99999999999}"}', "config.branchTemplate"),
        ('{"branchTemplate": "c/{task_id.__class__}"}', "config.branchTemplate"),
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
    try:
        with pytest.raises(RuntimeError) as info:
            d.start(timeout=20)
    finally:
        if d.running():  # it must not have started; if it did, leave nothing behind
            d.kill()
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
        assert error["loc"] == "repoPath"  # as the typed client sends it (camelCase)
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


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("merge_completed_branches", {"targetBranch": "x" * 5000}),
        ("conflicts_detect", {"target": "x" * 5000}),
        ("conflicts_matrix", {"branches": ["main", "x" * 5000]}),
        ("conflicts_can_merge_safely", {"branch1": "main", "branch2": "x" * 5000}),
        ("worktree_allocate", {"agentId": "a", "taskId": "t1", "branch": "x" * 5000}),
        ("init_parallel_scheduler", {"sessionId": "s", "config": {"baseBranch": "x" * 5000}}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_branch_names_too_long_for_git_are_clear_errors(
    daemon_on_repo: tuple[DaemonProcess, Path], method: str, params: dict[str, Any]
) -> None:
    d, repo = daemon_on_repo
    with Raw(d.socket) as raw:
        raw.request({"jsonrpc": "2.0", "method": "init_parallel_scheduler", "id": 0,
                     "params": {"repoPath": str(repo), "sessionId": "s"}})  # fmt: skip
        assert "result" in raw.receive()
        if method == "init_parallel_scheduler":
            params = {**params, "repoPath": str(repo)}
        raw.request({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        answer = raw.receive()
    if "error" in answer:
        assert answer["error"]["code"] != -32603, answer
    assert "Traceback" not in d.log()
