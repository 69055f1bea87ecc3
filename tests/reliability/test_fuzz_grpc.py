"""Fuzzing the gRPC request decoding with hypothesis: never ``INTERNAL``.

* in process: ``convert.request_to_slot`` on arbitrary ``SlotRequest`` messages and on arbitrary
  bytes parsed as one — the only exception it may raise is ``InvalidSlotError`` (a field named);
* against a real ``gnbsched serve`` process: the same generators (structurally valid requests of
  every shape, one mutation out of many, raw and bit-flipped bytes) over unary ``Schedule`` (the
  request sent as raw bytes) and over one long ``StreamSlots`` call. Oracles: the status is OK or
  ``INVALID_ARGUMENT`` (``UNAVAILABLE`` / ``DEADLINE_EXCEEDED`` are not expected with a
  baseline fallback and would fail too) — never ``INTERNAL`` or ``UNKNOWN``; a rejection names a
  field of ``SlotRequest`` (``"<field>: <message>"``, the stream's ``error.field``); a decision
  passes the PAG checks on the slot the request describes; the stream survives every bad slot.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import ServeProcess

from service.api.grpc.convert import request_to_slot
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
from service.errors import InvalidSlotError
from service.pag.checks import check
from service.policies.registry import names as policy_names

MAX_USERS, MAX_RESOURCES, MAX_BODY = 40, 24, 256 * 1024
POLICIES = ["km", "greedy", "pf", "rr", "max_weight", "random", "grouped_km", "exhaustive", "de", "student", "teacher"]
REQUEST_FIELDS = frozenset(f.name for f in pb.SlotRequest.DESCRIPTOR.fields) | {"request"}
SCALE = float(os.environ.get("GNBSCHED_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("GNBSCHED_FUZZ_RANDOM", "") not in ("", "0")
KNOWN = frozenset(policy_names())
SCHEDULE = "/gnbsched.v1.Scheduler/Schedule"
STREAM = "/gnbsched.v1.Scheduler/StreamSlots"


def _settings(n: int) -> settings:
    return settings(
        max_examples=max(1, round(n * SCALE)),
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# ----------------------------------------------------------------------------- generators

_i64 = st.integers(-(2**63), 2**63 - 1)
_any_float = st.floats(allow_nan=True, allow_infinity=True)


def _values(rng: np.random.Generator, lo: float, hi: float, size: int, edges: bool) -> list[float]:
    x = rng.uniform(lo, hi, size) if hi - lo < 1e4 else np.exp(rng.uniform(0, np.log(hi), size))
    if edges:
        x = np.where(rng.random(size) < 0.15, rng.choice([lo, hi], size), x)
    return np.clip(x, lo, hi).tolist()


@st.composite
def valid_requests(draw: st.DrawFn) -> pb.SlotRequest:
    """A ``SlotRequest`` that follows the contract (shapes, ranges), of any size within the limits."""
    preset = draw(st.sampled_from(["spectrum", "mac"]))
    n = draw(st.integers(1, MAX_USERS if draw(st.integers(0, 4)) == 0 else 8))
    r = draw(st.integers(1, MAX_RESOURCES if draw(st.integers(0, 4)) == 0 else 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    edges = draw(st.booleans())
    req = pb.SlotRequest(
        cell_id=draw(st.text(min_size=1, max_size=30)), slot=draw(st.integers(0, 2**63 - 1)), preset=preset
    )
    if draw(st.booleans()):
        req.user_ids[:] = draw(st.lists(_i64, min_size=n, max_size=n, unique=True))
        req.resource_ids[:] = draw(st.lists(_i64, min_size=r, max_size=r, unique=True))
    else:
        req.user_ids[:] = rng.permutation(4 * n).tolist()[:n]
        req.resource_ids[:] = rng.permutation(4 * r).tolist()[:r]
    if draw(st.booleans()):
        req.rate_bps.rows, req.rate_bps.cols = n, r
        req.rate_bps.values[:] = _values(rng, 0.0, 1e12, n * r, edges)
    elif preset == "spectrum":
        req.rx_power_dbm[:] = _values(rng, -300.0, 100.0, n, edges)
        if draw(st.booleans()):
            req.fading_gain.rows, req.fading_gain.cols = n, r
            req.fading_gain.values[:] = _values(rng, 0.0, 1e3, n * r, edges)
        if draw(st.booleans()):
            req.interference_dbm[:] = _values(rng, -300.0, 100.0, r, edges)
    else:
        req.spectral_efficiency[:] = _values(rng, 0.0, 64.0, n if draw(st.booleans()) else n * r, edges)
        if draw(st.booleans()):
            req.rb_per_rbg = draw(st.integers(1, 275))
        if draw(st.booleans()):
            req.tti_s = draw(st.floats(1e-6, 1.0))
    if draw(st.booleans()):
        req.buffer_bits[:] = _values(rng, 0.0, 1e18, n, edges)
    if draw(st.booleans()):
        req.eligible[:] = (rng.random(n) < 0.7).tolist()
    if draw(st.booleans()):
        req.available[:] = (rng.random(r) < 0.7).tolist()
    if draw(st.booleans()):
        req.bandwidth_hz[:] = _values(rng, 1e-3, 1e12, r, edges)
    if draw(st.booleans()):
        req.policy = draw(st.sampled_from(POLICIES))
    if draw(st.integers(0, 3)) == 0:
        req.deadline_ms = draw(st.floats(1e-6, 60_000.0))
    if draw(st.integers(0, 3)) == 0:
        req.max_resources_per_user = draw(st.integers(1, 2**63 - 1))
    if draw(st.integers(0, 2)) == 0:
        ids = sorted({int(u) for u in req.user_ids if rng.random() < 0.5} | set(draw(st.lists(_i64, max_size=2))))
        req.feedback.user_ids[:] = ids
        req.feedback.delivered_bits[:] = _values(rng, 0.0, 1e18, len(ids), edges)
    return req


_REPEATED = {
    "user_ids": _i64,
    "resource_ids": _i64,
    "rx_power_dbm": _any_float,
    "spectral_efficiency": _any_float,
    "buffer_bits": _any_float,
    "eligible": st.booleans(),
    "bandwidth_hz": _any_float,
    "available": st.booleans(),
    "interference_dbm": _any_float,
}


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """The bytes of one request: a valid one, one field broken, or bytes that are barely a request."""
    req = draw(valid_requests())
    kind = draw(
        st.sampled_from(["none", "repeated", "scalar", "matrix", "feedback", "dup", "bytes", "flip", "truncate"])
    )
    if kind == "repeated":
        name = draw(st.sampled_from(sorted(_REPEATED)))
        getattr(req, name)[:] = draw(st.lists(_REPEATED[name], max_size=MAX_USERS + 3))
    elif kind == "scalar":
        name = draw(
            st.sampled_from(
                [
                    "cell_id",
                    "slot",
                    "preset",
                    "policy",
                    "deadline_ms",
                    "max_resources_per_user",
                    "tti_s",
                    "rb_per_rbg",
                    "noise_density_dbm_hz",
                ]
            )
        )
        value = {
            "cell_id": st.text(max_size=300),
            "slot": _i64,
            "preset": st.text(max_size=10),
            "policy": st.text(max_size=10),
            "max_resources_per_user": _i64,
            "rb_per_rbg": st.integers(-(2**31), 2**31 - 1),
        }.get(name, _any_float)
        setattr(req, name, draw(value))
    elif kind == "matrix":
        m = req.rate_bps if draw(st.booleans()) else req.fading_gain
        m.rows, m.cols = draw(st.integers(0, 2**32 - 1) | st.integers(0, 50)), draw(st.integers(0, 50))
        m.values[:] = draw(st.lists(_any_float, max_size=60))
    elif kind == "feedback":
        req.feedback.user_ids[:] = draw(st.lists(_i64, max_size=MAX_USERS + 3))
        req.feedback.delivered_bits[:] = draw(st.lists(_any_float, max_size=MAX_USERS + 3))
    elif kind == "dup":
        ids = req.user_ids if draw(st.booleans()) else req.resource_ids
        ids.append(ids[0])
    data = req.SerializeToString()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "flip" and data:
        pos = draw(st.integers(0, len(data) - 1))
        return data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
    if kind == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    return data


# ----------------------------------------------------------------------------- oracles


def _decoded(raw: bytes) -> Any:
    """The slot ``raw`` describes (in process, same rules and limits), or the ``InvalidSlotError``."""
    try:
        req = pb.SlotRequest.FromString(raw)
    except Exception as exc:  # DecodeError (protobuf's own type varies with the backend)
        return InvalidSlotError("request", str(exc))
    try:
        return request_to_slot(req, max_users=MAX_USERS, max_resources=MAX_RESOURCES, known_policies=KNOWN)
    except InvalidSlotError as exc:
        return exc


def _check_decision(raw: bytes, msg: pb.SlotDecision) -> None:
    decoded = _decoded(raw)
    assert not isinstance(decoded, InvalidSlotError), f"accepted a request decoded in process as {decoded}"
    state = decoded.state
    index = {int(u): i + 1 for i, u in enumerate(state.user_ids.tolist())}
    assert len(msg.owner) == state.num_res
    tokens = np.array([0 if o == -1 else index[int(o)] for o in msg.owner], np.int64)
    result = check(state, tokens)
    assert result.valid, [v.message for v in result.violations]


def _state_rule(raw: bytes, code: str, field: str, details: str) -> bool:
    """A request that decodes in process but the cell's state refuses: an older or reused slot,
    an older epoch (FAILED_PRECONDITION), or feedback about users the cell does not know."""
    if isinstance(_decoded(raw), InvalidSlotError):
        return False
    if code == "FAILED_PRECONDITION":
        assert field in ("slot", "epoch"), details
        return True
    assert code == "INVALID_ARGUMENT" and field.startswith("feedback"), (code, details)
    return True


def _check_field(field: str, details: str) -> None:
    root = field.split(".")[0].split("[")[0]
    assert root in REQUEST_FIELDS, f"rejection names {field!r}, not a SlotRequest field: {details}"


# ----------------------------------------------------------------------------- in process


@_settings(1500)
@given(raw=mutated_requests())
def test_request_decoding_raises_only_invalid_slot_errors(raw: bytes) -> None:
    decoded = _decoded(raw)  # anything but InvalidSlotError propagates and fails
    if isinstance(decoded, InvalidSlotError):
        _check_field(decoded.field, decoded.message)
    else:
        assert np.isfinite(decoded.state.utility).all()


# ----------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def grpc_target() -> Iterator[str]:
    svc = ServeProcess(
        "--max-users",
        str(MAX_USERS),
        "--max-resources",
        str(MAX_RESOURCES),
        "--max-body-bytes",
        str(MAX_BODY),
        "--fallbacks",
        "greedy",
        grpc=True,
        env={"GNBSCHED_TEACHER_TIMEOUT_S": "1"},
    )
    try:
        svc.wait_ready()
        yield svc.grpc_target
        out = svc.output()
        assert "Traceback" not in out and "internal error" not in out, out[-4000:]
    finally:
        svc.close()


def test_unary_schedule_is_never_internal(grpc_target: str) -> None:
    outcomes = {"ok": 0, "invalid": 0, "state": 0}
    with grpc.insecure_channel(grpc_target) as channel:
        call = channel.unary_unary(SCHEDULE, request_serializer=None, response_deserializer=pb.SlotDecision.FromString)

        @_settings(700)
        @given(raw=mutated_requests())
        def run(raw: bytes) -> None:
            try:
                msg = call(raw, timeout=30)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                field, sep, _ = details.partition(": ")
                assert sep and field, details
                if _state_rule(raw, code.name, field, details):
                    outcomes["state"] += 1
                    return
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
                _check_field(field, details)
                assert isinstance(_decoded(raw), InvalidSlotError), f"refused a request decoded in process: {details}"
                outcomes["invalid"] += 1
                return
            _check_decision(raw, msg)
            outcomes["ok"] += 1

        run()
    print(f"unary gRPC fuzzing: {outcomes}")
    assert outcomes["ok"] > 0 and outcomes["invalid"] > 0, outcomes


def test_one_stream_survives_every_bad_slot(grpc_target: str) -> None:
    """All examples over one ``StreamSlots`` call, lock-step: each answered in place."""
    outcomes = {"ok": 0, "invalid": 0, "state": 0}
    with grpc.insecure_channel(grpc_target) as channel:
        requests: list[bytes | None] = []
        ready = threading.Condition()

        def source() -> Iterator[bytes]:
            while True:
                with ready:
                    ready.wait_for(lambda: requests)
                    raw = requests.pop(0)
                if raw is None:
                    return
                yield raw

        stream = channel.stream_stream(
            STREAM, request_serializer=None, response_deserializer=pb.SlotDecision.FromString
        )
        answers = stream(source(), timeout=600)

        def send(raw: bytes) -> pb.SlotDecision:
            with ready:
                requests.append(raw)
                ready.notify()
            return next(answers)

        @_settings(700)
        @given(raw=mutated_requests())
        def run(raw: bytes) -> None:
            msg = send(raw)
            if msg.HasField("error"):
                if _state_rule(raw, msg.error.code, msg.error.field, msg.error.message):
                    outcomes["state"] += 1
                    return
                assert msg.error.code == "INVALID_ARGUMENT", msg.error
                assert msg.error.field and len(msg.owner) == 0, msg.error
                _check_field(msg.error.field, msg.error.message)
                assert isinstance(_decoded(raw), InvalidSlotError), msg.error.message
                outcomes["invalid"] += 1
            else:
                _check_decision(raw, msg)
                outcomes["ok"] += 1

        run()
        with ready:
            requests.append(None)
            ready.notify()
        assert list(answers) == []  # the stream ends normally after the half-close
    print(f"stream gRPC fuzzing: {outcomes}")
    assert outcomes["ok"] > 0 and outcomes["invalid"] > 0, outcomes
