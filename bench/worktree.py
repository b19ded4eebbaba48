"""Worktree allocation: corral's `allocate` against `git worktree add -b`.

Builds a 5,000-file repository (one commit), then alternates git and corral
allocations (one fresh worktree and branch each) and prints both medians and
the ratio corral/git (target <= 1.0), then the cost of 20 allocations in a row.
Run: `python bench/worktree.py [--files N] [--reps N] [--profile]`.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("daemon", "client")]

from corrald.git import worktrees  # noqa: E402

_GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@corral.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@corral.invalid",
}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=_GIT_ENV)


def make_repo(path: Path, files: int) -> None:
    """`files` small text files in nested directories, one commit on main."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for i in range(files):
        d = path / f"pkg{i % 40}" / f"mod{i % 9}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i}.txt").write_text(f"file {i}\n" + "some content line\n" * 8)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "generated")


def time_git(repo: Path, base: Path, i: int) -> float:
    start = time.perf_counter()
    git(repo, "worktree", "add", "-q", "-b", f"g{i}", str(base / f"g{i}"), "main")
    return time.perf_counter() - start


def time_corral(repo: Path, base: Path, task: str) -> float:
    start = time.perf_counter()
    info = trio.run(worktrees.allocate, str(repo), base, task, f"corral/{task}", "main")
    elapsed = time.perf_counter() - start
    assert info.created
    return elapsed


async def many(repo: Path, base: Path, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await worktrees.allocate(str(repo), base, f"m{i}", f"corral/m{i}", "main")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--many", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="profile the 20 allocations")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        root = Path(tmp)
        repo, base = root / "repo", root / "wt"
        t0 = time.perf_counter()
        make_repo(repo, args.files)
        print(f"repo: {args.files} files, built in {time.perf_counter() - t0:.1f} s")

        # Warm both paths once (page cache, imports) so neither pays a first-run cost.
        time_git(repo, base, 999)
        time_corral(repo, base, "warm")
        git_times, corral_times = [], []
        for i in range(args.reps):
            git_times.append(time_git(repo, base, i))
            corral_times.append(time_corral(repo, base, f"c{i}"))
        g, c = statistics.median(git_times), statistics.median(corral_times)
        print(f"git worktree add : median {g * 1000:7.1f} ms  ({args.reps} runs)")
        print(f"corral allocate  : median {c * 1000:7.1f} ms  ({args.reps} runs)")
        print(f"ratio corral/git : {c / g:.2f}  (target <= 1.0)")

        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        total = trio.run(many, repo, base, args.many)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)
        each = total / args.many * 1000
        print(f"{args.many} allocations in a row: {total:.2f} s, {each:.1f} ms each")


if __name__ == "__main__":
    main()
