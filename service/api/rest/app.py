"""REST transport: ``POST /schedule``, health, readiness, policy metadata and ``/metrics``.

The hot path (``POST /schedule``) reads the raw body (bounded by ``max_body_bytes``), decodes
it with orjson, builds the slot column-wise (``service.api.schemas.decode_schedule``), calls
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
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
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
    field_path,
)
from service.config import Settings
from service.core import ServiceCore
from service.errors import GnbSchedError, InvalidSlotError, LimitExceededError, ModelInvalidError
from service.metrics import Metrics
from service.policies.base import _REGISTRY, names
from service.security import WWW_AUTHENTICATE, BearerAuth, check_access
from service.types import PRESETS

log = logging.getLogger("gnbsched.rest")

TRANSPORT = "rest"
GRPC_GRACE_S = 5.0
_CELL_LOCK_STRIPES = 64
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
#: largest admin request body (a policy name, a preset, a version)
ADMIN_MAX_BODY_BYTES = 4096
#: REST paths that need the bearer token when one is configured (the others stay open)
PROTECTED_PATHS = frozenset({"/schedule", "/v1/policies", "/models", "/admin/reload"})
_VERSION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


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


def _unauthorized(auth: BearerAuth, request: Request) -> Response | None:
    """None when ``request`` may pass; else the 401 answer (the body is never read)."""
    value = request.headers.get("authorization")
    if auth.allows(value):
        return None
    resp = _json(401, error_body(error="unauthorized", field="authorization", message=auth.problem(value)))
    resp.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return resp


class ReloadRequest(BaseModel):
    """Reload a policy's model from the model directory (validated off the serving path)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"policy": "student", "preset": "mac", "version": "v3"}, {"policy": "student"}]})
    policy: str = Field(description="a loaded or registered policy with a model (e.g. student)")
    preset: Literal["spectrum", "mac"] | None = Field(
        None, description="the preset's model to reload; absent: every preset whose newest model changed")
    version: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._+-]+$",
                                description="version directory under the model directory (needs preset); "
                                            "absent: the newest / `latest`")


