"""REST transport: ``POST /schedule``, health, readiness, policy metadata and ``/metrics``.

The hot path (``POST /schedule``) reads the raw body (bounded by ``max_body_bytes``), decodes
it with orjson, builds the slot column-wise (``service.api.rest.codec.decode_schedule``), calls
``ServiceCore.schedule`` and encodes the decision with orjson — no pydantic object per request;
the pydantic models only document the contract in OpenAPI. Policies or state stores that do
blocking I/O (class attribute ``blocking_io = True``: the LLM teacher, Redis) run in the thread
pool, one slot per cell at a time; the rest run inline on the event loop.

Rejections are 4xx with ``{"error", "field", "message"}``: 400 malformed JSON, 413 body or
N / R / feedback above the configured limits, 422 a field that breaks the contract.

Access (``service.security``): with a bearer token configured, ``POST /schedule``,
``GET /v1/policies``, ``GET /models`` and the admin endpoints answer 401 (``field`` = ``authorization``, before
the body is read) unless ``Authorization: Bearer <token>`` is sent; ``/healthz``, ``/readyz``,
``/metrics`` and the OpenAPI document stay open. ``POST /admin/reload`` exists only with
``admin_enabled``: it reloads a policy's model (the student's hot reload) off the event loop; a
corrupt or mismatched model is refused (422 ``model_invalid``) and the old one keeps serving.

The application serves REST only; ``service.api.serve`` assembles the server: it builds the
core, runs gRPC beside REST in this app's lifespan (``beside``) and handles signals.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.routing import Route

import service
from service.api.contract import Limits, ScheduleArgs, error_body, invalid_body
from service.api.rest.admin import ReloadRequest, add_admin_routes
from service.api.rest.codec import decode_schedule, encode_decision
from service.api.rest.http import ORJSON_OPTS, BodyTooLarge, json_response, read_body, unauthorized
from service.api.rest.openapi import (
    REQUEST_EXAMPLES,
    BatchRequest,
    BatchResponse,
    ErrorBody,
    ScheduleRequest,
    ScheduleResponse,
)
from service.core import ServiceCore, freeze_startup_objects
from service.errors import (
    HTTP_STATUS,
    RETRYABLE,
    ErrorKind,
    InvalidSlotError,
    kind_of,
)
from service.inventory import models_report, policy_metadata
from service.metrics import Metrics
from service.security import BearerAuth, check_access
from service.types import SlotState

log = logging.getLogger("gnbsched.rest")

TRANSPORT = "rest"
#: REST paths that need the bearer token when one is configured (the others stay open)
PROTECTED_PATHS = frozenset({"/schedule", "/schedule/batch", "/v1/policies", "/models", "/admin/reload"})


class _Scheduler:
    """The ``POST /schedule`` handler: read, decode, ``await core.decide``, encode."""

    def __init__(self, core: ServiceCore, metrics: Metrics) -> None:
        self.core = core
        self.metrics = metrics
        self.limits = Limits.from_settings(core.settings)
        self.max_body = int(core.settings.max_body_bytes)

    def reject(self, kind: ErrorKind, field: str, message: str, preset: object = None) -> Response:
        self.metrics.rejected(TRANSPORT, preset)
        return json_response(HTTP_STATUS[kind], error_body(kind, field, message))

    async def _read_json(self, request: Request) -> Any:
        """The request's JSON document; ``_Refused`` (413 body too large, 400 not JSON) otherwise."""
        try:
            raw = await read_body(request, self.max_body)
        except BodyTooLarge as exc:
            raise _Refused(self.reject(ErrorKind.BODY_TOO_LARGE, "body", str(exc))) from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Refused(self.reject(ErrorKind.INVALID_JSON, "body", str(exc))) from None

    def _decode(self, doc: Any) -> ScheduleArgs:
        """One slot's document decoded against the contract; ``InvalidSlotError`` naming the field
        (counted as a rejection)."""
        policy = doc.get("policy") if type(doc) is dict else None
        try:
            return decode_schedule(doc, self.limits, self.core.known_policies(policy if type(policy) is str else None))
        except InvalidSlotError:
            self.metrics.rejected(TRANSPORT, doc.get("preset") if type(doc) is dict else None)
            raise
        except (TypeError, ValueError, OverflowError, KeyError, IndexError) as exc:  # belt and braces
            log.warning("unclassified invalid request: %r", exc)
            self.metrics.rejected(TRANSPORT, doc.get("preset") if type(doc) is dict else None)
            raise InvalidSlotError("body", f"invalid request: {exc}") from None

    @staticmethod
    def _failure(state: SlotState, exc: BaseException) -> tuple[ErrorKind, str, str]:
        """(kind, field, message) of a decoded slot that got no decision, logged by its gravity."""
        kind = kind_of(exc)
        if isinstance(exc, InvalidSlotError):
            return kind, exc.field, exc.message
        if kind in RETRYABLE:  # store unreachable, or lost the write race too often: retry the slot
            log.warning("slot refused for cell %s slot %s: %s", state.cell_id, state.slot, exc)
            return kind, "slot", f"retry: {exc}"
        log.error("no decision for cell %s slot %s: %r", state.cell_id, state.slot, exc,
                  exc_info=(type(exc), exc, exc.__traceback__) if kind is ErrorKind.INTERNAL else None)  # fmt: skip
        return kind, "policy", f"no decision: {type(exc).__name__}: {exc}"

    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            args = self._decode(await self._read_json(request))
        except _Refused as refused:
            return refused.response
        except InvalidSlotError as exc:
            return json_response(HTTP_STATUS[exc.kind], invalid_body(exc))
        t1 = time.perf_counter()
        state = args.state
        self.metrics.observe_stage(TRANSPORT, state.preset, "decode", t1 - t0)
        try:
            decision = await self.core.decide(
                state,
                policy=args.policy,
                deadline_ms=args.deadline_ms,
                feedback=args.feedback,
                epoch=args.epoch,
                transport=TRANSPORT,
                timings_us={"decode": (t1 - t0) * 1e6},
            )
        except Exception as exc:
            kind, field, message = self._failure(state, exc)
            resp = json_response(HTTP_STATUS[kind], error_body(kind, field, message))
            if kind in RETRYABLE:
                resp.headers["Retry-After"] = "1"
            return resp
        t2 = time.perf_counter()
        body = orjson.dumps(encode_decision(state, decision), option=ORJSON_OPTS, default=str)
        t3 = time.perf_counter()
        self.metrics.observe_stage(TRANSPORT, state.preset, "encode", t3 - t2)
        self.metrics.observe_request(TRANSPORT, t3 - t0)
        return Response(body, media_type="application/json")

    async def batch(self, request: Request) -> Response:
        """``POST /schedule/batch``: ``{"cells": [request, ...]}`` → ``{"decisions": [...]}``, one
        answer per cell in order: its decision, or ``{"error", "field", "message", "status"}``
        (``status``: what ``POST /schedule`` would have answered) in its place."""
        t0 = time.perf_counter()
        try:
            doc = await self._read_json(request)
        except _Refused as refused:
            return refused.response
        if type(doc) is not dict or set(doc) != {"cells"}:
            return self.reject(
                ErrorKind.INVALID_REQUEST, "body", 'expected {"cells": [one POST /schedule body per cell]}'
            )
        cells = doc["cells"]
        if type(cells) is not list:
            return self.reject(ErrorKind.INVALID_REQUEST, "cells", "expected an array of POST /schedule bodies")
        limit = self.core.settings.max_cells_per_call
        if len(cells) > limit:
            return self.reject(
                ErrorKind.LIMIT_EXCEEDED, "cells", f"{len(cells)} cells exceed the configured limit of {limit}"
            )
        clock = time.perf_counter
        items: list[ScheduleArgs | BaseException] = []
        for cell in cells:
            t1 = clock()
            try:
                args = self._decode(cell)
            except InvalidSlotError as exc:
                items.append(exc)
                continue
            items.append(args)
            self.metrics.observe_stage(TRANSPORT, args.state.preset, "decode", clock() - t1)
        results = await self.core.decide_cells(items, transport=TRANSPORT)
        t2 = clock()
        answers: list[dict[str, Any]] = []
        decided: list[str] = []  # the presets of the decided cells, for the encode stage
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                state = item.state if isinstance(item, ScheduleArgs) else None
                if state is None:
                    assert isinstance(result, InvalidSlotError)
                    kind, field, message = result.kind, result.field, result.message
                else:
                    kind, field, message = self._failure(state, result)
                answers.append({**error_body(kind, field, message), "status": HTTP_STATUS[kind]})
            else:
                assert isinstance(item, ScheduleArgs)
                answers.append(encode_decision(item.state, result))
                decided.append(item.state.preset)
        body = orjson.dumps({"decisions": answers}, option=ORJSON_OPTS, default=str)
        t3 = clock()
        for preset in decided:  # the answer's encoding, an equal share per decided cell
            self.metrics.observe_stage(TRANSPORT, preset, "encode", (t3 - t2) / len(decided))
        self.metrics.observe_request(TRANSPORT, t3 - t0)
        return Response(body, media_type="application/json")


