"""Batched TTIs and the echo floor (``gnbsched bench perf``), against the real service.

``run_tti`` (the service, ``ServeProcess``): per TTI, C mac cells of N users on R RBGs, decided
in one call, one lock-step client — gRPC ``StreamTtis`` (one stream), gRPC ``ScheduleCells``
(unary) and REST ``POST /schedule/batch`` (keep-alive connection) — for (C, N, R) of the plan and
the policies ``pf`` and ``student``; the same cells as C single-cell calls over one
``StreamSlots`` stream for comparison; and one cell at N = 100, R = 69 over ``StreamSlots`` and
``POST /schedule``, and ``CONCURRENT_CLIENTS`` such cells at once, each its own client and
``StreamSlots`` stream (latency per message, over every client). Per row: p50 / p99 latency
per TTI, decisions per second of the one client (wall) and per CPU-second of the server process
(all its threads: "per core"), the server's own per-stage times summed over the TTI's cells, and
the bytes of one TTI each way. Every cell id is fresh per row and its slot numbers increase, so
nothing is a replay (checked).

``run_floors`` (the echo server, ``service.bench.perf.echo``): the same requests, sent by the same
client code, to a server that answers each with the row's real answer bytes and does no work:
the transport's floor, and each figure's ratio to it.

The gRPC clients are ``grpc.aio`` (as ``service.api.grpc.client.stream_latency_us``), the REST
client ``http.client``; requests are built (and REST bodies encoded) before timing.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import orjson

from service.bench.perf.e2e import grpc_request, rest_body
from service.bench.perf.plan import NUM_RBG, TTI_POLICIES, Plan, log, mac_states, pct
from service.bench.server import ServeProcess
from service.metrics import SERVER_STAGES
from service.types import SlotState

#: transports of the rows: batched (one call per TTI) and single-cell
STREAM_TTIS = "grpc-stream-ttis"
UNARY_CELLS = "grpc-unary-cells"
REST_BATCH = "rest-batch"
STREAM_SLOTS = "grpc-stream-slots"
REST_SINGLE = "rest"
CONCURRENT_SLOTS = "grpc-stream-slots-concurrent"  # CONCURRENT_CLIENTS clients, one StreamSlots stream each
BATCHED = (STREAM_TTIS, UNARY_CELLS, REST_BATCH)
CONCURRENT_CLIENTS = 4
#: the gRPC method and the REST path of each transport
_METHOD = {
    STREAM_TTIS: "/gnbsched.v1.Scheduler/StreamTtis",
    UNARY_CELLS: "/gnbsched.v1.Scheduler/ScheduleCells",
    STREAM_SLOTS: "/gnbsched.v1.Scheduler/StreamSlots",
    CONCURRENT_SLOTS: "/gnbsched.v1.Scheduler/StreamSlots",
}
_PATH = {REST_BATCH: "/schedule/batch", REST_SINGLE: "/schedule"}
_MAX_MESSAGE = 64 * 1024 * 1024
SINGLE_NUM_UE = 100  # the single-cell rows against the echo floor: N = 100, R = NUM_RBG


@dataclass
class TtiRow:
    """One (shape, policy, transport): the TTI's latency, throughput and where its time goes.

    A "TTI" is ``cells`` cells decided in ``calls_per_tti`` calls (1: batched; ``cells``: one
    single-cell call after the other on one stream). Σ figures sum the decisions' own
    ``timings_us`` over the TTI's cells (p50 over TTIs)."""

    transport: str
    policy: str
    cells: int
    num_ue: int
    num_res: int
    calls_per_tti: int
    ttis: int
    p50_ms: float
    p99_ms: float
    decisions_per_s: float  # cells × TTIs / Σ TTI latency: one lock-step client
    decisions_per_cpu_s: float  # decisions / CPU-seconds of the server process (every thread): per core
    server_cpu_ms_per_tti: float
    pipeline_p50_ms: float  # Σ over cells of timings_us["total"] (policy, check, repair, guard, features)
    outside_p50_ms: float  # p50 over TTIs of latency − Σ pipeline: transport + the service outside the pipeline
    stages_p50_us: dict[str, float]  # Σ over cells per stage, p50 over TTIs
    request_bytes: int  # one TTI, on the wire (protobuf or JSON)
    answer_bytes: int
    fallbacks: int  # decisions served by another policy than asked
    floor_p50_ms: float | None = None  # the echo server, same client, same bytes
    floor_p99_ms: float | None = None
    p50_to_floor: float | None = None
    p99_to_floor: float | None = None
    p50_to_single: float | None = None  # batched rows: this p50 / the C single-cell calls' p50
    p99_to_single: float | None = None
    #: the server's own stages around the pipeline (``service.metrics.SERVER_STAGES``: decode, state,
    #: encode), mean µs per cell over the row's calls, from the server's ``gnbsched_stage_seconds``
    server_stages_us: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> str:
        return f"{self.cells}×{self.num_ue}×{self.num_res}"

    @property
    def service_outside_p50_ms(self) -> float | None:
        """The service's own work outside the pipeline (decode, validation, per-cell state,
        encode, its event loop): latency − Σ pipeline − the transport's floor, at p50."""
        return None if self.floor_p50_ms is None else self.outside_p50_ms - self.floor_p50_ms


