"""Method-aware fuzzing: random params from every method's schema in `rpc.discover`.

A real daemon with one session on a temporary repository (agents are the
fake agent under every built-in name, so nothing real ever runs) gets calls
from several clients at once, over real sockets: mostly valid params, some
at the schema's edges, some hostile; batches; clients that subscribe, that
leave mid-request, that half-close. Every answer must be well formed and
none may be a -32603; once every client has closed, the daemon must hold no
connection but the one asking. Every loop is bounded in calls and in time.

The default run makes a few thousand calls; `-m chaos` makes 20,000.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.chaos.schemagen import Pools, SchemaGen
from tests.conftest import make_repo
from tests.daemon_proc import DaemonProcess

FAKE_AGENT = Path(__file__).parent.parent / "fake_agent.py"
BUILTIN_NAMES = ("claude", "codex", "opencode", "gemini", "cursor", "qwen", "droid", "aider")
#: Methods that would end the run, or write wherever a path points (git_init_repository
#: on "/" or "/etc" as root): fuzzed only with params they refuse.
NEVER_VALID = {"daemon_shutdown", "git_init_repository"}
CALL_TIMEOUT = 60.0


def chaos_config() -> str:
    """Every built-in agent type is the fake agent, editing one file two ways."""
    lines = [
        "[daemon]",
        "write_timeout_secs = 5",
        "[defaults]",
        "max_parallel = 2",
        "[defaults.resource_limits]",
        "max_runtime_secs = 30",
        "kill_grace_secs = 0.5",
        "[defaults.backoff]",
        "base_secs = 0.2",
        "cap_secs = 1",
    ]
    for n, name in enumerate((*BUILTIN_NAMES, "command")):
        argv = [sys.executable, str(FAKE_AGENT), "--stdout", f"{name} at work"]
        argv += ["--edit", f"README.md={name} {'A' if n % 2 else 'B'}\n", "--exit", str(n % 3 // 2)]
        lines += [f"[agents.{name}]", f"argv = {json.dumps(argv)}"]
    return "\n".join(lines) + "\n"


@dataclass
class Tally:
    """What the daemon answered, per method."""

    calls: int = 0
    by_method: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    internal: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))

    def record(self, method: str, request: bytes, answer: Any) -> None:
        if not (
            isinstance(answer, dict)
            and answer.get("jsonrpc") == "2.0"
            and "id" in answer
            and ("result" in answer) != ("error" in answer)
        ):
            self.malformed.append(f"{request[:300]!r} -> {answer!r:.300}")
            return
        if "error" in answer:
            code = answer["error"].get("code")
            self.by_method[method][str(code)] += 1
            if len(self.examples[str(code)]) < 3:
                self.examples[str(code)].append(f"{request[:300]!r} -> {answer['error']!r:.300}")
            if code == -32603:
                self.internal.append(f"{request[:500]!r} -> {answer['error']!r:.300}")
        else:
            self.by_method[method]["ok"] += 1


class Client:
    """One raw connection: NDJSON out, answers matched by id, notifications skipped."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.ids = itertools.count(1)
        self.subscriptions: list[str] = []  # made on this connection: only it may end them

    @classmethod
    async def open(cls, path: Path) -> Client:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, message: Any) -> bytes:
        line = json.dumps(message).encode() + b"\n"
        await self.stream.send_all(line)
        return line

    async def answer(self) -> Any:
        """The next message that is not a notification."""
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                chunk = await self.stream.receive_some(1 << 20)
                assert chunk, "the daemon closed the connection before answering"
                self.buf += chunk
                continue
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            message = json.loads(line)  # strict JSON or the test fails here
            if isinstance(message, dict) and "method" in message and "id" not in message:
                continue  # an event or a lagged notice
            return message

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Fuzz:
    daemon: DaemonProcess
    methods: list[dict[str, Any]]
    defs: dict[str, Any]
    pools: Pools
    calls: int
    deadline: float
    tally: Tally = field(default_factory=Tally)

    def budget_left(self) -> bool:
        return self.tally.calls < self.calls and trio.current_time() < self.deadline

    def request(self, gen: SchemaGen, client: Client) -> tuple[str, dict[str, Any]]:
        method = gen.rng.choice(self.methods)
        name: str = method["name"]
        params = gen.params(method)
        if name in NEVER_VALID:
            params = {"unexpected": params}
        elif name == "events_unsubscribe" and client.subscriptions and gen.rng.random() < 0.7:
            params = {"subscriptionId": gen.rng.choice(client.subscriptions)}
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": name, "id": next(client.ids)}
        if params != {} or gen.rng.random() < 0.5:
            message["params"] = params
        return name, message

    async def one(self, gen: SchemaGen, client: Client) -> bool:
        """One call (or a small batch); False when the connection was given up."""
        rng = gen.rng
        mode = rng.random()
        if mode < 0.03:  # leave with the request unanswered
            self.tally.calls += 1
            await self.send_quietly(client, self.request(gen, client)[1])
            return False
        if mode < 0.08:  # a batch, answered as one array
            batch = [self.request(gen, client) for _ in range(rng.randint(2, 5))]
            line = await client.send([m for _, m in batch])
            self.tally.calls += len(batch)
            with trio.fail_after(CALL_TIMEOUT):
                answers = await client.answer()
            assert isinstance(answers, list), answers
            by_id = {a.get("id"): a for a in answers}
            for name, message in batch:
                self.tally.record(name, line, by_id.get(message["id"]))
                self.pools.harvest(by_id.get(message["id"], {}).get("result"))
            return True
        name, message = self.request(gen, client)
        line = await client.send(message)
        self.tally.calls += 1
        with trio.fail_after(CALL_TIMEOUT):
            answer = await client.answer()
        self.tally.record(name, line, answer)
        if isinstance(answer, dict):
            result = answer.get("result")
            self.pools.harvest(result)
            if name == "events_subscribe" and isinstance(result, dict):
                client.subscriptions.append(result["subscriptionId"])
        return True

    @staticmethod
    async def send_quietly(client: Client, message: Any) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await client.send(message)

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        gen = SchemaGen(rng, self.defs, self.pools)
        while self.budget_left():
            client = await Client.open(self.daemon.socket)
            try:
                for _ in range(rng.randint(1, 120)):
                    if not self.budget_left() or not await self.one(gen, client):
                        break
                if rng.random() < 0.1:  # done sending, still reading: then gone
                    await client.stream.send_eof()
            finally:
                await client.aclose()


