"""``gnbsched serve``: REST (uvicorn) and gRPC on one event loop, settings printed once at start.

With no arguments: REST on 127.0.0.1:8000, gRPC on 127.0.0.1:50051, in-process per-cell state,
the default policy per preset. Settings come from the environment (``GNBSCHED_*``, see
``service.config.Settings``), flags override them. ``--workers 0`` (the default) is one process
per core given (``service.cores``) when per-cell state is shared (redis) and one with in-process
state; N > 1 processes (given or so resolved) run as uvicorn workers from an app factory: the
merged settings reach them through ``GNBSCHED_*``, metrics switch to prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh temporary directory unless set), and
each worker's gRPC server binds the same port (SO_REUSEPORT).
SIGTERM / SIGINT: stop accepting, finish in-flight requests, stop gRPC with a grace period.

Access (``service.security``): ``--auth-token-file`` (or ``GNBSCHED_AUTH_TOKEN``) requires a
bearer token on the scheduling, policy metadata and admin endpoints; ``--admin`` serves
``POST /admin/reload``; ``--grpc-tls-cert/--grpc-tls-key`` serve gRPC over TLS and
``--grpc-tls-client-ca`` requires client certificates (mTLS). Inconsistent access settings exit 2.
The token is never printed (``***``) and is not accepted as a flag (flags show in ``ps``).

Hostile and careless connections are refused before they cost anything: REST through
``service.api.rest.protocol`` (uvicorn's ``http=``: ``--max-header-bytes`` → 431,
``--header-timeout-s`` / ``--body-timeout-s`` → 408, ``--max-connections`` → 503, each closing
the connection), gRPC through the server options of ``service.api.grpc.server``
(``--grpc-max-concurrent-streams``, ``--grpc-max-metadata-bytes``, ``--grpc-max-concurrent-rpcs``,
``--grpc-max-connection-idle-s``; the handshake within ``--header-timeout-s``).
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
import types
import typing
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from service.api.rest.app import create_app
from service.config import Settings
from service.core import ServiceCore, freeze_startup_objects

log = logging.getLogger("gnbsched.serve")

#: the shorter flag each of these settings is also known by
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "default_policy_spectrum": ("--policy-spectrum",),
    "default_policy_mac": ("--policy-mac",),
    "preload_policies": ("--preload",),
    "admin_enabled": ("--admin",),
    "record_dir": ("--record",),
}
#: settings that are never flags (a secret would show in ``ps``): environment or file only
NOT_FLAGS = frozenset({"auth_token", "teacher_api_key"})
#: flag groups of ``--help``, by the settings' name prefix (first match wins)
_GROUPS = (
    ("listen", ("host", "rest_port", "grpc_port", "workers")),
    ("access", ("auth_", "admin_", "rest_tls", "grpc_tls")),
    ("run-time guard", ("guard_",)),
    ("recording", ("record_",)),
    ("limits", ("max_", "header_timeout", "body_timeout")),
    ("gRPC connections", ("grpc_",)),
    ("logging", ("log_level", "access_log")),
    ("LLM teacher", ("teacher_",)),
    ("decisions", ("",)),
)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """(argparse type, extra add_argument options) of a settings field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = (
        args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    )
    origin = typing.get_origin(base)
    if base is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return _csv, {"metavar": "A,B,..."}
    if origin is dict:
        return _json_object, {"metavar": "JSON"}
    if origin is typing.Literal:
        return str, {"choices": list(typing.get_args(base))}
    return (base if base in (int, float, str) else str), {}


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def setting_fields() -> Iterator[tuple[str, FieldInfo]]:
    """(flat name, field) of every setting: ``Settings`` fields, and ``<section>_<field>`` for
    the fields of a section (``teacher_url``), whose environment variable is
    ``GNBSCHED_<FLAT NAME>`` either way."""
    for name, field in Settings.model_fields.items():
        if _is_section(field):
            for sub_name, sub_field in field.annotation.model_fields.items():  # type: ignore[union-attr]
                yield f"{name}_{sub_name}", sub_field
        else:
            yield name, field


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (``--kebab-name``; aliases in ``FLAG_ALIASES``), its help the
    field's description, environment variable and default. Unset flags keep the environment's
    value or the default."""
    groups = {title: parser.add_argument_group(title) for title, _ in _GROUPS}
    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in setting_fields():
        if name in NOT_FLAGS:
            continue
        ftype, extra = _flag_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = (
            ",".join(default)
            if isinstance(default, list)
            else json.dumps(default)
            if isinstance(default, dict)
            else default
        )
        help_text = f"{field.description or ''} (env {prefix}{name.upper()}; default {shown})".replace("%", "%%")
        title = next(t for t, prefixes in _GROUPS if any(name.startswith(p) for p in prefixes))
        flags = ["--" + name.replace("_", "-"), *FLAG_ALIASES.get(name, ())]
        groups[title].add_argument(
            *flags, dest=name, default=None, help=help_text, **({"type": ftype} if ftype is not None else {}), **extra
        )
    parser.add_argument("--policy", help="default policy of both presets (sets --policy-spectrum and --policy-mac)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``Settings`` from the environment, overridden by the flags that were given."""
    overrides: dict[str, Any] = {}
    if getattr(args, "policy", None):
        overrides["default_policy_spectrum"] = overrides["default_policy_mac"] = args.policy
    sections = {n for n, f in Settings.model_fields.items() if _is_section(f)}
    for name, _ in setting_fields():
        value = getattr(args, name, None)
        if value is None:
            continue
        section, _, sub_name = name.partition("_")
        if section in sections:
            overrides.setdefault(section, {})[sub_name] = value
        else:
            overrides[name] = value
    if not overrides.keys() & sections:
        return Settings(**overrides)
    base = Settings()  # a section given by flags keeps its other fields from the environment
    for section in overrides.keys() & sections:
        overrides[section] = getattr(base, section).model_copy(update=overrides[section])
    return Settings(**overrides)


