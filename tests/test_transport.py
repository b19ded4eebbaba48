"""The client transport: NDJSON decoding and the event-resume state machine.

The first part is sans-I/O (bytes in, messages out); the second drives the
same machine over real sockets against a real daemon: a restart and a
`lagged` drop must neither lose nor repeat an event.
"""

from __future__ import annotations

import itertools
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral import errors
from corral.client import AsyncClient, Client
from corral.connection import Connection
from corral.models import Event
from corral.transport import MAX_FRAME, Decoder, Subscription, encode, request
from tests.daemon_proc import DaemonProcess

# --- the decoder --------------------------------------------------------------------------


def test_a_message_split_byte_by_byte_comes_out_once_complete() -> None:
    frame = encode({"jsonrpc": "2.0", "result": {"text": "héllo"}, "id": 1})
    decoder = Decoder()
    for byte in frame[:-1]:
        assert list(decoder.feed(bytes([byte]))) == []
    assert decoder.pending == len(frame) - 1
    assert list(decoder.feed(frame[-1:])) == [
        {"jsonrpc": "2.0", "result": {"text": "héllo"}, "id": 1}
    ]
    assert decoder.pending == 0


def test_merged_messages_come_out_in_order() -> None:
    messages = [{"id": i, "result": i * i} for i in range(5)]
    decoder = Decoder()
    assert list(decoder.feed(b"".join(encode(m) for m in messages))) == messages


def test_a_chunk_ending_inside_the_next_message_keeps_its_tail() -> None:
    data = encode({"id": 1}) + encode({"id": 2})
    cut = len(encode({"id": 1})) + 3
    decoder = Decoder()
    assert list(decoder.feed(data[:cut])) == [{"id": 1}]
    assert list(decoder.feed(data[cut:])) == [{"id": 2}]


def test_blank_lines_and_crlf_are_skipped() -> None:
    decoder = Decoder()
    data = b'\n\n  \n{"id":1}\r\n\t\r\n{"id":2}\n\n'
    assert list(decoder.feed(data)) == [{"id": 1}, {"id": 2}]
    assert decoder.pending == 0


def test_messages_not_taken_stay_buffered() -> None:
    decoder = Decoder()
    stream = decoder.feed(encode({"id": 1}) + encode({"id": 2}) + encode({"id": 3}))
    assert next(stream) == {"id": 1}
    assert decoder.next_message() == {"id": 2}
    assert list(decoder.feed(b"")) == [{"id": 3}]
    assert decoder.next_message() is None


@pytest.mark.parametrize(
    "line",
    [b"{not json}", b'{"id": 1', b"\xff{}", b"\xff\xfe{\x00}\x00", b"[" * 100_000, b"garbage"],
)
def test_invalid_json_is_a_lost_connection(line: bytes) -> None:
    decoder = Decoder()
    with pytest.raises(errors.ConnectionLost) as info:
        list(decoder.feed(line + b"\n"))
    assert "not JSON" in info.value.message
    assert len(info.value.data["line"]) <= 200