class _Refused(Exception):
    """A request refused before decoding; ``response`` is the answer."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


#: a service run beside REST in the app's lifespan (gRPC, ``service.api.serve``): entered after
#: the policies are loaded, it yields (name, address) for ``/readyz`` and stops on exit
Beside = Callable[[ServiceCore], AbstractAsyncContextManager[tuple[str, str | None]]]


#: what a status of ``POST /schedule`` means (the OpenAPI document); the kinds come from ERROR_TABLE
_STATUS_TEXT = {
    400: "malformed JSON",
    409: "the slot does not follow the cell's state (named in `field`: `slot` or `epoch`)",
    413: "body, users, resources or feedback above the configured limits",
    422: "a field breaks the contract (named in `field`)",
    500: "no policy could decide the slot, or an internal error",
    503: "retryable: the state store is unreachable or a concurrent writer won (`Retry-After`)",
}


def create_app(
    core: ServiceCore, *, metrics: Metrics | None = None, beside: Sequence[Beside] = (), freeze_gc: bool = False
) -> FastAPI:
    """The REST application over ``core``.

    metrics: the ``Metrics`` to record into; by default the core's observer when it is one,
    else a new one that becomes the core's observer. beside: services run in the lifespan
    (``service.api.serve`` runs gRPC so). freeze_gc: once the core is preloaded and the services
    beside it run, the objects made so far leave the garbage collector's scans
    (``service.core.freeze_startup_objects``; ``gnbsched serve`` sets it).
    """
    if metrics is None:
        metrics = core.observer if isinstance(core.observer, Metrics) else Metrics()
    core.observer = metrics
    settings = core.settings
    auth = BearerAuth(check_access(settings))  # AccessConfigError on inconsistent access settings
    handler = _Scheduler(core, metrics)
    status: dict[str, Any] = {"started": False, "preload_error": None, "grpc": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(core.preload)
        except Exception as exc:  # readiness reports it; liveness stays up
            status["preload_error"] = f"{type(exc).__name__}: {exc}"
            log.error("policy preload failed: %s", status["preload_error"])
        core.refresh_known()
        core.start_model_watch()
        metrics.policies_loaded((n, p.version) for n, p in core.policies.loaded().items())
        for name, pol in core.policies.loaded().items():
            metrics.inference_providers(name, pol.metadata().get("models", {}))
        metrics.set_store_up(await run_in_threadpool(core.store.ping))
        try:
            async with AsyncExitStack() as stack:
                for service_beside in beside:
                    name, address = await stack.enter_async_context(service_beside(core))
                    status[name] = address
                if freeze_gc:
                    log.info("gc: %d startup objects frozen", freeze_startup_objects())
                status["started"] = True
                try:
                    yield
                finally:
                    status["started"] = False
        finally:
            await run_in_threadpool(core.close)
            metrics.process_exit()

    app = FastAPI(
        title="gnbsched",
        version=service.__version__,
        summary="gNB-side scheduling microservice: one slot in, one PAG-valid decision out.",
        lifespan=lifespan,
    )
    app.state.core = core
    app.state.metrics = metrics
    app.state.status = status
    app.state.auth = auth

    # every status a decision can answer with, from the one error table (the kinds in `error`)
    error_responses: dict[int | str, dict[str, Any]] = {}
    for kind, code in HTTP_STATUS.items():
        if kind is ErrorKind.UNAUTHORIZED:
            continue
        entry = error_responses.setdefault(
            code, {"model": ErrorBody, "description": _STATUS_TEXT.get(code, "") + "; `error`:"}
        )
        entry["description"] += f" `{kind.value}`"
    auth_responses: dict[int | str, dict[str, Any]] = (
        {401: {"model": ErrorBody, "description": "missing or invalid bearer token"}} if auth.enabled else {}
    )
    error_responses.update(auth_responses)

    if auth.enabled:

        async def schedule(request: Request) -> Response:
            """Decide one slot: serialize → policy → PAG check → repair; per-cell state advances."""
            denied = unauthorized(auth, request)
            if denied is not None:
                metrics.rejected(TRANSPORT)
                return denied
            return await handler(request)
    else:

        async def schedule(request: Request) -> Response:
            """Decide one slot: serialize → policy → PAG check → repair; per-cell state advances."""
            return await handler(request)

    # The FastAPI route documents the contract (OpenAPI); a plain Starlette route placed before
    # it serves the requests, skipping FastAPI's per-request dependency solving (~40-90 µs here).
    app.post(
        "/schedule",
        summary="Decide one slot of one cell",
        response_class=Response,
        responses={200: {"model": ScheduleResponse, "description": "the decision"}, **error_responses},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ScheduleRequest"},
                        "examples": REQUEST_EXAMPLES,
                    }
                },
            }
        },
        tags=["scheduling"],
    )(schedule)
    app.router.routes.insert(0, Route("/schedule", schedule, methods=["POST"], include_in_schema=False))

    async def schedule_batch(request: Request) -> Response:
        """Decide every cell of one TTI: one answer per cell, in order; a bad cell answered in place."""
        denied = unauthorized(auth, request) if auth.enabled else None
        if denied is not None:
            metrics.rejected(TRANSPORT)
            return denied
        return await handler.batch(request)

    app.post(
        "/schedule/batch",
        summary="Decide every cell of one TTI",
        response_class=Response,
        responses={200: {"model": BatchResponse, "description": "one answer per cell, in order"}, **error_responses},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
            }
        },
        tags=["scheduling"],
    )(schedule_batch)
    app.router.routes.insert(0, Route("/schedule/batch", schedule_batch, methods=["POST"], include_in_schema=False))

    @app.get("/healthz", tags=["operations"], summary="Liveness")
    async def healthz() -> Response:
        """Liveness: the process serves HTTP."""
        return json_response(200, {"status": "ok", "pid": os.getpid(), "uptime_s": time.time() - core.started})

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness",
        responses={503: {"description": "not ready (policies not loaded, state store down)"}},
    )
    async def readyz() -> Response:
        """Ready once the policies are loaded and the state store answers; says when degraded."""
        ok, details = await run_in_threadpool(core.ready)
        metrics.set_store_up(bool(details.get("store_ok")))
        ready = ok and status["started"] and status["preload_error"] is None
        body = {
            "ready": ready,
            **details,
            "started": status["started"],
            "preload_error": status["preload_error"],
            "grpc": status["grpc"],
            "store_errors": core.store_errors,
        }
        return json_response(200 if ready else 503, body)

    @app.get("/v1/policies", tags=["operations"], summary="Policies and model versions", responses=auth_responses)
    async def policies(request: Request) -> Response:
        """Registered policies with name, version, presets and whether they are loaded."""
        denied = unauthorized(auth, request)
        if denied is not None:
            return denied
        return json_response(
            200,
            {
                "default": {"spectrum": settings.default_policy_spectrum, "mac": settings.default_policy_mac},
                "fallbacks": list(settings.fallbacks),
                "policies": policy_metadata(core),
            },
        )

    @app.get(
        "/models", tags=["operations"], summary="Loaded models and their feature-range counts", responses=auth_responses
    )
    async def models(request: Request) -> Response:
        """Per preset: the loaded student model (version, sha256, feature version, held-out
        families of its card) and, when its card has feature ranges, the slots checked, the slots
        with a feature outside them and the count per feature since start (this worker)."""
        denied = unauthorized(auth, request)
        if denied is not None:
            return denied
        return json_response(200, models_report(core))

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus text exposition (all workers in multiprocess mode)."""
        metrics.set_store_up(await run_in_threadpool(core.store.ping))
        metrics.set_cells(*core.store.cell_count())
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    if settings.admin_enabled:
        if not auth.enabled:
            log.warning("admin endpoints enabled without a bearer token (loopback bind only)")
        add_admin_routes(app, core, metrics, auth, auth_responses)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """The client went away mid-body: nothing to answer (the server drops the connection),
        nothing to log beyond the connection's DEBUG line."""
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            error_body(ErrorKind.INTERNAL, "body", type(exc).__name__), status_code=HTTP_STATUS[ErrorKind.INTERNAL]
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            req = ScheduleRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            comps.update(req.pop("$defs", {}))
            # the serving instance's limits are part of its contract (413 beyond them)
            req["properties"]["users"]["maxItems"] = int(settings.max_users)
            req["properties"]["resources"]["maxItems"] = int(settings.max_resources)
            comps["ScheduleRequest"] = req
            comps["BatchRequest"] = {
                "title": "BatchRequest",
                "description": BatchRequest.__doc__,
                "type": "object",
                "additionalProperties": False,
                "required": ["cells"],
                "properties": {
                    "cells": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/ScheduleRequest"},
                        "maxItems": int(settings.max_cells_per_call),
                        "description": "one POST /schedule body per cell of the TTI",
                    }
                },
            }
            if settings.admin_enabled:
                comps["ReloadRequest"] = ReloadRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            if auth.enabled:
                schema["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
                for path, ops in schema.get("paths", {}).items():
                    if path in PROTECTED_PATHS:
                        for op in ops.values():
                            op["security"] = [{"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
