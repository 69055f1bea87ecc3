"""Fixtures of the deployment tests. ``live_service``: a real ``gnbsched serve`` (with a Redis it
loses mid-run and a fake LLM teacher) driven until it exports every metric family the
dashboards and alert rules use; shared by the Grafana and Prometheus tests."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import (
    DEPLOY,
    REPO,
    LiveService,
    fake_teacher,
    grpc_schedule,
    mac_request,
    parse_exposition,
    post_schedule,
    query,
    scrape,
    shipped_students,
    spectrum_request,
    tool,
)
from testkit import RedisProcess, ServeProcess, ServerProcess, free_port


@pytest.fixture(scope="session")
def live_service() -> Iterator[LiveService]:
    """``gnbsched serve`` with Redis state and a (fake) LLM teacher, driven through REST and
    gRPC until every metric family has samples, then left running (the Prometheus integration
    test scrapes it):

    * mac slots with the default policy (REST and gRPC) and spectrum slots with km: ok;
    * one slot per shipped ONNX student (models/student-<preset>/<version>): its version in
      ``gnbsched_policy_info``;
    * a spectrum slot asking the teacher, which answers a PAG-violating DCM: violations, a
      repair, valid-before-repair stays below decisions;
    * a spectrum slot with km and a 1 ns deadline: served by the greedy fallback;
    * a malformed request: rejected;
    * a retried slot: answered from its stored decision (``gnbsched_state_events_total{event="replayed"}``);
    * Redis stopped, then more slots: refused as retryable (503), state-store errors and
      ``gnbsched_state_store_up 0``.
    """
    tmp = Path(tempfile.mkdtemp(prefix="gnbsched-deploy-"))
    redis = RedisProcess(dir=tmp, log_path=tmp / "redis.log").start()
    with fake_teacher() as teacher_url:
        env = dict(
            GNBSCHED_STATE_URL=redis.url,
            GNBSCHED_MODEL_DIR=str(REPO / "models"),
            GNBSCHED_FALLBACKS='["greedy"]',
            GNBSCHED_SEED="7",
            GNBSCHED_TEACHER_URL=teacher_url,
            GNBSCHED_TEACHER_DIALECT="plain",
            GNBSCHED_TEACHER_MODEL="fake-teacher",
            GNBSCHED_TEACHER_TIMEOUT_S="10",
        )
        # the installed console script, configured through the environment only (host and ports too)
        proc = ServeProcess(
            env=env,
            grpc=True,
            command=[tool("gnbsched"), "serve"],
            settings_in_env=True,
            log_path=tmp / "gnbsched.log",
            cwd=tmp,
        )
        try:
            base = proc.url
            proc.wait_ready(path="/readyz")
            for slot in range(3):
                post_schedule(base, mac_request("cell-mac", slot))
                post_schedule(base, spectrum_request("cell-lsa", slot))
            for slot in range(3, 5):
                grpc_schedule(proc.grpc_target, mac_request("cell-mac", slot))
            for preset, _version in shipped_students():
                make = mac_request if preset == "mac" else spectrum_request
                d = post_schedule(base, make(f"cell-student-{preset}", 0, policy="student"))
                assert d["policy"] == "student", f"the shipped {preset} student did not serve: {d}"
            d = post_schedule(base, spectrum_request("cell-teacher", 0, policy="teacher"))
            assert d["policy"] == "teacher" and d["valid_before_repair"] is False, d
            d = post_schedule(base, spectrum_request("cell-lsa", 3, policy="km", deadline_ms=1e-6))
            assert d["policy"] == "greedy" and d.get("fallback_reason") == "deadline", d
            post_schedule(base, {"cell_id": "cell-bad", "slot": 0, "preset": "mac", "users": []}, expect=422)
            again = post_schedule(base, mac_request("cell-mac", 2))  # a client retry
            assert again["replayed"] is True, again
            redis.stop(timeout_s=5)
            for slot in range(5, 7):
                post_schedule(base, mac_request("cell-mac", slot), expect=503)
            text = scrape(base)
            samples, families = parse_exposition(text)
            yield LiveService(base, proc.rest_port, proc.grpc_port, text, samples, families, proc.log_path, proc.proc)
        finally:
            proc.close(timeout_s=35)
            redis.close(timeout_s=5)
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def prometheus(live_service: LiveService) -> Iterator[str]:
    """A real Prometheus on loopback (free port, temporary storage, 1 s scrape and evaluation)
    with deploy/prometheus/prometheus.yml's gnbsched job pointed at ``live_service`` and the
    repo's alert rules. Yields its base URL once it holds a scrape with decisions in it."""
    import yaml

    prom_dir = DEPLOY / "prometheus"
    tmp = Path(tempfile.mkdtemp(prefix="gnbsched-prometheus-"))
    cfg = yaml.safe_load((prom_dir / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(prom_dir / f) for f in cfg["rule_files"]]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "gnbsched")
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{live_service.rest_port}"]
    cfg["scrape_configs"] = [job]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = ServerProcess(
        [
            tool("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        log_path=tmp / "prometheus.log",
        cwd=tmp,
    ).start()
    try:
        proc.wait_http(f"{base}/-/ready", timeout_s=30)
        deadline = time.monotonic() + 30
        while not query(base, "gnbsched_decisions_total"):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Prometheus scraped no gnbsched_decisions_total within 30 s:\n"
                    f"{(tmp / 'prometheus.log').read_text()[-2000:]}",
                    pytrace=False,
                )
            time.sleep(0.5)
        yield base
    finally:
        proc.close(timeout_s=10)
        shutil.rmtree(tmp, ignore_errors=True)
