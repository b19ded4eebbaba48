"""Random JSON values from a JSON Schema (the subset pydantic writes into rpc.discover).

Mostly values the schema allows, some at its edges, some hostile (wrong
types, lone surrogates, huge numbers, paths the kernel refuses, flag-like
strings). Strings are drawn from pools of names the daemon knows (session,
task and agent ids, branches, worktree paths) so that calls reach past
validation into the engine, git and the pool. Deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JSONValue = Any

#: Values no schema asks for: each has broken something once, somewhere.
HOSTILE: tuple[JSONValue, ...] = (
    None,
    True,
    False,
    0,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    2**64 + 1,
    -(2**63) - 1,
    10**30,
    1e308,
    -1e308,
    5e-324,
    0.5,
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\U0001f600",
    "é" * 300,
    "--model",
    "-x",
    "--help",
    "..",
    "../../etc/passwd",
    "/",
    "/etc",
    "a/b",
    "a//b",
    "refs/heads/main",
    "HEAD",
    "@{-1}",
    "main.lock",
    "x" * 5000,
    "/" + "p" * 5000,
    "/tmp/" + "n" * 300,
    "{task_id}/{}",
    "{task_id:>99999999999}",
    "{task_id.__class__}",
    "{0}",
    "%s%s%n",
    "\n",
    "a\nb",
    [],
    [None],
    [[[]]],
    {},
    {"": None},
    {"\ud800": 1},
)


@dataclass
class Pools:
    """Names the daemon knows, harvested from its answers as the run goes."""

    sessions: list[str] = field(default_factory=lambda: ["fz"])
    tasks: list[str] = field(default_factory=lambda: ["t1", "t2"])
    agents: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=lambda: ["main", "corral/t1"])
    worktrees: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    repos: list[str] = field(default_factory=list)

    def add(self, pool: list[str], value: str, cap: int = 200) -> None:
        if value not in pool:
            pool.append(value)
            if len(pool) > cap:
                del pool[0]

    def harvest(self, value: JSONValue) -> None:
        """Remember the ids in an answer (tasks, agents, worktrees, subscriptions)."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
                ident = item.get("id")
                if isinstance(ident, str):
                    if "repoPath" in item:
                        self.add(self.sessions, ident, 20)
                    elif "title" in item:
                        self.add(self.tasks, ident)
                    elif "agentType" in item and "taskId" in item:
                        self.add(self.agents, ident)
                for key, pool in (
                    ("agentId", self.agents),
                    ("worktreePath", self.worktrees),
                    ("branch", self.branches),
                    ("subscriptionId", self.subscriptions),
                ):
                    found = item.get(key)
                    if isinstance(found, str) and found:
                        self.add(pool, found)


_SINGULAR = {
    "branches": "branch",
    "topics": "topic",
    "tasks": "task",
    "conflicts": "conflict",
    "dependencies": "taskId",
}