@pytest.mark.parametrize("line", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object_is_a_lost_connection(line: bytes) -> None:
    with pytest.raises(errors.ConnectionLost, match="not a JSON-RPC message"):
        list(Decoder().feed(line + b"\n"))


def test_messages_before_a_bad_line_are_delivered_first() -> None:
    decoder = Decoder()
    got: list[dict[str, Any]] = []
    with pytest.raises(errors.ConnectionLost):
        for message in decoder.feed(encode({"id": 1}) + encode({"id": 2}) + b"oops\n"):
            got.append(message)
    assert got == [{"id": 1}, {"id": 2}]


def test_an_incomplete_frame_over_the_cap_is_refused_while_it_arrives() -> None:
    decoder = Decoder(max_frame=1024)
    list(decoder.feed(b'{"id": 1, "result": "' + b"x" * 1000))
    with pytest.raises(errors.FrameTooLarge) as info:
        decoder.feed(b"x" * 100)  # refused before any newline: the buffer is bounded
    assert info.value.data["limit"] == 1024
    assert info.value.data["size"] > 1024


def test_a_complete_frame_over_the_cap_is_refused() -> None:
    decoder = Decoder(max_frame=64)
    big = encode({"id": 1, "result": "y" * 100})
    with pytest.raises(errors.FrameTooLarge):
        list(decoder.feed(big + encode({"id": 2})))


def test_a_frame_at_the_cap_is_accepted() -> None:
    frame = encode({"id": 1, "result": ""})
    body = len(frame) - 1
    decoder = Decoder(max_frame=body)
    assert list(decoder.feed(frame)) == [{"id": 1, "result": ""}]
    assert MAX_FRAME >= 8 * 1024 * 1024  # at least the daemon's default frame limit


def test_encode_is_one_compact_line() -> None:
    message = request("parallel_add_task", {"title": "two\nlines", "id": "a"}, 7)
    frame = encode(message)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert b": " not in frame and b", " not in frame
    assert json.loads(frame) == {
        "jsonrpc": "2.0",
        "method": "parallel_add_task",
        "params": {"title": "two\nlines", "id": "a"},
        "id": 7,
    }


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(st.dictionaries(st.text(), _json, max_size=4), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_any_chunking_gives_the_same_messages(
    messages: list[dict[str, Any]], cuts: list[int]
) -> None:
    data = b"".join(encode(m) for m in messages)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    decoder = Decoder()
    out: list[dict[str, Any]] = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed(data[a:b])
    assert out == messages
    assert decoder.pending == 0


# --- the subscription state machine -----------------------------------------------------


def _event(seq: int, task: str = "t") -> dict[str, Any]:
    params = {"seq": seq, "type": "task.status", "payload": {"taskId": task}, "at": 1.0}
    return {"jsonrpc": "2.0", "method": "event", "params": params}


def _answer(ident: int, seq: int, sub_id: str = "sub-1") -> dict[str, Any]:
    result = {"subscriptionId": sub_id, "seq": seq, "oldest": 1}
    return {"jsonrpc": "2.0", "result": result, "id": ident}


def _lagged(sub_id: str = "sub-1") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "lagged", "params": {"subscriptionId": sub_id}}


def _seqs(sub: Subscription, messages: list[dict[str, Any]]) -> list[int]:
    return [e.seq for m in messages if (e := sub.receive(m)) is not None]


def test_first_subscribe_starts_from_now_and_sends_only_what_is_set() -> None:
    sub = Subscription()
    assert sub.wants_subscribe and not sub.active
    req = sub.subscribe()
    assert req == {"jsonrpc": "2.0", "method": "events_subscribe", "params": {}, "id": 1}
    assert not sub.wants_subscribe  # in flight
    assert sub.receive(_answer(1, seq=41)) is None
    assert sub.active and not sub.wants_subscribe
    assert sub.last_seq == 41 and sub.subscription_id == "sub-1" and sub.subscribed == 1
    filtered = Subscription(["task", "agent"], session_id="s1")
    assert filtered.subscribe()["params"] == {"topics": ["task", "agent"], "sessionId": "s1"}


def test_since_seq_is_sent_and_kept_over_the_answer() -> None:
    sub = Subscription(["task"], since_seq=10)
    assert sub.subscribe()["params"] == {"topics": ["task"], "sinceSeq": 10}
    sub.receive(_answer(1, seq=99))
    assert sub.last_seq == 10  # the replay from 11 is wanted, not "from now"
    assert _seqs(sub, [_event(11), _event(12)]) == [11, 12]


def test_events_are_delivered_once_in_order() -> None:
    sub = Subscription()
    sub.subscribe()
    sub.receive(_answer(1, seq=5))
    messages = [_event(5), _event(6), _event(7), _event(7), _event(6), _event(8)]
    assert _seqs(sub, messages) == [6, 7, 8]
    assert sub.last_seq == 8
    delivered = sub.receive(_event(9, "x"))
    assert isinstance(delivered, Event) and delivered.payload == {"taskId": "x"}


def test_events_before_the_answer_are_delivered() -> None:
    sub = Subscription(since_seq=3)
    sub.subscribe()
    # The daemon may push the replay before the answer is written.
    assert _seqs(sub, [_event(4), _event(5)]) == [4, 5]
    sub.receive(_answer(1, seq=5))
    assert sub.last_seq == 5 and sub.active


def test_a_reconnect_resumes_after_the_last_seq_and_repeats_nothing() -> None:
    sub = Subscription(["task"])
    sub.subscribe()
    sub.receive(_answer(1, seq=100))
    assert _seqs(sub, [_event(101), _event(102)]) == [101, 102]
    sub.new_connection()  # the connection dropped; a new one is open
    assert sub.wants_subscribe and not sub.active
    req = sub.subscribe()
    assert req["params"] == {"topics": ["task"], "sinceSeq": 102}
    assert req["id"] == 2  # ids never repeat on the machine
    # A replay that overlaps what was delivered (a daemon may resend) repeats nothing.
    assert _seqs(sub, [_event(102), _event(103), _answer(2, seq=104), _event(104)]) == [103, 104]
    assert sub.subscribed == 2


def test_lagged_turns_into_a_resubscribe_from_the_last_seq() -> None:
    sub = Subscription(["task"])
    sub.subscribe()
    sub.receive(_answer(1, seq=0))
    assert _seqs(sub, [_event(1), _event(2), _event(3)]) == [1, 2, 3]
    assert sub.receive(_lagged()) is None
    assert sub.lagged == 1 and not sub.active and sub.wants_subscribe
    req = sub.subscribe()
    assert req["method"] == "events_subscribe" and req["params"]["sinceSeq"] == 3
    assert _seqs(sub, [_answer(req["id"], seq=9, sub_id="sub-2"), _event(3), _event(4)]) == [4]
    assert sub.active and sub.subscription_id == "sub-2" and sub.last_seq == 4


def test_lagged_before_the_answer_resubscribes_once_the_answer_is_in() -> None:
    sub = Subscription()
    sub.subscribe()
    sub.receive(_lagged())
    assert not sub.wants_subscribe  # the subscribe is still in flight
    sub.receive(_answer(1, seq=7))
    assert sub.wants_subscribe and not sub.active
    assert sub.subscribe()["params"] == {"sinceSeq": 7}


def test_an_error_answer_raises_its_class() -> None:
    sub = Subscription(since_seq=1)
    sub.subscribe()
    error = {"code": 6001, "message": "too old", "data": {"oldest": 50}}
    with pytest.raises(errors.EventsExpired) as info:
        sub.receive({"jsonrpc": "2.0", "error": error, "id": 1})
    assert info.value.data == {"oldest": 50}


def test_shutting_down_is_a_lost_connection_and_other_connection_errors_raise() -> None:
    sub = Subscription()
    sub.subscribe()
    down = {"jsonrpc": "2.0", "error": {"code": -32001, "message": "bye"}, "id": None}
    with pytest.raises(errors.ConnectionLost, match="bye"):
        sub.receive(down)
    sub.new_connection()
    req = sub.subscribe()
    with pytest.raises(errors.ConnectionLost):  # as the answer to our request too
        sub.receive({**down, "id": req["id"]})
    too_many = {"jsonrpc": "2.0", "error": {"code": -32002, "message": "full"}, "id": None}
    with pytest.raises(errors.TooManyConnections):
        sub.receive(too_many)


def test_other_messages_are_ignored() -> None:
    sub = Subscription()
    sub.subscribe()
    assert sub.receive(_answer(99, seq=1)) is None  # not our request
    assert sub.wants_subscribe is False and sub.active is False
    assert sub.receive({"jsonrpc": "2.0", "method": "future_notice", "params": {}}) is None
    sub.receive(_answer(1, seq=1))
    assert sub.active


def test_an_answer_without_a_seq_is_a_lost_connection() -> None:
    sub = Subscription()
    sub.subscribe()
    with pytest.raises(errors.ConnectionLost):
        sub.receive({"jsonrpc": "2.0", "result": True, "id": 1})


# --- on real sockets ------------------------------------------------------------------------


def _tasks(n: int, prefix: str) -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "title": f"task {i}"} for i in range(n)]


