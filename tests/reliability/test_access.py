"""Access control against real ``gnbsched serve`` processes: the optional bearer token on the
scheduling, policy metadata and admin endpoints (probes and metrics stay open), admin endpoints
off unless enabled, the request limits (body size, N, R, feedback, cell id), and model output
that is only ever parsed as data — never executed."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.api import serve
from service.config import Settings
from service.core import ServiceCore
from service.history import CellHistory, to_bytes
from service.pag.checks import UNPARSABLE, check, parse_text
from service.pag.repair import repair
from service.pipeline import decide
from service.policies.base import Policy, PolicyContext
from service.policies.registry import PolicySet
from service.security import AccessConfigError, BearerAuth, check_access, load_token
from service.state import MemoryStore
from service.types import SlotState

from .conftest import reset_teacher
from .support import assert_pag_valid, mac_body, slot_of, spectrum_body, write_student

LIMITS = ("--max-users", "16", "--max-resources", "12", "--max-body-bytes", "20000")
# the child service gets a clean GNBSCHED_* environment: the embedded default serves a spectrum
# request that names no policy
DEFAULT_SPECTRUM = Settings.model_construct().default_policy("spectrum")  # embedded, no environment


def _served_by_default(decision) -> bool:
    """A gRPC SlotDecision produced by the configured default spectrum policy, no fallback."""
    return decision.policy == DEFAULT_SPECTRUM and not decision.HasField("fallback")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, token_file: Path):
    """One service with a token (from a file), the admin endpoints and tight limits."""
    from testkit import ServeProcess

    models = tmp_path_factory.mktemp("models")
    write_student(models, "mac", "v1")
    svc = ServeProcess(
        "--auth-token-file", str(token_file), "--admin", *LIMITS, env={"GNBSCHED_MODEL_DIR": str(models)}
    )
    try:
        yield svc.wait_ready()
    finally:
        svc.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------------------- bearer token


def test_token_guards_scheduling_metadata_and_admin_but_not_probes(guarded, token: str) -> None:
    body = orjson.dumps(mac_body("acc-1", 0))
    with httpx.Client(base_url=guarded.url, timeout=10) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-of-some-length"},
            {"Authorization": f"Basic {token}"},
            {"Authorization": token},
            {"Authorization": f"Bearer {token[:-1]}"},
            {"Authorization": f"Bearer {token}x"},
        ):
            for method, path, content in (
                ("POST", "/schedule", body),
                ("POST", "/schedule/batch", b'{"cells": [' + body + b"]}"),
                ("GET", "/v1/policies", None),
                ("GET", "/models", None),
                ("POST", "/admin/reload", b'{"policy": "student"}'),
            ):
                r = c.request(method, path, content=content, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json()["field"] == "authorization" and r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert token not in r.text
        # the probes, the metrics and the contract stay open
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        # the right token (scheme case-insensitive) passes
        ok = c.post("/schedule", content=body, headers={"Authorization": f"bearer {token}"})
        assert ok.status_code == 200, ok.text
        assert_pag_valid(mac_body("acc-1", 0), ok.json())
        batch = c.post("/schedule/batch", content=b'{"cells": [' + body + b"]}", headers=_auth(token))
        assert batch.status_code == 200 and batch.json()["decisions"][0]["replayed"] is True, batch.text
        assert c.get("/v1/policies", headers=_auth(token)).status_code == 200
        assert c.get("/models", headers=_auth(token)).status_code == 200


def test_unauthenticated_body_is_never_read(guarded, token: str) -> None:
    """A client without the token gets 401 before the server reads its body: the answer comes
    while most of a declared body is still unsent. A body declared above ``max_body_bytes`` is
    refused (413) before authentication, by the connection guard."""
    with socket.create_connection(("127.0.0.1", guarded.rest_port), timeout=5) as sock:
        sock.sendall(
            b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 15000\r\n\r\n" + b"[" * 100
        )
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 401 "), head[:200]
    with httpx.Client(base_url=guarded.url, timeout=10) as c:
        huge = b"[" * 100_000  # above max_body_bytes and not JSON
        for headers in ({}, _auth(token)):
            r = c.post("/schedule", content=huge, headers=headers)
            assert r.status_code == 413 and r.json()["field"] == "body" and r.json()["error"] == "body_too_large"


def test_openapi_declares_the_bearer_scheme_on_guarded_operations(guarded) -> None:
    doc = httpx.get(guarded.url + "/openapi.json", timeout=10).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    guarded_ops = {
        ("post", "/schedule"),
        ("post", "/schedule/batch"),
        ("get", "/v1/policies"),
        ("get", "/models"),
        ("post", "/admin/reload"),
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if (method, path) in guarded_ops:
                assert op["security"] == [{"bearerAuth": []}] and "401" in op["responses"], (method, path)
            else:
                assert "security" not in op, (method, path)


def test_the_token_is_never_printed(guarded, token: str) -> None:
    out = guarded.output()
    assert '"auth_token_file"' in out and token not in out


def test_token_from_the_environment_on_rest_and_grpc_admin_off(service, token: str) -> None:
    """A token from GNBSCHED_AUTH_TOKEN guards REST and gRPC (plaintext: the authorization
    metadata); refusals are counted; the token is never printed; without --admin the admin
    endpoints do not exist."""
    import grpc
    from grpc_health.v1 import health_pb2

    from service.security import bearer_metadata

    svc = service(env={"GNBSCHED_AUTH_TOKEN": token}, grpc=True).wait_ready()
    with httpx.Client(base_url=svc.url, timeout=10) as c:
        assert c.post("/schedule", content=orjson.dumps(spectrum_body("acc-env", 0))).status_code == 401
        r = c.post("/schedule", content=orjson.dumps(spectrum_body("acc-env", 0)), headers=_auth(token))
        assert r.status_code == 200
        metrics = c.get("/metrics").text
        assert 'gnbsched_requests_total{outcome="rejected",policy="none",preset="none",transport="rest"} 1.0' in metrics
        assert c.post("/admin/reload", json={"policy": "student"}, headers=_auth(token)).status_code == 404
        assert "/admin/reload" not in c.get("/openapi.json").json()["paths"]
    with grpc.insecure_channel(svc.grpc_target) as ch:
        assert _grpc_call(ch) == (grpc.StatusCode.UNAUTHENTICATED,) * 2
        assert _grpc_call(ch, bearer_metadata("x" * 20)) == (grpc.StatusCode.UNAUTHENTICATED,) * 2
        assert _grpc_call(ch, (("authorization", token),)) == (grpc.StatusCode.UNAUTHENTICATED,) * 2
        unary, first = _grpc_call(ch, bearer_metadata(token))
        assert _served_by_default(unary) and _served_by_default(first) and not first.HasField("error")
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING  # probes stay open
    assert token not in svc.output() and '"auth_token": "***"' in svc.output()


# ----------------------------------------------------------------------------- admin endpoints


def test_admin_reload_validates_its_request(guarded, token: str) -> None:
    with httpx.Client(base_url=guarded.url, timeout=20, headers=_auth(token)) as c:
        cases = [
            (b"{", 400, "body"),
            (b"[]", 422, "body"),
            (b'{"policy": "nope"}', 422, "policy"),
            (b'{"policy": "student", "preset": "lte"}', 422, "preset"),
            (b'{"policy": "student", "version": "v1"}', 422, "preset"),
            (b'{"policy": "student", "preset": "mac", "version": "../../etc"}', 422, "version"),
            (b'{"policy": "student", "path": "/etc/passwd"}', 422, "path"),
            (b'{"policy": "km"}', 422, "policy"),
            (b'{"policy": "student", "preset": "spectrum"}', 422, "preset"),  # no spectrum model here
            (b'{"policy": "' + b"x" * 5000 + b'"}', 413, "body"),
        ]
        for content, status, field in cases:
            r = c.post("/admin/reload", content=content)
            assert (r.status_code, r.json()["field"]) == (status, field), (content[:60], r.text)
        r = c.post("/admin/reload", json={"policy": "student", "preset": "mac", "version": "v1"})
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] == {"mac": "v1"}


def test_admin_without_token_is_refused_off_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("GNBSCHED_")]:
        monkeypatch.delenv(key)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert serve.run(parser.parse_args(["--admin", "--host", "0.0.0.0"])) == 2
    assert "admin_enabled" in capsys.readouterr().err
    (tmp_path / "short").write_text("abc\n")
    assert serve.run(parser.parse_args(["--auth-token-file", str(tmp_path / "short")])) == 2
    assert "at least 16" in capsys.readouterr().err
    assert serve.run(parser.parse_args(["--auth-token-file", str(tmp_path / "missing")])) == 2
    assert "cannot read" in capsys.readouterr().err
    assert serve.run(parser.parse_args(["--grpc-tls-cert", str(tmp_path / "short")])) == 2
    assert "together" in capsys.readouterr().err


def test_access_settings_rules(tmp_path: Path) -> None:
    assert check_access(Settings()) is None
    assert check_access(Settings(admin_enabled=True)) is None  # loopback: allowed without a token
    with pytest.raises(AccessConfigError, match="both set"):
        load_token(Settings(auth_token="a" * 20, auth_token_file=str(tmp_path / "t")))
    with pytest.raises(AccessConfigError, match="printable"):
        load_token(Settings(auth_token="a" * 10 + " b" * 5))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AccessConfigError, match="empty"):
        load_token(Settings(auth_token_file=str(tmp_path / "empty")))
    with pytest.raises(AccessConfigError, match="mTLS"):
        check_access(Settings(grpc_tls_client_ca=str(tmp_path / "empty")))
    assert Settings(auth_token="s" * 20).public()["auth_token"] == "***"
    auth = BearerAuth("t" * 20)
    assert auth.allows("Bearer " + "t" * 20) and auth.allows("BEARER  " + "t" * 20)
    assert not auth.allows(None) and not auth.allows("Bearer") and not auth.allows("Bearer " + "t" * 19)
    assert not auth.allows("Bearer " + "t" * 20 + "\u00e9")
    assert BearerAuth(None).allows(None)


# ----------------------------------------------------------------------------- limits


def test_limits_on_body_size_users_resources_feedback_and_cell_id(guarded, token: str) -> None:
    """N, R, feedback and body size above the configured limits → 413 naming the field; a cell
    id above 256 characters → 422; the server keeps serving afterwards."""
    cases = [
        (mac_body("lim", 0, n=17, r=4), 413, "users"),
        (mac_body("lim", 0, n=4, r=13), 413, "resources"),
        (mac_body("lim", 0, n=4, r=4, feedback={i: 1.0 for i in range(17)}), 413, "feedback.delivered_bits"),
        (mac_body("x" * 257, 0, n=4, r=4), 422, "cell_id"),
        (
            mac_body(
                "lim",
                0,
                n=16,
                r=12,
                rate_bps=[[1e6] * 12] * 16,
                tti_s=0.0005,
                max_resources_per_user=2,
                policy="greedy",
            )
            | {"pad": "p" * 20_000},
            413,
            "body",
        ),
    ]
    with httpx.Client(base_url=guarded.url, timeout=10, headers=_auth(token)) as c:
        for body, status, field in cases:
            r = c.post("/schedule", content=orjson.dumps(body))
            assert (r.status_code, r.json()["field"]) == (status, field), r.text
        assert c.post("/schedule", content=b"x" * 20_001).status_code == 413
        # a declared length above the limit is refused at once, without waiting for the body
        port = int(guarded.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                f"POST /schedule HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{".encode()
            )
            head = s.recv(4096).decode(errors="replace")
        assert head.startswith("HTTP/1.1 413"), head
        ok = mac_body("lim", 1, n=16, r=12)
        r = c.post("/schedule", content=orjson.dumps(ok))
        assert r.status_code == 200, r.text
        assert_pag_valid(ok, r.json())


# ----------------------------------------------------------------------------- model output is data

#: completions a hostile or broken model could produce: code in Python, JS and shell
HOSTILE = [
    "__import__('os').system('touch {sentinel}')",
    "```python\nimport os; open('{sentinel}', 'w').write('pwned')\n```",
    '{{"owner": [__import__("os").system("touch {sentinel}")]}}',
    "{{\"owner\": [\"__import__('os').system('touch {sentinel}')\", 101, null]}}",
    '{{"allocation": {{"101": "eval(compile(\'open(\\"{sentinel}\\", \\"w\\")\', \'x\', \'exec\'))"}}}}',
    "```js\nrequire('fs').writeFileSync('{sentinel}', 'x'); process.exit(1)\n```",
    '{{"__class__": {{"__init__": {{"__globals__": "os"}}}}, "owner": {{"$where": "sleep(1)"}}}}',
    "$(touch {sentinel}); `touch {sentinel}`",
    '[101, 102, {{"__reduce__": ["os.system", ["touch {sentinel}"]]}}]',
]


class _Parrot(Policy):
    """Returns a fixed completion text, like a teacher would."""

    name = "parrot"
    text = ""

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> str:
        return self.text


class _Audit:
    """Records the audit events of code execution while ``active`` (hooks cannot be removed)."""

    EVENTS = frozenset(
        {
            "exec",
            "compile",
            "os.system",
            "os.exec",
            "os.posix_spawn",
            "os.spawn",
            "os.fork",
            "subprocess.Popen",
            "ctypes.dlopen",
            "pickle.find_class",
            "marshal.loads",
        }
    )

    def __init__(self) -> None:
        self.active = False
        self.seen: list[tuple[str, str]] = []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if self.active and event in self.EVENTS:
            self.seen.append((event, repr(args)[:200]))


_AUDIT: _Audit | None = None


def _audit() -> _Audit:
    """The process-wide probe, installed on first use (audit hooks stay for the process)."""
    global _AUDIT
    if _AUDIT is None:
        _AUDIT = _Audit()
    return _AUDIT


def test_model_output_is_parsed_as_data_and_never_executed(tmp_path: Path) -> None:
    """parse → check → repair → decide on hostile completions: no code-execution audit event,
    no side effect, and every decision passes the PAG checks."""
    sentinel = tmp_path / "pwned"
    state = spectrum_state()
    core_policies = PolicySet(factories={"parrot": _Parrot})
    audit = _audit()
    for template in HOSTILE:
        text = template.format(sentinel=sentinel)
        _Parrot.text = text
        audit.active = True
        try:
            tokens, mapping, violations = parse_text(state, text)
            result = check(state, text)
            owner = repair(state, result)
            decision = decide(state, CellHistory.empty(), "parrot", policies=core_policies, fallbacks=["greedy"])
        finally:
            audit.active = False
        assert audit.seen == [], (text, audit.seen)
        assert not sentinel.exists(), text
        assert tokens is None or tokens.dtype == np.int64
        assert mapping is None or isinstance(mapping, dict)
        assert check(state, owner).valid and check(state, decision.owner).valid
        if violations and violations[0].kind == UNPARSABLE:
            assert not result.valid


def spectrum_state() -> SlotState:
    body = spectrum_body("hostile", 0, n=4, r=5)
    body["users"] = [dict(u, id=101 + i) for i, u in enumerate(body["users"])]
    return slot_of(body)


def test_hostile_teacher_completions_through_a_real_server(teacher_stack, tmp_path: Path) -> None:
    """A teacher endpoint answering code: the service answers PAG-valid decisions (repaired or
    from the fallback), nothing is executed, the server keeps serving."""
    fake_teacher, svc = teacher_stack
    reset_teacher(fake_teacher)
    before = fake_teacher.requests
    sentinel = tmp_path / "pwned-server"
    with httpx.Client(base_url=svc.url, timeout=20) as c:
        for slot, template in enumerate(HOSTILE):
            fake_teacher.text = template.format(sentinel=sentinel)
            body = spectrum_body("hostile-srv", slot, n=4, r=5, policy="teacher")
            body["users"] = [dict(u, id=101 + i) for i, u in enumerate(body["users"])]
            r = c.post("/schedule", content=orjson.dumps(body))
            assert r.status_code == 200, r.text
            answer = r.json()
            assert_pag_valid(body, answer)
            assert answer["policy"] in ("teacher", "greedy")
            if answer["policy"] == "teacher":
                assert not answer["valid_before_repair"]  # code is never a valid decision
    assert fake_teacher.requests >= before + len(HOSTILE)
    assert not sentinel.exists()
    assert "Traceback" not in svc.output()


def test_core_state_never_holds_model_text() -> None:
    """What a teacher says reaches the cell's history only as the repaired int64 owner."""
    core = ServiceCore(Settings(grpc_port=0), store=MemoryStore(), policies=PolicySet(factories={"parrot": _Parrot}))
    _Parrot.text = HOSTILE[3].format(sentinel="/nonexistent")
    state = spectrum_state()
    decision = core.schedule(state, policy="parrot")
    assert decision.owner.dtype == np.int64 and check(state, decision.owner).valid
    blob = to_bytes(core.history(state.cell_id))
    assert b"__import__" not in blob


