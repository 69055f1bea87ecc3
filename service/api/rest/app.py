"""REST transport: ``POST /schedule``, health, readiness, policy metadata and ``/metrics``.

The hot path (``POST /schedule``) reads the raw body (bounded by ``max_body_bytes``), decodes
it with orjson, builds the slot column-wise (``service.api.schemas.decode_schedule``), calls
``ServiceCore.schedule`` and encodes the decision with orjson — no pydantic object per request;
the pydantic models only document the contract in OpenAPI. Policies or state stores that do
blocking I/O (class attribute ``blocking_io = True``: the LLM teacher, Redis) run in the thread
pool, one slot per cell at a time; the rest run inline on the event loop.

Rejections are 4xx with ``{"error", "field", "message"}``: 400 malformed JSON, 413 body or
N / R / feedback above the configured limits, 422 a field that breaks the contract.

With ``grpc_port != 0`` the lifespan also starts the gRPC server
(``service.api.grpc.server.start_grpc_server``) on the same event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

import service
from service.api.schemas import (
    REQUEST_EXAMPLES,
    ErrorBody,
    Limits,
    ScheduleRequest,
    ScheduleResponse,
    decode_schedule,
    encode_decision,
    error_body,
)
from service.config import Settings
from service.core import ServiceCore
from service.errors import InvalidSlotError, LimitExceededError
from service.metrics import Metrics
from service.policies.base import _REGISTRY, names

log = logging.getLogger("gnbsched.rest")

TRANSPORT = "rest"
GRPC_GRACE_S = 5.0
_CELL_LOCK_STRIPES = 64
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class _BodyTooLarge(Exception):
    pass


def build_core(settings: Settings | None = None, metrics: Metrics | None = None) -> ServiceCore:
    """A ``ServiceCore`` from settings (default: the environment), observed by ``metrics``."""
    return ServiceCore(settings or Settings(), observer=metrics or Metrics())


def app_from_env() -> FastAPI:
    """uvicorn factory (``--workers > 1``): every worker builds its core from ``GNBSCHED_*``."""
    return create_app(build_core())


def _json(status: int, content: Any) -> Response:
    return Response(orjson.dumps(content, option=_ORJSON_OPTS, default=str), status_code=status,
                    media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Scheduler:
    """The ``POST /schedule`` handler and the state it reuses across requests."""

    def __init__(self, core: ServiceCore, metrics: Metrics) -> None:
        self.core = core
        self.metrics = metrics
        s = core.settings
        self.limits = Limits.from_settings(s)
        self.max_body = int(s.max_body_bytes)
        self.known = self.refresh_known()
        self._locks = [asyncio.Lock() for _ in range(_CELL_LOCK_STRIPES)]

    def refresh_known(self) -> frozenset[str]:
        p = self.core.policies
        self.known = frozenset(names()) | frozenset(p.factories) | frozenset(p.loaded())
        return self.known

    def blocking(self, name: str) -> bool:
        """Does deciding with ``name`` (or its fallbacks) block on I/O (teacher, Redis)?"""
        if getattr(self.core.store, "blocking_io", False):
            return True
        for n in (name, *self.core.settings.fallbacks):
            try:
                if getattr(self.core.policies.get(n), "blocking_io", False):
                    return True
            except Exception:  # unknown or broken: the pipeline falls back and reports it
                continue
        return False

    def reject(self, status: int, body: dict[str, str], preset: object = None) -> Response:
        self.metrics.rejected(TRANSPORT, preset)
        return _json(status, body)

    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            raw = await _read_body(request, self.max_body)
        except _BodyTooLarge as exc:
            return self.reject(413, error_body(error="body_too_large", field="body", message=str(exc)))
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self.reject(400, error_body(error="invalid_json", field="body", message=str(exc)))
        preset = doc.get("preset") if type(doc) is dict else None
        try:
            args = decode_schedule(doc, self.limits, self.known)
        except LimitExceededError as exc:
            return self.reject(413, error_body(exc), preset)
        except InvalidSlotError as exc:
            return self.reject(422, error_body(exc), preset)
        except (TypeError, ValueError, OverflowError, KeyError, IndexError) as exc:  # belt and braces
            log.warning("unclassified invalid request: %r", exc)
            return self.reject(422, error_body(field="body", message=f"invalid request: {exc}"), preset)
        t1 = time.perf_counter()
        state = args.state
        name = args.policy or self.core.settings.default_policy(state.preset)
        try:
            if self.blocking(name):
                async with self._locks[hash(state.cell_id) % _CELL_LOCK_STRIPES]:
                    decision = await run_in_threadpool(
                        self.core.schedule, state, policy=name, deadline_ms=args.deadline_ms,
                        feedback=args.feedback, transport=TRANSPORT)
            else:
                decision = self.core.schedule(state, policy=name, deadline_ms=args.deadline_ms,
                                              feedback=args.feedback, transport=TRANSPORT)
        except InvalidSlotError as exc:
            return self.reject(422, error_body(exc), state.preset)
        except Exception as exc:
            log.exception("schedule failed for cell %s slot %s", state.cell_id, state.slot)
            self.metrics.error(TRANSPORT, state.preset, name)
            return _json(500, error_body(error="internal", field="policy",
                                         message=f"no decision: {type(exc).__name__}: {exc}"))
        body = orjson.dumps(encode_decision(state, decision, decode_us=(t1 - t0) * 1e6),
                            option=_ORJSON_OPTS, default=str)
        self.metrics.observe_request(TRANSPORT, time.perf_counter() - t0)
        return Response(body, media_type="application/json")


async def _start_grpc(core: ServiceCore, host: str, port: int):
    """Start the gRPC server when the transport is installed; None (and a warning) otherwise."""
    try:
        from service.api.grpc.server import start_grpc_server
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(("service.api.grpc", "grpc")):
            log.warning("gRPC transport not available (%s); serving REST only", exc)
            return None
        raise
    return await start_grpc_server(core, host, port)


def _policy_metadata(core: ServiceCore) -> list[dict[str, Any]]:
    loaded = core.policies.loaded()
    out = []
    for name in sorted(set(names()) | set(core.policies.factories) | set(loaded)):
        pol = loaded.get(name)
        cls = core.policies.factories.get(name) or _REGISTRY.get(name)
        if pol is not None:
            meta = {**pol.metadata(), "name": name, "loaded": True}
        else:
            meta = {"name": name, "version": str(getattr(cls, "version", "")),
                    "presets": list(getattr(cls, "presets", ())), "loaded": False}
        doc = (getattr(pol or cls, "__doc__", None) or "").strip()
        meta.setdefault("description", " ".join(doc.split("\n\n")[0].split()))
        meta["blocking_io"] = bool(getattr(pol or cls, "blocking_io", False))
        out.append(meta)
    return out


def create_app(core: ServiceCore | None = None, *, metrics: Metrics | None = None,
               start_grpc: bool | None = None) -> FastAPI:
    """The REST application over ``core`` (default: built from the environment).

    metrics: the ``Metrics`` to record into; by default the core's observer when it is one,
    else a new one that becomes the core's observer. start_grpc: start the gRPC server in the
    lifespan (default: when ``core.settings.grpc_port != 0``).
    """
    if core is None:
        core = build_core(metrics=metrics)
    if metrics is None:
        metrics = core.observer if isinstance(core.observer, Metrics) else Metrics()
    core.observer = metrics
    settings = core.settings
    grpc_on = settings.grpc_port != 0 if start_grpc is None else start_grpc
    handler = _Scheduler(core, metrics)
    status: dict[str, Any] = {"started": False, "preload_error": None, "grpc": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(core.preload)
        except Exception as exc:  # readiness reports it; liveness stays up
            status["preload_error"] = f"{type(exc).__name__}: {exc}"
            log.error("policy preload failed: %s", status["preload_error"])
        handler.refresh_known()
        metrics.policies_loaded((n, p.version) for n, p in core.policies.loaded().items())
        metrics.set_store_up(await run_in_threadpool(core.store.ping))
        grpc_server = None
        if grpc_on:
            grpc_server = await _start_grpc(core, settings.host, settings.grpc_port)
            status["grpc"] = None if grpc_server is None else f"{settings.host}:{settings.grpc_port}"
        status["started"] = True
        try:
            yield
        finally:
            status["started"] = False
            if grpc_server is not None:
                await grpc_server.stop(GRPC_GRACE_S)
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

    error_responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "malformed JSON"},
        413: {"model": ErrorBody, "description": "body, users, resources or feedback above the configured limits"},
        422: {"model": ErrorBody, "description": "a field breaks the contract (named in `field`)"},
    }

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
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ScheduleRequest"}, "examples": REQUEST_EXAMPLES}}}},
        tags=["scheduling"],
    )(schedule)
    app.router.routes.insert(0, Route("/schedule", schedule, methods=["POST"], include_in_schema=False))

    @app.get("/healthz", tags=["operations"], summary="Liveness")
    async def healthz() -> Response:
        """Liveness: the process serves HTTP."""
        return _json(200, {"status": "ok", "pid": os.getpid(), "uptime_s": time.time() - core.started})

    @app.get("/readyz", tags=["operations"], summary="Readiness",
             responses={503: {"description": "not ready (policies not loaded, state store down)"}})
    async def readyz() -> Response:
        """Ready once the policies are loaded and the state store answers; says when degraded."""
        ok, details = await run_in_threadpool(core.ready)
        metrics.set_store_up(bool(details.get("store_ok")))
        ready = ok and status["started"] and status["preload_error"] is None
        body = {"ready": ready, **details, "started": status["started"], "preload_error": status["preload_error"],
                "grpc": status["grpc"], "store_errors": core.store_errors}
        return _json(200 if ready else 503, body)

    @app.get("/v1/policies", tags=["operations"], summary="Policies and model versions")
    async def policies() -> Response:
        """Registered policies with name, version, presets and whether they are loaded."""
        return _json(200, {
            "default": {"spectrum": settings.default_policy_spectrum, "mac": settings.default_policy_mac},
            "fallbacks": list(settings.fallbacks),
            "policies": _policy_metadata(core),
        })

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus text exposition (all workers in multiprocess mode)."""
        metrics.set_store_up(await run_in_threadpool(core.store.ping))
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(error="internal", field="body", message=type(exc).__name__), status_code=500)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            req = ScheduleRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            comps.update(req.pop("$defs", {}))
            comps["ScheduleRequest"] = req
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
