"""Access control of the service: an optional bearer token (REST and gRPC) and TLS / mTLS on both.

* **Bearer token** (``Settings.auth_token`` or ``auth_token_file``): when set, the scheduling
  endpoints (REST ``POST /schedule``, gRPC ``gnbsched.v1.Scheduler/*``), the policy metadata
  (``GET /v1/policies``, ``GET /models``) and the admin endpoints (``POST /admin/reload``) require
  ``Authorization: Bearer <token>`` (gRPC: the ``authorization`` metadata). Liveness, readiness,
  ``/metrics``, the OpenAPI document and the gRPC health / reflection services stay open, so
  probes and scrapers need no secret. The comparison is constant-time (``hmac.compare_digest``).
* **Admin endpoints** are served only with ``admin_enabled``; enabling them without a token is
  refused unless the service binds a loopback address (``check_access``).
* **TLS** per transport: ``grpc_tls_cert`` + ``grpc_tls_key`` (gRPC), ``rest_tls_cert`` +
  ``rest_tls_key`` (REST on uvicorn, https), and **mTLS** with ``*_tls_client_ca`` (the client
  must present a certificate signed by that CA; on REST that includes the probes). Use TLS, here
  or in front of the service (ingress, sidecar), whenever the token crosses a network.

Pure helpers (no I/O besides reading the configured files); the transports map failures to
401 / ``UNAUTHENTICATED``. ``grpc`` is imported lazily so REST-only processes do not load it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: shortest token accepted (a guessable token is no access control)
MIN_TOKEN_CHARS = 16
#: gRPC methods under these prefixes need the token; health and reflection stay open
PROTECTED_GRPC_PREFIXES = ("/gnbsched.",)
AUTH_HEADER = "authorization"
WWW_AUTHENTICATE = 'Bearer realm="gnbsched"'


class AccessConfigError(ValueError):
    """The access settings are inconsistent or a credential file cannot be used."""


def _token_problem(token: str) -> str | None:
    if len(token) < MIN_TOKEN_CHARS:
        return f"the token must have at least {MIN_TOKEN_CHARS} characters"
    if not all(33 <= ord(c) <= 126 for c in token):
        return "the token must be printable ASCII without spaces (it travels in an HTTP header)"
    return None


def load_token(settings: Any) -> str | None:
    """The configured bearer token (``auth_token``, or the first line of ``auth_token_file``), or None.

    Raises ``AccessConfigError`` when both are set, the file cannot be read or the token is
    too short / not header-safe.
    """
    secret = getattr(settings, "auth_token", None)
    path = getattr(settings, "auth_token_file", None)
    if secret is not None and path:
        raise AccessConfigError("auth_token and auth_token_file are both set; set one")
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessConfigError(f"auth_token_file: cannot read {path}: {exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise AccessConfigError(f"auth_token_file: {path} is empty")
    elif secret is not None:
        token = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
        token = token.strip()
    else:
        return None
    problem = _token_problem(token)
    if problem:
        raise AccessConfigError(f"auth_token: {problem}")
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_access(settings: Any) -> str | None:
    """Validate the access settings; return the token (None = open). Raises ``AccessConfigError``.

    Rules: the token (if any) loads; admin endpoints without a token only on a loopback bind;
    per transport (``rest_``, ``grpc_``): ``tls_cert`` and ``tls_key`` together, ``tls_client_ca``
    only with them; every configured file is readable.
    """
    token = load_token(settings)
    if getattr(settings, "admin_enabled", False) and token is None and not is_loopback(settings.host):
        raise AccessConfigError(
            f"admin_enabled on a non-loopback address ({settings.host}) needs auth_token "
            "or auth_token_file: the admin endpoints swap models"
        )
    for prefix in ("rest_", "grpc_"):
        cert, key, ca = (getattr(settings, prefix + f, None) for f in ("tls_cert", "tls_key", "tls_client_ca"))
        if bool(cert) != bool(key):
            raise AccessConfigError(f"{prefix}tls_cert and {prefix}tls_key must be set together")
        if ca and not cert:
            raise AccessConfigError(f"{prefix}tls_client_ca (mTLS) needs {prefix}tls_cert and {prefix}tls_key")
        for name, path in ((prefix + "tls_cert", cert), (prefix + "tls_key", key), (prefix + "tls_client_ca", ca)):
            if path and not Path(path).is_file():
                raise AccessConfigError(f"{name}: {path} is not a readable file")
    return token


def rest_tls_options(settings: Any) -> dict[str, Any]:
    """uvicorn ``Config`` options for REST over TLS (mTLS with ``rest_tls_client_ca``); {} = plaintext."""
    cert = getattr(settings, "rest_tls_cert", None)
    if not cert:
        return {}
    import ssl

    opts: dict[str, Any] = {"ssl_certfile": cert, "ssl_keyfile": settings.rest_tls_key}
    if getattr(settings, "rest_tls_client_ca", None):
        opts.update(ssl_ca_certs=settings.rest_tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return opts


class BearerAuth:
    """Constant-time check of ``Authorization: Bearer <token>`` values; ``enabled`` False = open."""

    __slots__ = ("_token",)

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def allows(self, authorization: str | bytes | None) -> bool:
        """True when open, or when ``authorization`` is ``Bearer <the token>`` (scheme case-insensitive)."""
        if self._token is None:
            return True
        if authorization is None:
            return False
        value = authorization.encode("latin-1", "replace") if isinstance(authorization, str) else authorization
        scheme, _, given = value.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self._token)

    def problem(self, authorization: str | bytes | None) -> str:
        """Why ``allows`` refused (for the 401 / UNAUTHENTICATED message; never echoes the value)."""
        if authorization is None:
            return "missing bearer token (Authorization: Bearer <token>)"
        return "invalid bearer token"


# ----------------------------------------------------------------------------- gRPC


def grpc_server_credentials(settings: Any):
    """``grpc.ServerCredentials`` for TLS (mTLS with ``grpc_tls_client_ca``), or None (plaintext)."""
    cert, key, ca = settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_client_ca
    if not cert:
        return None
    import grpc

    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        roots = Path(ca).read_bytes() if ca else None
    except OSError as exc:
        raise AccessConfigError(f"gRPC TLS: cannot read a certificate file: {exc}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def grpc_channel_credentials(
    ca_cert: str | Path | bytes | None = None,
    client_cert: str | Path | bytes | None = None,
    client_key: str | Path | bytes | None = None,
    token: str | None = None,
):
    """Client-side ``grpc.ChannelCredentials``: TLS trusting ``ca_cert`` (system roots when None),
    presenting ``client_cert`` / ``client_key`` (mTLS) and sending ``token`` on every call."""
    import grpc

    def pem(x: str | Path | bytes | None) -> bytes | None:
        return x if isinstance(x, bytes | None) else Path(x).read_bytes()

    creds = grpc.ssl_channel_credentials(pem(ca_cert), pem(client_key), pem(client_cert))
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Per-call metadata carrying ``token`` (plaintext channels: call credentials need TLS)."""
    return ((AUTH_HEADER, f"Bearer {token}"),) if token else ()


