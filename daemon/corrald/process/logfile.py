"""An agent's log file: written by its run, read back by `parallel_get_agent_logs`.

One line per output line. stdout lines are written as they are; stderr and
daemon lines get a prefix (`[stderr] `, `[corral] `), so `read_log` can tell
the streams apart again (a stdout line that happens to start like a prefix
is written with `[stdout] ` first). The format is defined here, once, for
both sides.

The file is capped (counting what it already held, since a retried attempt
of the same agent never reuses it). A write that fails (a full disk, an
unwritable directory) disables the file for the rest of the run and says so
in the run's ring: the agent goes on, its log is marked incomplete.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO

from corral.models import LogEntry

log = logging.getLogger(__name__)

#: stream name -> prefix in the file (stdout has none unless it would be ambiguous)
PREFIX = {"stderr": "[stderr] ", "daemon": "[corral] ", "stdout": "[stdout] "}
_STREAM_OF = {prefix: stream for stream, prefix in PREFIX.items()}


def _line(stream: str, text: str) -> str:
    if stream == "stdout" and not (text.startswith("[") and text.startswith(tuple(_STREAM_OF))):
        return text + "\n"
    return f"{PREFIX.get(stream, PREFIX['daemon'])}{text}\n"


_LOG_FIELDS = frozenset(LogEntry.model_fields)
_new = object.__new__
_setattr = object.__setattr__


def _fast_log_entry(offset: int, stream: str, line: str, at: float) -> LogEntry:
    """What `LogEntry.model_construct` builds, 4x cheaper (one per output line).

    Used only if it produces an equal model (checked at import), so a
    pydantic upgrade that changes model internals falls back safely.
    """
    entry: LogEntry = _new(LogEntry)
    _setattr(entry, "__dict__", {"offset": offset, "stream": stream, "line": line, "at": at})
    _setattr(entry, "__pydantic_fields_set__", set(_LOG_FIELDS))
    _setattr(entry, "__pydantic_extra__", None)
    _setattr(entry, "__pydantic_private__", None)
    return entry


def _slow_log_entry(offset: int, stream: str, line: str, at: float) -> LogEntry:
    return LogEntry.model_construct(offset=offset, stream=stream, line=line, at=at)


def _pick_log_entry() -> Callable[[int, str, str, float], LogEntry]:
    try:
        probe = _fast_log_entry(1, "stdout", "probe", 2.0)
        if probe == _slow_log_entry(1, "stdout", "probe", 2.0) and probe.to_wire() == {
            "offset": 1,
            "stream": "stdout",
            "message": "probe",
            "timestamp": "1970-01-01T00:00:02.000000Z",
            "level": "info",
        }:
            return _fast_log_entry
    except Exception:  # pragma: no cover - depends on pydantic internals
        pass
    return _slow_log_entry  # pragma: no cover


make_log_entry = _pick_log_entry()


class LogWriter:
    """Append-only, capped log of one run. Never raises: a failed write disables the file."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.truncated = False
        self.failure: str | None = None  # why the file stopped being written, if it did
        self.size = 0
        self._fh: IO[str] | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Blocking writes are to the page cache (microseconds); a thread
            # hop per line would cost far more than it saves.
            self._fh = open(path, "a", encoding="utf-8", errors="replace", buffering=1 << 20)  # noqa: SIM115
            self.size = self._fh.tell()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failure = f"log file {self.path} disabled: {exc.strerror or exc}"
        log.warning("%s", self.failure)
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def write(self, stream: str, text: str) -> None:
        """Append one line of `stream` (stdout, stderr or daemon)."""
        if self._fh is None or self.truncated:
            return
        data = _line(stream, text)
        n = len(data) if data.isascii() else len(data.encode("utf-8", "replace"))
        try:
            if self.size + n > self.cap:
                self.truncated = True
                self._fh.write(
                    f"{PREFIX['daemon']}log truncated at {self.size} bytes (cap {self.cap})\n"
                )
                self._fh.flush()
                return
            self._fh.write(data)
        except OSError as exc:
            self._fail(exc)
            return
        self.size += n

    def write_lines(self, stream: str, text: str) -> None:
        """Append consecutive lines of `stream`, joined by newlines in `text`, in one write."""
        if self._fh is None or self.truncated:
            return
        if stream != "stdout":
            prefix = PREFIX.get(stream, PREFIX["daemon"])
            data = prefix + text.replace("\n", "\n" + prefix) + "\n"
        elif text.startswith("[") or "\n[" in text:  # some line may need its prefix
            data = "".join([_line(stream, line) for line in text.split("\n")])
        else:
            data = text + "\n"
        n = len(data) if data.isascii() else len(data.encode("utf-8", "replace"))
        if self.size + n > self.cap:  # the cap falls inside: line by line, to cut exactly
            for line in text.split("\n"):
                self.write(stream, line)
            return
        try:
            self._fh.write(data)
        except OSError as exc:
            self._fail(exc)
            return
        self.size += n

    def flush(self) -> None:
        """Push buffered lines to the file (a run followed remotely: what is on disk counts)."""
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:  # the buffered tail could not be flushed
                self._fail(exc)
            self._fh = None

    def __repr__(self) -> str:
        return f"<LogWriter {self.path} size={self.size} truncated={self.truncated}>"


def read_log(path: Path, offset: int, limit: int) -> list[LogEntry]:
    """Lines `offset`.. of a log file (at most `limit`), with their streams; [] if none."""
    out: list[LogEntry] = []
    try:
        fh = path.open(encoding="utf-8", errors="replace")
    except OSError:
        return out
    with fh:
        for number, raw in enumerate(fh):
            if number < offset:
                continue
            if len(out) >= limit:
                break
            text, stream = raw.rstrip("\n"), "stdout"
            for prefix, name in _STREAM_OF.items():
                if text.startswith(prefix):
                    stream, text = name, text[len(prefix) :]
                    break
            out.append(make_log_entry(number, stream, text, 0.0))
    return out