async def daemon_call(path: Path, method: str, **params: Any) -> Any:
    client = await Client.open(path)
    try:
        await client.send({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        with trio.fail_after(CALL_TIMEOUT):
            answer = await client.answer()
    finally:
        await client.aclose()
    assert "result" in answer, answer
    return answer["result"]


async def fuzz(
    daemon: DaemonProcess, repo: Path, *, calls: int, seconds: float, seed: int
) -> Tally:
    """Seed one session, fuzz with 4 clients, then check that no connection is left."""
    path = daemon.socket
    doc = await daemon_call(path, "rpc.discover")
    await daemon_call(path, "init_parallel_scheduler", repoPath=str(repo), sessionId="fz")
    tasks: list[dict[str, Any]] = [{"id": f"t{n}", "title": f"task {n}"} for n in range(1, 9)]
    tasks += [{"id": "t9", "title": "last", "dependencies": ["t1", "t2"]}]
    await daemon_call(path, "parallel_add_tasks", sessionId="fz", tasks=tasks)
    alloc = await daemon_call(path, "worktree_allocate", sessionId="fz", agentId="a0", taskId="t1")
    pools = Pools(repos=[str(repo), str(repo / "sub"), "/", "/nonexistent"])
    pools.harvest(alloc)
    run = Fuzz(
        daemon,
        doc["methods"],
        doc["components"]["schemas"],
        pools,
        calls=calls,
        deadline=trio.current_time() + seconds,
    )
    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(run.worker, seed * 1000 + n)
    # Every client has closed: only the one asking may be left.
    with trio.fail_after(10):
        # The daemon offers no event for this: ask until it holds.
        while (await daemon_call(path, "daemon_status"))["connections"] != 1:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return run.tally


@pytest.fixture
def fuzzed() -> Iterator[tuple[DaemonProcess, Path]]:
    with DaemonProcess(config=chaos_config(), env={"PATH": "/nonexistent"}) as d:
        repo = make_repo(d.dir / "repo", {"README.md": "base\n", "src/a.txt": "a\n"})
        yield d, repo
        assert d.stop() == 0, d.log()[-3000:]


def check(tally: Tally, daemon: DaemonProcess, seconds: float, methods_min: int) -> None:
    per_method = {m: sum(c.values()) for m, c in tally.by_method.items()}
    codes = collections.Counter[str]()
    for counter in tally.by_method.values():
        codes.update(counter)
    print(
        f"\n{tally.calls} calls in {seconds:.1f} s over {len(per_method)} methods"
        f" (fewest: {min(per_method.values())}); answers: {dict(codes.most_common())}"
    )
    never_ok = sorted(m for m, c in tally.by_method.items() if not c["ok"])
    print(f"methods never answered with a result: {never_ok}")
    assert not tally.malformed, tally.malformed[:5]
    assert not tally.internal, "\n".join(tally.internal[:20])
    assert len(per_method) >= methods_min, sorted(per_method)
    assert daemon.running()


@pytest.mark.slow
async def test_method_fuzz_default(fuzzed: tuple[DaemonProcess, Path]) -> None:
    """A few thousand calls: part of every run."""
    daemon, repo = fuzzed
    started = time.monotonic()
    tally = await fuzz(daemon, repo, calls=3000, seconds=150, seed=1)
    check(tally, daemon, time.monotonic() - started, methods_min=39)


@pytest.mark.chaos
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
async def test_method_fuzz_long(fuzzed: tuple[DaemonProcess, Path], seed: int) -> None:
    """5,000 calls per seed, 20,000 over the four: `-m chaos`."""
    daemon, repo = fuzzed
    started = time.monotonic()
    tally = await fuzz(daemon, repo, calls=5000, seconds=600, seed=seed)
    check(tally, daemon, time.monotonic() - started, methods_min=39)
