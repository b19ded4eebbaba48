"""Waiting for a condition in tests: poll it, bounded by the caller's trio.fail_after.

Tests wait for conditions (a pid written, a file created), never for fixed
times; these are conditions outside trio's reach, so a short poll is the tool.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(predicate: Callable[[], bool], interval: float = 0.02) -> None:
    """Return once `predicate()` is true (wrap the call in `trio.fail_after`)."""
    while not predicate():  # noqa: ASYNC110 - conditions outside trio have no event to wait on
        await trio.sleep(interval)


async def receive_lines(stream: trio.abc.ReceiveStream, buf: bytearray, lines: int) -> None:
    """Read into `buf` until it holds `lines` newlines (at most 10 s)."""
    with trio.fail_after(10):
        while buf.count(b"\n") < lines:
            buf += await stream.receive_some(65536)
