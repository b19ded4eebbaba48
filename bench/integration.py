"""Bench: the integration queue, batched against one branch at a time, and its merge cost.

Sixteen completed task branches of one repository (1,000 files), each
adding a file of its own and editing a different line of one of four shared
files, so several branches touch the same file yet all merge cleanly. The
gate is a real program that sleeps 0.5 s. The same branches are integrated
three times by corral's integrator (the real one: an in-process engine, pool
and executor on a real SQLite file; the gate supervised like an agent), with
gateBatch 16, with the default gateBatch (4) and with gateBatch 1, in one
run. Prints the times, the number of gate runs, and each batched run's ratio
to one at a time (target <= 0.5).

Then the merges alone: corral's in-memory candidate merges of the sixteen
branches in sequence (`git.merge.integrate.candidates`, one merge commit
each) against what git needs for the same result with its own commands:
`git merge-tree --write-tree`, `git commit-tree` and `git update-ref` per
branch. Prints the per-branch cost of each and the ratio.

    python bench/integration.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2
import trio
from pygit2.enums import FileMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / d) for d in ("daemon", "client")]

from corral.models import (  # noqa: E402
    IntegrationStatus,
    SchedulerConfig,
    Session,
    SessionStatus,
    Task,
    TaskState,
)
from corrald.git.merge import integrate  # noqa: E402
from corrald.pool.pool import AgentPool  # noqa: E402
from corrald.state.engine import Engine  # noqa: E402
from corrald.state.events import EventBus  # noqa: E402
from corrald.state.store import Store  # noqa: E402

BRANCHES, FILES, SHARED, LINES = 16, 1000, 4, 40
GATE_SECS = 0.5
TARGET = 0.5
DEFAULT_BATCH = SchedulerConfig().gate_batch  # 4
INTEGRATION = "corral-integration/bench"


def _content(name: str, edits: dict[int, str] | None = None) -> bytes:
    lines = [f"{name}: line {i}" for i in range(LINES)]
    for i, text in (edits or {}).items():
        lines[i] = text
    return ("\n".join(lines) + "\n").encode()


def build(path: Path) -> list[str]:
    """The repository: main with FILES files, and BRANCHES task branches off it."""
    repo = pygit2.init_repository(str(path), initial_head="main")
    sig = pygit2.Signature("bench", "bench@corral.invalid")
    files = [f"src/mod{i:04d}.py" for i in range(FILES)]
    index = pygit2.Index()
    for name in files:
        index.add(pygit2.IndexEntry(name, repo.create_blob(_content(name)), FileMode.BLOB))
    base = repo.create_commit("refs/heads/main", sig, sig, "base", index.write_tree(repo), [])
    names = []
    for b in range(BRANCHES):
        index = pygit2.Index()
        index.read_tree(repo[base].peel(pygit2.Tree))
        shared = files[b % SHARED]
        # Each branch edits its own line of a shared file: same file, clean merge.
        line = 2 * (b // SHARED) + 1
        edit = _content(shared, {line: f"edited by task {b}"})
        index.add(pygit2.IndexEntry(shared, repo.create_blob(edit), FileMode.BLOB))
        own = f"tasks/t{b:02d}.txt"
        index.add(pygit2.IndexEntry(own, repo.create_blob(f"task {b}\n".encode()), FileMode.BLOB))
        name = f"corral/t{b:02d}"
        repo.create_commit(f"refs/heads/{name}", sig, sig, f"t{b}", index.write_tree(repo), [base])
        names.append(name)
    repo.create_reference(f"refs/heads/{INTEGRATION}", base)
    return names


async def integrate_all(repo: Path, work: Path, batch: int, gate: Path) -> tuple[float, int]:
    """Integrate every branch with corral's integrator; (seconds, gate runs)."""
    store = Store(work / f"state-{batch}" / "corral.db")
    runs = work / f"gate-runs-{batch}"
    config = SchedulerConfig(
        gate_command=[sys.executable, str(gate), str(runs)], gate_batch=batch, gate_timeout_secs=60
    )
    session = Session(
        id=f"b{batch}",
        repo_path=str(repo),
        config=config,
        status=SessionStatus.RUNNING,
        created_at=time.time(),
        integration_branch=INTEGRATION,
    )
    tasks = [
        Task(
            id=f"t{b:02d}",
            title=f"t{b}",
            state=TaskState.COMPLETED,
            attempts=1,
            branch=f"corral/t{b:02d}",
            integration_status=IntegrationStatus.QUEUED,
        )
        for b in range(BRANCHES)
    ]
    with store.transaction():
        store.put_session(session)
        store.put_tasks(session.id, tasks)
    engine = Engine(store, EventBus(store))
    pool = AgentPool(engine, logs_dir=work / f"logs-{batch}", worktree_base=work / f"wt-{batch}")
    done = trio.Event()
    state = engine.session(session.id)

    def check(_: object) -> None:
        if not state.scheduler.awaiting_integration():
            done.set()

    engine.on_change.append(check)
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        await nursery.start(pool.run)  # wakes the session: its integrator starts
        with trio.fail_after(600):
            await done.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    went_in = [
        t for t in state.scheduler.tasks() if t.integration_status is IntegrationStatus.INTEGRATED
    ]
    assert len(went_in) == BRANCHES, went_in
    store.close()
    return elapsed, len(runs.read_text().splitlines())


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="corral-bench-int-", dir="/tmp"))
    try:
        gate = work / "gate.py"
        gate.write_text(
            f"import sys, time\nopen(sys.argv[1], 'a').write('run\\n')\ntime.sleep({GATE_SECS})\n"
        )
        print(f"{BRANCHES} completed branches, {FILES} files, a gate of {GATE_SECS} s")
        repos = {}
        sizes = (BRANCHES, DEFAULT_BATCH, 1)
        for batch in sizes:
            repos[batch] = work / f"repo-{batch}"
            names = build(repos[batch])
        times, runs = {}, {}
        for batch in sizes:
            times[batch], runs[batch] = trio.run(integrate_all, repos[batch], work, batch, gate)
        print(f"  one at a time (gateBatch 1): {times[1]:.2f} s, {runs[1]} gate runs")
        for batch in sizes[:-1]:
            ratio = times[batch] / times[1]
            verdict = "OK" if ratio <= TARGET else "OVER TARGET"
            print(
                f"  batched (gateBatch {batch}{', the default' * (batch == DEFAULT_BATCH)}):"
                f" {times[batch]:.2f} s, {runs[batch]} gate run(s);"
                f" ratio to one at a time {ratio:.2f} [target <= {TARGET}: {verdict}]"
            )
        merge_costs(work, names)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def merge_costs(work: Path, names: list[str]) -> None:
    repo = work / "repo-merge"
    build(repo)
    head = pygit2.Repository(str(repo)).references[f"refs/heads/{INTEGRATION}"].target
    items = [integrate.Item(n.split("/")[1], n) for n in names]
    t0 = time.perf_counter()
    cands = trio.run(integrate.candidates, str(repo), str(head), items, INTEGRATION)
    corral = (time.perf_counter() - t0) / len(names)
    assert all(c.kind == "merged" for c in cands), cands

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    current = str(head)
    t0 = time.perf_counter()
    for name in names:
        tree = git("merge-tree", "--write-tree", current, name)
        current = git("commit-tree", tree, "-p", current, "-p", name, "-m", f"Integrate {name}")
        git("update-ref", "refs/heads/git-integration", current)
    plain = (time.perf_counter() - t0) / len(names)
    check = pygit2.Repository(str(repo))
    ours = check[pygit2.Oid(hex=cands[-1].commit)].peel(pygit2.Commit)
    same = ours.tree_id == check[pygit2.Oid(hex=current)].peel(pygit2.Commit).tree_id
    print(
        f"  merge cost per branch: corral {corral * 1000:.1f} ms; git merge-tree --write-tree"
        f" + commit-tree + update-ref {plain * 1000:.1f} ms; ratio {corral / plain:.2f}"
        f" (same final tree: {same})"
    )


if __name__ == "__main__":
    sys.exit(main())
