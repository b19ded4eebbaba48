"""The chaos suite: long loops run only when asked for with `-m chaos`.

Every test here carries the `chaos` marker or is the short default version
of one that does. The long ones are skipped unless the marker expression
names `chaos`, so a plain `python -m pytest` stays fast.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="long chaos loop: run with -m chaos")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)
