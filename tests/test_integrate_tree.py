"""The integration merge's incremental tree equals libgit2's full `Index.write_tree`."""

from __future__ import annotations

import tempfile

import pygit2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pygit2.enums import FileMode

from corrald.git.merge.integrate import _merged_tree

NAMES = st.sampled_from(["a", "b", "c", "d.txt", "e.py"])
PATHS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)


def _tree(repo: pygit2.Repository, files: dict[str, tuple[bytes, FileMode]]) -> pygit2.Tree:
    index = pygit2.Index()
    for path, (data, mode) in files.items():
        index.add(pygit2.IndexEntry(path, repo.create_blob(data), FileMode(mode)))
    return repo[index.write_tree(repo)].peel(pygit2.Tree)


def _consistent(files: dict[str, tuple[bytes, FileMode]]) -> dict[str, tuple[bytes, FileMode]]:
    """Drop paths that are a directory of another path (git cannot hold both)."""
    keep: dict[str, tuple[bytes, FileMode]] = {}
    for path in sorted(files, key=len):
        if not any(path.startswith(other + "/") for other in keep):
            keep = {k: v for k, v in keep.items() if not k.startswith(path + "/")}
            keep[path] = files[path]
    return keep


FILES = st.dictionaries(
    PATHS,
    st.tuples(st.binary(max_size=8), st.sampled_from([FileMode.BLOB, FileMode.BLOB_EXECUTABLE])),
    max_size=12,
).map(_consistent)


Files = dict[str, tuple[bytes, FileMode]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=FILES, after=FILES)
def test_incremental_tree_matches_write_tree(before: Files, after: Files) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        repo = pygit2.init_repository(tmp)
        base = _tree(repo, before)
        wanted = repo.index  # an index bound to the repository, like a merge's
        wanted.clear()
        for path, (data, mode) in after.items():
            wanted.add(pygit2.IndexEntry(path, repo.create_blob(data), FileMode(mode)))
        assert _merged_tree(repo, base, wanted) == wanted.write_tree(repo)
