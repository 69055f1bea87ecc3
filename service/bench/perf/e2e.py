"""The end-to-end measurements of ``gnbsched bench perf``: the real service in a subprocess.

The server is ``service.bench.server.ServeProcess`` (REST on uvicorn + gRPC, one process,
in-process state, free loopback ports). ``run_e2e``: REST, gRPC unary and gRPC stream latency p50 / p99
at N ∈ {10, 100, 1000}, one lock-step client, with the server's own pipeline and decode times;
``run_load``: decisions/s under a bounded concurrent load (each client its own connection), and
``run_scaling`` the same load against ``gnbsched serve --workers W`` for W from 1 to the
cores the process is given (``service.cores``). ``rest_body`` / ``request_bodies``
build the ``POST /schedule`` bodies (also used by ``gnbsched bench validate``).
"""

from __future__ import annotations

import asyncio
import http.client
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.bench.perf.plan import E2E_POLICY, NUM_RBG, Plan, log, pct, slot_states
from service.bench.server import ServeProcess
from service.types import SlotState


def rest_body(state: SlotState, policy: str) -> dict[str, Any]:
    """``POST /schedule`` body: mac as a gNB sends it (SE and buffer per UE, the service computes
    the TBS); spectrum with the rate matrix (fading included)."""
    from service.api.simulate import rest_body as simulated_body

    body = simulated_body(state, policy=policy)
    if state.preset == "mac" and state.spectral_efficiency is not None:
        body.pop("utility", None)  # the matrix (simulate sends mac utilities as `utility`)
        body.pop("rate_bps", None)
    return body


def grpc_request(state: SlotState, policy: str):
    """The gRPC ``ScheduleRequest`` of a slot, carrying what the REST body carries."""
    from service.api.grpc.convert import slot_to_request

    return slot_to_request(
        state, policy=policy, include_rate=not (state.preset == "mac" and state.spectral_efficiency is not None)
    )


@dataclass
class E2ERow:
    preset: str
    policy: str
    num_ue: int
    num_res: int
    transport: str
    requests: int
    p50_ms: float
    p99_ms: float
    server_total_p50_ms: float | None = None
    server_decode_p50_ms: float | None = None


