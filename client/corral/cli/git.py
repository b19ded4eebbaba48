"""Git: `corral worktrees`, `conflicts`, `merge`, `integration`, `integrate`."""

from __future__ import annotations

import argparse

from corral.cli.common import EXIT_OK, Out, UsageError, command, connect, progress, session_arg


def _worktrees_args(parser: argparse.ArgumentParser) -> None:
    session_arg(parser)
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove clean orphan worktrees and prune git metadata (dirty ones are kept)",
    )


@command("worktrees", "list a session's worktrees, or clean up orphans", _worktrees_args)
def cmd_worktrees(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        if args.cleanup:
            with progress(out, "cleaning up orphan worktrees"):
                report = c.worktree_cleanup_report(session_id=args.session)
            if out.as_json:
                out.data(report)
            else:
                out.line(
                    f"removed {len(report.removed)}, pruned {len(report.pruned)},"
                    f" kept {len(report.kept_dirty)} dirty"
                )
                for path in report.kept_dirty:
                    out.line(f"  dirty, kept: {path}")
            return EXIT_OK
        allocations = c.worktree_get_allocations(session_id=args.session)
    if out.as_json:
        out.data(allocations)
    else:
        out.table(
            "worktrees",
            ["task", "agent", "branch", "base", "path"],
            [
                [a.task_id, a.agent_id, a.branch, a.base_branch, a.worktree_path]
                for a in allocations
            ],
        )
    return EXIT_OK


def _conflicts_args(parser: argparse.ArgumentParser) -> None:
    session_arg(parser)
    parser.add_argument(
        "--matrix", action="store_true", help="show each pair's state (clean/overlap/conflict)"
    )
    parser.add_argument(
        "--target", metavar="BRANCH", help="also merge each branch against this branch"
    )


@command(
    "conflicts",
    "find conflicts between the session's task branches (in-memory merges)",
    _conflicts_args,
)
def cmd_conflicts(args: argparse.Namespace, out: Out) -> int:
    if args.matrix and args.target:
        raise UsageError("--matrix and --target cannot be combined")
    with connect(args) as c, progress(out, "merging branch pairs in memory"):
        if args.matrix:
            matrix = c.conflicts_matrix(session_id=args.session)
        else:
            found = c.conflicts_detect(session_id=args.session, target=args.target)
    if args.matrix:
        if out.as_json:
            out.data(matrix)
        else:
            from corral.watch import render_matrix  # loaded late: it needs rich

            out.console.print(render_matrix(matrix))
        return EXIT_OK
    if out.as_json:
        out.data(found)
    else:
        out.table(
            "conflicts",
            ["file", "branch", "branch", "type", "resolvable", "strategy"],
            [
                [
                    f.file_path,
                    f.branch1,
                    f.branch2,
                    f.conflict_type.value,
                    "yes" if f.auto_resolvable else "no",
                    f.recommended_strategy.value,
                ]
                for f in found
            ],
        )
    return EXIT_OK


def _merge_args(parser: argparse.ArgumentParser) -> None:
    session_arg(parser)
    parser.add_argument("--dry-run", action="store_true", help="report, move nothing")
    parser.add_argument("--target", metavar="BRANCH", help="branch to merge into (default: base)")


@command(
    "merge",
    "land the session's work on the target (default: its base branch): the integration"
    " branch, or with integration off each completed branch, skipping conflicting ones",
    _merge_args,
)
def cmd_merge(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c, progress(out, "merging completed branches"):
        report = c.merge_completed_branches(
            session_id=args.session, target_branch=args.target, dry_run=args.dry_run
        )
    if out.as_json:
        out.data(report)
        return EXIT_OK
    verb = "would merge" if report.dry_run else "merged"
    out.table(
        f"{verb} into {report.target}: {report.merged} of {report.total_branches}"
        f" ({report.failed} failed, {report.skipped} skipped)",
        ["branch", "status", "commit", "files / error"],
        [
            [
                r.branch,
                r.status.value,
                (r.commit or "")[:10],
                ", ".join(r.files or []) or r.error or "",
            ]
            for r in report.results
        ],
    )
    return EXIT_OK


@command(
    "integration",
    "the integration branch: its head, the queue, the batch being gated, parked tasks",
    session_arg,
)
def cmd_integration(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c:
        report = c.integration_status(session_id=args.session)
        tasks = c.parallel_list_tasks(session_id=args.session) if report.enabled else []
    if out.as_json:
        out.data(report)
    elif not report.enabled:
        out.line("integration is off for this session (each task stays on its own branch)")
    else:
        from corral.watch import render_integration  # loaded late: it needs rich

        out.console.print(render_integration(report, tasks))
        for parked in report.parked:
            lines = (parked.error or "").strip().splitlines()
            what = ", ".join(parked.files) or (lines[-1] if lines else "")
            out.console.print(
                f"  parked: {parked.task_id} ({parked.integration_status.value}: {what});"
                f" fix and commit in its worktree, then `corral integrate {parked.task_id}`",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
    return EXIT_OK


def _integrate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK", help="the parked task")
    session_arg(parser)


@command(
    "integrate",
    "put a parked TASK back into the integration queue once a person has resolved and"
    " committed it in the task's worktree (policy manual)",
    _integrate_args,
)
def cmd_integrate(args: argparse.Namespace, out: Out) -> int:
    with connect(args) as c, progress(out, f"queueing {args.task}"):
        task = c.task_integrate(session_id=args.session, task_id=args.task)
    if out.as_json:
        out.data(task)
    else:
        status = task.integration_status.value if task.integration_status else "-"
        out.line(f"task {task.id}: integration {status}")
    return EXIT_OK
