"""Hostile and careless traffic is refused before it costs anything; healthy clients do not notice.

Real ``gnbsched serve`` processes; the hostile clients (``hostile_clients.py``) run in a process
of their own so that their CPU and GIL use does not land in the process that measures the
healthy client's latency.

REST (``service.api.rest.protocol``): a 48 MiB header (one value, or many lines, fast or slow)
gets 431, slow-loris connections and slow bodies 408, bodies above ``max_body_bytes`` 413 (from
the connection guard, before the application), a connection beyond ``max_connections`` 503 --
each closed within the configured timeouts -- while a healthy client's ``POST /schedule`` p99
stays within 2x its solo p99, measured in the same test. A client that goes away
mid-body is a DEBUG line and ``gnbsched_client_disconnects_total``, never an ERROR traceback.

gRPC (``service.api.grpc.server`` options): streams beyond ``grpc_max_concurrent_streams`` on one
connection are queued by the client until a stream ends (HTTP/2 SETTINGS); RPCs beyond
``grpc_max_concurrent_rpcs`` get RESOURCE_EXHAUSTED; metadata above ``grpc_max_metadata_bytes``
gets RESOURCE_EXHAUSTED; a connection that never completes the HTTP/2 handshake is closed
within ``header_timeout_s``; a client that gives up on a call in flight is a DEBUG line and
``gnbsched_client_disconnects_total{transport="grpc"}``.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from testkit import ServeProcess

from service.api.grpc.convert import slot_to_request
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb

from .hostile_clients import Outcome, connect, read_until_closed
from .support import FakeTeacher, mac_body, metric_value, slot_of

pytestmark = pytest.mark.timeout(180)

HOSTILE = Path(__file__).with_name("hostile_clients.py")
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
#: a hostile connection is closed within its timeout plus this (a loaded CI machine)
SLACK_S = 1.5
#: healthy requests per measurement, and the pause between two
HEALTHY_REQUESTS = 400
HEALTHY_PAUSE_S = 0.005
SCHEDULE = "/gnbsched.v1.Scheduler/Schedule"
STREAM = "/gnbsched.v1.Scheduler/StreamSlots"


def _bad_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]


class Healthy:
    """A well-behaved client: sequential small ``POST /schedule`` on one kept-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.slot = 0

    def measure(self, n: int, pause_s: float = HEALTHY_PAUSE_S) -> list[float]:
        # a fresh connection per window: the server closes a connection idle beyond its keep-alive
        # timeout (5 s), as while the hostile clients start on a loaded machine
        self.conn.close()
        latencies = []
        for _ in range(n):
            body = json.dumps(mac_body("healthy", self.slot)).encode()
            self.slot += 1
            t0 = time.perf_counter()
            self.conn.request("POST", "/schedule", body, {"content-type": "application/json"})
            resp = self.conn.getresponse()
            resp_data = resp.read()
            latencies.append(time.perf_counter() - t0)
            assert resp.status == 200, (resp.status, resp_data[:300])
            if pause_s:
                time.sleep(pause_s)
        return latencies

    def close(self) -> None:
        self.conn.close()


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def p50(latencies: list[float]) -> float:
    return sorted(latencies)[len(latencies) // 2]


def _start_attack(port: int, plan: dict[str, float]) -> subprocess.Popen[str]:
    # the attackers run at the lowest CPU priority: on this one machine they stand for remote
    # clients, whose own CPU is not the server's to pay; the server's cost of refusing them is
    proc = subprocess.Popen(
        [sys.executable, str(HOSTILE), str(port), json.dumps(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.nice(19),
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "started":
        proc.kill()
        raise AssertionError(f"the hostile clients did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def _attack_results(proc: subprocess.Popen[str]) -> dict[str, list[dict[str, Any]]]:
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()  # not communicate(): "started" was read through this same buffer
    err = proc.stderr.read()
    assert proc.wait(30) == 0, err[-3000:]
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for outcome in json.loads(out.splitlines()[-1]):
        by_kind[outcome["kind"]].append(outcome)
    return by_kind


def _assert_refused(outcomes: list[dict[str, Any]], statuses: set[int], within_s: float, what: str) -> None:
    assert outcomes, f"no {what} connection ran"
    for o in outcomes:
        assert o["closed"], f"{what}: the server kept the connection open: {o}"
        assert o["elapsed_s"] <= within_s, f"{what}: closed after {o['elapsed_s']:.2f} s > {within_s} s: {o}"
        assert o["status"] is None or o["status"] in statuses, f"{what}: answered {o['status']}: {o}"
    answered = sum(o["status"] in statuses for o in outcomes)
    assert answered >= max(1, len(outcomes) // 2), f"{what}: most should read the status {statuses}: {outcomes[:5]}"


#: the attack of the latency test: connections per attack (repeated for ``duration_s``), slow loris
ATTACK_PLAN: dict[str, float] = {
    "duration_s": 2.5,
    "pause_s": 0.1,
    "slow_loris": 100,
    "header_flood": 2,
    "header_lines_flood": 2,
    "slow_header_flood": 1,
    "overlong_body": 1,
    "chunked_flood": 1,
    "declared_huge_body": 1,
    "slow_body": 1,
    "disconnect_mid_body": 2,
}
#: (solo, attacked) measurement pairs tried before the latency comparison fails: a loaded CI
#: machine may slow one window for reasons of its own; a server that stalls fails every pair.
#: On 2 cores shared by the server, the healthy client and ~300 hostile connections, the p99
#: ratio of one pair (the 4th slowest of 400 requests) was 1.4–2.9 over 11 pairs (the old code
#: alike): about one pair in two passes, so six pairs make a false failure rare (~3 %)
ATTEMPTS = 6


def _assert_attack_refused(results: dict[str, list[dict[str, Any]]]) -> None:
    head_within = HEADER_TIMEOUT_S + SLACK_S
    body_within = BODY_TIMEOUT_S + SLACK_S
    _assert_refused(results["header_flood"], {431}, head_within, "48 MiB header value")
    _assert_refused(results["header_lines_flood"], {431}, head_within, "48 MiB of header lines")
    _assert_refused(results["slow_header_flood"], {431, 408}, head_within, "slowly growing header")
    _assert_refused(results["slow_loris"], {408}, head_within, "slow loris")
    assert len(results["slow_loris"]) == ATTACK_PLAN["slow_loris"]
    for o in results["slow_loris"]:  # closed by the header timeout, not before
        assert o["elapsed_s"] >= HEADER_TIMEOUT_S - 0.5, o
    _assert_refused(results["chunked_flood"], {413}, body_within, "48 MiB chunked body")
    _assert_refused(results["declared_huge_body"], {413}, body_within, "declared 100 MiB body")
    _assert_refused(results["slow_body"], {408}, body_within, "slow body")
    for o in results["overlong_body"]:  # its first request is answered, the bytes after it are refused
        assert o["closed"] and o["elapsed_s"] <= body_within, o
        assert set(o["statuses"]) <= {400, 408, 413, 431}, o


def test_rest_hostile_traffic_is_refused_while_a_healthy_client_keeps_its_latency(
    serve_process: Callable[..., ServeProcess],
) -> None:
    svc = serve_process(
        "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S), "--log-level", "debug"
    ).wait_ready()
    healthy = Healthy(svc.rest_port)
    totals: dict[str, int] = defaultdict(int)
    figures = []
    try:
        healthy.measure(100, pause_s=0)  # warm up: policy loaded, cell created
        for _ in range(ATTEMPTS):
            solo = healthy.measure(HEALTHY_REQUESTS)
            attack = _start_attack(svc.rest_port, ATTACK_PLAN)
            try:
                attacked = healthy.measure(HEALTHY_REQUESTS)
            finally:
                results = _attack_results(attack)
            _assert_attack_refused(results)
            for kind, outcomes in results.items():
                totals[kind] += len(outcomes)
            figures.append((p50(solo), p99(solo), p50(attacked), p99(attacked)))
            print(
                f"\nhealthy POST /schedule: solo p50 {p50(solo) * 1e3:.2f} ms p99 {p99(solo) * 1e3:.2f} ms; "
                f"under attack p50 {p50(attacked) * 1e3:.2f} ms p99 {p99(attacked) * 1e3:.2f} ms; "
                f"hostile connections { ({k: len(v) for k, v in results.items()}) }"
            )
            if p99(attacked) <= 2 * p99(solo):
                break
        else:
            pytest.fail(
                "the attack slowed the healthy client in every attempt (p50 / p99 solo, p50 / p99 "
                "attacked, ms): " + "; ".join(" ".join(f"{v * 1e3:.2f}" for v in f) for f in figures)
            )
        assert healthy.measure(20, pause_s=0)  # and it still serves afterwards
    finally:
        healthy.close()

    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    refused = {
        reason: metric_value(metrics, "gnbsched_connections_refused_total", transport="rest", reason=reason)
        for reason in ("header_too_large", "header_timeout", "body_too_large", "body_timeout")
    }
    assert refused["header_too_large"] >= totals["header_flood"] + totals["header_lines_flood"], refused
    assert refused["header_timeout"] >= totals["slow_loris"], refused
    assert refused["body_timeout"] >= totals["slow_body"], refused
    assert refused["body_too_large"] >= totals["chunked_flood"] + totals["declared_huge_body"], refused
    assert metric_value(metrics, "gnbsched_client_disconnects_total", transport="rest") >= totals["disconnect_mid_body"]

    log = svc.output()
    assert not _bad_lines(log), "\n".join(_bad_lines(log)[:20])
    assert "went away during its body" in log  # the disconnect is a DEBUG line
    assert svc.running


def test_rest_connections_beyond_the_limit_get_503_and_are_closed(serve_process: Callable[..., ServeProcess]) -> None:
    limit = 8
    svc = serve_process("--max-connections", str(limit), "--header-timeout-s", "10").wait_ready()
    healthy = Healthy(svc.rest_port)
    idle: list[socket.socket] = []
    try:
        healthy.measure(5, pause_s=0)  # one connection held
        idle = [connect(svc.rest_port) for _ in range(limit - 1)]
        time.sleep(0.5)  # accepted by the server
        for _ in range(3):
            t0 = time.monotonic()
            with connect(svc.rest_port) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                out = read_until_closed(extra, Outcome("extra"), t0, t0 + 5)
            assert out.closed and out.status == 503 and out.elapsed_s < 2.0, out
        healthy.measure(5, pause_s=0)  # the connection held still serves
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(svc.url + "/healthz", timeout=5).status_code == 200  # room again
    healthy.close()
    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    assert (
        metric_value(metrics, "gnbsched_connections_refused_total", transport="rest", reason="too_many_connections")
        >= 3
    )
    assert not _bad_lines(svc.output())


def test_rest_bodies_above_the_limit_are_refused_by_the_guard_before_the_application(
    serve_process: Callable[..., ServeProcess],
) -> None:
    """A declared ``Content-Length`` above ``max_body_bytes`` is answered 413 before any body byte
    is read; a chunked body at the first byte beyond the limit. The answer is the service's JSON
    error body, the connection is closed, and the application never sees the request."""
    limit = 20_000
    svc = serve_process("--max-body-bytes", str(limit)).wait_ready()
    head = b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunk = b"[" * 4096
    attempts = {
        "declared": head + b"Content-Length: %d\r\n\r\n" % (limit + 1),
        "chunked": head
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (limit // len(chunk) + 2),
    }
    for name, data in attempts.items():
        t0 = time.monotonic()
        with connect(svc.rest_port) as sock:
            sock.sendall(data)
            received = bytearray()
            out = read_until_closed(sock, Outcome(name), t0, t0 + 5, received)
        assert out.closed and out.status == 413 and out.elapsed_s < 2.0, out
        body = json.loads(bytes(received).split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "body_too_large" and body["field"] == "body", body
    within = json.dumps(mac_body("fits", 0)).encode()
    assert len(within) < limit
    r = httpx.post(svc.url + "/schedule", content=within, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text
    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    assert metric_value(metrics, "gnbsched_connections_refused_total", transport="rest", reason="body_too_large") == 2
    assert "gnbsched_requests_total" in metrics and 'outcome="rejected"' not in metrics  # never reached the app


def test_rest_client_gone_before_the_answer_is_not_an_error(serve_process: Callable[..., ServeProcess]) -> None:
    """Clients that go away mid-headers, mid-body or before their answer: DEBUG lines, the metric."""
    svc = serve_process("--log-level", "debug").wait_ready()
    body = json.dumps(mac_body("gone", 0, n=512, r=256)).encode()
    for _ in range(5):
        with connect(svc.rest_port) as sock:  # whole request, gone before the answer
            sock.sendall(
                b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
        with connect(svc.rest_port) as sock:  # half the body
            sock.sendall(
                b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2]
            )
            time.sleep(0.05)
        with connect(svc.rest_port) as sock:  # half the headers
            sock.sendall(b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-")
            time.sleep(0.05)
    time.sleep(0.5)
    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    assert metric_value(metrics, "gnbsched_client_disconnects_total", transport="rest") >= 10
    log = svc.output()
    assert not _bad_lines(log), "\n".join(_bad_lines(log)[:20])
    assert "went away during its body" in log and "went away during its headers" in log
    assert Healthy(svc.rest_port).measure(3, pause_s=0)


# ----------------------------------------------------------------------------- gRPC


def _request(cell: str, slot: int = 0) -> pb.SlotRequest:
    return slot_to_request(slot_of(mac_body(cell, slot)))


class _Stream:
    """One ``StreamSlots`` call fed from a queue; ``first`` holds the first answer (or error)."""

    def __init__(self, channel: grpc.Channel, cell: str) -> None:
        self.requests: queue.Queue[pb.SlotRequest | None] = queue.Queue()
        method = channel.stream_stream(
            STREAM,
            request_serializer=pb.SlotRequest.SerializeToString,
            response_deserializer=pb.SlotDecision.FromString,
        )
        self.call = method(iter(self.requests.get, None))
        self.first: queue.Queue[object] = queue.Queue()
        self.requests.put(_request(cell))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.first.put(next(self.call))
        except grpc.RpcError as exc:
            self.first.put(exc)

    def answer(self, timeout_s: float) -> object:
        try:
            return self.first.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def end(self) -> None:
        self.requests.put(None)


def test_grpc_streams_beyond_the_per_connection_limit_wait_for_a_free_stream(
    serve_process: Callable[..., ServeProcess],
) -> None:
    """HTTP/2 MAX_CONCURRENT_STREAMS: the server never serves more than the limit at once on one
    connection; a stream beyond it is queued by the client until one ends (grpc does, once it has
    the server's SETTINGS) or, when it was opened before, refused (REFUSED_STREAM: UNAVAILABLE,
    never processed, safe to resend) — never served beside the others."""
    limit = 2
    svc = serve_process("--grpc-max-concurrent-streams", str(limit), grpc=True, rest=True).wait_ready()

    def refused(answer: object) -> bool:
        return isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.UNAVAILABLE

    with grpc.insecure_channel(svc.grpc_target) as channel:
        unary = channel.unary_unary(
            SCHEDULE,
            request_serializer=pb.SlotRequest.SerializeToString,
            response_deserializer=pb.SlotDecision.FromString,
        )
        unary(_request("warm"), timeout=10)  # the connection is up: the server's SETTINGS are known
        streams = [_Stream(channel, f"s{k}") for k in range(limit + 2)]
        first = [s.answer(10) for s in streams[:limit]]
        assert all(isinstance(a, pb.SlotDecision) for a in first), first
        waiting = [s.answer(1.0) for s in streams[limit:]]
        assert all(a is None or refused(a) for a in waiting), waiting  # queued or refused, not served
        for s in streams[:limit]:
            s.end()
        later = [a if a is not None else s.answer(10) for a, s in zip(waiting, streams[limit:], strict=True)]
        assert all(isinstance(a, pb.SlotDecision) or refused(a) for a in later), later
        assert any(isinstance(a, pb.SlotDecision) for a in later) or all(refused(a) for a in waiting), later
        for s in streams[limit:]:
            s.end()
    assert not _bad_lines(svc.output())


def test_grpc_rpcs_beyond_the_server_limit_get_resource_exhausted(serve_process: Callable[..., ServeProcess]) -> None:
    limit = 3
    svc = serve_process("--grpc-max-concurrent-rpcs", str(limit), grpc=True, rest=True).wait_ready()
    channels = [
        grpc.insecure_channel(svc.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(limit + 3)
    ]
    try:
        held = [_Stream(channels[k], f"h{k}") for k in range(limit)]
        assert all(isinstance(s.answer(10), pb.SlotDecision) for s in held)
        extra = [_Stream(channels[limit + k], f"x{k}") for k in range(3)]
        answers = [s.answer(10) for s in extra]
        assert all(isinstance(a, grpc.RpcError) and a.code() is grpc.StatusCode.RESOURCE_EXHAUSTED for a in answers), (
            answers
        )
        for s in held:
            s.end()
        time.sleep(0.5)
        after = _Stream(channels[-1], "after")
        assert isinstance(after.answer(10), pb.SlotDecision)  # room again
        after.end()
    finally:
        for ch in channels:
            ch.close()
    assert not _bad_lines(svc.output())


def test_grpc_oversized_metadata_is_refused(serve_process: Callable[..., ServeProcess]) -> None:
    svc = serve_process("--grpc-max-metadata-bytes", "4096", grpc=True, rest=True).wait_ready()
    with grpc.insecure_channel(svc.grpc_target) as channel:
        unary = channel.unary_unary(
            SCHEDULE,
            request_serializer=pb.SlotRequest.SerializeToString,
            response_deserializer=pb.SlotDecision.FromString,
        )
        assert unary(_request("md"), metadata=[("x-small", "a" * 512)], timeout=10).owner
        for size in (8 * 1024, 1024 * 1024):
            with pytest.raises(grpc.RpcError) as info:
                unary(_request("md", 1), metadata=[("x-pad", "a" * size)], timeout=10)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
        assert unary(_request("md", 1), timeout=10).owner  # the connection still serves
    assert not _bad_lines(svc.output())


def test_grpc_connection_that_never_completes_the_handshake_is_closed(
    serve_process: Callable[..., ServeProcess],
) -> None:
    """Slow loris on the gRPC port: the HTTP/2 preface and SETTINGS within ``header_timeout_s``."""
    timeout_s = 1.0
    svc = serve_process("--header-timeout-s", str(timeout_s), grpc=True, rest=True).wait_ready()
    outcomes = []
    for partial in (b"", b"PRI * HTTP/2.0\r\n"):
        t0 = time.monotonic()
        with connect(svc.grpc_port) as sock:
            sock.sendall(partial)
            outcomes.append(read_until_closed(sock, Outcome("grpc_handshake"), t0, t0 + 10))
    for o in outcomes:
        assert o.closed and o.elapsed_s <= timeout_s + SLACK_S, o
    with grpc.insecure_channel(svc.grpc_target) as channel:
        unary = channel.unary_unary(
            SCHEDULE,
            request_serializer=pb.SlotRequest.SerializeToString,
            response_deserializer=pb.SlotDecision.FromString,
        )
        assert unary(_request("hs"), timeout=10).owner


def test_grpc_client_gone_before_its_answer_is_not_an_error(
    serve_process: Callable[..., ServeProcess], fake_teacher: FakeTeacher
) -> None:
    """Calls waiting on a hanging (blocking I/O) teacher whose client gives up: DEBUG lines and the
    gRPC disconnect metric, no error; the REST twin is counted by the connection guard."""
    fake_teacher.mode = "hang"
    env = {
        "GNBSCHED_TEACHER_URL": fake_teacher.url,
        "GNBSCHED_TEACHER_TOKENIZER": "estimate",
        "GNBSCHED_TEACHER_TIMEOUT_S": "30",
    }
    svc = serve_process("--log-level", "debug", "--fallbacks", "greedy", env=env, grpc=True, rest=True).wait_ready()
    with grpc.insecure_channel(svc.grpc_target) as channel:
        unary = channel.unary_unary(
            SCHEDULE,
            request_serializer=pb.SlotRequest.SerializeToString,
            response_deserializer=pb.SlotDecision.FromString,
        )
        request = _request("gone")
        request.policy = "teacher"
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                unary(request, timeout=0.5)  # the client's deadline passes: the server cancels the call
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        stream = _Stream(channel, "gone-stream")
        stream.requests.put(request)  # in flight on the teacher ...
        time.sleep(0.5)
        stream.call.cancel()  # ... when the client gives up
    body = json.dumps(mac_body("gone-rest", 0, policy="teacher")).encode()
    with connect(svc.rest_port) as sock:
        sock.sendall(
            b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while True:
        metrics = httpx.get(svc.url + "/metrics", timeout=10).text
        grpc_gone = metric_value(metrics, "gnbsched_client_disconnects_total", transport="grpc")
        rest_gone = metric_value(metrics, "gnbsched_client_disconnects_total", transport="rest")
        if (grpc_gone >= 3 and rest_gone >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert grpc_gone >= 3 and rest_gone >= 1, (grpc_gone, rest_gone)
    fake_teacher.release.set()
    log = svc.output()
    assert not _bad_lines(log), "\n".join(_bad_lines(log)[:20])
    assert "went away before its answer" in log
