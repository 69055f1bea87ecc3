"""gRPC transport (grpc.aio): ``gnbsched.v1.Scheduler`` with health checking and reflection.

Both RPCs decode a ``SlotRequest`` into a ``SlotState`` (``convert.request_to_slot``), call
``ServiceCore.schedule(..., transport="grpc")`` and encode the ``Decision``.

Errors (mapped here only, from ``service.errors``):
  * unary ``Schedule``: bad input (``InvalidSlotError``, limits, unknown policy or preset,
    undecodable bytes) → ``INVALID_ARGUMENT`` with ``"<field>: <message>"``; every policy of
    the fallback chain failed → ``UNAVAILABLE``; a bug → ``INTERNAL``. A message larger than
    ``max_body_bytes`` is refused by gRPC itself with ``RESOURCE_EXHAUSTED``.
  * ``StreamSlots`` (one request per TTI, one decision back, in order): a RAN keeps one
    stream per cell open for the life of the cell, so one bad slot must not tear the control
    channel down (re-establishing it costs several TTIs). A request that cannot be decided is
    answered *in its place in the sequence* by a ``SlotDecision`` with ``error`` set
    (``code`` = the status name, ``field``, ``message`` naming the slot), an empty ``owner``
    and the cell's history untouched; the stream then serves the next request. Only
    transport-level failures (an oversized message → ``RESOURCE_EXHAUSTED``, cancellation)
    end the stream.

Slots whose decision may block on I/O — the requested policy or one of its fallbacks has the
class attribute ``blocking_io = True`` (the LLM teacher), or the state store has it (Redis) —
run in a worker thread (``asyncio.to_thread``), one slot per cell at a time (a lock per cell);
the others run inline on the event loop (a baseline decides in well under a millisecond, a
thread hop would cost more than it saves). This is the REST transport's rule too.

Metrics: the core's observer records every decision (transport ``grpc``); when it is a
``service.metrics.Metrics`` the server also reports rejections, errors and end-to-end time.

Reliability and access (``service.security``, ``Settings``):
  * graceful stop (SIGTERM): health → NOT_SERVING, new RPCs refused; a stream that is deciding
    a slot answers it, then ends with ``UNAVAILABLE`` ("shutting down") instead of reading
    more, so no slot a client sent is dropped silently; idle streams get the grace period;
  * dead peers: HTTP/2 keepalive pings (``grpc_keepalive_s`` / ``grpc_keepalive_timeout_s``)
    drop a connection whose client vanished without closing it (host down, process frozen);
  * slow readers: a stream whose answer cannot be written for ``grpc_stream_stall_s`` (the
    client stopped reading, flow control is full) is cancelled, so it holds no memory or task;
  * hostile and careless connections (``connection_limit_options``): streams per connection
    (``grpc_max_concurrent_streams``; conforming clients queue calls beyond it), RPCs in progress
    over all connections (``grpc_max_concurrent_rpcs``: RESOURCE_EXHAUSTED beyond it), request
    metadata size (``grpc_max_metadata_bytes``: RESOURCE_EXHAUSTED), the connection handshake
    within ``header_timeout_s``, idle connections closed after ``grpc_max_connection_idle_s``.
    grpc has no limit on the number of connections itself. A client that cancels or goes away
    mid-call is a DEBUG line and ``gnbsched_client_disconnects_total{transport="grpc"}``;
  * with a bearer token configured, ``gnbsched.v1.Scheduler`` calls need the ``authorization``
    metadata (``UNAUTHENTICATED`` otherwise; health and reflection stay open); with
    ``grpc_tls_cert`` / ``grpc_tls_key`` the port speaks TLS, with ``grpc_tls_client_ca`` mTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.contract import ScheduleArgs
from service.api.grpc.convert import (
    decision_to_pb,
    error_to_pb,
    feedback_field,
    proto_field,
    request_to_slot,
)
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
from service.core import REQUEST_KINDS, ServiceCore
from service.errors import GRPC_CODE, RETRYABLE, ErrorKind, InvalidSlotError, PolicyError, kind_of
from service.security import (
    BearerAuth,
    check_access,
    grpc_auth_interceptor,
    grpc_server_credentials,
)
from service.types import SlotState

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Scheduler"].full_name  # "gnbsched.v1.Scheduler"
#: seconds between readiness checks that drive the health status
HEALTH_POLL_S = 1.0
#: seconds between checks for stalled stream writes (slow readers)
STALL_POLL_S = 0.5
_STALLED = -1.0  # marks a write the stall watchdog cancelled
TRANSPORT = "grpc"


class _SlotFailure(Exception):
    """A request that got no decision: the status to answer with, and the request if parsed."""

    def __init__(self, req: pb.SlotRequest | None, code: grpc.StatusCode, field: str, message: str) -> None:
        super().__init__(message)
        self.req, self.code, self.field, self.message = req, code, field, message

    def details(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SchedulerService:
    """The ``Scheduler`` RPCs over one ``ServiceCore`` (requests arrive as raw bytes, so that
    undecodable bytes are an ``INVALID_ARGUMENT`` like any other bad input)."""

    def __init__(self, core: ServiceCore) -> None:
        self.core = core
        s = core.settings
        self.max_users = s.max_users
        self.max_resources = s.max_resources
        self.max_cells = s.max_cells_per_call
        #: set by a graceful stop: streams answer the slot in hand, then end with UNAVAILABLE
        self.draining = False
        #: open streams: handler task -> [loop time a pending write started, or None]
        self.streams: dict[asyncio.Task, list[float | None]] = {}
        self.stall_s = float(getattr(s, "grpc_stream_stall_s", 0.0) or 0.0)

    def _decode(self, req: pb.SlotRequest) -> ScheduleArgs:
        """Validate one request (the contract's rules); ``_SlotFailure`` naming the field."""
        try:
            known = self.core.known_policies(req.policy if req.HasField("policy") else None)
            return request_to_slot(
                req, max_users=self.max_users, max_resources=self.max_resources, known_policies=known
            )
        except InvalidSlotError as exc:
            self.core.observer.rejected(TRANSPORT, req.preset)
            raise _SlotFailure(req, _code(exc.kind), exc.field, exc.message) from None

    def _failure(self, req: pb.SlotRequest, state: SlotState, exc: BaseException) -> _SlotFailure:
        """The answer of a decoded slot that got no decision (the core's error, its kind's code)."""
        if isinstance(exc, _SlotFailure):
            return exc
        kind = kind_of(exc)
        if kind not in REQUEST_KINDS:
            log.error(
                "gRPC: no decision for cell %s slot %s: %r",
                state.cell_id,
                state.slot,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__) if kind is ErrorKind.INTERNAL else None,
            )
        field, message = _field_message(exc, kind)
        # the core names fields the REST way (its state rules): the proto's names
        return _SlotFailure(req, _code(kind), proto_field(feedback_field(field, req)), message)

    async def decide(self, raw: bytes) -> pb.SlotDecision:
        """One slot: parse → validate → ``await core.decide`` → encode; ``_SlotFailure`` otherwise."""
        t0 = time.perf_counter()
        try:
            req = pb.SlotRequest.FromString(raw)
        except DecodeError as exc:
            self.core.observer.rejected(TRANSPORT, None)
            raise _SlotFailure(None, grpc.StatusCode.INVALID_ARGUMENT, "request",
                               f"not a valid gnbsched.v1.SlotRequest: {exc}") from None  # fmt: skip
        dec = self._decode(req)
        observer = self.core.observer
        observer.observe_stage(TRANSPORT, dec.state.preset, "decode", time.perf_counter() - t0)
        try:
            decision = await self.core.decide(
                dec.state,
                policy=dec.policy,
                deadline_ms=dec.deadline_ms,
                feedback=dec.feedback,
                epoch=dec.epoch,
                transport=TRANSPORT,
            )
        except Exception as exc:
            raise self._failure(req, dec.state, exc) from exc
        t1 = time.perf_counter()
        msg = decision_to_pb(dec.state, decision)
        t2 = time.perf_counter()
        observer.observe_stage(TRANSPORT, dec.state.preset, "encode", t2 - t1)
        observer.observe_request(TRANSPORT, t2 - t0)
        return msg

    async def decide_cells(self, raw: bytes) -> pb.CellsDecision:
        """The cells of one TTI: each decoded and decided as ``decide`` would, answered in order,
        a cell's failure in its place; ``_SlotFailure`` only for an undecodable or oversized call."""
        t0 = time.perf_counter()
        try:
            batch = pb.CellsRequest.FromString(raw)
        except DecodeError as exc:
            self.core.observer.rejected(TRANSPORT, None)
            raise _SlotFailure(None, grpc.StatusCode.INVALID_ARGUMENT, "request",
                               f"not a valid gnbsched.v1.CellsRequest: {exc}") from None  # fmt: skip
        if len(batch.cells) > self.max_cells:
            self.core.observer.rejected(TRANSPORT, None)
            raise _SlotFailure(None, grpc.StatusCode.INVALID_ARGUMENT, "cells",
                               f"{len(batch.cells)} cells exceed the configured limit of {self.max_cells}")  # fmt: skip
        observer = self.core.observer
        clock = time.perf_counter
        items: list[ScheduleArgs | BaseException] = []
        for req in batch.cells:
            t1 = clock()
            try:
                items.append(self._decode(req))
            except _SlotFailure as bad:
                items.append(bad)
                continue
            observer.observe_stage(TRANSPORT, req.preset, "decode", clock() - t1)
        results = await self.core.decide_cells(items, transport=TRANSPORT)
        out = pb.CellsDecision()
        for req, item, result in zip(batch.cells, items, results, strict=True):
            if isinstance(result, BaseException):
                state = item.state if isinstance(item, ScheduleArgs) else None
                failure = result if state is None else self._failure(req, state, result)
                assert isinstance(failure, _SlotFailure)
                out.decisions.append(_error_answer(failure))
            else:
                assert isinstance(item, ScheduleArgs)
                t1 = clock()
                out.decisions.append(decision_to_pb(item.state, result))
                observer.observe_stage(TRANSPORT, item.state.preset, "encode", clock() - t1)
        observer.observe_request(TRANSPORT, clock() - t0)
        return out

    def client_gone(self, rpc: str) -> None:
        """The client cancelled an RPC or went away during it (grpc cancelled the handler): a
        DEBUG line and ``gnbsched_client_disconnects_total{transport="grpc"}``, never an error.
        Cancellations by a graceful stop are not counted."""
        if self.draining:
            return
        log.debug("gRPC: the client of a %s call went away before its answer", rpc)
        count = getattr(self.core.observer, "client_disconnect", None)
        if count is not None:
            count(TRANSPORT)

    async def schedule(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.SlotDecision:
        """Unary ``Schedule``: the decision, or the failure as the call's status."""
        try:
            return await self.decide(raw)
        except _SlotFailure as fail:
            await context.abort(fail.code, fail.details())
            raise AssertionError("unreachable: abort raises") from fail
        except asyncio.CancelledError:
            self.client_gone("Schedule")
            raise

    async def schedule_cells(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.CellsDecision:
        """Unary ``ScheduleCells``: one decision (or error) per cell, in order."""
        try:
            return await self.decide_cells(raw)
        except _SlotFailure as fail:
            await context.abort(fail.code, fail.details())
            raise AssertionError("unreachable: abort raises") from fail
        except asyncio.CancelledError:
            self.client_gone("ScheduleCells")
            raise

    async def stream_slots(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        """``StreamSlots``: one answer per request, in order; a failure is answered in place."""
        await self._stream(context, "StreamSlots", self._slot_answer)

    async def stream_ttis(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        """``StreamTtis``: one ``CellsDecision`` per ``CellsRequest``, in order; a bad cell (or a
        whole bad message, as one error) is answered in place."""
        await self._stream(context, "StreamTtis", self._tti_answer)

    async def _slot_answer(self, raw: bytes) -> Any:
        try:
            return await self.decide(raw)
        except _SlotFailure as fail:
            return _error_answer(fail)

    async def _tti_answer(self, raw: bytes) -> Any:
        try:
            return await self.decide_cells(raw)
        except _SlotFailure as fail:
            return pb.CellsDecision(decisions=[_error_answer(fail)])

    async def _stream(
        self, context: grpc.aio.ServicerContext, rpc: str, answer: Callable[[bytes], Awaitable[Any]]
    ) -> None:
        """A lock-step stream: one answer per message read, in order.

        Explicit ``read``/``write`` (not an async generator): ~15 µs less per message. The
        write's start time is published for the stall watchdog (two stores per message); after
        a graceful stop began, the message in hand is answered and the stream ends with
        ``UNAVAILABLE``.
        """
        task = asyncio.current_task()
        pending: list[float | None] = [None]
        loop = asyncio.get_running_loop()
        if task is not None:
            self.streams[task] = pending
        try:
            while True:
                if self.draining:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "server shutting down: every slot read was answered; reconnect"
                    )
                raw = await context.read()
                if raw is grpc.aio.EOF:
                    return
                msg = await answer(raw)
                pending[0] = loop.time()
                try:
                    await context.write(msg)
                except asyncio.CancelledError:
                    if pending[0] != _STALLED:
                        raise  # the client went away: grpc cancelled the RPC
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"stream cancelled: the client read no answer for {self.stall_s:g} s",
                    )
                pending[0] = None
        except asyncio.CancelledError:
            if pending[0] != _STALLED:
                self.client_gone(rpc)
            raise
        finally:
            if task is not None:
                self.streams.pop(task, None)

    async def watch_stalls(self) -> None:
        """Cancel streams whose pending write is older than ``stall_s`` (the client stopped
        reading and flow control is full): the RPC ends, its task and buffers are freed."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(STALL_POLL_S, self.stall_s / 2))
            now = loop.time()
            for task, pending in list(self.streams.items()):
                since = pending[0]
                if since is not None and now - since > self.stall_s and not task.done():
                    log.warning("gRPC: cancelling a stream whose client has not read an answer for %.1f s", now - since)
                    pending[0] = _STALLED
                    task.cancel()


def _error_answer(fail: _SlotFailure) -> pb.SlotDecision:
    """A stream / batch answer in place of a request that got no decision."""
    req = fail.req
    where = f"slot {req.slot} of cell {req.cell_id!r}" if req is not None else "undecodable request"
    return error_to_pb(req, fail.code.name, fail.field, f"{where}: {fail.details()}")


def _code(kind: ErrorKind) -> grpc.StatusCode:
    """The gRPC status of an error kind (``service.errors.GRPC_CODE``, the table REST shares)."""
    return grpc.StatusCode[GRPC_CODE[kind]]


def _field_message(exc: BaseException, kind: ErrorKind) -> tuple[str, str]:
    """(field, message) of a failure after validation; bad input is never INTERNAL."""
    if isinstance(exc, InvalidSlotError):
        return exc.field, exc.message
    if kind is ErrorKind.UNKNOWN_POLICY:
        return "policy", str(exc)
    if kind is ErrorKind.INTERNAL:
        return "", f"internal error: {type(exc).__name__}"
    if kind in RETRYABLE:  # the slot may be sent again as it is
        return "slot", f"retry: {exc}"
    if isinstance(exc, PolicyError) and kind is not ErrorKind.DEADLINE:
        return "", f"no decision: {exc}"
    return "", str(exc)


async def _set_health(health_servicer: Any, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


class SchedulerServer(grpc.aio.Server):
    """A ``grpc.aio.Server`` (delegating to the real one) that owns the health status.

    ``start()`` sets health from ``core.ready()`` and keeps it in step (checked every
    ``HEALTH_POLL_S``; the store ping runs off the event loop); ``stop(grace)`` is graceful:
    health → NOT_SERVING first (load balancers drain), new RPCs refused, running ones get
    ``grace`` seconds. ``port`` is the bound TCP port.
    """

    def __init__(
        self, inner: grpc.aio.Server, core: ServiceCore, health_servicer: Any, service: SchedulerService | None = None
    ) -> None:
        self._inner = inner
        self._core = core
        self.health = health_servicer
        self.service = service
        self._watcher: asyncio.Task | None = None
        self._stalls: asyncio.Task | None = None
        self.port = 0

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._inner.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._inner.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._inner.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await _set_health(self.health, False)
        await self._inner.start()
        ok, _ = await asyncio.to_thread(self._core.ready)
        await _set_health(self.health, ok)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_readiness(ok))
        if self.service is not None and self.service.stall_s > 0:
            self._stalls = asyncio.get_running_loop().create_task(self.service.watch_stalls())

    async def _watch_readiness(self, last: bool) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            try:
                ok, _ = await asyncio.to_thread(self._core.ready)
            except Exception:
                ok = False
            if ok != last:
                await _set_health(self.health, ok)
                last = ok

    async def stop(self, grace: float | None) -> None:
        if self.service is not None:
            self.service.draining = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
            await self.health.enter_graceful_shutdown()
        try:
            await self._inner.stop(grace)
        finally:
            if self._stalls is not None:
                self._stalls.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stalls
                self._stalls = None

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._inner.wait_for_termination(timeout)


def connection_limit_options(s: Any) -> list[tuple[str, int]]:
    """grpc server options bounding what one connection may cost (``Settings``, module doc).

    grpc-python has no limit on the number of connections; what it offers instead: streams per
    connection (``grpc.max_concurrent_streams``, advertised in HTTP/2 SETTINGS: conforming
    clients queue calls beyond it), request metadata size (soft and hard limit set alike, so
    every call above it is refused with RESOURCE_EXHAUSTED, none probabilistically), the
    handshake deadline (TLS and HTTP/2 preface + SETTINGS, ``header_timeout_s``: a connection that
    never speaks HTTP/2 is closed), and closing connections idle for long
    (``grpc.max_connection_idle_ms``, GOAWAY). ``maximum_concurrent_rpcs`` of the server bounds
    RPCs over all connections (``grpc_max_concurrent_rpcs``).
    """
    metadata = int(getattr(s, "grpc_max_metadata_bytes", 16 * 1024))
    options = [
        ("grpc.max_concurrent_streams", int(getattr(s, "grpc_max_concurrent_streams", 64))),
        ("grpc.max_metadata_size", metadata),
        ("grpc.absolute_max_metadata_size", metadata),
        ("grpc.server_handshake_timeout_ms", max(1, round(float(getattr(s, "header_timeout_s", 5.0)) * 1e3))),
    ]
    idle_s = float(getattr(s, "grpc_max_connection_idle_s", 0.0) or 0.0)
    if idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", max(1, round(idle_s * 1e3))))
    return options


async def start_grpc_server(core: ServiceCore, host: str, port: int) -> grpc.aio.Server:
    """Build, bind and start the gRPC server; return it started (a ``SchedulerServer``).

    ``port`` 0 binds a free port (``server.port`` / ``bound_port(server)``). Health (service
    "" and ``gnbsched.v1.Scheduler``) is SERVING once ``core.ready()`` holds and follows it;
    reflection lists the scheduler, health and reflection services. Messages are limited to
    ``settings.max_body_bytes`` each way. With ``settings.workers > 1`` the port is bound with
    SO_REUSEPORT so every worker process serves it; otherwise binding a port in use fails.
    ``await server.stop(grace_s)`` stops it gracefully. Access settings (token, TLS / mTLS,
    ``service.security``) apply; inconsistent ones raise ``AccessConfigError``.
    """
    s = core.settings
    auth = BearerAuth(check_access(s))
    credentials = grpc_server_credentials(s)
    limit = int(s.max_body_bytes)
    keepalive_ms = max(1, round(float(s.grpc_keepalive_s) * 1e3))
    keepalive_timeout_ms = max(1, round(float(s.grpc_keepalive_timeout_s) * 1e3))
    inner = grpc.aio.server(
        options=[
            *connection_limit_options(s),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
            # dead peers: ping every keepalive_s, drop the connection without an answer
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
            # any unanswered ping (keepalive or BDP probe) ends the connection after the timeout
            ("grpc.http2.ping_timeout_ms", keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # clients may ping as often as the server does
            ("grpc.http2.min_ping_interval_without_data_ms", min(keepalive_ms, 10_000)),
            ("grpc.http2.max_pings_without_data", 0),
        ],
        interceptors=[grpc_auth_interceptor(auth)] if auth.enabled else None,
        # RPCs in progress over all connections: beyond it RESOURCE_EXHAUSTED at once
        maximum_concurrent_rpcs=int(getattr(s, "grpc_max_concurrent_rpcs", 0) or 0) or None,
    )
    health_servicer = health.aio.HealthServicer()
    svc = SchedulerService(core)
    server = SchedulerServer(inner, core, health_servicer, svc)
    handlers = {
        "Schedule": grpc.unary_unary_rpc_method_handler(
            svc.schedule, response_serializer=pb.SlotDecision.SerializeToString
        ),
        "StreamSlots": grpc.stream_stream_rpc_method_handler(
            svc.stream_slots, response_serializer=pb.SlotDecision.SerializeToString
        ),
        "ScheduleCells": grpc.unary_unary_rpc_method_handler(
            svc.schedule_cells, response_serializer=pb.CellsDecision.SerializeToString
        ),
        "StreamTtis": grpc.stream_stream_rpc_method_handler(
            svc.stream_ttis, response_serializer=pb.CellsDecision.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        address = f"{host}:{port}"
        server.port = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(f"gRPC: cannot bind {host}:{port} (in use, or not a local address): {exc}") from None
    if server.port == 0:
        raise OSError(f"gRPC: cannot bind {host}:{port}")
    await server.start()
    log.info(
        "gRPC serving %s on %s:%d (%s%s)",
        SERVICE_NAME,
        host,
        server.port,
        "mTLS" if s.grpc_tls_client_ca else ("TLS" if credentials is not None else "plaintext"),
        ", bearer token" if auth.enabled else "",
    )
    return server


def bound_port(server: grpc.aio.Server) -> int:
    """The TCP port a server from ``start_grpc_server`` listens on."""
    return int(getattr(server, "port"))  # noqa: B009 (grpc.aio.Server declares no port)


async def stop_grpc_server(server: grpc.aio.Server, grace_s: float | None = 5.0) -> None:
    """Graceful stop (same as ``await server.stop(grace_s)`` on a ``SchedulerServer``)."""
    await server.stop(grace_s)


class GrpcServerThread:
    """The gRPC server on its own event loop in a daemon thread, for sync hosts (tests, a
    REST server that owns the main loop, notebooks).

        with GrpcServerThread(core, "127.0.0.1", 0) as srv:
            client = SchedulerClient(f"127.0.0.1:{srv.port}")
    """

    def __init__(
        self, core: ServiceCore, host: str = "127.0.0.1", port: int = 0, *, start_timeout_s: float = 10.0
    ) -> None:
        self.core = core
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-server", daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_grpc_server(core, host, port), self.loop)
        try:
            self.server = fut.result(timeout=start_timeout_s)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
            raise
        self.port = bound_port(self.server)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace_s: float | None = 1.0) -> None:
        """Graceful stop (``stop_grpc_server``), then end the loop and the thread."""
        if not self.loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(stop_grpc_server(self.server, grace_s), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def __enter__(self) -> GrpcServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