class SchemaGen:
    """Draws params for one method from its OpenRPC params and the shared schemas."""

    def __init__(self, rng: random.Random, defs: dict[str, Any], pools: Pools) -> None:
        self.rng = rng
        self.defs = defs
        self.pools = pools
        self.hostile_rate = 0.08

    # --- names the daemon knows ----------------------------------------------------
    def _named(self, name: str) -> Callable[[], str] | None:
        p, r = self.pools, self.rng
        key = name.lower()
        table: dict[str, Callable[[], str]] = {
            "sessionid": lambda: r.choice(p.sessions),
            "taskid": lambda: r.choice(p.tasks),
            "id": lambda: r.choice([*p.tasks, f"t{r.randrange(40)}", f"fz-{r.randrange(10**6)}"]),
            "agentid": lambda: r.choice(p.agents or ["a1"]),
            "subscriptionid": lambda: r.choice(p.subscriptions or ["sub-1"]),
            "worktreepath": lambda: r.choice(p.worktrees or ["/nonexistent"]),
            "repopath": lambda: r.choice(p.repos or ["/nonexistent"]),
            "branch": lambda: r.choice(p.branches),
            "branch1": lambda: r.choice(p.branches),
            "branch2": lambda: r.choice(p.branches),
            "target": lambda: r.choice(p.branches),
            "targetbranch": lambda: r.choice(p.branches),
            "basebranch": lambda: r.choice(p.branches),
            "prioritybranch": lambda: r.choice(p.branches),
            "filepath": lambda: r.choice(["README.md", "src/a.txt", "nope.txt", "a/../b"]),
            "agenttype": lambda: r.choice(["claude", "codex", "command", "nope"]),
            "fallbackagent": lambda: r.choice(["codex", "claude", "nope"]),
            "model": lambda: r.choice(["m1", "opus", "gpt-5"]),
            "branchtemplate": lambda: r.choice(["corral/{task_id}", "fz/{taskId}", "x"]),
            "title": lambda: r.choice(["fix it", "t", "a title"]),
            "topic": lambda: r.choice(["task", "agent", "log", "session", "merge"]),
        }
        return table.get(key)

    # --- values from a schema -------------------------------------------------------
    def value(self, schema: dict[str, Any], name: str = "", depth: int = 0) -> JSONValue:
        r = self.rng
        if r.random() < self.hostile_rate or depth > 6:
            return r.choice(HOSTILE)
        if "$ref" in schema:
            return self.value(self.defs[schema["$ref"].rsplit("/", 1)[1]], name, depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                real = [o for o in options if o.get("type") != "null"]
                if real and len(real) < len(options) and r.random() < 0.85:
                    options = real  # "or null" is the default anyway: mostly say something
                return self.value(r.choice(options), name, depth + 1)
        if "allOf" in schema:
            return self.value(schema["allOf"][0], name, depth + 1)
        if "enum" in schema:
            return r.choice(schema["enum"]) if r.random() < 0.95 else "not_a_value"
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "string":
            return self._string(schema, name)
        if kind == "integer":
            return self._number(schema, integer=True)
        if kind == "number":
            return self._number(schema, integer=False)
        if kind == "boolean":
            return r.random() < 0.5
        if kind == "null":
            return None
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "object" or "properties" in schema:
            return self.object(schema, depth)
        return r.choice(HOSTILE)

    def _string(self, schema: dict[str, Any], name: str) -> str:
        r = self.rng
        named = self._named(name)
        if named is not None and r.random() < 0.85:
            return named()
        low = int(schema.get("minLength", 0))
        high = min(int(schema.get("maxLength", 40)), 40)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_./ "
        text = "".join(r.choice(alphabet) for _ in range(r.randint(low, max(low, high))))
        return text

    def _number(self, schema: dict[str, Any], *, integer: bool) -> int | float:
        r = self.rng
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        edges: list[float] = [v for v in (low, high) if v is not None]
        edges += [e + d for e in list(edges) for d in (-1, 1)]
        choice = r.random()
        if edges and choice < 0.3:
            value: float = r.choice(edges)
        elif choice < 0.9:
            lo = low if low is not None else -1000
            hi = high if high is not None else 1000
            value = r.uniform(lo, hi) if lo < hi else lo
        else:
            value = r.choice([0, -1, 2**53, 2**63, 10**20])
        return round(value) if integer else value

    def _array(self, schema: dict[str, Any], name: str, depth: int) -> list[JSONValue]:
        r = self.rng
        if "prefixItems" in schema:
            return [
                self.value(s, _SINGULAR.get(name, name), depth + 1) for s in schema["prefixItems"]
            ]
        low = int(schema.get("minItems", 0))
        high = min(int(schema.get("maxItems", 4)), 4)
        items = schema.get("items", {})
        singular = _SINGULAR.get(name, name)
        return [
            self.value(items, singular, depth + 1) for _ in range(r.randint(low, max(low, high)))
        ]

    def object(self, schema: dict[str, Any], depth: int = 0) -> dict[str, JSONValue]:
        r = self.rng
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        out: dict[str, JSONValue] = {}
        for prop, sub in props.items():
            # Naming the session gets calls past "which session?" to the work.
            wanted = 0.9 if prop == "sessionId" else 0.4
            if prop in required or r.random() < wanted:
                out[prop] = self.value(sub, prop, depth + 1)
        if required and r.random() < 0.03:
            out.pop(r.choice(sorted(required)), None)
        if r.random() < 0.03:
            out[r.choice(["bogus", "session_id", "\ud800", ""])] = 1
        return out

    def params(self, method: dict[str, Any]) -> JSONValue:
        """The `params` member of a call to `method` (an OpenRPC method object)."""
        r = self.rng
        schema = {
            "type": "object",
            "properties": {p["name"]: p["schema"] for p in method["params"]},
            "required": [p["name"] for p in method["params"] if p["required"]],
        }
        chance = r.random()
        if chance < 0.03:
            return r.choice([[], [r.choice(HOSTILE)], {}, {"x": 1}])
        if chance < 0.06 and method["params"]:
            drawn = self.object(schema)
            return [drawn.get(p["name"]) for p in method["params"]][: r.randint(0, 3)]
        return self.object(schema)