_INTERCEPTOR_CLASS: Any = None


def grpc_auth_interceptor(auth: BearerAuth, protected: Sequence[str] = PROTECTED_GRPC_PREFIXES):
    """A ``grpc.aio.ServerInterceptor`` that answers ``UNAUTHENTICATED`` on ``protected`` methods
    whose ``authorization`` metadata does not carry the token (one check per RPC, not per message)."""
    global _INTERCEPTOR_CLASS
    if _INTERCEPTOR_CLASS is None:
        _INTERCEPTOR_CLASS = _make_interceptor_class()
    return _INTERCEPTOR_CLASS(auth, tuple(protected))


def _make_interceptor_class() -> type:
    import grpc

    def denying(handler: Any, message: str) -> Any:
        """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler is None:
            return None
        kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny, **kw)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny, **kw)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny, **kw)
        return grpc.unary_unary_rpc_method_handler(deny, **kw)

    class BearerInterceptor(grpc.aio.ServerInterceptor):
        def __init__(self, auth: BearerAuth, protected: tuple[str, ...]) -> None:
            self.auth = auth
            self.protected = protected

        async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
            handler = await continuation(details)
            if not self.auth.enabled or not details.method.startswith(self.protected):
                return handler
            value = None
            for key, val in details.invocation_metadata or ():
                if key == AUTH_HEADER:
                    value = val
                    break
            if self.auth.allows(value):
                return handler
            return denying(handler, self.auth.problem(value))

    return BearerInterceptor