# ----------------------------------------------------------------------------- gRPC: token, TLS, mTLS


def _grpc_request():
    from service.api.grpc.convert import slot_to_request

    return slot_to_request(spectrum_state())


def _grpc_call(channel, metadata=()) -> tuple[Any, Any]:
    """(unary outcome, stream outcome): a SlotDecision or the StatusCode of the failure."""
    import grpc

    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc

    stub = pb_grpc.SchedulerStub(channel)
    out = []
    for call in (
        lambda: stub.Schedule(_grpc_request(), timeout=10, metadata=metadata),
        lambda: next(iter(stub.StreamSlots(iter([_grpc_request()]), timeout=10, metadata=metadata))),
    ):
        try:
            out.append(call())
        except grpc.RpcError as exc:
            out.append(exc.code())
    return out[0], out[1]


def _health(channel, metadata=()) -> Any:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=10, metadata=metadata)
            .status
        )
    except grpc.RpcError as exc:
        return exc.code()


def test_grpc_mutual_tls_and_token(service, pki, token_file: Path, token: str) -> None:
    """mTLS + token: plaintext, TLS without a client certificate and a certificate from another
    CA fail the handshake; the right certificate without the token gets UNAUTHENTICATED; both
    together get decisions; health stays open to any client holding a valid certificate."""
    import grpc
    from grpc_health.v1 import health_pb2

    from service.security import grpc_channel_credentials

    svc = service(
        "--auth-token-file",
        str(token_file),
        "--grpc-tls-cert",
        str(pki.server_cert),
        "--grpc-tls-key",
        str(pki.server_key),
        "--grpc-tls-client-ca",
        str(pki.ca_cert),
        grpc=True,
    ).wait_ready()
    target = svc.grpc_target
    unavailable = (grpc.StatusCode.UNAVAILABLE,) * 2
    with grpc.insecure_channel(target) as ch:
        assert _grpc_call(ch) == unavailable
    with grpc.secure_channel(target, grpc_channel_credentials(pki.ca_cert)) as ch:
        assert _grpc_call(ch) == unavailable
    with grpc.secure_channel(target, grpc_channel_credentials(pki.ca_cert, pki.rogue_cert, pki.rogue_key)) as ch:
        assert _grpc_call(ch) == unavailable
    with grpc.secure_channel(target, grpc_channel_credentials(pki.ca_cert, pki.client_cert, pki.client_key)) as ch:
        assert _grpc_call(ch) == (grpc.StatusCode.UNAUTHENTICATED,) * 2
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
    creds = grpc_channel_credentials(pki.ca_cert, pki.client_cert, pki.client_key, token=token)
    with grpc.secure_channel(target, creds) as ch:
        unary, first = _grpc_call(ch)
        assert _served_by_default(unary) and _served_by_default(first)
        state = spectrum_state()
        index = {int(u): i + 1 for i, u in enumerate(state.user_ids.tolist())}
        tokens = np.array([0 if o < 0 else index[int(o)] for o in unary.owner], np.int64)
        assert check(state, tokens).valid


