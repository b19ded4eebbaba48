"""The typed client methods: what they send, what mypy checks, and that they match the daemon.

The client never validates params (the daemon answers -32602); it renames
each keyword to its wire name, drops None and dumps models. What goes on the
wire is read off a real socket; the names are checked against a real
daemon's `rpc.discover`, and by mypy itself on a snippet.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import errors
from corral.client import AsyncClient, Client, _Methods, _Rpc
from corral.models import NoParams, SchedulerConfig, TaskSpec
from tests.daemon_proc import DaemonProcess

ROOT = Path(__file__).resolve().parents[1]

TASK = {"id": "a", "title": "t", "status": "ready"}
SESSION = {
    "id": "s",
    "repoPath": "/r",
    "status": "idle",
    "createdAt": 1.0,
    "config": {},
}


class Recorder:
    """A socket that answers every request with a canned result and keeps the requests."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="rec", dir="/tmp")) / "rec.sock"
        self.results = results
        self.requests: list[dict[str, Any]] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(self.path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:  # closed by the test before the connection was taken
            return
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                message = json.loads(line)
                self.requests.append(message)
                answer = {"jsonrpc": "2.0", "result": self.results[message["method"]]}
                conn.sendall(json.dumps({**answer, "id": message["id"]}).encode() + b"\n")

    def params(self) -> list[dict[str, Any]]:
        return [r["params"] for r in self.requests]

    def close(self) -> None:
        self.server.close()
        self.thread.join(10)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder(
        {
            "parallel_add_task": TASK,
            "parallel_add_tasks": [TASK],
            "init_parallel_scheduler": SESSION,
            "session_list": [SESSION],
            "parallel_list_tasks": [],
        }
    )
    yield rec
    rec.close()


def test_keywords_go_out_under_their_wire_names_without_nones(recorder: Recorder) -> None:
    with Client(recorder.path, timeout=10) as c:
        task = c.parallel_add_task(
            task=TaskSpec(id="a", title="t", agent_type="fake", estimated_tokens=None),
            session_id="s",
        )
        c.parallel_list_tasks(session_id=None, status="ready")
        c.session_list()
    assert task.id == "a" and task.state.value == "ready"
    assert recorder.params() == [
        {
            "task": {
                "id": "a",
                "title": "t",
                "description": "",
                "priority": 0,
                "dependencies": [],
                "agentType": "fake",
                "paths": [],
            },
            "sessionId": "s",
        },
        {"status": "ready"},
        {},
    ]


def test_models_are_dumped_and_dicts_pass_as_given(recorder: Recorder) -> None:
    with Client(recorder.path, timeout=10) as c:
        c.init_parallel_scheduler(repo_path="/r", config=SchedulerConfig(max_parallel=2))
        c.parallel_add_tasks(
            tasks=[TaskSpec(id="a", title="t"), {"id": "b", "title": "u", "agent_type": "x"}]
        )
    init, add = recorder.params()
    assert init["repoPath"] == "/r" and init["config"]["maxParallel"] == 2
    assert "max_parallel" not in init["config"]
    assert "null" not in json.dumps(init)  # exclude_none all the way down
    assert add["tasks"] == [
        {
            "id": "a",
            "title": "t",
            "description": "",
            "priority": 0,
            "dependencies": [],
            "paths": [],
        },
        {"id": "b", "title": "u", "agent_type": "x"},  # a dict is not the client's to rewrite
    ]


def test_call_is_the_untyped_escape_hatch(recorder: Recorder) -> None:
    with Client(recorder.path, timeout=10) as c:
        assert c.call("parallel_add_task", agent_type="x", sessionId="s", skip=None) == TASK
    assert recorder.params() == [{"agent_type": "x", "sessionId": "s"}]


def test_typed_methods_take_keywords_only(recorder: Recorder) -> None:
    with Client(recorder.path, timeout=10) as c, pytest.raises(TypeError, match="keyword"):
        c.parallel_add_task("a", "t")  # type: ignore[call-arg]  # positional: mypy says so too
    assert recorder.requests == []  # nothing was sent


def test_the_daemon_not_the_client_rejects_bad_params(daemon: DaemonProcess, repo: Path) -> None:
    with daemon.client() as c:
        c.init_parallel_scheduler(repo_path=str(repo))
        untyped: Any = c  # what a caller without mypy can do
        with pytest.raises(errors.InvalidParams) as extra:
            untyped.parallel_add_task(id="a", title="t", bogus=1)
        assert extra.value.data["errors"][0]["type"] == "extra_forbidden"
        with pytest.raises(errors.InvalidParams):
            untyped.parallel_add_task(task={"id": "a", "title": "t", "priority": "high"})
        assert c.parallel_add_task(task={"id": "a", "title": "t", "priority": 3}).priority == 3


def test_every_typed_method_takes_the_params_the_daemon_publishes(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        doc = c.rpc_discover()
    published = {m["name"]: m["params"] for m in doc["methods"]}
    rpcs = [v for v in vars(_Methods).values() if isinstance(v, _Rpc)]
    assert len(rpcs) == len({r.name for r in rpcs}) >= 35
    for rpc in rpcs:
        assert rpc.name in published, rpc.name
        fields = rpc.model.model_fields
        ours = {f.alias or n: f.is_required() for n, f in fields.items()}
        theirs = {p["name"]: p["required"] for p in published[rpc.name]}
        assert ours == theirs, (rpc.name, rpc.model.__name__)
        if rpc.model is NoParams:
            assert theirs == {}, rpc.name


async def test_async_typed_methods(daemon: DaemonProcess, repo: Path) -> None:
    async with AsyncClient(daemon.socket) as c:
        session = await c.init_parallel_scheduler(repo_path=str(repo), session_id="s")
        task = await c.parallel_add_task(session_id=session.id, task={"id": "a", "title": "t"})
        assert task.id == "a"
        tasks = await c.parallel_list_tasks(session_id="s", state="ready")
        assert [t.id for t in tasks] == ["a"]
        with pytest.raises(errors.TaskNotFound):
            await c.parallel_get_task(session_id="s", task_id="nope")


SNIPPET = """
from corral.client import AsyncClient, Client


def ok(c: Client) -> None:
    c.parallel_add_task(task={"id": "a", "title": "t", "dependencies": ["b"]}, session_id=None)
    c.conflicts_detect(branches=[{"branch": "x"}], target="main")
    reveal_type(c.parallel_list_tasks(state="ready"))


def typo(c: Client) -> None:
    c.parallel_add_task(tsk={"id": "a", "title": "t"})


async def typo_async(c: AsyncClient) -> None:
    await c.session_get(sessionId="s")


def no_params(c: Client) -> None:
    c.daemon_status(session_id="s")
"""


@pytest.mark.slow
def test_mypy_checks_the_keyword_names(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    config = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "c")]
    out = subprocess.run(
        [sys.executable, "-m", "mypy", *config, "--no-error-summary", str(snippet)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    # "file:line: message"; older mypy spells the list type "builtins.list".
    lines = [line.split(": ", 1)[-1].replace("builtins.", "") for line in out.stdout.splitlines()]
    assert lines == [
        'note: Revealed type is "list[corral.models.Task]"',
        'error: Unexpected keyword argument "tsk"; did you mean "task"?  [call-arg]',
        'error: Unexpected keyword argument "sessionId"; did you mean "session_id"?  [call-arg]',
        'error: Unexpected keyword argument "session_id"  [call-arg]',
    ], out.stdout + out.stderr