@dataclass
class _Probe:
    """What a row sends, to the service and then to the echo server. ``build`` makes the TTIs'
    requests (per TTI: one message / encoded body, or for the single-cell stream a list of
    messages), before timing, each time they are sent: only one row's requests are held at a
    time."""

    row_key: str
    transport: str
    build: Callable[[], list[Any]]
    warmup: int
    payload: bytes = b""  # the service's last answer, serialized: what the echo answers
    clients: int = 1  # concurrent clients (CONCURRENT_SLOTS): each TTI holds one message per client

    @property
    def warmup_entries(self) -> int:
        """Latencies not timed: the first ``warmup`` TTIs of every client."""
        return self.warmup * self.clients


@dataclass
class TtiRun:
    """The rows and, per row, the probe that measured it (for the echo floor)."""

    rows: list[TtiRow] = field(default_factory=list)
    probes: list[_Probe] = field(default_factory=list)


# ----------------------------------------------------------------------------- clients


def _options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]


async def _grpc_stream(
    target: str, method: str, ttis: Sequence[Sequence[Any]], answer: Callable[[bytes], Any], key: str | None
) -> tuple[list[float], list[list[Any]]]:
    """One stream, lock-step: per TTI its messages one after the other, each write → read;
    (TTI latency ms, answers per TTI)."""
    import grpc

    from service.bench.perf.echo import ECHO_KEY

    lat: list[float] = []
    answers: list[list[Any]] = []
    async with grpc.aio.insecure_channel(target, options=_options()) as channel:
        call = channel.stream_stream(method, request_serializer=_serialize, response_deserializer=answer)(
            metadata=((ECHO_KEY, key),) if key else None
        )
        for msgs in ttis:
            got = []
            t0 = time.perf_counter_ns()
            for msg in msgs:
                await call.write(msg)
                got.append(await call.read())
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            answers.append(got)
        await call.done_writing()
    return lat, answers


async def _grpc_streams(
    target: str, method: str, ttis: Sequence[Sequence[Any]], answer: Callable[[bytes], Any], key: str | None
) -> tuple[list[float], list[list[Any]]]:
    """Concurrent lock-step streams, one channel each: client k sends message k of every TTI.
    (latency ms per message, one answer per message), TTI-major: TTI 0's clients, then TTI 1's."""
    n = len(ttis[0])
    runs = await asyncio.gather(
        *(_grpc_stream(target, method, [[tti[k]] for tti in ttis], answer, key) for k in range(n))
    )
    lat = [runs[k][0][t] for t in range(len(ttis)) for k in range(n)]
    answers = [runs[k][1][t] for t in range(len(ttis)) for k in range(n)]
    return lat, answers


async def _grpc_unary(
    target: str, method: str, ttis: Sequence[Any], answer: Callable[[bytes], Any], key: str | None
) -> tuple[list[float], list[list[Any]]]:
    """One unary call per TTI over one channel; (latency ms, answers per TTI)."""
    import grpc

    from service.bench.perf.echo import ECHO_KEY

    lat: list[float] = []
    answers: list[list[Any]] = []
    metadata = ((ECHO_KEY, key),) if key else None
    async with grpc.aio.insecure_channel(target, options=_options()) as channel:
        call = channel.unary_unary(method, request_serializer=_serialize, response_deserializer=answer)
        for msg in ttis:
            t0 = time.perf_counter_ns()
            got = await call(msg, metadata=metadata, timeout=30.0)
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            answers.append([got])
    return lat, answers