def export_settings(settings: Settings) -> None:
    """Write ``settings`` to ``GNBSCHED_*`` so worker processes rebuild exactly them."""
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):  # a section: one variable per field (GNBSCHED_TEACHER_URL)
            values.update({f"{name}_{k}": getattr(value, k) for k in type(value).model_fields})
        else:
            values[name] = value
    for name, value in values.items():
        key = f"GNBSCHED_{name.upper()}"
        if hasattr(value, "get_secret_value"):  # SecretStr (the token) dumps masked
            value = value.get_secret_value()
        if value is None:
            os.environ.pop(key, None)
        elif isinstance(value, list | dict | bool):
            os.environ[key] = json.dumps(value)
        else:
            os.environ[key] = str(value)


#: seconds running RPCs get to finish when the server stops
GRPC_GRACE_S = 5.0


def build_core(settings: Settings | None = None) -> ServiceCore:
    """The service core from ``settings`` (default: the environment), observed by new ``Metrics``."""
    from service.metrics import Metrics

    return ServiceCore(settings or Settings(), observer=Metrics())


@asynccontextmanager
async def grpc_beside(core: ServiceCore) -> AsyncIterator[tuple[str, str | None]]:
    """Run the gRPC server on the current event loop for the life of the block; yields
    ("grpc", its address), or ("grpc", None) with a warning when the transport is not installed."""
    try:
        from service.api.grpc.server import start_grpc_server
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(("service.api.grpc", "grpc")):
            log.warning("gRPC transport not available (%s); serving REST only", exc)
            yield "grpc", None
            return
        raise
    s = core.settings
    server = await start_grpc_server(core, s.host, s.grpc_port)
    try:
        yield "grpc", f"{s.host}:{s.grpc_port}"
    finally:
        await server.stop(GRPC_GRACE_S)


def build_app(settings: Settings | None = None) -> FastAPI:
    """The served application: REST over a new core, gRPC beside it when ``grpc_port != 0``.
    Also sets this process's REST connection limits (``service.api.rest.protocol``)."""
    from service.api.rest import protocol

    core = build_core(settings)
    app = create_app(core, beside=[grpc_beside] if core.settings.grpc_port != 0 else [], freeze_gc=True)
    protocol.install(core.settings, app.state.metrics)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``--workers > 1``): every worker builds its server from ``GNBSCHED_*``."""
    return build_app()


async def _serve_grpc_only(settings: Settings) -> int:
    core = build_core(settings)
    await asyncio.to_thread(core.preload)
    core.start_model_watch()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with grpc_beside(core) as (_, address):
            if address is None:
                print("gnbsched serve: the gRPC transport is not installed; set --rest-port", file=sys.stderr)
                return 2
            log.info("gc: %d startup objects frozen", freeze_startup_objects())
            await stop.wait()
    finally:
        core.close()
    return 0


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (settings are printed and exposed)."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))
    return url


def _exit_cleanly(_signum: int, _frame: object) -> None:
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
    if settings.teacher.answer_form == "code":
        from service.sandbox import Sandbox, SandboxUnavailable

        try:  # the teacher's programs run confined or not at all
            mechanism = Sandbox.check()
        except SandboxUnavailable as exc:
            print(f"gnbsched serve: the teacher's code answer form needs the sandbox: {exc}", file=sys.stderr)
            return 2
        print(f"gnbsched serve: teacher programs run in the sandbox: {mechanism}", flush=True)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asked = settings.workers
    settings = settings.model_copy(update={"workers": settings.worker_count()})  # 0: one per core given
    shown = settings.public()
    shown["state_url"] = redact_url(str(shown.get("state_url", "")))
    print("gnbsched serve: " + json.dumps(shown, sort_keys=True), flush=True)
    if settings.workers != asked:
        print(f"gnbsched serve: {settings.workers} worker process(es) (asked: {asked})", flush=True)
    if settings.workers > 1 and settings.state_url.startswith("memory"):
        print(
            "gnbsched serve: warning: --workers > 1 with in-process state: each worker keeps its own "
            "per-cell history, so a cell served by different workers diverges; use --state-url redis://...",
            file=sys.stderr,
            flush=True,
        )

    if settings.rest_port == 0:
        return asyncio.run(_serve_grpc_only(settings))

    import uvicorn

    from service.api.rest.protocol import PROTOCOL, GuardedHttpProtocol
    from service.security import rest_tls_options

    common = dict(
        host=settings.host,
        port=settings.rest_port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=10,
        **rest_tls_options(settings),
    )
    if settings.workers <= 1:
        app = build_app(settings)
        # header size / header and body timeouts / connection limit before any application work
        server = uvicorn.Server(uvicorn.Config(app, http=GuardedHttpProtocol, **common))
        # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal with the
        # handlers it found: let that end the process with status 0 instead of "killed"
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        server.run()
        return 0 if server.started else 1

    # several workers: metrics in multiprocess mode, settings through the environment
    from service.metrics import MULTIPROC_ENV, prepare_multiprocess_dir, remove_multiprocess_dir

    own_dir = not os.environ.get(MULTIPROC_ENV)
    mp_dir = prepare_multiprocess_dir(
        tempfile.mkdtemp(prefix="gnbsched-metrics-") if own_dir else os.environ[MULTIPROC_ENV]
    )
    export_settings(settings)
    try:
        uvicorn.run("service.api.serve:app_from_env", factory=True, workers=settings.workers, http=PROTOCOL, **common)
    finally:
        if own_dir:
            remove_multiprocess_dir(mp_dir)
    return 0