def _wait(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_lagged_subscriber_resubscribes_on_its_connection_from_its_last_seq(
    repo: Path,
) -> None:
    # One batch publishes all its events at once: more than the queue holds, so
    # the daemon drops the subscriber (lagged) and the machine resumes it.
    with DaemonProcess(config="[daemon]\nsubscriber_queue = 1000\n") as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo))
        sub = Subscription(["task"])
        got: list[Event] = []
        sent: list[dict[str, Any]] = []
        with Connection.open(d.socket, 20.0) as conn:
            sub.new_connection()
            conn.send(sub.subscribe())
            while not sub.active:
                sub.receive(conn.receive())
            with d.client() as c:
                c.parallel_add_tasks(tasks=_tasks(1500, "a"))
            while len(got) < 1500:
                if sub.wants_subscribe:
                    sent.append(sub.subscribe())
                    conn.send(sent[-1])
                event = sub.receive(conn.receive())
                if event is not None:
                    got.append(event)
        assert sub.lagged >= 1, "the daemon never dropped the subscriber: test did not test"
        assert [e.payload["taskId"] for e in got] == [f"a{i}" for i in range(1500)]
        seqs = [e.seq for e in got]
        assert seqs == sorted(set(seqs))
        assert sent and all("sinceSeq" in r["params"] for r in sent)


