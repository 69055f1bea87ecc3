"""A small gRPC client for ``gnbsched.v1.Scheduler`` (used by ``gnbsched simulate``, tests and
benchmarks): unary calls, a lock-step per-TTI stream (sync), and an aio stream loop that
measures end-to-end latency.

    with SchedulerClient("127.0.0.1:50051") as client:
        msg = client.schedule(state, feedback={7: 1024.0})
        owner = owner_tokens(state, msg)          # DCM tokens [R] for SlotEnv.step
        with client.stream() as stream:           # one request per TTI, one decision back
            msg = stream.send(slot_to_request(state))
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from service.api.contract import CELL_HEADER
from service.api.grpc.convert import owner_ids_to_tokens, slot_to_request
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc
from service.errors import GnbSchedError
from service.security import bearer_metadata, grpc_channel_credentials
from service.types import SlotState

__all__ = [
    "SchedulerClient",
    "SlotStream",
    "StreamSlotError",
    "decision_as_dict",
    "owner_tokens",
    "stream_latency_us",
]

_DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


def _options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes)]


class StreamSlotError(GnbSchedError):
    """A StreamSlots answer carried ``error`` instead of a decision."""

    def __init__(self, error: pb.SlotError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code
        self.field = error.field


def owner_tokens(state: SlotState, msg: pb.SlotDecision) -> np.ndarray:
    """Decision ``owner`` user ids [R] (-1 = unused) → DCM tokens int64 [R] of ``state``.

    Raises ``ValueError`` if the answer does not fit the slot (wrong length, unknown user id).
    """
    return owner_ids_to_tokens(state, np.asarray(msg.owner, dtype=np.int64))


def decision_as_dict(msg: pb.SlotDecision) -> dict[str, Any]:
    """The decision in the REST response's shape (owner: id or None, allocation: {id: [ids]})."""
    alloc: dict[int, list[int]] = {}
    rids = list(msg.allocation.resource_ids)
    start = 0
    for uid, count in zip(msg.allocation.user_ids, msg.allocation.resource_counts, strict=True):
        alloc[int(uid)] = rids[start : start + count]
        start += count
    return {
        "cell_id": msg.cell_id,
        "slot": msg.slot,
        "owner": [None if o < 0 else int(o) for o in msg.owner],
        "allocation": alloc,
        "policy": msg.policy,
        "policy_version": msg.policy_version,
        "fallback": msg.fallback if msg.HasField("fallback") else None,
        "fallback_reason": msg.fallback_reason if msg.HasField("fallback_reason") else None,
        "valid_before_repair": msg.valid_before_repair,
        "violations": [{"kind": v.kind, "message": v.message} for v in msg.violations],
        "utility": msg.utility,
        "timings_us": dict(msg.timings_us),
    }


