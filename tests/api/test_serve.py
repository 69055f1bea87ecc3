"""``gnbsched serve``: embedded defaults, environment and flags, settings printed once, REST and
gRPC from one process, graceful SIGTERM, and metrics aggregated over two uvicorn workers."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.api import serve
from service.cli import build_parser
from service.config import Settings

DOC = {
    "cell_id": "serve",
    "slot": 0,
    "preset": "spectrum",
    "users": [{"id": 1, "rx_power_dbm": -70.0}, {"id": 2, "rx_power_dbm": -90.0}],
    "resources": [{"id": 10, "bandwidth_hz": 5e6}, {"id": 11, "bandwidth_hz": 1e6, "available": False}],
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("GNBSCHED_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_no_arguments_serve_the_embedded_defaults(clean_env) -> None:
    s = serve.settings_from_args(_args())
    assert (s.host, s.rest_port, s.grpc_port, s.workers) == ("127.0.0.1", 8000, 50051, 0)
    assert s.worker_count() == 1  # in-process state: one process
    assert s.state_url == "memory://"
    embedded = {name: f.default for name, f in Settings.model_fields.items()}
    assert (s.default_policy("spectrum"), s.default_policy("mac")) == (
        embedded["default_policy_spectrum"],
        embedded["default_policy_mac"],
    )


def test_flags_override_the_environment(clean_env) -> None:
    clean_env.setenv("GNBSCHED_REST_PORT", "9000")
    clean_env.setenv("GNBSCHED_SEED", "7")
    clean_env.setenv("GNBSCHED_FALLBACKS", '["rr"]')
    s = serve.settings_from_args(
        _args(
            "--rest-port",
            "9100",
            "--policy",
            "rr",
            "--fallbacks",
            "greedy, km",
            "--state-url",
            "redis://10.0.0.1:6379/2",
            "--deadline-ms",
            "2.5",
            "--max-users",
            "100",
            "--preload",
            "km",
        )
    )
    assert s.rest_port == 9100 and s.seed == 7
    assert s.fallbacks == ["greedy", "km"]
    assert (s.default_policy_spectrum, s.default_policy_mac) == ("rr", "rr")
    assert s.state_url == "redis://10.0.0.1:6379/2" and s.deadline_ms == 2.5
    assert s.max_users == 100 and s.preload_policies == ["km"]
    assert serve.settings_from_args(_args("--policy-mac", "max_weight")).default_policy_mac == "max_weight"


def test_exported_settings_rebuild_the_same_settings_in_a_worker(clean_env) -> None:
    s = serve.settings_from_args(
        _args(
            "--rest-port",
            "9200",
            "--fallbacks",
            "greedy,rr",
            "--deadline-ms",
            "3",
            "--preload",
            "km,pf",
            "--workers",
            "2",
        )
    )
    serve.export_settings(s)
    try:
        assert Settings() == s
    finally:
        for key in list(os.environ):
            if key.startswith("GNBSCHED_"):
                del os.environ[key]


def test_printed_settings_hide_the_redis_password() -> None:
    assert serve.redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert serve.redact_url("redis://user:s3cret@redis:6379/0") == "redis://user:***@redis:6379/0"
    assert serve.redact_url("memory://") == "memory://"


def test_bad_settings_and_nothing_to_serve_exit_2(clean_env, capsys) -> None:
    assert serve.run(_args("--rest-port", "0", "--grpc-port", "0")) == 2
    assert "nothing to serve" in capsys.readouterr().err
    clean_env.setenv("GNBSCHED_MAX_USERS", "many")
    assert serve.run(_args()) == 2
    assert "max_users" in capsys.readouterr().err


def test_serve_prints_settings_once_serves_rest_and_grpc_and_stops_on_sigterm(serve_process) -> None:
    proc = serve_process("--policy-spectrum", "greedy", "--seed", "3", grpc=True).wait_ready()
    grpc_port = proc.grpc_port
    with httpx.Client(base_url=proc.url, timeout=10) as c:
        body = c.post("/schedule", content=orjson.dumps(DOC)).json()
        assert body["policy"] == "greedy" and body["owner"] == [1, None]
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["grpc"] == f"127.0.0.1:{grpc_port}"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    out = proc.stop(signal.SIGTERM)
    assert proc.proc.returncode == 0, out
    printed = [line for line in out.splitlines() if line.startswith("gnbsched serve: {")]
    assert len(printed) == 1, out
    settings = json.loads(printed[0].removeprefix("gnbsched serve: "))
    assert settings["rest_port"] == proc.rest_port and settings["grpc_port"] == grpc_port
    assert settings["default_policy_spectrum"] == "greedy" and settings["seed"] == 3
    assert "Traceback" not in out


def _total(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_two_workers_share_one_metrics_view(serve_process, promtool_check) -> None:
    # the policy is pinned: the per-policy counts below are about km, whatever the default
    proc = serve_process("--grpc-port", "0", "--workers", "2", "--policy-spectrum", "km").wait_ready()
    requests = 24
    for slot in range(requests):  # a new connection each: the kernel spreads them over the workers
        with httpx.Client(base_url=proc.url, timeout=10) as c:
            assert c.post("/schedule", content=orjson.dumps({**DOC, "slot": slot})).status_code == 200
    with httpx.Client(base_url=proc.url, timeout=10) as c:
        assert c.post("/schedule", content=b"{broken").status_code == 400
    scrapes: dict[int, str] = {}
    for _ in range(200):
        with httpx.Client(base_url=proc.url, timeout=10) as c:  # one connection: one worker
            pid = c.get("/healthz").json()["pid"]
            scrapes[pid] = c.get("/metrics").text
        if len(scrapes) == 2:
            break
    assert len(scrapes) == 2, "the second worker never answered"
    for pid, text in scrapes.items():  # whichever worker answers, it reports every worker's counts
        assert _total(text, "gnbsched_requests_total", outcome="ok", policy="km") == requests, pid
        assert _total(text, "gnbsched_requests_total", outcome="rejected") == 1, pid
        assert _total(text, "gnbsched_request_seconds_count", transport="rest") == requests, pid
        assert _total(text, "gnbsched_decisions_total", policy="km") == requests, pid
        assert _total(text, "gnbsched_state_store_up") == 1, pid
        promtool_check(text)
    out = proc.stop(signal.SIGTERM)
    assert proc.proc.returncode == 0, out
    assert sum(line.startswith("gnbsched serve: {") for line in out.splitlines()) == 1


def test_grpc_only_when_rest_is_disabled(serve_process) -> None:
    proc = serve_process(grpc=True, rest=False)
    grpc_port = proc.grpc_port

    def serving() -> bool:
        assert proc.proc.poll() is None, proc.stop()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    deadline = time.monotonic() + 60
    while not serving():
        assert time.monotonic() < deadline, "gRPC never became SERVING"
        time.sleep(0.1)
    out = proc.stop(signal.SIGTERM)
    assert proc.proc.returncode == 0, out
    assert '"rest_port": 0' in out