def _rest_latency(
    port: int, bodies: Iterator[bytes], count: int, warmup: int
) -> tuple[list[float], list[float], list[float]]:
    """Lock-step POSTs over one keep-alive connection; (client ms, server pipeline ms, server
    decode ms — JSON to slot)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30.0)
    headers = {"Content-Type": "application/json"}
    lat, server, decode = [], [], []
    try:
        for i in range(warmup + count):
            body = next(bodies)
            t0 = time.perf_counter_ns()
            conn.request("POST", "/schedule", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            dt = (time.perf_counter_ns() - t0) / 1e6
            if resp.status != 200:
                raise RuntimeError(f"POST /schedule answered {resp.status}: {data[:300]!r}")
            if i >= warmup:
                lat.append(dt)
                timings = orjson.loads(data)["timings_us"]
                server.append(timings["total"] / 1e3)
                decode.append(timings.get("decode", math.nan) / 1e3)
    finally:
        conn.close()
    return lat, server, decode


def request_bodies(states: Sequence[SlotState], policy: str, cell: str) -> Iterator[bytes]:
    """Request bodies cycling the states with increasing slot numbers (encoded before timing)."""
    docs = [rest_body(s, policy) for s in states]
    slot = 0
    while True:
        for doc in docs:
            doc["slot"], doc["cell_id"] = slot, cell
            slot += 1
            yield orjson.dumps(doc)


def _grpc_requests(states: Sequence[SlotState], policy: str, cell: str, count: int) -> list:
    base = [grpc_request(s, policy) for s in states]
    out = []
    for i in range(count):
        req = type(base[0])()
        req.CopyFrom(base[i % len(base)])
        req.slot, req.cell_id = i, cell
        out.append(req)
    return out


def run_e2e(server: ServeProcess, plan: Plan, seed: int) -> list[E2ERow]:
    from service.api.grpc.client import SchedulerClient, stream_latency_us

    rows: list[E2ERow] = []
    target = f"127.0.0.1:{server.grpc_port}"
    for preset, policy in E2E_POLICY.items():
        for n in plan.e2e_sizes:
            count, warmup = plan.e2e_requests[n], plan.e2e_warmup
            states = slot_states(preset, n, min(20, count), seed)
            lat, srv, dec = _rest_latency(
                server.rest_port, request_bodies(states, policy, f"rest-{preset}-{n}"), count, warmup
            )
            rows.append(
                E2ERow(
                    preset, policy, n, NUM_RBG, "rest", count, pct(lat, 50), pct(lat, 99), pct(srv, 50), pct(dec, 50)
                )
            )
            reqs = _grpc_requests(states, policy, f"unary-{preset}-{n}", warmup + count)
            with SchedulerClient(target, timeout_s=30.0) as client:
                client.wait_ready(10.0)
                un, srv, gdec = [], [], []
                for i, req in enumerate(reqs):
                    t0 = time.perf_counter_ns()
                    msg = client.schedule_request(req)
                    if i >= warmup:
                        un.append((time.perf_counter_ns() - t0) / 1e6)
                        srv.append(msg.timings_us["total"] / 1e3 if "total" in msg.timings_us else math.nan)
                        gdec.append(msg.timings_us["decode"] / 1e3 if "decode" in msg.timings_us else math.nan)
            rows.append(
                E2ERow(
                    preset,
                    policy,
                    n,
                    NUM_RBG,
                    "grpc-unary",
                    count,
                    pct(un, 50),
                    pct(un, 99),
                    pct(srv, 50),
                    pct(gdec, 50),
                )
            )
            # one stream, slots increasing throughout (a cell refuses a slot older than its last):
            # the first `warmup` requests are the warm-up, their times dropped
            reqs = _grpc_requests(states, policy, f"stream-{preset}-{n}", warmup + count)
            us = asyncio.run(stream_latency_us(target, reqs, warmup=0))[warmup:]
            rows.append(E2ERow(preset, policy, n, NUM_RBG, "grpc-stream", count, pct(us / 1e3, 50), pct(us / 1e3, 99)))
            log(
                f"e2e {preset}/{policy} N={n}: REST p50 {rows[-3].p50_ms:.3f} ms, gRPC unary p50 "
                f"{rows[-2].p50_ms:.3f} ms, stream p50 {rows[-1].p50_ms:.3f} / p99 {rows[-1].p99_ms:.3f} ms"
            )
    return rows


@dataclass
class LoadRow:
    transport: str
    preset: str
    policy: str
    num_ue: int
    clients: int
    seconds: float
    decisions: int
    decisions_per_s: float
    p50_ms: float
    p99_ms: float
    workers: int = 1  # server processes (``gnbsched serve --workers``)


async def _grpc_load(target: str, requests_per_client: list[list], seconds: float) -> tuple[int, list[float]]:
    import grpc

    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc

    lat: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client(stub, reqs) -> None:
        nonlocal done
        call = stub.StreamSlots()
        i = 0
        while time.perf_counter() < stop_at:
            req = reqs[i % len(reqs)]
            req.slot = i
            t0 = time.perf_counter_ns()
            await call.write(req)
            await call.read()
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            done += 1
            i += 1
        await call.done_writing()

    # a connection per client (a local subchannel pool: channels to one target do not share one),
    # so that several server processes on one port (SO_REUSEPORT) each get their share
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in requests_per_client
    ]
    try:
        await asyncio.gather(
            *(client(pb_grpc.SchedulerStub(ch), reqs) for ch, reqs in zip(channels, requests_per_client, strict=True))
        )
    finally:
        for ch in channels:
            await ch.close()
    return done, lat


def _rest_load(port: int, bodies_per_client: list[Iterator[bytes]], seconds: float) -> tuple[int, list[float]]:
    lat: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(bodies: Iterator[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30.0)
        mine = []
        try:
            while time.perf_counter() < stop_at:
                body = next(bodies)
                t0 = time.perf_counter_ns()
                conn.request("POST", "/schedule", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"POST /schedule answered {resp.status}")
                mine.append((time.perf_counter_ns() - t0) / 1e6)
        finally:
            conn.close()
            with lock:
                lat.extend(mine)

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies_per_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat), lat


def run_load(server: ServeProcess, plan: Plan, seed: int, workers: int = 1) -> list[LoadRow]:
    """A fixed number of concurrent lock-step clients (one cell and one connection each) for a
    fixed time; ``workers``: the server's process count, for the rows."""
    preset, n = "mac", 100
    policy = E2E_POLICY[preset]
    states = slot_states(preset, n, 20, seed)
    rows = []
    c, secs = plan.load_clients, plan.load_seconds
    reqs = [_grpc_requests(states, policy, f"load-grpc-{k}", len(states)) for k in range(c)]
    done, lat = asyncio.run(_grpc_load(f"127.0.0.1:{server.grpc_port}", reqs, secs))
    rows.append(
        LoadRow("grpc-stream", preset, policy, n, c, secs, done, done / secs, pct(lat, 50), pct(lat, 99), workers)
    )
    done, lat = _rest_load(server.rest_port, [request_bodies(states, policy, f"load-rest-{k}") for k in range(c)], secs)
    rows.append(LoadRow("rest", preset, policy, n, c, secs, done, done / secs, pct(lat, 50), pct(lat, 99), workers))
    for r in rows:
        log(
            f"load {r.transport} ({workers} worker{'s' if workers > 1 else ''}): {r.clients} clients, "
            f"{r.decisions_per_s:.0f} decisions/s, p99 {r.p99_ms:.2f} ms"
        )
    return rows


def worker_counts(cores: int, quick: bool) -> list[int]:
    """Server process counts from 2 to ``cores`` (powers of two, and ``cores``); 1 is the main run.
    ``quick``: 2 only."""
    counts = sorted({w for w in (2, 4, 8, 16, 32, 64) if w < cores} | ({cores} if cores > 1 else set()))
    return counts[:1] if quick else counts


def run_scaling(plan: Plan, seed: int, notes: list[str], quick: bool = False) -> list[LoadRow]:
    """``run_load`` against ``gnbsched serve --workers W`` for every W of ``worker_counts`` (the
    1-worker rows come from the main run). Each client keeps its cell on its own connection, so
    the in-process state of one worker serves it throughout."""
    from service.cores import cores_given

    rows: list[LoadRow] = []
    for workers in worker_counts(cores_given(), quick):
        try:
            with ServeProcess(["--workers", str(workers)]) as server:
                rows += run_load(server, plan, seed, workers)
        except (RuntimeError, TimeoutError, OSError) as exc:
            notes.append(f"scaling: --workers {workers} failed: {exc}")
    return rows
