"""Message framing on a byte stream, detected per connection.

Two framings are spoken: newline-delimited JSON (one message per line, what
scripts and `nc` send) and LSP-style `Content-Length:` headers (what editor
libraries such as vscode-jsonrpc send). The first non-blank bytes decide.
The reader is sans-I/O: feed it bytes, take frames out, so it is tested
without sockets.
"""

from __future__ import annotations

from enum import Enum

from corral import errors


class Framing(Enum):
    UNKNOWN = "unknown"
    NDJSON = "ndjson"
    LSP = "lsp"


# LSP headers are `Content-Length:` and optionally `Content-Type:`, in any
# order; JSON starts with `{` or `[`, so the prefix alone tells them apart.
_DETECT = b"content-"
_HEADER_END = b"\r\n\r\n"
_MAX_HEADER = 4096


class FrameReader:
    """Accumulates bytes and yields complete frames, enforcing a size cap."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.framing = Framing.UNKNOWN
        self._buf = bytearray()
        self._need: int | None = None  # LSP body length once headers are parsed

    @property
    def pending(self) -> bool:
        """True while a partial frame is buffered (a stall is then a timeout)."""
        return bool(self._buf.strip()) or self._need is not None

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        if self.framing is Framing.UNKNOWN:
            head = bytes(self._buf.lstrip()[: len(_DETECT)])
            if not head:
                if len(self._buf) > self.max_frame:  # only blanks so far: bound them too
                    raise errors.FrameTooLarge(
                        data={"limit": self.max_frame, "size": len(self._buf)}
                    )
                return []
            if _DETECT.startswith(head.lower()) and len(head) < len(_DETECT):
                return []  # could still become a header; wait for more bytes
            self.framing = Framing.LSP if head.lower() == _DETECT else Framing.NDJSON
        if self.framing is Framing.NDJSON:
            return self._ndjson()
        return self._lsp()

    def _ndjson(self) -> list[bytes]:
        frames: list[bytes] = []
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(self._buf[start:nl]).strip()
            if len(line) > self.max_frame:
                raise errors.FrameTooLarge(data={"limit": self.max_frame, "size": len(line)})
            if line:
                frames.append(line)
            start = nl + 1
        del self._buf[:start]
        if len(self._buf) > self.max_frame:
            raise errors.FrameTooLarge(data={"limit": self.max_frame, "size": len(self._buf)})
        return frames

    def _lsp(self) -> list[bytes]:
        frames: list[bytes] = []
        while True:
            if self._need is None:
                end = self._buf.find(_HEADER_END)
                if end < 0:
                    if len(self._buf) > _MAX_HEADER:
                        raise errors.InvalidRequest("header block too long")
                    break
                self._need = self._content_length(bytes(self._buf[:end]))
                del self._buf[: end + len(_HEADER_END)]
            if len(self._buf) < self._need:
                break
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None
        return frames

    def _content_length(self, block: bytes) -> int:
        length: int | None = None
        for raw in block.strip().split(b"\r\n"):
            name, sep, value = raw.partition(b":")
            if not sep:
                raise errors.InvalidRequest(f"malformed header line {raw[:80]!r}")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise errors.InvalidRequest("Content-Length is not a number") from None
        if length is None or length < 0:
            raise errors.InvalidRequest("missing Content-Length header")
        if length > self.max_frame:
            raise errors.FrameTooLarge(data={"limit": self.max_frame, "size": length})
        return length

    def __repr__(self) -> str:
        return f"FrameReader({self.framing.value}, buffered={len(self._buf)})"


def encode(framing: Framing, body: bytes) -> bytes:
    """Frame one outgoing message the way the peer frames its own."""
    if framing is Framing.LSP:
        return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    return body + b"\n"


def encode_wrapped(framing: Framing, head: bytes, bodies: list[bytes], tail: bytes) -> bytes:
    """Frame `head + body + tail` for each body, as `encode` would, in one join (event
    bursts: no intermediate copy of each message)."""
    if framing is Framing.LSP:
        size = len(head) + len(tail)
        return b"".join(
            b"Content-Length: %d\r\n\r\n%s%s%s" % (size + len(body), head, body, tail)
            for body in bodies
        )
    end = tail + b"\n"
    parts: list[bytes] = []
    for body in bodies:
        parts += (head, body, end)
    return b"".join(parts)


def around(framing: Framing, length: int) -> tuple[bytes, bytes]:
    """What `encode` puts before and after a body of `length` bytes: a big answer is
    written in pieces rather than copied once more (10 MB is ~15 ms of page faults and
    memcpy here)."""
    if framing is Framing.LSP:
        return b"Content-Length: %d\r\n\r\n" % length, b""
    return b"", b"\n"
