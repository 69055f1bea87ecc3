"""Soak benchmark: a bounded load on loopback against a real ``gnbsched serve`` process.

Tens of connections — REST keep-alive connections and gRPC ``StreamSlots`` streams, one cell
each — send one slot at a time (lock-step, paced at ``rate_per_conn`` slots/s; 0 = as fast as
the server answers) for ``duration_s``, with the previous slot's delivered bits as feedback so
the per-cell state path is exercised. Reported: requests, errors (non-200, gRPC errors, decision
``error`` fields, PAG-invalid answers in the checked sample), latency p50 / p99 / p99.9 / max per
transport, and the server's resident memory (``VmRSS`` from /proc) sampled every
``rss_interval_s``: the drift is the relative change between the median of the first and of the
last ``rss_window`` samples after ``warmup_s``.

    python -m service.bench.soak --duration-s 60 --connections 24 --grpc-streams 8
    # or, hooked into the CLI: gnbsched bench soak --duration-s 60 ...

Every request goes to 127.0.0.1; the run stops by itself after ``duration_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bench.server import ServeProcess

#: error kinds kept verbatim in the report (first few of each)
_MAX_ERROR_SAMPLES = 5


@dataclass
class SoakConfig:
    duration_s: float = 60.0
    warmup_s: float = 10.0
    connections: int = 24  # REST keep-alive connections (one cell each)
    grpc_streams: int = 8  # StreamSlots streams (one cell each); 0 = REST only
    rate_per_conn: float = 25.0  # slots per second per connection; 0 = closed loop
    preset: str = "mac"
    num_ue: int = 20
    num_res: int = 17
    policy: str | None = None  # None: the service's default for the preset
    seed: int = 0
    check_every: int = 10  # PAG-check every k-th answer (client CPU)
    rss_interval_s: float = 0.5
    rss_window: int = 6
    serve_args: list[str] = field(default_factory=list)  # extra ``gnbsched serve`` flags


@dataclass
class TransportStats:
    requests: int = 0
    errors: int = 0
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    p999_us: float = float("nan")
    max_us: float = float("nan")
    throughput_per_s: float = 0.0


@dataclass
class SoakResult:
    config: dict[str, Any]
    duration_s: float
    rest: TransportStats
    grpc: TransportStats
    errors: int
    error_samples: list[str]
    checked: int
    rss_kib: list[tuple[float, int]]  # (seconds since start, KiB)
    rss_start_kib: float
    rss_end_kib: float
    rss_drift: float  # (end - start) / start, medians of the first / last window after warm-up
    fds_start: int
    fds_end: int
    threads_start: int
    threads_end: int
    server_cpu: float  # server CPU seconds per wall second over the run (1.0 = one core busy)
    client_cpu: float  # the load generator's, likewise

    def summary(self) -> str:
        def line(name: str, s: TransportStats) -> str:
            return (
                f"  {name:5s} {s.requests:8d} req  {s.throughput_per_s:8.1f}/s  errors {s.errors}  "
                f"p50 {s.p50_us:8.1f} µs  p99 {s.p99_us:8.1f} µs  p99.9 {s.p999_us:8.1f} µs  max {s.max_us:9.1f} µs"
            )

        return "\n".join(
            [
                f"soak: {self.duration_s:.1f} s, {self.config['connections']} REST connections + "
                f"{self.config['grpc_streams']} gRPC streams, {self.config['preset']} N={self.config['num_ue']} "
                f"R={self.config['num_res']}, {self.config['rate_per_conn'] or 'max'} slots/s per connection",
                line("rest", self.rest),
                line("grpc", self.grpc),
                f"  errors {self.errors}  (PAG-checked {self.checked} answers)",
                f"  CPU: server {self.server_cpu:.2f} cores, load generator {self.client_cpu:.2f} cores (2-core "
                "machine: a saturated server or client inflates the latencies)",
                f"  server RSS {self.rss_start_kib / 1024:.1f} MiB -> {self.rss_end_kib / 1024:.1f} MiB after warm-up: "
                f"drift {self.rss_drift * 100:+.2f} %   fds {self.fds_start} -> {self.fds_end}   "
                f"threads {self.threads_start} -> {self.threads_end}",
            ]
        )


# ----------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ----------------------------------------------------------------------------- the server


# ----------------------------------------------------------------------------- load


def _slot_body(
    cfg: SoakConfig, cell: str, slot: int, rng: np.random.Generator, feedback: dict[int, float] | None
) -> dict[str, Any]:
    """One slot of ``cell``: N users with fresh channel values, R resources (SPEC §2 / §3 fields)."""
    n, r = cfg.num_ue, cfg.num_res
    if cfg.preset == "mac":
        users = [
            {"id": 1 + i, "spectral_efficiency": float(se), "buffer_bits": float(b)}
            for i, (se, b) in enumerate(
                zip(rng.uniform(0.15, 5.5, n).round(4), rng.integers(0, 60_000, n), strict=True)
            )
        ]
        resources = [{"id": j, "bandwidth_hz": 1.44e6} for j in range(r)]
    else:
        users = [{"id": 1 + i, "rx_power_dbm": float(p)} for i, p in enumerate(rng.uniform(-110, -60, n).round(3))]
        resources = [{"id": j, "bandwidth_hz": 1e6, "available": bool(a)} for j, a in enumerate(rng.random(r) > 0.2)]
    body: dict[str, Any] = {"cell_id": cell, "slot": slot, "preset": cfg.preset, "users": users, "resources": resources}
    if cfg.policy:
        body["policy"] = cfg.policy
    if feedback:
        body["feedback"] = {"delivered_bits": {str(k): v for k, v in feedback.items()}}
    return body


def _delivered(body: dict[str, Any], owner: list[int | None]) -> dict[int, float]:
    """Bits each owner got: min(buffer, RBGs · 1000) (mac) or 1e6 per channel (spectrum)."""
    counts: dict[int, int] = {}
    for uid in owner:
        if uid is not None:
            counts[uid] = counts.get(uid, 0) + 1
    buf = {u["id"]: u.get("buffer_bits", 1e12) for u in body["users"]}
    per = 1000.0 if body["preset"] == "mac" else 1e6
    return {u: float(min(buf[u], per * k)) for u, k in counts.items()}


def _pag_ok(body: dict[str, Any], owner: list[int | None]) -> bool:
    from service.api.rest.codec import decode_schedule
    from service.pag.checks import check

    state = decode_schedule(body).state
    index = {int(u): i + 1 for i, u in enumerate(state.user_ids.tolist())}
    if len(owner) != state.num_res or any(o is not None and o not in index for o in owner):
        return False
    tokens = np.array([0 if o is None else index[o] for o in owner], np.int64)
    return check(state, tokens).valid


class _Recorder:
    def __init__(self, t_start: float, warmup_s: float) -> None:
        self.t_start = t_start
        self.warmup_end = t_start + warmup_s
        self.lat: dict[str, list[float]] = {"rest": [], "grpc": []}
        self.requests = {"rest": 0, "grpc": 0}
        self.errors = {"rest": 0, "grpc": 0}
        self.samples: list[str] = []
        self.checked = 0

    def ok(self, transport: str, t0: float, t1: float) -> None:
        self.requests[transport] += 1
        if t0 >= self.warmup_end:
            self.lat[transport].append((t1 - t0) * 1e6)

    def error(self, transport: str, what: str) -> None:
        self.requests[transport] += 1
        self.errors[transport] += 1
        if len(self.samples) < _MAX_ERROR_SAMPLES:
            self.samples.append(f"{transport}: {what[:300]}")


async def _pace(next_t: float, period: float) -> float:
    """Sleep until ``next_t``; the following send time (skipping missed ones, no bursts)."""
    now = time.monotonic()
    if next_t > now:
        await asyncio.sleep(next_t - now)
        return next_t + period
    return now + period


class _HttpConnection:
    """A minimal HTTP/1.1 keep-alive client for ``POST`` on loopback (the load generator must
    cost less CPU than the server it loads: httpx spends ~1 ms of CPU per request here)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self.writer.write(head + body)
            return await asyncio.wait_for(self._response(), timeout_s)
        except BaseException:
            self.close()
            raise

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _rest_conn(cfg: SoakConfig, url: str, idx: int, end: float, rec: _Recorder) -> None:
    import orjson

    rng = np.random.default_rng([cfg.seed, idx, 0])
    cell = f"soak-rest-{idx}"
    period = 1.0 / cfg.rate_per_conn if cfg.rate_per_conn > 0 else 0.0
    next_t = time.monotonic() + rng.uniform(0, period or 0.01)
    feedback: dict[int, float] | None = None
    slot = 0
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    conn = _HttpConnection(host, int(port))
    try:
        while time.monotonic() < end:
            if period:
                next_t = await _pace(next_t, period)
            body = _slot_body(cfg, cell, slot, rng, feedback)
            t0 = time.monotonic()
            try:
                status, content = await conn.post("/schedule", orjson.dumps(body), 10.0)
                t1 = time.monotonic()
                if status != 200:
                    rec.error("rest", f"HTTP {status}: {content[:300]!r}")
                else:
                    owner = orjson.loads(content)["owner"]
                    rec.ok("rest", t0, t1)
                    if slot % cfg.check_every == 0:
                        rec.checked += 1
                        if not _pag_ok(body, owner):
                            rec.error("rest", f"PAG-invalid decision for {cell} slot {slot}")
                    feedback = _delivered(body, owner)
            except Exception as exc:  # counted, the soak goes on (on a new connection)
                rec.error("rest", f"{type(exc).__name__}: {exc}")
            slot += 1
    finally:
        conn.close()


