"""Artifacts for the reliability tests: /proc probes of a server process, a fake
OpenAI-compatible teacher that hangs or answers garbage, a PKI made with ``cryptography``, ONNX
student models made with ``onnx.helper`` (valid, corrupt, mismatched), request bodies and the PAG
check of a response. The ``gnbsched serve`` and ``redis-server`` processes come from ``testkit``
(``ServeProcess``, ``RedisProcess``).

Every server binds 127.0.0.1 on a free port; every loop here is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from testkit import REPO  # noqa: F401  (test_faults imports it from here)

from service.api.contract import Limits
from service.api.rest.codec import decode_schedule
from service.pag.checks import check
from service.types import SlotState

# ----------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


def tcp_connections_to(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (server side; /proc/net/tcp and
    tcp6: gRPC may serve IPv4 through a dual-stack socket)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, state = parts[1], parts[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":  # 01 = ESTABLISHED
                count += 1
    return count


# ----------------------------------------------------------------------------- fake teacher


@dataclass
class FakeTeacher:
    """An OpenAI-compatible ``/v1/chat/completions`` on loopback whose behaviour tests switch:

    ``mode`` = "hang" (never answers until released), "text" (200 with ``text`` as the
    completion content), "raw" (200 with ``raw`` bytes as the HTTP body), "status" (HTTP
    ``status``), "reset" (closes the connection without answering); ``delay_s`` before any answer.
    """

    mode: str = "text"
    text: str = '{"owner": []}'
    raw: bytes = b"not json"
    status: int = 500
    delay_s: float = 0.0
    requests: int = 0

    def __post_init__(self) -> None:
        fake = self
        self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                fake.requests += 1
                if fake.delay_s:
                    fake.release.wait(fake.delay_s)
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"detail": "Not Found"}')
                if fake.mode == "hang":
                    fake.release.wait(120)
                    self.close_connection = True
                    return None
                if fake.mode == "reset":
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if fake.mode == "status":
                    return self._send(fake.status, b'{"error": {"message": "fake failure"}}')
                if fake.mode == "raw":
                    return self._send(200, fake.raw)
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "model": "fake",
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": fake.text}}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                }
                return self._send(200, json.dumps(payload).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------- PKI


@dataclass
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1 / localhost, a client certificate
    signed by the CA and a rogue client certificate signed by another CA."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def make_pki(directory: Path) -> Pki:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str):
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(k, hashes.SHA256())
        )
        return k, cert

    def leaf(cn: str, issuer_key, issuer_cert, server: bool):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer_cert.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return k, b.sign(issuer_key, hashes.SHA256())

    def write(stem: str, k, cert) -> tuple[Path, Path]:
        cp, kp = directory / f"{stem}.crt", directory / f"{stem}.key"
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return cp, kp

    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = ca("gnbsched test CA")
    rogue_ca_key, rogue_ca_cert = ca("rogue CA")
    ca_path, _ = write("ca", ca_key, ca_cert)
    server_cert, server_key = write("server", *leaf("127.0.0.1", ca_key, ca_cert, True))
    client_cert, client_key = write("client", *leaf("ran-controller", ca_key, ca_cert, False))
    rogue_cert, rogue_key = write("rogue", *leaf("ran-controller", rogue_ca_key, rogue_ca_cert, False))
    return Pki(ca_path, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)


# ----------------------------------------------------------------------------- ONNX students


def student_onnx_bytes(*, user_width: int | None = None, scale: float = 1.0) -> bytes:
    """A tiny valid student graph: logits [R, N+1] = [0 | scale · pair_feats[0]] (the unused
    column 0, then the first pair feature of every (resource, user)). ``user_width`` other than
    the serializer's makes a signature mismatch."""
    import onnx
    from onnx import TensorProto, helper

    from service.serialize.tensors import (
        INPUT_NAMES,
        NUM_GLOBAL,
        NUM_PAIR,
        NUM_RES,
        NUM_USER,
        OUTPUT_NAME,
    )

    shapes = {
        "global_feats": [NUM_GLOBAL],
        "user_feats": ["N", user_width or NUM_USER],
        "res_feats": ["R", NUM_RES],
        "pair_feats": [NUM_PAIR, "R", "N"],
        "user_mask": ["N"],
        "res_mask": ["R"],
    }
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in INPUT_NAMES]
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["R", "M"])
    consts = [
        helper.make_tensor("idx0", TensorProto.INT64, [], [0]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("s1", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Gather", ["pair_feats", "idx0"], ["pf0"], axis=0),  # [R, N]
        helper.make_node("Mul", ["pf0", "scale"], ["pair_logits"]),
        helper.make_node("Slice", ["res_feats", "s0", "s1", "s1"], ["res_col"]),  # [R, 1]
        helper.make_node("Mul", ["res_col", "zero"], ["unused"]),
        helper.make_node("Concat", ["unused", "pair_logits"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(nodes, "student-test", inputs, [out], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="gnbsched-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_student(
    model_dir: Path,
    preset: str,
    version: str,
    *,
    onnx_bytes: bytes | None = None,
    card: dict[str, Any] | None = None,
    sha256: str | None = None,
) -> Path:
    """Write ``<model_dir>/student-<preset>/<version>/{model.onnx, model.json}``; the card's
    sha256 is the file's unless ``sha256`` overrides it; ``card`` entries override the defaults."""
    from service.serialize.tensors import FEATURE_VERSION

    data = onnx_bytes if onnx_bytes is not None else student_onnx_bytes()
    path = model_dir / f"student-{preset}" / version
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(data)
    doc = {
        "preset": preset,
        "version": version,
        "feature_version": FEATURE_VERSION,
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "decode": {"kind": "capped", "surplus_margin": 4.0},
        "architecture": {"parameters": 0},
    }
    doc.update(card or {})
    (path / "model.json").write_text(json.dumps(doc))
    return path


# ----------------------------------------------------------------------------- requests


def spectrum_body(cell: str, slot: int, n: int = 6, r: int = 8, seed: int = 0, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng([seed, slot])
    users = [{"id": 100 + i, "rx_power_dbm": round(float(rng.uniform(-110, -60)), 3)} for i in range(n)]
    resources = [
        {"id": 1 + j, "bandwidth_hz": round(float(rng.uniform(1e6, 1e7)), 1), "available": bool(j % 4 != 1)}
        for j in range(r)
    ]
    return {"cell_id": cell, "slot": slot, "preset": "spectrum", "users": users, "resources": resources, **extra}


def mac_body(
    cell: str,
    slot: int,
    n: int = 8,
    r: int = 6,
    seed: int = 0,
    *,
    feedback: dict[int, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, slot, 1])
    users = [
        {
            "id": 1 + i,
            "spectral_efficiency": round(float(rng.uniform(0.1, 5.0)), 4),
            "buffer_bits": float(rng.integers(0, 40_000)),
        }
        for i in range(n)
    ]
    body = {
        "cell_id": cell,
        "slot": slot,
        "preset": "mac",
        "users": users,
        "resources": [{"id": j, "bandwidth_hz": 1.44e6} for j in range(r)],
        **extra,
    }
    if feedback:
        body["feedback"] = {"delivered_bits": {str(k): float(v) for k, v in feedback.items()}}
    return body


def delivered(body: dict[str, Any], answer: dict[str, Any]) -> dict[int, float]:
    """Feedback for the next slot: bits each user got, min(buffer, resources · 1000 bits)."""
    counts: dict[int, int] = {}
    for uid in answer["owner"]:
        if uid is not None:
            counts[uid] = counts.get(uid, 0) + 1
    buf = {u["id"]: u.get("buffer_bits", 1e9) for u in body["users"]}
    return {uid: float(min(buf[uid], 1000.0 * k)) for uid, k in counts.items()}


def slot_of(body: dict[str, Any], limits: Limits | None = None) -> SlotState:
    return decode_schedule(body, limits or Limits()).state


def owner_tokens(state: SlotState, owner: list[int | None]) -> np.ndarray:
    """Response ``owner`` (user id or None per resource) → DCM tokens int64 [R] (k = user index k-1)."""
    index = {int(u): i + 1 for i, u in enumerate(state.user_ids.tolist())}
    assert len(owner) == state.num_res, f"owner has {len(owner)} entries for {state.num_res} resources"
    tokens = np.zeros(state.num_res, np.int64)
    for j, uid in enumerate(owner):
        if uid is not None:
            assert uid in index, f"owner[{j}] = {uid} is not a user of the slot"
            tokens[j] = index[uid]
    return tokens


def assert_pag_valid(body: dict[str, Any], answer: dict[str, Any], limits: Limits | None = None) -> None:
    """The decision answered for ``body`` passes every PAG rule (``service.pag.check`` on the owner
    mapped back to tokens) and its ``allocation`` is the same assignment as its ``owner``."""
    state = slot_of(body, limits)
    tokens = owner_tokens(state, answer["owner"])
    result = check(state, tokens)
    assert result.valid, f"decision violates the PAG: {[v.message for v in result.violations]}"
    alloc: dict[str, list[int]] = {}
    for rid, uid in zip(state.resource_ids.tolist(), answer["owner"], strict=True):
        if uid is not None:
            alloc.setdefault(str(uid), []).append(rid)
    assert answer["allocation"] == alloc


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