def _rest(port: int, path: str, bodies: Sequence[bytes]) -> tuple[list[float], list[list[bytes]]]:
    """Lock-step POSTs over one keep-alive connection; (latency ms, raw answers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30.0)
    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    answers: list[list[bytes]] = []
    try:
        for body in bodies:
            t0 = time.perf_counter_ns()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            if resp.status != 200:
                raise RuntimeError(f"POST {path} answered {resp.status}: {data[:300]!r}")
            answers.append([data])
    finally:
        conn.close()
    return lat, answers


def _serialize(msg: Any) -> bytes:
    return bytes(msg.SerializeToString())


def _send(
    probe: _Probe, ttis: list[Any], grpc_target: str, rest_port: int, echo: bool
) -> tuple[list[float], list[list[Any]]]:
    """Send the probe's TTIs to the service or (``echo``) the echo server; every TTI timed."""
    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb

    key = probe.row_key if echo else None
    tr = probe.transport
    try:
        if tr == STREAM_TTIS:
            one = [[m] for m in ttis]
            return asyncio.run(_grpc_stream(grpc_target, _METHOD[tr], one, pb.CellsDecision.FromString, key))
        if tr == STREAM_SLOTS:
            return asyncio.run(_grpc_stream(grpc_target, _METHOD[tr], ttis, pb.SlotDecision.FromString, key))
        if tr == CONCURRENT_SLOTS:
            return asyncio.run(_grpc_streams(grpc_target, _METHOD[tr], ttis, pb.SlotDecision.FromString, key))
        if tr == UNARY_CELLS:
            return asyncio.run(_grpc_unary(grpc_target, _METHOD[tr], ttis, pb.CellsDecision.FromString, key))
        return _rest(rest_port, f"/echo/{key}" if echo else _PATH[tr], ttis)
    except Exception as exc:  # grpc.aio.AioRpcError and the like: the run notes it and goes on
        if isinstance(exc, RuntimeError):
            raise
        raise RuntimeError(f"{tr} ({probe.row_key}): {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- the answers


def _cells(transport: str, answers: list[Any]) -> list[tuple[dict[str, float], str, bool, bool, str | None]]:
    """The TTI's per-cell answers as (timings_us, policy, fallback, replayed, error)."""
    out: list[tuple[dict[str, float], str, bool, bool, str | None]] = []
    if transport in (REST_BATCH, REST_SINGLE):
        for raw in answers:
            doc = orjson.loads(raw)
            for d in doc["decisions"] if transport == REST_BATCH else [doc]:
                err = f"{d['error']}: {d.get('message')}" if "error" in d else None
                out.append(
                    (
                        d.get("timings_us") or {},
                        str(d.get("policy")),
                        bool(d.get("fallback")),
                        bool(d.get("replayed")),
                        err,
                    )
                )
        return out
    for msg in answers:
        for d in msg.decisions if transport in (STREAM_TTIS, UNARY_CELLS) else [msg]:
            err = f"{d.error.code}: {d.error.message}" if d.HasField("error") else None
            out.append((dict(d.timings_us), d.policy, d.HasField("fallback"), d.replayed, err))
    return out


def _payload(transport: str, answers: list[Any]) -> bytes:
    """The bytes the echo answers for this row: the service's last answer (one cell's
    ``SlotDecision`` for the single-cell stream)."""
    last = answers[-1][0]
    return bytes(last) if isinstance(last, bytes) else _serialize(last)


def _request_bytes(transport: str, tti: Any) -> int:
    if transport in (REST_BATCH, REST_SINGLE):
        return len(tti)
    msgs = tti if isinstance(tti, list) else [tti]
    return int(sum(m.ByteSize() for m in msgs))


def _server_stage_totals(rest_port: int, transport: str) -> dict[str, tuple[float, float]]:
    """{stage: (seconds, cells)} of the server's own stages so far, for one transport label
    (``grpc`` / ``rest``), from its ``/metrics`` (``gnbsched_stage_seconds`` sums and counts)."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    totals = {stage: [0.0, 0.0] for stage in SERVER_STAGES}
    for fam in text_string_to_metric_families(text):
        if fam.name != "gnbsched_stage_seconds":
            continue
        for s in fam.samples:
            stage = s.labels.get("stage", "")
            if stage in totals and s.labels.get("transport") == transport:
                if s.name.endswith("_sum"):
                    totals[stage][0] += s.value
                elif s.name.endswith("_count"):
                    totals[stage][1] += s.value
    return {k: (v[0], v[1]) for k, v in totals.items()}


def _measure(probe: _Probe, server: ServeProcess, policy: str, shape: tuple[int, int, int], calls: int) -> TtiRow:
    """Send the probe to the service; the row (and the probe's echo payload)."""
    cells, n, r = shape
    ttis = probe.build()
    request_bytes = _request_bytes(probe.transport, ttis[-1]) // probe.clients
    label = "rest" if probe.transport in (REST_BATCH, REST_SINGLE) else "grpc"
    before = _server_stage_totals(server.rest_port, label)
    cpu0 = server.cpu_s()
    lat, answers = _send(probe, ttis, f"127.0.0.1:{server.grpc_port}", server.rest_port, echo=False)
    cpu = server.cpu_s() - cpu0
    after = _server_stage_totals(server.rest_port, label)
    server_stages_us = {
        k: (after[k][0] - before[k][0]) / (after[k][1] - before[k][1]) * 1e6
        for k in SERVER_STAGES
        if after[k][1] > before[k][1]
    }
    del ttis
    w = probe.warmup_entries
    timed, timed_answers = lat[w:], answers[w:]
    pipe, stages, fallbacks = [], [], 0
    for got in answers:
        per_cell = _cells(probe.transport, got)
        if len(per_cell) != cells:
            raise RuntimeError(f"{probe.row_key}: {len(per_cell)} answers for {cells} cells")
        for _, pol, fb, replayed, err in per_cell:
            if err is not None:
                raise RuntimeError(f"{probe.row_key}: a cell was not decided: {err}")
            if replayed:
                raise RuntimeError(f"{probe.row_key}: a cell's slot was answered as a replay")
            fallbacks += fb or pol != policy
    for got in timed_answers:
        per_cell = _cells(probe.transport, got)
        pipe.append(sum(t.get("total", math.nan) for t, *_ in per_cell) / 1e3)
        sums: dict[str, float] = {}
        for t, *_ in per_cell:
            for k, v in t.items():
                if k != "total":
                    sums[k] = sums.get(k, 0.0) + float(v)
        stages.append(sums)
    probe.payload = _payload(probe.transport, answers)
    total_decisions = cells * len(lat)
    stage_keys = sorted({k for s in stages for k in s}, key=lambda k: -np.median([s.get(k, 0.0) for s in stages]))
    return TtiRow(
        transport=probe.transport,
        policy=policy,
        cells=cells,
        num_ue=n,
        num_res=r,
        calls_per_tti=calls,
        ttis=len(timed),
        p50_ms=pct(timed, 50),
        p99_ms=pct(timed, 99),
        decisions_per_s=cells * len(timed) / (sum(timed) / 1e3),  # with k clients: about k × one's
        decisions_per_cpu_s=total_decisions / cpu if cpu > 0 else math.nan,
        server_cpu_ms_per_tti=cpu * 1e3 / len(lat),
        pipeline_p50_ms=pct(pipe, 50),
        outside_p50_ms=pct([a - b for a, b in zip(timed, pipe, strict=True)], 50),
        stages_p50_us={k: round(pct([s.get(k, 0.0) for s in stages], 50), 1) for k in stage_keys},
        request_bytes=request_bytes,
        answer_bytes=len(probe.payload) * (calls if probe.transport == STREAM_SLOTS else 1),
        fallbacks=int(fallbacks),
        server_stages_us={k: round(v, 1) for k, v in server_stages_us.items()},
    )


# ----------------------------------------------------------------------------- the requests


def _cell_states(shape: tuple[int, int, int], slots: int, seed: int) -> list[list[SlotState]]:
    """Per cell, ``slots`` consecutive mac slots (its own simulator seed)."""
    cells, n, r = shape
    return [mac_states(n, slots, seed + 1000 * k + n, num_rbg=r) for k in range(cells)]


def _grpc_tti_requests(states: list[list[SlotState]], policy: str, tag: str, count: int) -> list[list[Any]]:
    """Per TTI, one ``SlotRequest`` per cell (fresh cell ids ``tag-cK``, slot = the TTI's index)."""
    base = [[grpc_request(s, policy) for s in cell] for cell in states]
    out = []
    for t in range(count):
        tti = []
        for k, cell in enumerate(base):
            req = type(cell[0])()
            req.CopyFrom(cell[t % len(cell)])
            req.slot, req.cell_id = t, f"{tag}-c{k}"
            tti.append(req)
        out.append(tti)
    return out


def _rest_tti_docs(states: list[list[SlotState]], policy: str, tag: str, count: int) -> list[list[dict[str, Any]]]:
    base = [[rest_body(s, policy) for s in cell] for cell in states]
    out = []
    for t in range(count):
        out.append([{**cell[t % len(cell)], "slot": t, "cell_id": f"{tag}-c{k}"} for k, cell in enumerate(base)])
    return out


def _batched(states: list[list[SlotState]], policy: str, tag: str, count: int) -> list[Any]:
    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb

    return [pb.CellsRequest(cells=t) for t in _grpc_tti_requests(states, policy, tag, count)]


def _rest_bodies(states: list[list[SlotState]], policy: str, tag: str, count: int, *, batch: bool) -> list[bytes]:
    docs = _rest_tti_docs(states, policy, tag, count)
    return [orjson.dumps({"cells": d}) if batch else orjson.dumps(d[0]) for d in docs]


def _probes(shape: tuple[int, int, int], policy: str, plan: Plan, seed: int, single: bool) -> list[_Probe]:
    """The probes of one (shape, policy): the batched transports, then (``single``) the cells as
    single-cell calls over one ``StreamSlots`` stream."""
    count = plan.tti_warmup + plan.tti_count[shape]
    states = _cell_states(shape, min(20, count), seed)
    name = f"{shape[0]}x{shape[1]}x{shape[2]}-{policy}"
    w = plan.tti_warmup
    probes = [
        _Probe(f"{tr}-{name}", tr, partial(_batched, states, policy, f"tti-{tr}-{name}", count), w)
        for tr in (STREAM_TTIS, UNARY_CELLS)
    ]
    tag = f"tti-{REST_BATCH}-{name}"
    probes.append(
        _Probe(f"{REST_BATCH}-{name}", REST_BATCH, partial(_rest_bodies, states, policy, tag, count, batch=True), w)
    )
    if single:
        tag = f"tti-{STREAM_SLOTS}-{name}"
        probes.append(
            _Probe(f"{STREAM_SLOTS}-{name}", STREAM_SLOTS, partial(_grpc_tti_requests, states, policy, tag, count), w)
        )
    return probes


def _single_probes(policy: str, plan: Plan, seed: int) -> list[_Probe]:
    """One cell at N = 100, R = NUM_RBG: one ``StreamSlots`` stream and ``POST /schedule``; and
    ``CONCURRENT_CLIENTS`` cells at once, one client and stream each (a quarter of the requests
    per client)."""
    count = plan.tti_warmup + plan.single_requests
    states = [mac_states(SINGLE_NUM_UE, min(20, count), seed, num_rbg=NUM_RBG)]
    name = f"1x{SINGLE_NUM_UE}x{NUM_RBG}-{policy}"
    w = plan.tti_warmup
    k = CONCURRENT_CLIENTS
    many = _cell_states((k, SINGLE_NUM_UE, NUM_RBG), min(20, count), seed)
    per_client = plan.tti_warmup + max(1, plan.single_requests // k)
    return [
        _Probe(
            f"{CONCURRENT_SLOTS}-{name}",
            CONCURRENT_SLOTS,
            partial(_grpc_tti_requests, many, policy, f"single-{CONCURRENT_SLOTS}-{name}", per_client),
            w,
            clients=k,
        ),
        _Probe(
            f"{STREAM_SLOTS}-{name}",
            STREAM_SLOTS,
            partial(_grpc_tti_requests, states, policy, f"single-{STREAM_SLOTS}-{name}", count),
            w,
        ),
        _Probe(
            f"{REST_SINGLE}-{name}",
            REST_SINGLE,
            partial(_rest_bodies, states, policy, f"single-{REST_SINGLE}-{name}", count, batch=False),
            w,
        ),
    ]


# ----------------------------------------------------------------------------- runs


def run_tti(server: ServeProcess, plan: Plan, seed: int, notes: list[str], policies: Sequence[str]) -> TtiRun:
    """Every batched shape × policy × transport, the single-cell comparisons, and the single
    cell at N = 100 against the service; ``policies``: those available (``TTI_POLICIES``)."""
    run = TtiRun()
    for policy in policies:
        for shape in plan.tti_shapes:
            single = shape in plan.tti_single_shapes
            by_tr: dict[str, TtiRow] = {}
            for probe in _probes(shape, policy, plan, seed, single):
                calls = shape[0] if probe.transport == STREAM_SLOTS else 1
                try:
                    row = _measure(probe, server, policy, shape, calls)
                except RuntimeError as exc:
                    notes.append(f"batched TTI {probe.row_key}: failed: {exc}")
                    log(f"tti {probe.row_key}: failed: {exc}")
                    continue
                run.rows.append(row)
                run.probes.append(probe)
                by_tr[row.transport] = row
                log(
                    f"tti {row.shape} {policy} {row.transport}: p50 {row.p50_ms:.3f} / p99 {row.p99_ms:.3f} ms, "
                    f"{row.decisions_per_s:.0f} decisions/s, {row.decisions_per_cpu_s:.0f} per server CPU-s"
                )
            ref = by_tr.get(STREAM_SLOTS)
            if ref is not None:
                for tr in BATCHED:
                    row_b = by_tr.get(tr)
                    if row_b is not None:
                        row_b.p50_to_single = row_b.p50_ms / ref.p50_ms
                        row_b.p99_to_single = row_b.p99_ms / ref.p99_ms
        for probe in _single_probes(policy, plan, seed):
            try:  # a concurrent row: each message one cell's decision, timed alone
                row = _measure(probe, server, policy, (1, SINGLE_NUM_UE, NUM_RBG), 1)
            except RuntimeError as exc:
                notes.append(f"single cell {probe.row_key}: failed: {exc}")
                continue
            run.rows.append(row)
            run.probes.append(probe)
            log(f"single {policy} N={SINGLE_NUM_UE} {row.transport}: p50 {row.p50_ms:.3f} / p99 {row.p99_ms:.3f} ms")
    return run


def run_floors(run: TtiRun, notes: list[str]) -> None:
    """The echo floor of every row: the same requests, the same client, the row's answer bytes."""
    from service.bench.perf.echo import EchoProcess

    grpc_payloads = {p.row_key: p.payload for p in run.probes if p.transport not in (REST_BATCH, REST_SINGLE)}
    http_payloads = {p.row_key: p.payload for p in run.probes if p.transport in (REST_BATCH, REST_SINGLE)}
    try:
        with EchoProcess(grpc_payloads, http_payloads) as echo:
            log(f"echo server up: HTTP :{echo.rest_port}, gRPC :{echo.grpc_port}")
            for row, probe in zip(run.rows, run.probes, strict=True):
                lat, _ = _send(probe, probe.build(), f"127.0.0.1:{echo.grpc_port}", echo.rest_port, echo=True)
                timed = lat[probe.warmup_entries :]
                row.floor_p50_ms, row.floor_p99_ms = pct(timed, 50), pct(timed, 99)
                row.p50_to_floor = row.p50_ms / row.floor_p50_ms
                row.p99_to_floor = row.p99_ms / row.floor_p99_ms
                log(
                    f"floor {row.shape} {row.policy} {row.transport}: p50 {row.floor_p50_ms:.3f} / p99 "
                    f"{row.floor_p99_ms:.3f} ms (service {row.p50_to_floor:.1f}× / {row.p99_to_floor:.1f}×)"
                )
    except (RuntimeError, TimeoutError, OSError) as exc:
        notes.append(f"echo floor failed: {exc}")
        log(f"echo floor failed: {exc}")


__all__ = [
    "BATCHED",
    "CONCURRENT_CLIENTS",
    "CONCURRENT_SLOTS",
    "REST_BATCH",
    "REST_SINGLE",
    "SINGLE_NUM_UE",
    "STREAM_SLOTS",
    "STREAM_TTIS",
    "TTI_POLICIES",
    "UNARY_CELLS",
    "TtiRow",
    "TtiRun",
    "run_floors",
    "run_tti",
]
