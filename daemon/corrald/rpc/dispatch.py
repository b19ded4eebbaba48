"""JSON-RPC 2.0 dispatch on trio.

jsonrpcserver, the library DESIGN.md names, runs batches with `asyncio.gather`
(which does not run under trio), rejects a whole batch for one bad item, and
puts `str(exc)` of internal errors on the wire, so all of it is done here; what
was left of it (a request tuple and two dicts) was not worth its import, which
brings jsonschema, referencing, asyncio and http.server (a fifth of the
daemon's start-up). Here:

* batches are split and every item gets its own answer (spec §6);
* params are validated by the method's pydantic model (-32602 with the
  validation errors in `data`), positional params map onto fields in order;
* an unexpected exception is logged with its traceback and answered with a
  short -32603; nothing internal reaches the client;
* every answer is encoded here, inside that boundary: a result that is not
  JSON (a NaN, an infinity) is a -32603 that still carries the request's id;
* a result is encoded by pydantic-core straight to JSON bytes, by the
  method's declared result type (a `TypeAdapter` per method, built on its
  first call): a 50k-task list is a few ms, not a Python walk of dicts. A
  value its type cannot encode (a lone surrogate, a mismatch) takes the
  general path below, so the answer is the same either way; a method whose
  result is `Any` always does. pydantic writes a NaN or an infinity inside a
  model as `null`: our models never hold one (input is validated finite);
* a handler may answer `Encoded[T]`: JSON it already has (a task list built
  from each task's cached JSON), sent as it is and documented as `T`;
* a long list result is encoded `ENCODE_CHUNK` items at a time, with a
  checkpoint between chunks, so a 50k-task answer never holds the event
  loop for long: the list is fixed when the handler returns, and each item
  is encoded whole, but an item further down may show a change made while
  the chunks before it were encoded (as if it had been read a moment later);
* a batch holds at most `max_batch` items: a longer one is refused with one
  -32006 before its items are parsed, and its items run at most
  `limiter.total_tokens` at a time (the connection's in-flight cap);
* strings that are not Unicode (a lone surrogate such as `"\\ud800"`) are
  -32602 in params; in an id or a method name they are echoed escaped.

Methods are declared with `Registry.method`: one async function each, taking
a context object and a params model, documented by its docstring (which also
feeds `rpc.discover`). This module knows nothing about agents or git.
"""

from __future__ import annotations

import dis
import inspect
import json
import logging
import math
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import trio
from pydantic import BaseModel, TypeAdapter, ValidationError

from corral import errors
from corral.models import NoParams, to_jsonable

log = logging.getLogger("corrald.rpc.dispatch")

Ctx = TypeVar("Ctx")
T = TypeVar("T")

#: The id of a notification (a request without one; null is an id).
NOID: Any = object()


class Request(NamedTuple):
    method: str
    params: list[Any] | dict[str, Any]
    id: Any  # NOID for a notification


def error_response(wire: dict[str, Any], ident: Any) -> dict[str, Any]:
    """A response object for an error object (code, message, data if any)."""
    return {"jsonrpc": "2.0", "error": wire, "id": ident}


@dataclass(frozen=True)
class MethodSpec(Generic[Ctx]):
    """A registered method: its handler, params model, result type and docs."""

    name: str
    handler: Callable[[Ctx, Any], Awaitable[Any]]
    params: type[BaseModel]
    result: Any
    doc: str
    positional: tuple[str, ...]
    #: The connection's reader answers it itself, without a task of its own (a fifth
    #: of a small request's cost): the handler never waits and its result is no
    #: list (a list may be long: it is encoded with pauses, and should not hold up
    #: the requests that follow it on its connection).
    inline: bool = False

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else self.name


class Encoded(Generic[T]):
    """A result already encoded as JSON, declared (and documented) as the `T` it encodes.

    A handler annotated `-> Encoded[list[Task]]` returns one of these; the
    answer carries `data` as it is, or for a list made by `encode_items`, its
    `items` joined into the answer a chunk at a time as it is written.
    """

    __slots__ = ("data", "items")

    def __init__(self, data: bytes = b"", items: list[bytes] | None = None) -> None:
        self.data = data
        self.items = items


class Pieces:
    """An answer too long to copy into one buffer: its bytes in order, made as they are
    written (a 10 MB join alone holds the loop ~20 ms here), and their total length."""

    __slots__ = ("length", "pieces")

    def __init__(self, length: int, pieces: Iterator[bytes]) -> None:
        self.length = length
        self.pieces = pieces

    def join(self) -> bytes:
        return b"".join(self.pieces)


