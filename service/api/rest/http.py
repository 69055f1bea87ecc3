"""HTTP plumbing of the REST transport: JSON responses, bounded body reads, the bearer check."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from service.api.contract import error_body
from service.errors import HTTP_STATUS, ErrorKind
from service.security import WWW_AUTHENTICATE, BearerAuth

ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class BodyTooLarge(Exception):
    """A request body above the limit (answered 413 before it is read whole)."""


def json_response(status: int, content: Any) -> Response:
    """``content`` as a JSON response (orjson: numpy arrays and non-string keys allowed)."""
    return Response(
        orjson.dumps(content, option=ORJSON_OPTS, default=str), status_code=status, media_type="application/json"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def unauthorized(auth: BearerAuth, request: Request) -> Response | None:
    """None when ``request`` may pass; else the 401 answer (the body is never read)."""
    value = request.headers.get("authorization")
    if auth.allows(value):
        return None
    resp = json_response(
        HTTP_STATUS[ErrorKind.UNAUTHORIZED], error_body(ErrorKind.UNAUTHORIZED, "authorization", auth.problem(value))
    )
    resp.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return resp
