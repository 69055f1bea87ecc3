"""``POST /admin/reload``: reload a policy's model off the serving path (the student's hot reload).

A corrupt or mismatched model is refused (422 ``model_invalid``) and the old one keeps serving.
Served only with ``admin_enabled``; with a bearer token configured it needs the token.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.api.contract import error_body, invalid_body
from service.api.rest.codec import field_path
from service.api.rest.http import BodyTooLarge, json_response, read_body, unauthorized
from service.api.rest.openapi import ErrorBody
from service.core import ServiceCore
from service.errors import (
    HTTP_STATUS,
    ErrorKind,
    GnbSchedError,
    InvalidJsonError,
    InvalidSlotError,
    ModelInvalidError,
)
from service.metrics import Metrics
from service.security import BearerAuth
from service.types import PRESETS

log = logging.getLogger("gnbsched.rest")

#: largest admin request body (a policy name, a preset, a version)
ADMIN_MAX_BODY_BYTES = 4096
_VERSION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


class ReloadRequest(BaseModel):
    """Reload a policy's model from the model directory (validated off the serving path)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"policy": "student", "preset": "mac", "version": "v3"}, {"policy": "student"}]
        },
    )
    policy: str = Field(description="a loaded or registered policy with a model (e.g. student)")
    preset: Literal["spectrum", "mac"] | None = Field(
        None, description="the preset's model to reload; absent: every preset whose newest model changed"
    )
    version: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._+-]+$",
        description="version directory under the model directory (needs preset); absent: the newest / `latest`",
    )


def decode_reload(raw: bytes, known: frozenset[str]) -> tuple[str, str | None, str | None]:
    """(policy, preset, version) of a reload request; ``InvalidSlotError`` naming the field."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJsonError("body", f"invalid JSON: {exc}") from None
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
        if (
            type(version) is not str
            or not 0 < len(version) <= 64
            or not set(version) <= _VERSION_CHARS
            or version in (".", "..")
        ):
            raise InvalidSlotError("version", "expected a version directory name ([A-Za-z0-9._+-], at most 64)")
        if preset is None:
            raise InvalidSlotError("preset", "required with version")
    return policy, preset, version


def reload_policy(core: ServiceCore, name: str, preset: str | None, version: str | None) -> dict[str, Any]:
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


def add_admin_routes(
    app: FastAPI, core: ServiceCore, metrics: Metrics, auth: BearerAuth, auth_responses: dict[int | str, dict[str, Any]]
) -> None:
    """Register ``POST /admin/reload`` on ``app``."""

    @app.post(
        "/admin/reload",
        tags=["admin"],
        summary="Reload a policy's model",
        response_class=Response,
        responses={
            200: {"description": "the reloaded versions and the policy's metadata"},
            400: {"model": ErrorBody, "description": "malformed JSON"},
            413: {"model": ErrorBody, "description": "body above 4 KiB"},
            422: {
                "model": ErrorBody,
                "description": "bad field, or model refused "
                "(`model_invalid`: corrupt or mismatched; the old model keeps serving)",
            },
            **auth_responses,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReloadRequest"}}},
            }
        },
    )
    async def admin_reload(request: Request) -> Response:
        """Validate the new model off the serving path, then swap it in atomically."""
        denied = unauthorized(auth, request)
        if denied is not None:
            return denied
        try:
            raw = await read_body(request, ADMIN_MAX_BODY_BYTES)
        except BodyTooLarge as exc:
            return json_response(
                HTTP_STATUS[ErrorKind.BODY_TOO_LARGE], error_body(ErrorKind.BODY_TOO_LARGE, "body", str(exc))
            )
        try:
            name, preset, version = decode_reload(raw, core.refresh_known())
            result = await run_in_threadpool(reload_policy, core, name, preset, version)
        except InvalidSlotError as exc:
            return json_response(HTTP_STATUS[exc.kind], invalid_body(exc))
        except ModelInvalidError as exc:
            log.warning("admin reload refused: %s", exc)
            field = "version" if version else ("preset" if preset else "policy")
            # the reload request asked for this model: the request's fault, not the service's
            return json_response(422, error_body(ErrorKind.MODEL_INVALID, field, str(exc)))
        except (GnbSchedError, OSError) as exc:
            log.warning("admin reload failed: %s", exc)
            kind = exc.kind if isinstance(exc, GnbSchedError) else ErrorKind.UNAVAILABLE
            return json_response(422, error_body(kind, "policy", f"reload failed: {exc}"))
        metrics.policy_loaded(name, result["version"])
        core.refresh_known()
        log.info("admin reload: %s %s", name, result["reloaded"])
        return json_response(200, result)
