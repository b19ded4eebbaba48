"""JSON-RPC 2.0 dispatch on trio, built from jsonrpcserver's per-request pieces.

jsonrpcserver's own `async_dispatch` runs batches with `asyncio.gather` (which
does not run under trio), rejects a whole batch for one bad item, and puts
`str(exc)` of internal errors on the wire. So we keep its request/result/
response types and serialisation, and do the rest here:

* batches are split and every item gets its own answer (spec §6);
* params are validated by the method's pydantic model (-32602 with the
  validation errors in `data`), positional params map onto fields in order;
* an unexpected exception is logged with its traceback and answered with a
  short -32603; nothing internal reaches the client.

Methods are declared with `Registry.method`: one async function each, taking
a context object and a params model, documented by its docstring (which also
feeds `rpc.discover`). This module knows nothing about agents or git.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio
from jsonrpcserver.dispatcher import create_request
from jsonrpcserver.exceptions import JsonRpcError
from jsonrpcserver.request import Request
from jsonrpcserver.response import (
    ErrorResponse,
    SuccessResponse,
    serialize_error,
    serialize_success,
)
from jsonrpcserver.sentinels import NODATA, NOID
from pydantic import BaseModel, TypeAdapter, ValidationError

from corral import errors
from corral.models import NoParams, to_jsonable

log = logging.getLogger("corrald.rpc.dispatch")

Ctx = TypeVar("Ctx")
JSON = Any

# Messages exactly as the JSON-RPC 2.0 specification spells them.
PARSE_ERROR = ErrorResponse(-32700, "Parse error", NODATA, None)
INVALID_REQUEST = ErrorResponse(-32600, "Invalid Request", NODATA, None)


@dataclass(frozen=True)
class MethodSpec(Generic[Ctx]):
    """A registered method: its handler, params model, result type and docs."""

    name: str
    handler: Callable[[Ctx, Any], Awaitable[Any]]
    params: type[BaseModel]
    result: Any
    doc: str
    positional: tuple[str, ...]

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else self.name


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
            self.methods[method_name] = MethodSpec(
                name=method_name,
                handler=fn,
                params=params_model,
                result=hints.get("return", Any),
                doc=inspect.cleandoc(fn.__doc__ or ""),
                positional=positional,
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


class Dispatcher(Generic[Ctx]):
    """Turns one decoded frame into zero or more response objects."""

    def __init__(self, registry: Registry[Ctx]) -> None:
        self.registry = registry

    async def dispatch_text(self, ctx: Ctx, text: bytes | str) -> JSON | None:
        """Answer one frame; None means nothing is to be sent (notifications)."""
        try:
            decoded = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nesting deeper than Python's json can follow.
            return serialize_error(PARSE_ERROR)
        return await self.dispatch_decoded(ctx, decoded)

    async def dispatch_decoded(self, ctx: Ctx, decoded: Any) -> JSON | None:
        if isinstance(decoded, list):
            if not decoded:
                return serialize_error(INVALID_REQUEST)
            answers: list[JSON | None] = [None] * len(decoded)

            async def one(i: int, item: Any) -> None:
                answers[i] = await self.dispatch_one(ctx, item)

            async with trio.open_nursery() as nursery:
                for i, item in enumerate(decoded):
                    nursery.start_soon(one, i, item)
            out = [a for a in answers if a is not None]
            return out or None
        return await self.dispatch_one(ctx, decoded)

    async def dispatch_one(self, ctx: Ctx, item: Any) -> JSON | None:
        if not _valid_request(item):
            return serialize_error(INVALID_REQUEST)
        request: Request = create_request(item)
        response = await self._call(ctx, request)
        if request.id is NOID:
            return None
        return response

    async def _call(self, ctx: Ctx, request: Request) -> JSON:
        spec = self.registry.methods.get(request.method)
        if spec is None:
            return self._error(request, errors.MethodNotFound(data={"method": request.method}))
        try:
            params = self._bind(spec, request.params)
        except ValidationError as exc:
            return self._error(request, errors.InvalidParams(data=validation_data(exc)))
        except errors.CorralError as exc:
            return self._error(request, exc)
        try:
            result = await spec.handler(ctx, params)
        except errors.CorralError as exc:
            return self._error(request, exc)
        except JsonRpcError as exc:
            data = exc.data if exc.data is not NODATA else None
            return self._error(
                request,
                errors.CorralError.from_wire(
                    {"code": exc.code, "message": exc.message, "data": data}
                ),
            )
        except ValidationError as exc:
            # A handler validating nested input (e.g. a config) reports it as params.
            return self._error(request, errors.InvalidParams(data=validation_data(exc)))
        except Exception:
            log.exception("method %s failed", request.method)
            return self._error(request, errors.InternalError(data={"method": request.method}))
        return serialize_success(SuccessResponse(to_jsonable(result), request.id))

    @staticmethod
    def _bind(spec: MethodSpec[Ctx], params: list[Any] | dict[str, Any]) -> BaseModel:
        if isinstance(params, list):
            if len(params) > len(spec.positional):
                raise errors.InvalidParams(
                    f"{spec.name} takes at most {len(spec.positional)} positional params",
                    {"expected": list(spec.positional), "got": len(params)},
                )
            params = dict(zip(spec.positional, params, strict=False))
        return spec.params.model_validate(params)

    @staticmethod
    def _error(request: Request, exc: errors.CorralError) -> JSON:
        wire = exc.to_wire()
        return serialize_error(
            ErrorResponse(wire["code"], wire["message"], wire.get("data", NODATA), request.id)
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