class SlotStream:
    """Lock-step ``StreamSlots`` (or ``StreamTtis`` with ``rpc``): ``send(request)`` returns that
    request's answer.

    A request that the service could not decide comes back with ``error`` set (the stream stays
    open); ``send`` returns it as is, ``decide`` raises ``StreamSlotError``.
    """

    _END = object()

    def __init__(
        self,
        stub: pb_grpc.SchedulerStub,
        timeout_s: float | None,
        metadata: tuple[tuple[str, str], ...] = (),
        *,
        rpc: str = "StreamSlots",
    ) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._responses: Iterator[Any] = getattr(stub, rpc)(
            iter(self._q.get, self._END), timeout=timeout_s, metadata=metadata or None
        )
        self._lock = threading.Lock()

    def send(self, request: Any) -> Any:
        with self._lock:
            self._q.put(request)
            return next(self._responses)

    def decide(
        self,
        state: SlotState,
        *,
        feedback: Mapping[int, float] | None = None,
        policy: str | None = None,
        deadline_ms: float | None = None,
    ) -> pb.SlotDecision:
        msg = self.send(slot_to_request(state, feedback=feedback, policy=policy, deadline_ms=deadline_ms))
        if msg.HasField("error"):
            raise StreamSlotError(msg.error)
        return msg

    def close(self) -> None:
        """Half-close and drain (the server ends the call once its input ends); a call that
        already failed (server gone) is just dropped."""
        self._q.put(self._END)
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError:
            pass

    def __enter__(self) -> SlotStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SchedulerClient:
    """Sync client over one channel (``target`` = ``host:port``).

    Plaintext by default. ``tls_ca`` (PEM file trusted for the server's certificate; system
    roots when only a client certificate is given) and ``tls_cert`` / ``tls_key`` (mTLS) make it
    a TLS channel; ``token`` is sent as ``authorization: Bearer`` on every call (as call
    credentials over TLS, as plain metadata otherwise).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float | None = 10.0,
        max_message_bytes: int = _DEFAULT_MAX_MESSAGE,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._metadata: tuple[tuple[str, str], ...] = ()
        if tls_ca is not None or tls_cert is not None:
            creds = grpc_channel_credentials(tls_ca, tls_cert, tls_key, token=token)
            self.channel = grpc.secure_channel(target, creds, options=_options(max_message_bytes))
        else:
            self._metadata = bearer_metadata(token)
            self.channel = grpc.insecure_channel(target, options=_options(max_message_bytes))
        self.stub = pb_grpc.SchedulerStub(self.channel)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def schedule_request(self, request: pb.SlotRequest) -> pb.SlotDecision:
        """Unary ``Schedule`` (with the cell-affinity metadata ``CELL_HEADER``); raises
        ``grpc.RpcError`` (e.g. INVALID_ARGUMENT) on failure."""
        return self.stub.Schedule(
            request, timeout=self.timeout_s, metadata=(*self._metadata, (CELL_HEADER, request.cell_id))
        )

    def schedule(
        self,
        state: SlotState,
        *,
        feedback: Mapping[int, float] | None = None,
        policy: str | None = None,
        deadline_ms: float | None = None,
        include_rate: bool = True,
    ) -> pb.SlotDecision:
        return self.schedule_request(
            slot_to_request(state, feedback=feedback, policy=policy, deadline_ms=deadline_ms, include_rate=include_rate)
        )

    def stream(self, timeout_s: float | None = None, *, cell_id: str | None = None) -> SlotStream:
        """A lock-step ``StreamSlots`` call; ``cell_id``: the cell it carries, sent as the
        cell-affinity metadata ``CELL_HEADER`` (one stream per cell, as a RAN keeps them)."""
        extra = ((CELL_HEADER, cell_id),) if cell_id else ()
        return SlotStream(self.stub, timeout_s, (*self._metadata, *extra))

    def schedule_cells(self, request: pb.CellsRequest) -> pb.CellsDecision:
        """Unary ``ScheduleCells``: every cell of one TTI, one decision (or error) per cell."""
        return self.stub.ScheduleCells(request, timeout=self.timeout_s, metadata=self._metadata or None)

    def stream_ttis(self, timeout_s: float | None = None) -> SlotStream:
        """A lock-step ``StreamTtis`` call: ``send(CellsRequest)`` returns its ``CellsDecision``."""
        return SlotStream(self.stub, timeout_s, self._metadata, rpc="StreamTtis")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SchedulerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def stream_latency_us(
    target: str, requests: Sequence[pb.SlotRequest], *, warmup: int = 100, max_message_bytes: int = _DEFAULT_MAX_MESSAGE
) -> np.ndarray:
    """End-to-end latency (µs) of each request over one ``StreamSlots`` call, lock-step.

    Sends ``warmup`` requests first (not timed, cycling ``requests``), then each of
    ``requests`` once, timing write → read of its decision. Returns float64 [len(requests)].
    """
    async with grpc.aio.insecure_channel(target, options=_options(max_message_bytes)) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        call = stub.StreamSlots()
        for i in range(warmup):
            await call.write(requests[i % len(requests)])
            await call.read()
        out = np.empty(len(requests))
        for i, req in enumerate(requests):
            t0 = time.perf_counter_ns()
            await call.write(req)
            msg = await call.read()
            out[i] = (time.perf_counter_ns() - t0) / 1e3
            if msg.HasField("error"):
                raise StreamSlotError(msg.error)
        await call.done_writing()
        return out
