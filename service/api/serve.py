"""``gnbsched serve``: REST (uvicorn) and gRPC on one event loop, settings printed once at start.

With no arguments: REST on 127.0.0.1:8000, gRPC on 127.0.0.1:50051, in-process per-cell state,
the default policy per preset. Settings come from the environment (``GNBSCHED_*``, see
``service.config.Settings``), flags override them. ``--workers N`` (N > 1) runs N uvicorn worker
processes from an app factory; the merged settings reach them through ``GNBSCHED_*``, metrics
switch to prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh temporary
directory unless set), and each worker's gRPC server binds the same port (SO_REUSEPORT).
SIGTERM / SIGINT: stop accepting, finish in-flight requests, stop gRPC with a grace period.

Access (``service.security``): ``--auth-token-file`` (or ``GNBSCHED_AUTH_TOKEN``) requires a
bearer token on the scheduling, policy metadata and admin endpoints; ``--admin`` serves
``POST /admin/reload``; ``--grpc-tls-cert/--grpc-tls-key`` serve gRPC over TLS and
``--grpc-tls-client-ca`` requires client certificates (mTLS). Inconsistent access settings exit 2.
The token is never printed (``***``) and is not accepted as a flag (flags show in ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: flag dest -> Settings field (flags left unset keep the environment's / the default value)
_FLAG_FIELDS = {
    "host": "host", "rest_port": "rest_port", "grpc_port": "grpc_port", "workers": "workers",
    "state_url": "state_url", "policy_spectrum": "default_policy_spectrum", "policy_mac": "default_policy_mac",
    "fallbacks": "fallbacks", "deadline_ms": "deadline_ms", "seed": "seed", "ewma_slots": "ewma_slots",
    "max_users": "max_users", "max_resources": "max_resources", "max_body_bytes": "max_body_bytes",
    "preload": "preload_policies", "auth_token_file": "auth_token_file", "admin": "admin_enabled",
    "grpc_tls_cert": "grpc_tls_cert", "grpc_tls_key": "grpc_tls_key", "grpc_tls_client_ca": "grpc_tls_client_ca",
    "model_watch_s": "model_watch_s", "rest_tls_cert": "rest_tls_cert", "rest_tls_key": "rest_tls_key",
    "rest_tls_client_ca": "rest_tls_client_ca", "record": "record_dir", "record_max_bytes": "record_max_bytes",
}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("listen")
    g.add_argument("--host", help="address REST and gRPC bind to (default 127.0.0.1)")
    g.add_argument("--rest-port", type=int, help="REST port (default 8000; 0 disables REST)")
    g.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 disables gRPC)")
    g.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    d = parser.add_argument_group("decisions")
    d.add_argument("--state-url", help="per-cell state: memory:// (default) or redis://host:port/db")
    d.add_argument("--policy", help="default policy for both presets (else --policy-spectrum / --policy-mac)")
    d.add_argument("--policy-spectrum", help="default policy of spectrum requests (default auction)")
    d.add_argument("--policy-mac", help="default policy of mac requests (default student)")
    d.add_argument("--fallbacks", type=_csv, help="comma-separated fallback chain (default greedy)")
    d.add_argument("--deadline-ms", type=float, help="default per-slot policy deadline in ms")
    d.add_argument("--seed", type=int, help="seed of the per-(cell, slot) generators (default 0)")
    d.add_argument("--ewma-slots", type=float, help="PF averaging window in slots (default 100)")
    d.add_argument("--preload", type=_csv, help="comma-separated policies loaded before ready")
    d.add_argument("--model-watch-s", type=float,
                   help="swap in newer models (student `latest`) every this many seconds, in every worker (default 0: off)")
    rec = parser.add_argument_group("recording")
    rec.add_argument("--record", metavar="DIR",
                     help="append one JSON Lines row per decided slot (REST-format request + decision) to "
                          "DIR/<cell id>.jsonl; replay with `gnbsched bench student --trace FILE` (default off)")
    rec.add_argument("--record-max-bytes", type=int,
                     help="rotate a cell's trace file to <name>.1.jsonl beyond this size (default 64 MiB)")
    lim = parser.add_argument_group("limits")
    lim.add_argument("--max-users", type=int, help="largest N accepted (default 4096)")
    lim.add_argument("--max-resources", type=int, help="largest R accepted (default 4096)")
    lim.add_argument("--max-body-bytes", type=int, help="largest request body (default 16 MiB)")
    acc = parser.add_argument_group("access")
    acc.add_argument("--auth-token-file", help="file whose first line is the bearer token required on /schedule, "
                                               "/v1/policies, admin and gRPC Scheduler calls (or GNBSCHED_AUTH_TOKEN)")
    acc.add_argument("--admin", action="store_true", default=None,
                     help="serve the admin endpoints (POST /admin/reload); needs a token unless bound to loopback")
    acc.add_argument("--rest-tls-cert", help="PEM certificate chain: serve REST over TLS (https)")
    acc.add_argument("--rest-tls-key", help="PEM private key of --rest-tls-cert")
    acc.add_argument("--rest-tls-client-ca", help="PEM CA bundle: REST requires client certificates signed by it (mTLS)")
    acc.add_argument("--grpc-tls-cert", help="PEM certificate chain: serve gRPC over TLS")
    acc.add_argument("--grpc-tls-key", help="PEM private key of --grpc-tls-cert")
    acc.add_argument("--grpc-tls-client-ca", help="PEM CA bundle: require client certificates signed by it (mTLS)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")


def settings_from_args(args: argparse.Namespace):
    """``Settings`` from the environment, overridden by the flags that were given."""
    from service.config import Settings

    overrides: dict[str, Any] = {}
    if getattr(args, "policy", None):
        overrides["default_policy_spectrum"] = overrides["default_policy_mac"] = args.policy
    for dest, field in _FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def export_settings(settings) -> None:
    """Write ``settings`` to ``GNBSCHED_*`` so worker processes rebuild exactly them."""
    for name, value in settings.model_dump().items():
        key = f"GNBSCHED_{name.upper()}"
        if hasattr(value, "get_secret_value"):  # SecretStr (the token) dumps masked
            value = value.get_secret_value()
        if value is None:
            os.environ.pop(key, None)
        elif isinstance(value, list | dict | bool):
            os.environ[key] = json.dumps(value)
        else:
            os.environ[key] = str(value)


async def _serve_grpc_only(settings) -> int:
    from service.api.rest.app import build_core

    try:
        from service.api.grpc.server import start_grpc_server
    except ModuleNotFoundError as exc:
        print(f"gnbsched serve: gRPC transport not available ({exc}); set --rest-port", file=sys.stderr)
        return 2
    core = build_core(settings)
    await asyncio.to_thread(core.preload)
    core.start_model_watch()
    server = await start_grpc_server(core, settings.host, settings.grpc_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    from service.api.rest.app import GRPC_GRACE_S

    await server.stop(GRPC_GRACE_S)
    core.close()
    return 0


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (settings are printed and exposed)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))
    return url


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except Exception as exc:  # pydantic ValidationError from a bad GNBSCHED_* value
        print(f"gnbsched serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    if settings.rest_port == 0 and settings.grpc_port == 0:
        print("gnbsched serve: both --rest-port and --grpc-port are 0; nothing to serve", file=sys.stderr)
        return 2
    from service.security import AccessConfigError, check_access

    try:
        check_access(settings)
    except AccessConfigError as exc:
        print(f"gnbsched serve: invalid access settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shown = settings.public()
    shown["state_url"] = redact_url(str(shown.get("state_url", "")))
    print("gnbsched serve: " + json.dumps(shown, sort_keys=True), flush=True)
    if settings.workers > 1 and settings.state_url.startswith("memory"):
        print("gnbsched serve: warning: --workers > 1 with in-process state: each worker keeps its own "
              "per-cell history, so a cell served by different workers diverges; use --state-url redis://...",
              file=sys.stderr, flush=True)

    if settings.rest_port == 0:
        return asyncio.run(_serve_grpc_only(settings))

    import uvicorn

    from service.security import rest_tls_options

    common = dict(host=settings.host, port=settings.rest_port, log_level=args.log_level,
                  access_log=bool(args.access_log), lifespan="on", timeout_graceful_shutdown=10,
                  **rest_tls_options(settings))
    if settings.workers <= 1:
        from service.api.rest.app import build_core, create_app

        app = create_app(build_core(settings))
        server = uvicorn.Server(uvicorn.Config(app, **common))
        # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal with the
        # handlers it found: let that end the process with status 0 instead of "killed"
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        server.run()
        return 0 if server.started else 1

    # several workers: metrics in multiprocess mode, settings through the environment
    from service.metrics import MULTIPROC_ENV, prepare_multiprocess_dir, remove_multiprocess_dir

    own_dir = not os.environ.get(MULTIPROC_ENV)
    mp_dir = prepare_multiprocess_dir(tempfile.mkdtemp(prefix="gnbsched-metrics-") if own_dir
                                      else os.environ[MULTIPROC_ENV])
    export_settings(settings)
    try:
        uvicorn.run("service.api.rest.app:app_from_env", factory=True, workers=settings.workers, **common)
    finally:
        if own_dir:
            remove_multiprocess_dir(mp_dir)
    return 0
