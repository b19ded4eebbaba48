"""FrameReader, sans-I/O: bytes in, frames out, both framings, size caps."""

from __future__ import annotations

import pytest

from corral import errors
from corrald.rpc.framing import FrameReader, Framing, around, encode, encode_wrapped


def feed_all(reader: FrameReader, chunks: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for chunk in chunks:
        frames += reader.feed(chunk)
    return frames


def framing(reader: FrameReader) -> Framing:
    # A call, not an attribute read: mypy would keep the narrowing across feed().
    return reader.framing


def lsp(body: bytes, *extra_headers: bytes) -> bytes:
    headers = [b"Content-Length: %d" % len(body), *extra_headers]
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


# --- NDJSON --------------------------------------------------------------------------


def test_ndjson_single_line() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b'{"a":1}\n') == [b'{"a":1}']
    assert framing(reader) is Framing.NDJSON
    assert not reader.pending


def test_ndjson_split_across_feeds_byte_by_byte() -> None:
    reader = FrameReader(1024)
    data = b'{"jsonrpc":"2.0","method":"x","id":1}\n{"b":2}\n'
    frames = feed_all(reader, [data[i : i + 1] for i in range(len(data))])
    assert frames == [b'{"jsonrpc":"2.0","method":"x","id":1}', b'{"b":2}']
    assert not reader.pending


def test_ndjson_partial_line_is_pending_until_newline() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b'{"a":') == []
    assert reader.pending
    assert reader.feed(b"1}") == []
    assert reader.feed(b"\n") == [b'{"a":1}']
    assert not reader.pending


def test_ndjson_crlf_and_blank_lines() -> None:
    reader = FrameReader(1024)
    frames = reader.feed(b'\r\n\n{"a":1}\r\n\r\n   \n{"b":2}\r\n')
    assert frames == [b'{"a":1}', b'{"b":2}']
    assert not reader.pending


def test_ndjson_several_frames_in_one_feed_keep_the_tail() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b"[1]\n[2]\n[3") == [b"[1]", b"[2]"]
    assert reader.pending
    assert reader.feed(b"]\n") == [b"[3]"]


def test_ndjson_multibyte_utf8_split_inside_a_character() -> None:
    reader = FrameReader(1024)
    data = '{"name":"héllo ☃"}\n'.encode()
    cut = data.index("☃".encode()) + 1  # in the middle of the snowman's 3 bytes
    assert feed_all(reader, [data[:cut], data[cut:]]) == [data.strip()]


def test_ndjson_line_at_the_cap_passes_and_over_the_cap_fails() -> None:
    reader = FrameReader(1024)
    exact = b"[" + b"1" * 1022 + b"]"
    assert reader.feed(exact + b"\n") == [exact]
    with pytest.raises(errors.FrameTooLarge) as info:
        FrameReader(1024).feed(b"[" + b"1" * 1023 + b"]\n")
    assert info.value.data["limit"] == 1024


def test_ndjson_oversize_detected_before_the_newline_arrives() -> None:
    # A peer streaming an endless line must be cut off at the cap, not buffered forever.
    reader = FrameReader(1024)
    reader.feed(b"[")
    with pytest.raises(errors.FrameTooLarge):
        for _ in range(100):
            reader.feed(b"1" * 100)


def test_ndjson_oversize_inside_one_big_feed() -> None:
    with pytest.raises(errors.FrameTooLarge):
        FrameReader(1024).feed(b"[1]\n" + b"[" + b"2" * 5000 + b"]\n[3]\n")


# --- detection -----------------------------------------------------------------------


def test_detection_skips_leading_whitespace_ndjson() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b"  \r\n\t") == []
    assert framing(reader) is Framing.UNKNOWN
    assert reader.feed(b'{"a":1}\n') == [b'{"a":1}']
    assert framing(reader) is Framing.NDJSON


def test_detection_skips_leading_whitespace_lsp() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b"\r\n  " + lsp(b'{"a":1}')) == [b'{"a":1}']
    assert framing(reader) is Framing.LSP


def test_detection_waits_on_a_partial_content_length_prefix() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b"Conte") == []
    assert framing(reader) is Framing.UNKNOWN
    assert reader.pending
    assert reader.feed(b'nt-Length: 7\r\n\r\n{"a":1}') == [b'{"a":1}']
    assert framing(reader) is Framing.LSP


def test_detection_is_case_insensitive() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b"content-LENGTH: 2\r\n\r\n[]") == [b"[]"]
    assert framing(reader) is Framing.LSP


def test_detection_a_prefix_that_diverges_is_ndjson() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b"Cont") == []
    assert reader.feed(b"inue\n") == [b"Continue"]  # not JSON: the dispatcher answers -32700
    assert framing(reader) is Framing.NDJSON


def test_detection_is_decided_once_per_connection() -> None:
    reader = FrameReader(1024)
    assert reader.feed(b"[1]\n") == [b"[1]"]
    # Once NDJSON, a header-looking line is just a (non-JSON) line.
    assert reader.feed(b"Content-Length: 2\r\n") == [b"Content-Length: 2"]
    assert framing(reader) is Framing.NDJSON


