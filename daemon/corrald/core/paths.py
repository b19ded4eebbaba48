"""Whether two tasks' `paths` can touch the same file (pure; conflict-aware scheduling).

A task may declare the paths it expects to touch as globs: `*` and `?` match
within one path component, `[...]` a character set, `**` any number of
components (zero included). Two tasks whose globs could both match one path
never run at the same time. Deciding that is an intersection of two
patterns, done component by component:

- `**` on either side can swallow zero or more components of the other;
- two plain components overlap when both can match one name: equal
  literals, or a wildcard component whose fixed prefix and suffix agree with
  the other's (`*.py` and `test_*` overlap, `*.py` and `*.md` do not).

The answer errs on the side of overlap for exotic patterns (two character
sets are taken to overlap): a false overlap only serialises two tasks, a
missed one could let them conflict.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from functools import cache

_WILD = re.compile(r"[*?\[]")


def _components(glob: str) -> tuple[str, ...]:
    parts = [p for p in glob.strip("/").split("/") if p not in ("", ".")]
    # "dir/" and "dir" mean the directory and everything below it.
    if glob.endswith("/") or (parts and not _WILD.search(parts[-1]) and "." not in parts[-1]):
        parts.append("**")
    return tuple(parts)


def _fixed_ends(component: str) -> tuple[str, str]:
    """The literal text before the first and after the last wildcard."""
    first = _WILD.search(component)
    assert first is not None
    prefix = component[: first.start()]
    tail = re.split(r"\*|\?|\[[^\]]*\]", component)[-1]
    return prefix, tail


def _names_overlap(a: str, b: str) -> bool:
    wild_a, wild_b = bool(_WILD.search(a)), bool(_WILD.search(b))
    if not wild_a and not wild_b:
        return a == b
    if not wild_a:
        return fnmatch.fnmatchcase(a, b)
    if not wild_b:
        return fnmatch.fnmatchcase(b, a)
    pa, sa = _fixed_ends(a)
    pb, sb = _fixed_ends(b)
    prefixes = pa.startswith(pb) or pb.startswith(pa)
    suffixes = sa.endswith(sb) or sb.endswith(sa)
    return prefixes and suffixes


@cache
def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if not a or not b:
        return (not a or all(c == "**" for c in a)) and (not b or all(c == "**" for c in b))
    if a[0] == "**":
        # ** takes nothing, or one more component of b (and stays).
        return _overlap(a[1:], b) or _overlap(a, b[1:])
    if b[0] == "**":
        return _overlap(a, b[1:]) or _overlap(a[1:], b)
    return _names_overlap(a[0], b[0]) and _overlap(a[1:], b[1:])


def globs_overlap(a: str, b: str) -> bool:
    """True when some path could match both globs."""
    return _overlap(_components(a), _components(b))


def any_overlap(first: Sequence[str], second: Iterable[str]) -> bool:
    """True when any glob of `first` overlaps any of `second` (empty never overlaps)."""
    if not first:
        return False
    return any(globs_overlap(x, y) for y in second for x in first)