#: What `Dispatcher.dispatch_text` answers: nothing, the bytes to send, or `Pieces`.
Answer = bytes | Pieces | None


class HasJson(Protocol):
    def json(self) -> bytes: ...


#: Items gathered between two checkpoints by `encode_items` (~1 ms of work).
JOIN_CHUNK = 5000


async def encode_items(items: Sequence[HasJson]) -> Encoded[Any]:
    """A JSON array of the items' own `json()`, with a checkpoint every `JOIN_CHUNK`
    items, so a 50k-item answer (whose JSON may need encoding) never holds the loop."""
    parts: list[bytes] = []
    for i in range(0, len(items), JOIN_CHUNK):
        if i:
            await trio.lowlevel.checkpoint()  # let other connections in
        parts.extend([item.json() for item in items[i : i + JOIN_CHUNK]])
    return Encoded(items=parts)


#: The opcodes of a place where a coroutine can be suspended: `await`, `async for`,
#: `async with` (each of them compiles to some of these; nothing else does).
_WAITING_OPS = frozenset(
    dis.opmap[name]
    for name in ("GET_AWAITABLE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH", "SEND",
                 "YIELD_VALUE")
    if name in dis.opmap
)  # fmt: skip


def may_wait(fn: Callable[..., Any]) -> bool:
    """Whether the coroutine function `fn` can give up control before it returns.

    A coroutine is suspended only at an `await`, `async for` or `async with` in
    its own code (code nested in it, such as a generator expression, suspends
    its own frame, never this one), so one with none of them runs to its end in
    one step. Anything but a plain function may wait.
    """
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        return True
    return not _WAITING_OPS.isdisjoint(code.co_code[::2])  # 2 bytes per instruction