def test_whitespace_before_detection_is_capped() -> None:
    # Blank bytes before the first frame are buffered while the framing is
    # UNKNOWN, with no size check and `pending` False (so no frame timeout
    # either): a peer can grow the daemon's memory without bound.
    reader = FrameReader(1024)
    with pytest.raises(errors.FrameTooLarge):
        for _ in range(100):
            reader.feed(b" " * 100)


# --- LSP -----------------------------------------------------------------------------


def test_lsp_single_frame() -> None:
    reader = FrameReader(1024)
    body = b'{"jsonrpc":"2.0","method":"m","id":1}'
    assert reader.feed(lsp(body)) == [body]
    assert framing(reader) is Framing.LSP
    assert not reader.pending


def test_lsp_multiple_headers_in_any_case() -> None:
    reader = FrameReader(1024)
    body = b'{"x":"y"}'
    data = lsp(body, b"Content-Type: application/vscode-jsonrpc; charset=utf-8", b"X-Other: 1")
    assert reader.feed(data) == [body]


def test_lsp_body_split_across_feeds_is_pending() -> None:
    reader = FrameReader(1024)
    body = b'{"jsonrpc":"2.0","method":"m","params":{"a":[1,2,3]},"id":7}'
    data = lsp(body)
    head_end = data.index(b"\r\n\r\n") + 4
    assert reader.feed(data[: head_end - 2]) == []  # headers not yet complete
    assert reader.pending
    assert reader.feed(data[head_end - 2 : head_end + 5]) == []  # headers done, body partial
    assert reader.pending
    assert reader.feed(data[head_end + 5 :]) == [body]
    assert not reader.pending


def test_lsp_byte_by_byte_and_back_to_back_frames() -> None:
    reader = FrameReader(1024)
    bodies = [b'{"n":1}', b"[]", b'{"n":"\\r\\n\\r\\n"}']
    data = b"".join(lsp(b) for b in bodies)
    assert feed_all(reader, [data[i : i + 1] for i in range(len(data))]) == bodies


def test_lsp_body_keeps_newlines_and_multibyte() -> None:
    reader = FrameReader(1024)
    body = '{\n  "name": "☃"\n}'.encode()
    assert reader.feed(lsp(body)) == [body]


def test_lsp_zero_length_body() -> None:
    # An empty body is a frame; the dispatcher answers it with a parse error.
    assert FrameReader(1024).feed(b"Content-Length: 0\r\n\r\n") == [b""]


def test_lsp_oversize_by_header() -> None:
    with pytest.raises(errors.FrameTooLarge) as info:
        FrameReader(1024).feed(b"Content-Length: 1025\r\n\r\n")
    assert info.value.data == {"limit": 1024, "size": 1025}


def test_lsp_at_the_cap_passes() -> None:
    body = b"[" + b"1" * 1022 + b"]"
    assert FrameReader(1024).feed(lsp(body)) == [body]


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: abc\r\n\r\n",
        b"Content-Length: -5\r\n\r\n",
        b"Content-Length: 5\r\nno colon here\r\n\r\n",
        b"Content-Length:\r\n\r\n",
    ],
)
def test_lsp_header_garbage_is_invalid_request(header: bytes) -> None:
    with pytest.raises(errors.InvalidRequest):
        FrameReader(1024).feed(header)


def test_lsp_header_block_too_long() -> None:
    reader = FrameReader(1 << 20)
    reader.feed(b"Content-Length: 2\r\n")
    with pytest.raises(errors.InvalidRequest):
        for _ in range(100):
            reader.feed(b"X-Padding: " + b"a" * 100 + b"\r\n")


def test_encode_uses_the_peer_framing() -> None:
    assert encode(Framing.NDJSON, b"{}") == b"{}\n"
    assert encode(Framing.LSP, "☃".encode()) == b"Content-Length: 3\r\n\r\n" + "☃".encode()


def test_repr_summarises() -> None:
    reader = FrameReader(1024)
    reader.feed(b'{"a"')
    assert repr(reader) == "FrameReader(ndjson, buffered=4)"


def test_lsp_content_type_may_come_first() -> None:
    # The LSP base protocol allows Content-Type before Content-Length.
    body = b'{"jsonrpc":"2.0","method":"x","id":1}'
    reader = FrameReader(1024)
    frames = reader.feed(
        b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    assert frames == [body]
    assert reader.framing is Framing.LSP


@pytest.mark.parametrize("framing", [Framing.NDJSON, Framing.LSP])
def test_wrapped_and_split_framing_write_what_encode_writes(framing: Framing) -> None:
    bodies = [b'{"seq":1}', b'{"seq":2,"x":"\xc3\xa9"}', b"{}"]
    head, tail = b'{"method":"event","params":', b"}"
    expected = b"".join(encode(framing, head + body + tail) for body in bodies)
    assert encode_wrapped(framing, head, bodies, tail) == expected
    assert encode_wrapped(framing, head, [], tail) == b""
    big = b"[" + b"1," * 50_000 + b"1]"
    before, after = around(framing, len(big))
    assert before + big + after == encode(framing, big)
