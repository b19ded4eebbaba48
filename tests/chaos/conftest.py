"""The chaos suite: bounded loops, selected by marker so a plain run stays fast.

Three tiers, each bounded in count and in time:

- a plain `python -m pytest` runs the short version of each loop;
- `-m chaos` is the chaos run CI makes after the tests: 20 kills, 20,000
  fuzzed calls, 10,000 churned clients, a 20 s SIGSTOP, a 20 x 10 MiB flood;
- `-m chaos_long` is CI's longer run: 50 kills, a 20 x 50 MiB flood.

A test marked `chaos` (or `chaos_long`) is skipped unless the marker
expression names that marker.
"""

from __future__ import annotations

import re

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expr = config.option.markexpr or ""
    for name in ("chaos", "chaos_long"):
        if re.search(rf"\b{name}\b", expr):
            continue
        skip = pytest.mark.skip(reason=f"bounded chaos loop: run with -m {name}")
        for item in items:
            if item.get_closest_marker(name) is not None:
                item.add_marker(skip)
