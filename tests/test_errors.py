"""The error table is a wire contract: pinned here, literally. Codes are append-only."""

from __future__ import annotations

import pytest

from corral import errors
from corral.client import AsyncClient
from corral.errors import ERROR_CLASSES, CorralError
from tests.daemon_proc import DaemonProcess

# Written out by hand on purpose: adding a code means adding a line here;
# changing or removing one breaks every deployed client and must fail this test.
EXPECTED: dict[int, str] = {
    -32700: "ParseError",
    -32603: "InternalError",
    -32602: "InvalidParams",
    -32601: "MethodNotFound",
    -32600: "InvalidRequest",
    -32099: "UnknownError",
    -32091: "ConnectionLost",
    -32090: "DaemonNotRunning",
    -32006: "BatchTooLarge",
    -32005: "PermissionDenied",
    -32004: "FrameTimeout",
    -32003: "FrameTooLarge",
    -32002: "TooManyConnections",
    -32001: "ShuttingDown",
    -32000: "ServerError",
    1001: "SessionNotFound",
    1002: "SessionBusy",
    1003: "TaskNotFound",
    1004: "UnknownDependency",
    1005: "DependencyCycle",
    1006: "DuplicateTaskId",
    1007: "InvalidTaskId",
    1008: "InvalidStateTransition",
    1009: "SessionRequired",
    1010: "NotAGitRepository",
    1011: "SessionAborted",
    2001: "AgentNotFound",
    2002: "UnknownAgentType",
    2003: "ExecutableNotFound",
    2004: "NoCapacity",
    2005: "NothingReady",
    3001: "WorktreeDirty",
    3002: "PathOutsideBase",
    3003: "BranchCheckedOut",
    3004: "InvalidBranchName",
    3005: "RepositoryNotFound",
    3006: "WorktreeNotFound",
    3007: "RepositoryEmpty",
    3008: "BaseBranchNotFound",
    3009: "GitFailure",
    3010: "WorktreeInUse",
    4001: "BranchNotFound",
    4002: "MergeConflictError",
    4003: "TargetMoved",
    4004: "TargetDirty",
    4005: "ResolutionFailed",
    5001: "ConfigInvalid",
    6001: "EventsExpired",
    6002: "SubscriptionNotFound",
    7001: "StorageError",
    7002: "StorageFull",
    7003: "StorageReadOnly",
    7004: "StateFileGone",
}

# The JSON-RPC 2.0 specification's own messages, exactly.
SPEC_MESSAGES = {
    -32700: "Parse error",
    -32600: "Invalid Request",
    -32601: "Method not found",
    -32602: "Invalid params",
    -32603: "Internal error",
}


def test_error_table_is_pinned() -> None:
    assert {code: cls.__name__ for code, cls in ERROR_CLASSES.items()} == EXPECTED


def test_every_class_carries_its_own_code() -> None:
    for code, cls in ERROR_CLASSES.items():
        assert cls.code == code
        assert issubclass(cls, CorralError)
        assert cls.default_message
        assert getattr(errors, cls.__name__) is cls


def test_spec_codes_use_the_spec_messages() -> None:
    for code, message in SPEC_MESSAGES.items():
        assert ERROR_CLASSES[code].default_message == message


def test_code_ranges() -> None:
    for code in ERROR_CLASSES:
        reserved = -32768 <= code <= -32000
        assert reserved or 1000 <= code < 8000, code
        if reserved:
            assert code in SPEC_MESSAGES or -32099 <= code <= -32000, code


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_wire_round_trip(code: int) -> None:
    cls = ERROR_CLASSES[code]
    exc = cls("something specific", {"sessionId": "s1", "nested": {"ids": [1, 2]}})
    wire = exc.to_wire()
    assert wire == {
        "code": code,
        "message": "something specific",
        "data": {"sessionId": "s1", "nested": {"ids": [1, 2]}},
    }
    back = CorralError.from_wire(wire)
    assert type(back) is cls
    assert back.code == code
    assert back.message == "something specific"
    assert back.data == exc.data
    assert str(back) == "something specific"


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_default_message_and_no_data_key(code: int) -> None:
    cls = ERROR_CLASSES[code]
    wire = cls().to_wire()
    assert wire == {"code": code, "message": cls.default_message}  # no empty `data`
    back = CorralError.from_wire(wire)
    assert type(back) is cls and back.data == {}


def test_unknown_code_becomes_unknown_error_and_keeps_the_code() -> None:
    exc = CorralError.from_wire({"code": 7777, "message": "from the future", "data": {"x": 1}})
    assert isinstance(exc, errors.UnknownError)
    assert exc.code_seen == 7777
    assert exc.message == "from the future"
    assert exc.data == {"x": 1}


@pytest.mark.parametrize(
    ("wire", "data"),
    [
        ({"code": 1001, "message": "m", "data": "text"}, {"detail": "text"}),
        ({"code": 1001, "message": "m", "data": [1, 2]}, {"detail": [1, 2]}),
        ({"code": 1001, "message": "m", "data": None}, {}),
        ({"code": 1001, "message": "m"}, {}),
    ],
)
def test_non_object_data_is_kept_under_detail(wire: dict[str, object], data: object) -> None:
    exc = CorralError.from_wire(wire)
    assert isinstance(exc, errors.SessionNotFound)
    assert exc.data == data


@pytest.mark.parametrize("code", ["1001", None, 1001.0, True])
def test_non_integer_code_is_unknown(code: object) -> None:
    exc = CorralError.from_wire({"code": code, "message": "odd"})
    # True is an int in Python; a bool code is not a JSON-RPC code, but it maps
    # to whatever 1 maps to (nothing), so it is unknown either way.
    assert isinstance(exc, errors.UnknownError)
    assert exc.message == "odd"


def test_client_raises_the_specific_class(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        with pytest.raises(errors.SessionNotFound) as info:
            c.session_get(session_id="nope")
        assert info.value.code == 1001
        assert info.value.message
        with pytest.raises(errors.MethodNotFound):
            c.call("no_such_method")
        with pytest.raises(errors.InvalidParams) as bad:
            c.call("daemon_status", bogus=1)
        assert bad.value.data["errors"][0]["type"] == "extra_forbidden"
        # The connection is still good after errors.
        assert c.daemon_status().pid == daemon.pid


async def test_async_client_raises_the_specific_class(daemon: DaemonProcess) -> None:
    async with AsyncClient(daemon.socket) as c:
        with pytest.raises(errors.SessionNotFound):
            await c.session_get(session_id="nope")
        with pytest.raises(errors.MethodNotFound):
            await c.call("no_such_method")
        status = await c.daemon_status()
        assert status.pid == daemon.pid


def test_unknown_error_re_serialises_with_its_own_code() -> None:
    # A relay (or a CLI printing `--json` errors) that passes an error on must
    # not turn a newer daemon's 7777 into -32099.
    wire = {"code": 7777, "message": "from the future", "data": {"x": 1}}
    assert CorralError.from_wire(wire).to_wire() == wire