async def _grpc_stream(cfg: SoakConfig, target: str, idx: int, end: float, rec: _Recorder) -> None:
    import grpc

    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc

    rng = np.random.default_rng([cfg.seed, idx, 1])
    cell = f"soak-grpc-{idx}"
    period = 1.0 / cfg.rate_per_conn if cfg.rate_per_conn > 0 else 0.0
    next_t = time.monotonic() + rng.uniform(0, period or 0.01)
    feedback: dict[int, float] | None = None
    slot = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.SchedulerStub(channel).StreamSlots()
        try:
            while time.monotonic() < end:
                if period:
                    next_t = await _pace(next_t, period)
                body = _slot_body(cfg, cell, slot, rng, feedback)
                req = pb.SlotRequest(
                    cell_id=cell,
                    slot=slot,
                    preset=cfg.preset,
                    user_ids=[u["id"] for u in body["users"]],
                    resource_ids=[x["id"] for x in body["resources"]],
                    bandwidth_hz=[x["bandwidth_hz"] for x in body["resources"]],
                )
                if cfg.preset == "mac":
                    req.spectral_efficiency[:] = [u["spectral_efficiency"] for u in body["users"]]
                    req.buffer_bits[:] = [u["buffer_bits"] for u in body["users"]]
                else:
                    req.rx_power_dbm[:] = [u["rx_power_dbm"] for u in body["users"]]
                    req.available[:] = [x["available"] for x in body["resources"]]
                if cfg.policy:
                    req.policy = cfg.policy
                if feedback:
                    req.feedback.user_ids[:] = list(feedback)
                    req.feedback.delivered_bits[:] = list(feedback.values())
                t0 = time.monotonic()
                await call.write(req)
                msg = await call.read()
                t1 = time.monotonic()
                if msg is grpc.aio.EOF:
                    rec.error("grpc", f"stream of {cell} ended early")
                    return
                if msg.HasField("error"):
                    rec.error("grpc", f"{msg.error.code}: {msg.error.message}")
                else:
                    owner = [None if o < 0 else int(o) for o in msg.owner]
                    rec.ok("grpc", t0, t1)
                    if slot % cfg.check_every == 0:
                        rec.checked += 1
                        if not _pag_ok(body, owner):
                            rec.error("grpc", f"PAG-invalid decision for {cell} slot {slot}")
                    feedback = _delivered(body, owner)
                slot += 1
            await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            rec.error("grpc", f"{exc.code().name}: {exc.details()}")