def test_grpc_server_tls_without_client_certificates_and_grpc_limits(service, pki) -> None:
    """TLS without client certificates: any client trusting the CA is served; the gRPC limits
    hold (N above max_users → INVALID_ARGUMENT naming user_ids; a message above max_body_bytes →
    RESOURCE_EXHAUSTED) and the server keeps serving."""
    import grpc

    from service.api.grpc.convert import slot_to_request
    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc
    from service.security import grpc_channel_credentials

    svc = service(
        "--grpc-tls-cert", str(pki.server_cert), "--grpc-tls-key", str(pki.server_key), *LIMITS, grpc=True
    ).wait_ready()
    with grpc.insecure_channel(svc.grpc_target) as ch:
        assert _grpc_call(ch) == (grpc.StatusCode.UNAVAILABLE,) * 2
    with grpc.secure_channel(svc.grpc_target, grpc_channel_credentials(pki.ca_cert)) as ch:
        unary, first = _grpc_call(ch)
        assert _served_by_default(unary) and _served_by_default(first)
        stub = pb_grpc.SchedulerStub(ch)
        too_many = slot_to_request(slot_of(mac_body("lim-grpc", 0, n=17, r=4)))
        with pytest.raises(grpc.RpcError) as err:
            stub.Schedule(too_many, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("user_ids")
        too_big = slot_to_request(slot_of(mac_body("lim-grpc", 0, n=4, r=4)))
        too_big.cell_id = "c" * 30_000
        with pytest.raises(grpc.RpcError) as err:
            stub.Schedule(too_big, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _served_by_default(_grpc_call(ch)[0])


def test_workers_get_the_token_and_access_settings(monkeypatch: pytest.MonkeyPatch, token: str, tmp_path: Path) -> None:
    """``--workers N`` hands the settings to worker processes through GNBSCHED_*: the token and
    the access settings survive the trip (the token only there, never in the printed settings)."""
    for key in [k for k in os.environ if k.startswith("GNBSCHED_")]:
        monkeypatch.delenv(key)
    settings = Settings(
        auth_token=token,
        admin_enabled=True,
        grpc_tls_cert=str(tmp_path / "c"),
        grpc_tls_key=str(tmp_path / "k"),
        grpc_stream_stall_s=7.0,
    )
    try:
        serve.export_settings(settings)
        assert os.environ["GNBSCHED_AUTH_TOKEN"] == token
        rebuilt = Settings()
        assert rebuilt == settings and load_token(rebuilt) == token
    finally:
        for key in [k for k in os.environ if k.startswith("GNBSCHED_")]:
            os.environ.pop(key)
    assert token not in str(settings.public()) and token not in repr(settings)


# ----------------------------------------------------------------------------- simulate against a guarded service


def test_simulate_reaches_a_guarded_service_over_grpc_mtls_and_rest(
    service, pki, token_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gnbsched simulate`` with the token file and the PKI: the KPIs of the in-process loop over
    gRPC mTLS (unary and stream) and over REST; without the token, or without the CA, it stops
    with exit 2 and a message naming what failed."""
    from service.api.simulate import Access, simulate
    from service.cli import main

    svc = service(
        "--auth-token-file",
        str(token_file),
        "--grpc-tls-cert",
        str(pki.server_cert),
        "--grpc-tls-key",
        str(pki.server_key),
        "--grpc-tls-client-ca",
        str(pki.ca_cert),
        grpc=True,
    ).wait_ready()
    access = Access.from_files(str(token_file), str(pki.ca_cert), str(pki.client_cert), str(pki.client_key))
    kw = {"preset": "mac", "scenario": "fixed-5", "slots": 30, "seed": 4, "cell_id": "guarded"}
    expected = simulate("inproc", **kw)
    grpc_target = f"grpc://{svc.grpc_target}"
    for stream in (False, True):
        got = simulate(grpc_target, stream=stream, access=access, **{**kw, "cell_id": f"guarded-{stream}"})
        assert got == pytest.approx(expected, nan_ok=True)
    got = simulate(svc.url, access=Access(token=access.token), **{**kw, "cell_id": "guarded-rest"})
    assert got == pytest.approx(expected, nan_ok=True)

    tls = ["--tls-ca", str(pki.ca_cert), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    base = ["simulate", "--preset", "mac", "--slots", "2", "--timeout-s", "3"]
    capsys.readouterr()
    assert main([*base, "--target", grpc_target, *tls]) == 2  # no token
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main([*base, "--target", svc.url]) == 2
    assert "HTTP 401" in capsys.readouterr().err
    assert main([*base, "--target", grpc_target, "--token-file", str(token_file)]) == 2  # plaintext to a TLS port
    assert "needs --tls-ca" in capsys.readouterr().err
    assert main([*base, "--target", grpc_target, "--tls-cert", str(pki.client_cert)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main([*base, "--target", grpc_target, "--token-file", str(token_file), *tls, "--json"]) == 0


def test_simulate_trusts_the_given_ca_for_an_https_front(uvicorn_server, pki, tmp_path: Path) -> None:
    """An https target (TLS terminated in front of the REST API, here uvicorn itself): the CA given
    with ``--tls-ca`` verifies the server; without it the system roots do not know the test CA."""
    from service.api.rest.app import create_app
    from service.api.simulate import Access, TargetError, simulate

    front = uvicorn_server(
        create_app(ServiceCore(Settings(), store=MemoryStore())),
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
    )
    assert front.url.startswith("https://")
    kw = {"preset": "spectrum", "slots": 5, "seed": 2, "cell_id": "https-front"}
    assert simulate(front.url, access=Access(tls_ca=str(pki.ca_cert)), **kw) == pytest.approx(
        simulate("inproc", **kw), nan_ok=True
    )
    with pytest.raises(TargetError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        simulate(front.url, **{**kw, "cell_id": "https-untrusted"})


def test_rest_over_tls_and_mutual_tls(service, pki, token_file: Path, token: str) -> None:
    """``--rest-tls-cert/--rest-tls-key``: https with the CA, the token still required; plaintext
    http gets no answer; ``--rest-tls-client-ca`` adds mTLS: no certificate, or one from another
    CA, fails the handshake, the right one gets decisions. ``gnbsched simulate`` over https
    reproduces the in-process KPIs."""
    import ssl

    from service.api.simulate import Access, simulate

    def ctx(cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(pki.ca_cert))
        if cert is not None:
            c.load_cert_chain(str(cert), str(key))
        return c

    tls = ("--rest-tls-cert", str(pki.server_cert), "--rest-tls-key", str(pki.server_key))
    svc = service("--grpc-port", "0", "--auth-token-file", str(token_file), *tls, rest_verify=ctx()).wait_ready()
    body = orjson.dumps(spectrum_body("tls", 0))
    with httpx.Client(base_url=svc.url, verify=ctx()) as c:
        assert c.post("/schedule", content=body).status_code == 401
        r = c.post("/schedule", content=body, headers=_auth(token))
        assert r.status_code == 200 and r.json()["policy"] == DEFAULT_SPECTRUM and r.json()["fallback"] is None
    with pytest.raises(httpx.HTTPError):
        httpx.post(svc.url.replace("https://", "http://") + "/schedule", content=body, headers=_auth(token), timeout=3)
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        httpx.get(svc.url + "/healthz")  # the system roots do not know the test CA
    kw = {"preset": "mac", "scenario": "fixed-5", "slots": 20, "seed": 6}
    got = simulate(svc.url, access=Access(token=token, tls_ca=str(pki.ca_cert)), cell_id="tls-sim", **kw)
    assert got == pytest.approx(simulate("inproc", cell_id="tls-sim", **kw), nan_ok=True)

    mtls = service(
        "--grpc-port",
        "0",
        *tls,
        "--rest-tls-client-ca",
        str(pki.ca_cert),
        rest_verify=ctx(pki.client_cert, pki.client_key),
    ).wait_ready()
    for bad in (ctx(), ctx(pki.rogue_cert, pki.rogue_key)):
        with pytest.raises(httpx.HTTPError):
            httpx.post(mtls.url + "/schedule", content=body, verify=bad, timeout=3)
    r = httpx.post(mtls.url + "/schedule", content=body, verify=ctx(pki.client_cert, pki.client_key), timeout=10)
    assert r.status_code == 200 and r.json()["policy"] == DEFAULT_SPECTRUM and r.json()["fallback"] is None


def test_rest_tls_settings_are_checked(tmp_path: Path, pki) -> None:
    with pytest.raises(AccessConfigError, match="rest_tls_cert and rest_tls_key"):
        check_access(Settings(rest_tls_cert=str(pki.server_cert)))
    with pytest.raises(AccessConfigError, match="rest_tls_client_ca"):
        check_access(Settings(rest_tls_client_ca=str(pki.ca_cert)))
    with pytest.raises(AccessConfigError, match="not a readable file"):
        check_access(Settings(rest_tls_cert=str(tmp_path / "missing.pem"), rest_tls_key=str(pki.server_key)))
    assert check_access(Settings(rest_tls_cert=str(pki.server_cert), rest_tls_key=str(pki.server_key))) is None
