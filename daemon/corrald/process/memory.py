"""Give the memory a finished run freed back to the system.

glibc's malloc keeps freed heap pages for reuse and returns only the top of
the heap by itself; an output flood frees megabytes in the middle, where
they stay part of the daemon's RSS until `malloc_trim` hands the free pages
back. The pool calls `release` when its last run has ended (an idle daemon
should be small again); elsewhere, or without glibc, it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim


_TRIM = _find_trim()


def release() -> bool:
    """Return free heap pages to the system; False where that is not possible."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))