def validation_data(exc: ValidationError) -> dict[str, Any]:
    """A JSON-safe summary of pydantic errors: where, what, and which kind."""
    return {
        "errors": [
            {
                "loc": ".".join(str(p) for p in e["loc"]),
                "msg": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
    }


class Registry(Generic[Ctx]):
    """The set of methods a server answers, declared one function each."""

    def __init__(self) -> None:
        self.methods: dict[str, MethodSpec[Ctx]] = {}

    def method(
        self, name: str | None = None
    ) -> Callable[[Callable[[Ctx, Any], Awaitable[Any]]], Callable[[Ctx, Any], Awaitable[Any]]]:
        """Register `async def handler(ctx, params: SomeParams) -> Result`.

        The params model and the result type come from the annotations; the
        docstring is the method's documentation.
        """

        def register(
            fn: Callable[[Ctx, Any], Awaitable[Any]],
        ) -> Callable[[Ctx, Any], Awaitable[Any]]:
            method_name = name or fn.__name__
            hints = typing.get_type_hints(fn)
            sig = list(inspect.signature(fn).parameters)
            params_model = hints.get(sig[1], NoParams) if len(sig) > 1 else NoParams
            if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
                raise TypeError(f"{method_name}: params must be a pydantic model")
            if method_name in self.methods:
                raise ValueError(f"method {method_name} registered twice")
            positional = tuple(f.alias or n for n, f in params_model.model_fields.items())
            result = hints.get("return", Any)
            if typing.get_origin(result) is Encoded:
                (result,) = typing.get_args(result)
            self.methods[method_name] = MethodSpec(
                name=method_name,
                handler=fn,
                params=params_model,
                result=result,
                doc=inspect.cleandoc(fn.__doc__ or ""),
                positional=positional,
                inline=not may_wait(fn) and typing.get_origin(result) is not list,
            )
            return fn

        return register

    def merge(self, other: Registry[Ctx]) -> None:
        for name, spec in other.methods.items():
            if name in self.methods:
                raise ValueError(f"method {name} registered twice")
            self.methods[name] = spec

    def __repr__(self) -> str:
        return f"Registry({len(self.methods)} methods)"


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's json accepts them by default)."""
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
#: A `\uD800`..`\uDFFF` escape: the only way a lone surrogate gets into a str.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


#: Items of a list result encoded between two checkpoints (~2 ms of pydantic-core).
ENCODE_CHUNK = 500


class _BatchTooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Result:
    """A handler's return value (kept apart from the errors `_call` returns)."""

    value: Any


def decode_frame(text: str, max_batch: int) -> Any:
    """`json.loads`, except that a batch is parsed one item at a time and given up
    on at item `max_batch + 1`: a million-item batch costs no more than the cap."""
    i = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    if not text.startswith("[", i):
        return _DECODER.decode(text)
    items: list[Any] = []
    i = _WHITESPACE.match(text, i + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", i):
        end = i + 1
    else:
        while True:
            if len(items) == max_batch:
                raise _BatchTooLarge
            item, i = _DECODER.raw_decode(text, i)
            items.append(item)
            i = _WHITESPACE.match(text, i).end()  # type: ignore[union-attr]
            if text.startswith(",", i):
                i = _WHITESPACE.match(text, i + 1).end()  # type: ignore[union-attr]
                continue
            if text.startswith("]", i):
                end = i + 1
                break
            raise ValueError("expected ',' or ']' in a batch")
    if _WHITESPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise ValueError("extra data after the batch")
    return items


#: Built once: `json.dumps` with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_json(value: Any) -> bytes:
    """Strict JSON (no NaN or Infinity) in UTF-8.

    A lone surrogate (a client may send `"\\ud800"` as an id or a method name)
    has no UTF-8 form: such a message is written with escapes, as it came.
    """
    if type(value) is int:  # most request ids
        return str(value).encode()
    text = _ENCODER.encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(value).encode()


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate(value: Any) -> str | None:
    """Where in `value` (decoded JSON) a string that is not Unicode is, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return loc
        elif isinstance(item, dict):
            for key, sub in item.items():
                where = f"{loc}.{key}" if loc else key
                if not _is_unicode(key):
                    return where
                stack.append((where, sub))
        elif isinstance(item, list):
            stack.extend((f"{loc}.{n}" if loc else str(n), sub) for n, sub in enumerate(item))
    return None


def _valid_request(item: Any) -> bool:
    """The request object rules of the spec, checked without jsonschema."""
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        return False
    if not isinstance(item.get("method"), str):
        return False
    if "params" in item and not isinstance(item["params"], list | dict):
        return False
    if "id" in item:
        ident = item["id"]
        if isinstance(ident, bool) or not isinstance(ident, str | int | float | type(None)):
            return False
        if isinstance(ident, float) and not math.isfinite(ident):  # 1e400 parses as inf
            return False
    return set(item) <= {"jsonrpc", "method", "params", "id"}


#: Shared by every call without params: it has no field to change.
_NO_PARAMS = NoParams.model_construct()  # built without its validator (start-up)
# Messages exactly as the JSON-RPC 2.0 specification spells them.
_PARSE_ERROR = encode_json(error_response({"code": -32700, "message": "Parse error"}, None))
_INVALID_REQUEST = encode_json(error_response({"code": -32600, "message": "Invalid Request"}, None))


class _Acquirable(Protocol):
    def acquire_nowait(self) -> None: ...
    async def acquire(self) -> None: ...


async def acquire(lock: _Acquirable) -> None:
    """`lock.acquire()` (a lock, a limiter, a semaphore), without its pass through the
    scheduler when it is free (the common case): that pass was a sixth of a small
    request's cost."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


@dataclass(frozen=True, slots=True)
class Incoming:
    """One frame, decoded: its request or batch, or the answer it already has."""

    message: Any = None
    check_unicode: bool = False  # it holds escapes: params may hold a lone surrogate
    answer: bytes | None = None  # known without calling anything (a parse error, ...)
    #: Answered without waiting (see `MethodSpec.inline`): no task of its own needed.
    inline: bool = True


class Dispatcher(Generic[Ctx]):
    """Turns one frame into its encoded answer (zero or more response objects)."""

    def __init__(self, registry: Registry[Ctx], *, max_batch: int = 1000) -> None:
        self.registry = registry
        self.max_batch = max_batch
        #: method -> the result's encoder; None: `Any`, encoded by the general path
        self._adapters: dict[str, TypeAdapter[Any] | None] = {}

    async def dispatch_text(
        self, ctx: Ctx, text: bytes | str, limiter: trio.CapacityLimiter | None = None
    ) -> Answer:
        """Answer one frame with the JSON to send (bytes, or `Pieces` for a long list);
        None means nothing is to be sent.

        `limiter` bounds how many requests of this connection run at once
        (batch items included); without one, a batch's items all run at once.
        """
        return await self.answer(ctx, self.decode(text), limiter)

    def decode(self, text: bytes | str) -> Incoming:
        """Parse one frame (the first half of `dispatch_text`)."""
        try:
            if isinstance(text, bytes):
                text = text.decode(json.detect_encoding(text))
            decoded = decode_frame(text, self.max_batch)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nesting deeper than Python's json can follow.
            return Incoming(answer=_PARSE_ERROR)
        except _BatchTooLarge:
            error = errors.BatchTooLarge(data={"limit": self.max_batch})
            return Incoming(answer=self._encode_error(error, None))
        # Only an escape can make a lone surrogate: look for them only then.
        check = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
        if isinstance(decoded, list):
            if not decoded:
                return Incoming(answer=_INVALID_REQUEST)
            return Incoming(decoded, check, inline=False)
        method = decoded.get("method") if isinstance(decoded, dict) else None
        spec = self.registry.methods.get(method) if isinstance(method, str) else None
        return Incoming(decoded, check, inline=spec is None or spec.inline)

    async def answer(
        self, ctx: Ctx, incoming: Incoming, limiter: trio.CapacityLimiter | None = None
    ) -> Answer:
        """The second half of `dispatch_text`: run what `decode` found."""
        if incoming.answer is not None:
            return incoming.answer
        if isinstance(incoming.message, list):
            return await self._batch(ctx, incoming.message, limiter, incoming.check_unicode)
        return await self._limited(ctx, incoming.message, incoming.check_unicode, limiter)

    async def _limited(
        self, ctx: Ctx, item: Any, check: bool, limiter: trio.CapacityLimiter | None
    ) -> Answer:
        """`dispatch_one`, holding a token of `limiter` (when given) meanwhile."""
        if limiter is None:
            return await self.dispatch_one(ctx, item, check)
        await acquire(limiter)
        try:
            return await self.dispatch_one(ctx, item, check)
        finally:
            limiter.release()

    async def _batch(
        self, ctx: Ctx, items: list[Any], limiter: trio.CapacityLimiter | None, check: bool
    ) -> bytes | None:
        answers: list[bytes | None] = [None] * len(items)
        todo = iter(enumerate(items))

        async def work() -> None:
            for i, item in todo:
                answer = await self._limited(ctx, item, check, limiter)
                answers[i] = answer.join() if isinstance(answer, Pieces) else answer

        workers = len(items) if limiter is None else min(len(items), int(limiter.total_tokens))
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(work)
        out = [a for a in answers if a is not None]
        return b"[" + b",".join(out) + b"]" if out else None

    async def dispatch_one(self, ctx: Ctx, item: Any, check_unicode: bool = True) -> Answer:
        if not _valid_request(item):
            return _INVALID_REQUEST
        request = Request(item["method"], item.get("params", {}), item.get("id", NOID))
        outcome = await self._call(ctx, request, check_unicode)
        if request.id is NOID:
            return None  # a notification: nothing is sent, not even an error
        if isinstance(outcome, errors.CorralError):
            return self._encode_error(outcome, request.id)
        if isinstance(outcome.value, Encoded):
            return _success_encoded(outcome.value, encode_json(request.id))
        fast = await self._encode_typed(request, outcome.value)
        if fast is not None:
            return fast
        try:
            return encode_json(
                {"jsonrpc": "2.0", "result": to_jsonable(outcome.value), "id": request.id}
            )
        except Exception:
            # The answer is lost either way; the client learns which request it was.
            log.exception("the result of %s cannot be encoded as JSON", request.method)
            return self._encode_error(
                errors.InternalError(
                    data={"method": request.method, "reason": "result is not encodable as JSON"}
                ),
                request.id,
            )

    async def _encode_typed(self, request: Request, value: Any) -> bytes | None:
        """The success response with its result encoded by pydantic-core, or None when the
        method's result type is `Any` or cannot encode this value (the general path then)."""
        if request.method not in self._adapters:
            result = self.registry.methods[request.method].result
            self._adapters[request.method] = None if result is Any else TypeAdapter(result)
        adapter = self._adapters[request.method]
        if adapter is None:
            return None
        is_list = typing.get_origin(self.registry.methods[request.method].result) is list
        try:
            ident = encode_json(request.id)
            if is_list and isinstance(value, list) and len(value) > ENCODE_CHUNK:
                parts = []
                items = list(value)  # the handler's list, whatever happens to it meanwhile
                for i in range(0, len(items), ENCODE_CHUNK):
                    if i:
                        await trio.lowlevel.checkpoint()  # let other connections in
                    chunk = adapter.dump_json(
                        items[i : i + ENCODE_CHUNK],
                        by_alias=True,
                        exclude_none=True,
                        warnings="error",
                    )
                    parts.append(chunk[1:-1])  # without its brackets
                body = b"[" + b",".join(parts) + b"]"
            else:
                body = adapter.dump_json(value, by_alias=True, exclude_none=True, warnings="error")
        except Exception:  # the general path encodes it, or says why not
            return None
        return _success(body, ident)

    async def _call(
        self, ctx: Ctx, request: Request, check_unicode: bool
    ) -> _Result | errors.CorralError:
        spec = self.registry.methods.get(request.method)
        if spec is None:
            return errors.MethodNotFound(data={"method": request.method})
        where = lone_surrogate(request.params) if check_unicode else None
        if where is not None:
            return _not_unicode(where)
        try:
            params = self._bind(spec, request.params)
        except ValidationError as exc:
            return errors.InvalidParams(data=validation_data(exc))
        except errors.CorralError as exc:
            return exc
        try:
            return _Result(await spec.handler(ctx, params))
        except errors.CorralError as exc:
            return exc
        except ValidationError as exc:
            # A handler validating nested input (e.g. a config) reports it as params.
            return errors.InvalidParams(data=validation_data(exc))
        except Exception:
            log.exception("method %s failed", request.method)
            return errors.InternalError(data={"method": request.method})

    @staticmethod
    def _bind(spec: MethodSpec[Ctx], params: list[Any] | dict[str, Any]) -> BaseModel:
        if isinstance(params, list):
            if len(params) > len(spec.positional):
                raise errors.InvalidParams(
                    f"{spec.name} takes at most {len(spec.positional)} positional params",
                    {"expected": list(spec.positional), "got": len(params)},
                )
            params = dict(zip(spec.positional, params, strict=False))
        if not params and spec.params is NoParams:
            return _NO_PARAMS  # nothing to validate (most status calls)
        return spec.params.model_validate(params)

    @staticmethod
    def _encode_error(exc: errors.CorralError, ident: Any) -> bytes:
        wire = exc.to_wire()
        try:
            return encode_json(error_response(wire, ident))
        except Exception:
            log.exception("error %s cannot be encoded as JSON", wire["code"])
            return encode_json(error_response({"code": -32603, "message": "Internal error"}, ident))


def _success(result: bytes, ident: bytes) -> bytes:
    """A success response object around a result already encoded."""
    return b'{"jsonrpc":"2.0","result":' + result + b',"id":' + ident + b"}"


def _success_encoded(value: Encoded[Any], ident: bytes) -> bytes | Pieces:
    """The success response around an `Encoded` result; a long list as `Pieces`."""
    parts = value.items
    if parts is None:
        return _success(value.data, ident)
    head, tail = b'{"jsonrpc":"2.0","result":[', b'],"id":' + ident + b"}"
    if len(parts) <= JOIN_CHUNK:
        return b"".join((head, b",".join(parts), tail))
    length = len(head) + sum(map(len, parts)) + len(parts) - 1 + len(tail)

    def pieces() -> Iterator[bytes]:
        yield head
        for i in range(0, len(parts), JOIN_CHUNK):
            chunk = parts[i : i + JOIN_CHUNK]
            if i:
                chunk.insert(0, b"")  # the comma before this chunk
            yield b",".join(chunk)
        yield tail

    return Pieces(length, pieces())


def _not_unicode(where: str) -> errors.InvalidParams:
    return errors.InvalidParams(
        "params hold a string that is not Unicode",
        {
            "errors": [
                {
                    "loc": where,
                    "msg": "a lone UTF-16 surrogate (such as \\ud800) is not a Unicode character",
                    "type": "lone_surrogate",
                }
            ]
        },
    )


# --- OpenRPC ---------------------------------------------------------------------


def _schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if tp is None or tp is type(None):
        return {"type": "null"}
    schema = TypeAdapter(tp).json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    return schema


def openrpc_document(
    registry: Registry[Any], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """An OpenRPC 1.2 document generated from the registered methods."""
    defs: dict[str, Any] = {}
    methods = []
    for spec in sorted(registry.methods.values(), key=lambda s: s.name):
        params_schema = _schema_of(spec.params, defs)
        required = set(params_schema.get("required", []))
        params = [
            {"name": pname, "required": pname in required, "schema": pschema}
            for pname, pschema in params_schema.get("properties", {}).items()
        ]
        methods.append(
            {
                "name": spec.name,
                "summary": spec.summary,
                "description": spec.doc,
                "paramStructure": "by-name",
                "params": params,
                "result": {"name": "result", "schema": _schema_of(spec.result, defs)},
            }
        )
    error_table = [
        {"code": code, "message": cls.default_message, "name": cls.__name__}
        for code, cls in errors.ERROR_CLASSES.items()
    ]
    return {
        "openrpc": "1.2.6",
        "info": {"title": title, "version": version, "description": description},
        "methods": methods,
        "components": {"schemas": defs, "x-errors": error_table},
    }