def _decode_reload(raw: bytes, known: frozenset[str]) -> tuple[str, str | None, str | None]:
    """(policy, preset, version) of a reload request; ``InvalidSlotError`` naming the field."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidSlotError("body", f"invalid JSON: {exc}") from None
    if type(doc) is not dict:
        raise InvalidSlotError("body", "expected a JSON object")
    extra = set(doc) - {"policy", "preset", "version"}
    if extra:
        raise InvalidSlotError(field_path("", min(extra)), "unknown field; expected policy, preset, version")
    policy, preset, version = doc.get("policy"), doc.get("preset"), doc.get("version")
    if type(policy) is not str or policy not in known:
        raise InvalidSlotError("policy", f"expected a registered policy name, got {str(policy)[:64]!r}")
    if preset is not None and (type(preset) is not str or preset not in PRESETS):
        raise InvalidSlotError("preset", f"expected one of {list(PRESETS)}, got {str(preset)[:64]!r}")
    if version is not None:
        if type(version) is not str or not 0 < len(version) <= 64 or not set(version) <= _VERSION_CHARS \
                or version in (".", ".."):
            raise InvalidSlotError("version", "expected a version directory name ([A-Za-z0-9._+-], at most 64)")
        if preset is None:
            raise InvalidSlotError("preset", "required with version")
    return policy, preset, version


def _reload_policy(core: ServiceCore, name: str, preset: str | None, version: str | None) -> dict[str, Any]:
    """Reload ``name``'s model(s) in this thread (blocking); the policy swaps atomically.

    Raises ``InvalidSlotError`` (the policy has no model), ``ModelInvalidError`` (refused: the
    old model keeps serving).
    """
    policy = core.policies.get(name)  # first use: loads the newest model (may raise ModelInvalidError)
    if preset is not None:
        reload = getattr(policy, "reload", None)  # duck-typed: only model-backed policies have it
        if not callable(reload):
            raise InvalidSlotError("policy", f"policy {name!r} has no model to reload")
        model = reload(preset, version=version)
        reloaded = {preset: str(getattr(model, "version", version or ""))}
    else:
        refresh = getattr(policy, "refresh", None)
        if not callable(refresh):
            raise InvalidSlotError("policy", f"policy {name!r} has no model to reload")
        changed: dict[str, str] = refresh()
        errors = {k.split(":", 1)[0]: v for k, v in changed.items() if k.endswith(":error")}
        if errors:
            raise ModelInvalidError("; ".join(f"{p}: {msg}" for p, msg in sorted(errors.items())))
        reloaded = dict(changed)
    return {"policy": name, "reloaded": reloaded, "version": policy.version, "metadata": policy.metadata()}


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


def _models_report(core: ServiceCore) -> dict[str, Any]:
    """``GET /models``: per preset, the model each loaded model-backed policy serves (duck-typed:
    a policy with ``out_of_range_report()``, the student) and its out-of-range counts since start."""
    models: dict[str, dict[str, Any]] = {}
    for name, pol in sorted(core.policies.loaded().items()):
        report: Any = getattr(pol, "out_of_range_report", None)
        if callable(report):
            for preset, entry in report().items():
                models.setdefault(preset, {**entry, "policy": name})
    return {"models": models, "pid": os.getpid(),
            "note": "counts since this worker started; a model-backed policy appears once loaded "
                    "(first use or preload)"}


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
    auth = BearerAuth(check_access(settings))  # AccessConfigError on inconsistent access settings
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
        core.start_model_watch()
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
    app.state.auth = auth

    error_responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "malformed JSON"},
        413: {"model": ErrorBody, "description": "body, users, resources or feedback above the configured limits"},
        422: {"model": ErrorBody, "description": "a field breaks the contract (named in `field`)"},
    }
    auth_responses: dict[int | str, dict[str, Any]] = (
        {401: {"model": ErrorBody, "description": "missing or invalid bearer token"}} if auth.enabled else {})
    error_responses.update(auth_responses)

    if auth.enabled:
        async def schedule(request: Request) -> Response:
            """Decide one slot: serialize → policy → PAG check → repair; per-cell state advances."""
            denied = _unauthorized(auth, request)
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

    @app.get("/v1/policies", tags=["operations"], summary="Policies and model versions",
             responses=auth_responses)
    async def policies(request: Request) -> Response:
        """Registered policies with name, version, presets and whether they are loaded."""
        denied = _unauthorized(auth, request)
        if denied is not None:
            return denied
        return _json(200, {
            "default": {"spectrum": settings.default_policy_spectrum, "mac": settings.default_policy_mac},
            "fallbacks": list(settings.fallbacks),
            "policies": _policy_metadata(core),
        })

    @app.get("/models", tags=["operations"], summary="Loaded models and their feature-range counts",
             responses=auth_responses)
    async def models(request: Request) -> Response:
        """Per preset: the loaded student model (version, sha256, feature version, held-out
        families of its card) and, when its card has feature ranges, the slots checked, the slots
        with a feature outside them and the count per feature since start (this worker)."""
        denied = _unauthorized(auth, request)
        if denied is not None:
            return denied
        return _json(200, _models_report(core))

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        """Prometheus text exposition (all workers in multiprocess mode)."""
        metrics.set_store_up(await run_in_threadpool(core.store.ping))
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    if settings.admin_enabled:
        if not auth.enabled:
            log.warning("admin endpoints enabled without a bearer token (loopback bind only)")

        @app.post("/admin/reload", tags=["admin"], summary="Reload a policy's model",
                  response_class=Response,
                  responses={200: {"description": "the reloaded versions and the policy's metadata"},
                             400: {"model": ErrorBody, "description": "malformed JSON"},
                             413: {"model": ErrorBody, "description": "body above 4 KiB"},
                             422: {"model": ErrorBody, "description": "bad field, or model refused "
                                   "(`model_invalid`: corrupt or mismatched; the old model keeps serving)"},
                             **auth_responses},
                  openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                      "schema": {"$ref": "#/components/schemas/ReloadRequest"}}}}})
        async def admin_reload(request: Request) -> Response:
            """Validate the new model off the serving path, then swap it in atomically."""
            denied = _unauthorized(auth, request)
            if denied is not None:
                return denied
            try:
                raw = await _read_body(request, ADMIN_MAX_BODY_BYTES)
            except _BodyTooLarge as exc:
                return _json(413, error_body(error="body_too_large", field="body", message=str(exc)))
            try:
                name, preset, version = _decode_reload(raw, handler.refresh_known())
                result = await run_in_threadpool(_reload_policy, core, name, preset, version)
            except InvalidSlotError as exc:
                status_code = 400 if exc.field == "body" and exc.message.startswith("invalid JSON") else 422
                return _json(status_code, error_body(exc))
            except ModelInvalidError as exc:
                log.warning("admin reload refused: %s", exc)
                field = "version" if version else ("preset" if preset else "policy")
                return _json(422, error_body(error="model_invalid", field=field, message=str(exc)))
            except (GnbSchedError, OSError) as exc:
                log.warning("admin reload failed: %s", exc)
                return _json(422, error_body(error="reload_failed", field="policy", message=str(exc)))
            metrics.policy_loaded(name, result["version"])
            handler.refresh_known()
            log.info("admin reload: %s %s", name, result["reloaded"])
            return _json(200, result)

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
            # the serving instance's limits are part of its contract (413 beyond them)
            req["properties"]["users"]["maxItems"] = int(settings.max_users)
            req["properties"]["resources"]["maxItems"] = int(settings.max_resources)
            comps["ScheduleRequest"] = req
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
