"""Graph order over task dependencies (pure): topological sorts and cycle detection."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from corral import errors

H = TypeVar("H", bound=Hashable)


def topological_order(
    items: Iterable[H], deps: Callable[[H], Iterable[H]], rank: Callable[[H], Any]
) -> list[H]:
    """`items` with dependencies first; among those free at once, lowest `rank` first.

    Dependencies outside `items` are ignored. Deterministic for a total `rank`.
    """
    members = list(items)
    inside = set(members)
    waiting = {m: 0 for m in members}
    dependents: dict[H, list[H]] = {m: [] for m in members}
    for m in members:
        for d in deps(m):
            if d in inside:
                waiting[m] += 1
                dependents[d].append(m)
    free = [(rank(m), i, m) for i, m in enumerate(members) if waiting[m] == 0]
    heapq.heapify(free)
    index = {m: i for i, m in enumerate(members)}
    order: list[H] = []
    while free:
        *_, m = heapq.heappop(free)
        order.append(m)
        for c in dependents[m]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(free, (rank(c), index[c], c))
    return order


class _Queued(Protocol):
    """What the merge order reads of a task (a `Task` model or a `TaskRow`)."""

    @property
    def id(self) -> str: ...
    @property
    def dependencies(self) -> Sequence[str]: ...
    @property
    def priority(self) -> int: ...


Q = TypeVar("Q", bound=_Queued)


def merge_order(tasks: Sequence[Q]) -> list[Q]:
    """Tasks in dependency order, ties by priority then insertion (the merge queue's order)."""
    by_id = {t.id: t for t in tasks}
    position = {t.id: i for i, t in enumerate(tasks)}
    ids = topological_order(
        by_id, lambda i: by_id[i].dependencies, lambda i: (by_id[i].priority, position[i])
    )
    return [by_id[i] for i in ids]


def batch_order(ids: list[str], deps: dict[str, tuple[str, ...]]) -> list[str]:
    """Batch ids, dependencies first; `errors.DependencyCycle` if the batch has a cycle.

    Only edges inside the batch matter: existing tasks cannot depend on new
    ones, so any cycle lies wholly within the batch. The reported cycle lists
    ids so that each depends on the next, the first repeated at the end.
    """
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(ids, white)
    order: list[str] = []
    for root in ids:
        if color[root] != white:
            continue
        color[root] = grey
        path = [root]
        iters = [iter(deps[root])]
        while iters:
            for dep in iters[-1]:
                state = color.get(dep)
                if state is None or state == black:
                    continue  # an existing task, or done
                if state == grey:
                    cycle = [*path[path.index(dep) :], dep]
                    raise errors.DependencyCycle(
                        f"dependency cycle: {' -> '.join(cycle)}", data={"cycle": cycle}
                    )
                color[dep] = grey
                path.append(dep)
                iters.append(iter(deps[dep]))
                break
            else:
                iters.pop()
                done = path.pop()
                color[done] = black
                order.append(done)
    return order
