"""Git edge of the daemon: pygit2 in worker threads, errors mapped to corral.errors."""

from corrald.git.repo import (
    discover_repo_root,
    in_thread,
    map_git_errors,
    open_repo,
    repo_key,
    write_lock,
)
from corrald.git.worktrees import (
    WorktreeInfo,
    allocate,
    cleanup_orphans,
    commit_all,
    deallocate,
    default_base_dir,
    dirty_files,
    head_branch,
    render_branch,
    validate_branch,
    validate_inside,
    validate_task_id,
)

__all__ = [
    "WorktreeInfo",
    "allocate",
    "cleanup_orphans",
    "commit_all",
    "deallocate",
    "default_base_dir",
    "dirty_files",
    "discover_repo_root",
    "head_branch",
    "in_thread",
    "map_git_errors",
    "open_repo",
    "render_branch",
    "repo_key",
    "validate_branch",
    "validate_inside",
    "validate_task_id",
    "write_lock",
]