def test_client_events_deliver_every_event_once_through_lagged(repo: Path) -> None:
    with DaemonProcess(config="[daemon]\nsubscriber_queue = 1000\n") as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo))
        got: list[Event] = []
        done = threading.Event()

        def collect() -> None:
            for event in Client(d.socket).events(topics=["task"], reconnect=False):
                got.append(event)
                if len(got) == 3000:
                    done.set()
                    return

        threading.Thread(target=collect, daemon=True).start()
        with d.client() as c:
            _wait(lambda: c.daemon_status().subscribers == 1, "the subscriber")
            c.parallel_add_tasks(tasks=_tasks(1500, "a"))
            # One batch at a time: the replay after a drop must fit the queue.
            _wait(lambda: len(got) == 1500, "the first batch")
            c.parallel_add_tasks(tasks=_tasks(1500, "b"))
        assert done.wait(30), f"got {len(got)} events"
        ids = [e.payload["taskId"] for e in got]
        assert ids == [f"a{i}" for i in range(1500)] + [f"b{i}" for i in range(1500)]


def test_client_events_resume_across_a_restart_without_repeats(repo: Path) -> None:
    got: list[Event] = []
    with DaemonProcess() as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), session_id="s")

        def collect() -> None:
            for event in Client(d.socket).events(topics=["task"]):
                got.append(event)
                if len(got) == 10:
                    return

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        with d.client() as c:
            _wait(lambda: c.daemon_status().subscribers == 1, "the subscriber")
            c.parallel_add_tasks(tasks=_tasks(5, "before"))
        _wait(lambda: len(got) == 5, "the first five events")
        d.kill()  # no goodbye: the reader sees its connection drop
        d.start()  # the same socket and state
        with d.client() as c:
            c.parallel_add_tasks(tasks=_tasks(5, "after"))
        reader.join(30)
        assert not reader.is_alive(), f"got {[e.payload for e in got]}"
    ids = [e.payload["taskId"] for e in got]
    assert ids == [f"before{i}" for i in range(5)] + [f"after{i}" for i in range(5)]
    assert len({e.seq for e in got}) == 10


async def test_async_events_resume_after_the_connection_drops(repo: Path) -> None:
    import contextlib

    import trio

    with DaemonProcess() as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo))
            start = c.daemon_status().event_seq
            c.parallel_add_tasks(tasks=_tasks(3, "x"))
        seen: list[Event] = []
        stream = AsyncClient(d.socket).events(topics=["task"], since_seq=start)
        with trio.fail_after(30):
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    seen.append(event)
                    if len(seen) == 3:
                        d.kill()  # the stream's connection drops; it must resume
                        d.start()
                        with d.client() as c:
                            c.parallel_add_tasks(tasks=_tasks(3, "y"))
                    if len(seen) == 6:
                        break
    ids = [e.payload["taskId"] for e in seen]
    assert ids == [f"x{i}" for i in range(3)] + [f"y{i}" for i in range(3)]


def test_client_connection_errors_reset_the_connection() -> None:
    # A peer that answers garbage first: that call fails with ConnectionLost, and
    # the next call connects afresh instead of reading a stream out of step.
    path = Path(tempfile.mkdtemp(prefix="tr", dir="/tmp")) / "garbage.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    accepted: list[socket.socket] = []

    def serve() -> None:
        for garbage in (True, False):
            conn, _ = server.accept()
            accepted.append(conn)
            ident = json.loads(conn.recv(1 << 16))["id"]
            conn.sendall(b"not json\n" if garbage else encode({"result": ident, "id": ident}))

    threading.Thread(target=serve, daemon=True).start()
    try:
        c = Client(path, timeout=10)
        with pytest.raises(errors.ConnectionLost, match="not JSON"):
            c.call("anything")
        assert c.call("anything") == 2
        c.close()
    finally:
        server.close()
        for conn in accepted:
            conn.close()