async def _sample_rss(pid: int, end: float, interval: float, t_start: float, out: list[tuple[float, int]]) -> None:
    while time.monotonic() < end:
        out.append((time.monotonic() - t_start, rss_kib(pid)))
        await asyncio.sleep(interval)


def _stats(rec: _Recorder, transport: str, seconds: float) -> TransportStats:
    lat = np.asarray(rec.lat[transport])
    s = TransportStats(
        requests=rec.requests[transport],
        errors=rec.errors[transport],
        throughput_per_s=rec.requests[transport] / max(seconds, 1e-9),
    )
    if lat.size:
        s.p50_us, s.p99_us, s.p999_us = (float(v) for v in np.percentile(lat, [50, 99, 99.9]))
        s.max_us = float(lat.max())
    return s


async def _drive(cfg: SoakConfig, url: str, grpc_target: str | None, pid: int) -> SoakResult:
    t_start = time.monotonic()
    end = t_start + cfg.duration_s
    rec = _Recorder(t_start, cfg.warmup_s)
    rss: list[tuple[float, int]] = []
    fds0, threads0 = _fds(pid), _threads(pid)
    cpu0, own0 = _cpu_s(pid), time.process_time()
    tasks = [asyncio.create_task(_rest_conn(cfg, url, i, end, rec)) for i in range(cfg.connections)]
    if grpc_target and cfg.grpc_streams:
        tasks += [asyncio.create_task(_grpc_stream(cfg, grpc_target, i, end, rec)) for i in range(cfg.grpc_streams)]
    sampler = asyncio.create_task(_sample_rss(pid, end, cfg.rss_interval_s, t_start, rss))
    await asyncio.gather(*tasks)
    await sampler
    elapsed = time.monotonic() - t_start
    server_cpu, client_cpu = (_cpu_s(pid) - cpu0) / elapsed, (time.process_time() - own0) / elapsed
    await asyncio.sleep(0.5)  # let the server drop the closed connections before counting fds
    after = [kib for t, kib in rss if t >= cfg.warmup_s] or [kib for _, kib in rss]
    w = max(1, min(cfg.rss_window, len(after) // 3 or 1))
    first, last = statistics.median(after[:w]), statistics.median(after[-w:])
    return SoakResult(
        config=asdict(cfg),
        duration_s=elapsed,
        rest=_stats(rec, "rest", elapsed),
        grpc=_stats(rec, "grpc", elapsed),
        errors=sum(rec.errors.values()),
        error_samples=rec.samples,
        checked=rec.checked,
        rss_kib=rss,
        rss_start_kib=float(first),
        rss_end_kib=float(last),
        rss_drift=(last - first) / first,
        fds_start=fds0,
        fds_end=_fds(pid),
        threads_start=threads0,
        threads_end=_threads(pid),
        server_cpu=server_cpu,
        client_cpu=client_cpu,
    )


def run_soak(
    cfg: SoakConfig, *, url: str | None = None, grpc_target: str | None = None, pid: int | None = None
) -> SoakResult:
    """Run the soak. Without ``url`` a ``gnbsched serve`` process is started (and stopped) for it;
    with ``url`` the running service at ``url`` (and ``grpc_target``) is driven and ``pid`` names
    the server process whose memory is sampled."""
    if url is not None:
        if pid is None:
            raise ValueError("pid: the server process to sample is needed with url")
        return asyncio.run(_drive(cfg, url, grpc_target, pid))
    with ServeProcess(cfg.serve_args, grpc=cfg.grpc_streams > 0) as server:
        assert server.proc is not None
        target = f"127.0.0.1:{server.grpc_port}" if server.grpc_port else None
        return asyncio.run(_drive(cfg, f"http://127.0.0.1:{server.rest_port}", target, server.proc.pid))


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Soak flags (the ``--out`` / ``--seed`` / ``--quick`` of ``gnbsched bench`` are reused when present)."""
    d = SoakConfig()
    g = parser.add_argument_group("soak")
    g.add_argument(
        "--duration-s", type=float, default=None, help=f"load duration (default {d.duration_s:g}; --quick 15)"
    )
    g.add_argument(
        "--warmup-s", type=float, default=None, help=f"excluded from latency and memory (default {d.warmup_s:g})"
    )
    g.add_argument("--connections", type=int, default=d.connections, help="REST keep-alive connections")
    g.add_argument("--grpc-streams", type=int, default=d.grpc_streams, help="gRPC StreamSlots streams (0: none)")
    g.add_argument(
        "--rate-per-conn", type=float, default=d.rate_per_conn, help="slots/s per connection (0: closed loop)"
    )
    g.add_argument("--soak-preset", choices=["spectrum", "mac"], default=d.preset, help="slot preset")
    g.add_argument("--users", type=int, default=d.num_ue, help="users N per slot")
    g.add_argument("--resources", type=int, default=d.num_res, help="resources R per slot")
    g.add_argument("--soak-policy", default=None, help="policy requested (default: the service's)")
    g.add_argument("--rss-tolerance", type=float, default=0.05, help="exit 1 when |RSS drift| exceeds it")
    g.add_argument("--serve-arg", action="append", default=[], help="extra `gnbsched serve` flag (repeatable)")


def run(args: argparse.Namespace) -> int:
    quick = bool(getattr(args, "quick", False))
    duration = args.duration_s if args.duration_s is not None else (15.0 if quick else 60.0)
    warmup = args.warmup_s if args.warmup_s is not None else min(10.0, duration / 4)
    cfg = SoakConfig(
        duration_s=duration,
        warmup_s=warmup,
        connections=args.connections,
        grpc_streams=args.grpc_streams,
        rate_per_conn=args.rate_per_conn,
        preset=args.soak_preset,
        num_ue=args.users,
        num_res=args.resources,
        policy=args.soak_policy,
        seed=int(getattr(args, "seed", 0) or 0),
        serve_args=list(args.serve_arg),
    )
    result = run_soak(cfg)
    print(result.summary(), flush=True)
    out = getattr(args, "out", None)
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "soak.json").write_text(json.dumps(asdict(result), indent=1, default=float))
        print(f"soak: wrote {path / 'soak.json'}")
    ok = result.errors == 0 and abs(result.rss_drift) <= args.rss_tolerance
    if not ok:
        print(
            f"soak: FAILED (errors {result.errors}: {result.error_samples}; RSS drift {result.rss_drift:+.2%} "
            f"vs tolerance {args.rss_tolerance:.0%})",
            file=sys.stderr,
        )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench.soak", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--out", default=None, help="directory for soak.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60 s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
