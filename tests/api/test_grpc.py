"""gRPC transport over a real channel: a ``gnbsched.v1.Scheduler`` server started in process on
a free port (its own event loop thread) with a ``ServiceCore`` on a ``MemoryStore``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from testkit import AllToFirst, Broken

from service.api.grpc import server as grpc_server
from service.api.grpc.client import SchedulerClient, decision_as_dict, owner_tokens
from service.api.grpc.convert import request_to_slot, slot_to_request
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc
from service.api.grpc.server import GrpcServerThread
from service.config import Settings
from service.core import ServiceCore
from service.policies.base import Policy, PolicyContext
from service.policies.registry import PolicySet
from service.state import MemoryStore
from service.types import SlotState, make_slot

ROOT = Path(__file__).resolve().parents[2]
INTERFERENCE_DBM = -100.0
LIMITS = {"max_users": 64, "max_resources": 64, "max_body_bytes": 64 * 1024}


class _ThreadProbe(Policy):
    """Records the thread it ran on; ``blocking_io`` set by the subclass."""

    threads: ClassVar[list[str]] = []

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        type(self).threads.append(threading.current_thread().name)
        return np.zeros(state.num_res, np.int64)


class _BlockingProbe(_ThreadProbe):
    blocking_io = True
    threads: ClassVar[list[str]] = []


class _InlineProbe(_ThreadProbe):
    threads: ClassVar[list[str]] = []


def _policies() -> PolicySet:
    return PolicySet(
        factories={
            "all_to_first": AllToFirst,
            "broken": Broken,
            "blocking_probe": _BlockingProbe,
            "inline_probe": _InlineProbe,
        }
    )


def _core() -> ServiceCore:
    return ServiceCore(Settings(**LIMITS), store=MemoryStore(), policies=_policies())


@pytest.fixture(scope="module")
def served():
    """(server thread, client) shared by the module; cells keep tests independent. The core is
    preloaded as ``gnbsched serve`` preloads it, so that it is ready (health SERVING) from the
    start rather than once a test happened to load the default policies."""
    core = _core()
    core.preload()
    srv = GrpcServerThread(core)
    client = SchedulerClient(srv.target)
    client.wait_ready()
    yield srv, client
    client.close()
    srv.stop()


def _spectrum_slot(
    rng: np.random.Generator, cell: str, slot: int, n: int = 7, r: int = 10, fading_gain: np.ndarray | None = None
) -> SlotState:
    return make_slot(
        "spectrum",
        np.arange(n) + 100,
        np.arange(r) + 1,
        bandwidth_hz=rng.uniform(1e6, 10e6, r),
        resource_available=rng.random(r) > 0.2,
        user_eligible=rng.random(n) > 0.1,
        rx_power_dbm=rng.uniform(-110, -60, n),
        interference_dbm=np.full(r, INTERFERENCE_DBM),
        fading_gain=fading_gain,
        cell_id=cell,
        slot=slot,
    )


def _mac_slot(rng: np.random.Generator, cell: str, slot: int, n: int = 10, r: int = 8) -> SlotState:
    return make_slot(
        "mac",
        rng.permutation(50)[:n] + 1,
        np.arange(r),
        spectral_efficiency=rng.choice([0.2344, 0.6016, 1.1758], n),
        buffer_bits=rng.integers(0, 8, n) * 256.0,
        cell_id=cell,
        slot=slot,
    )


def _assert_same(msg: pb.SlotDecision, state: SlotState, ref) -> None:
    """A gRPC decision equals the core's Decision on the same slot."""
    assert not msg.HasField("error"), msg.error
    assert (msg.cell_id, msg.slot) == (state.cell_id, state.slot)
    np.testing.assert_array_equal(owner_tokens(state, msg), ref.owner)
    d = decision_as_dict(msg)
    assert d["policy"] == ref.policy
    assert d["valid_before_repair"] == ref.valid_before_repair
    assert d["violations"] == [v.as_dict() for v in ref.violations]
    assert d["utility"] == ref.utility
    assert d["fallback"] == ref.fallback
    uid = state.user_ids
    rid = state.resource_ids
    expected_alloc: dict[int, list[int]] = {}
    for r, k in enumerate(ref.owner.tolist()):
        if k:
            expected_alloc.setdefault(int(uid[k - 1]), []).append(int(rid[r]))
    assert d["allocation"] == expected_alloc
    assert set(d["timings_us"]) == set(ref.timings_us)  # the core's stages (``guard`` when guarded)
    assert {"serialize", "policy", "check", "repair", "total"} <= set(d["timings_us"])


def test_generated_code_is_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("preset", ["spectrum", "mac"])
def test_unary_equals_core_over_slots_with_feedback(served, preset: str) -> None:
    _, client = served
    ref = _core()
    rng = np.random.default_rng(1)
    cell = f"unary-{preset}"
    feedback: dict[int, float] = {}
    for slot in range(12):
        fading = rng.exponential(1.0, (7, 10))
        state = (
            _spectrum_slot(rng, cell, slot, fading_gain=fading) if preset == "spectrum" else _mac_slot(rng, cell, slot)
        )
        # physical fields only (no rate_bps): the server recomputes the utility itself
        req = slot_to_request(state, feedback=feedback, include_rate=False)
        if preset == "spectrum":
            req.interference_dbm[:] = [INTERFERENCE_DBM] * state.num_res
            req.fading_gain.rows, req.fading_gain.cols = fading.shape
            req.fading_gain.values[:] = fading.ravel().tolist()
        msg = client.schedule_request(req)
        expected = ref.schedule(state, feedback=feedback)
        _assert_same(msg, state, expected)
        feedback = {int(u): float(rng.uniform(0, 2000)) for u in state.user_ids[: len(state.user_ids) // 2]}


def test_a_retried_slot_is_answered_from_its_stored_decision(served) -> None:
    _, client = served
    rng = np.random.default_rng(4)
    req = slot_to_request(_mac_slot(rng, "grpc-retried", 7), policy="pf")
    first = client.schedule_request(req)
    again = client.schedule_request(req)
    assert not first.replayed and again.replayed
    first.replayed = True
    assert again == first  # the stored decision, field for field
    older = slot_to_request(_mac_slot(rng, "grpc-retried", 6), policy="pf")
    with pytest.raises(grpc.RpcError) as info:
        client.schedule_request(older)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and info.value.details().startswith("slot: ")
    restarted = slot_to_request(_mac_slot(rng, "grpc-retried", 0), policy="pf", epoch=1)
    assert not client.schedule_request(restarted).replayed


def test_all_cells_of_a_tti_in_one_call_decide_as_alone(served) -> None:
    """ScheduleCells and StreamTtis: each cell decided exactly as by Schedule (its own state and
    feedback), answers in order, a bad cell answered in its place while the others are served."""
    srv, client = served
    ref = _core()
    rng = np.random.default_rng(8)
    cells = [f"tti-{k}" for k in range(5)]
    feedback: dict[str, dict[int, float]] = {c: {} for c in cells}
    channel = grpc.insecure_channel(srv.target)
    unary = channel.unary_unary(
        "/gnbsched.v1.Scheduler/ScheduleCells",
        request_serializer=pb.CellsRequest.SerializeToString,
        response_deserializer=pb.CellsDecision.FromString,
    )
    stream = channel.stream_stream(
        "/gnbsched.v1.Scheduler/StreamTtis",
        request_serializer=pb.CellsRequest.SerializeToString,
        response_deserializer=pb.CellsDecision.FromString,
    )
    batches, expected = [], []
    for slot in range(6):
        states = [_mac_slot(rng, c, slot) if k % 2 else _spectrum_slot(rng, c, slot) for k, c in enumerate(cells)]
        reqs = [slot_to_request(st, feedback=feedback[st.cell_id] or None) for st in states]
        bad = pb.SlotRequest()
        bad.CopyFrom(reqs[2])
        bad.tti_s = -1.0  # the third cell of every TTI is bad
        reqs[2] = bad
        batches.append(pb.CellsRequest(cells=reqs))
        want = []
        for k, st in enumerate(states):
            if k == 2:
                want.append(None)
                continue
            want.append(ref.schedule(st, feedback=feedback[st.cell_id] or None))
            feedback[st.cell_id] = {int(u): float(rng.uniform(0, 3000)) for u in st.user_ids[:3]}
        expected.append((states, want))
    answers = [client.schedule_cells(b) for b in batches[:2]] + [unary(batches[2], timeout=10)]
    answers += list(stream(iter(batches[3:]), timeout=20))
    for msg, (states, want) in zip(answers, expected, strict=True):
        assert [d.cell_id for d in msg.decisions] == [st.cell_id for st in states]  # in order
        for d, st, w in zip(msg.decisions, states, want, strict=True):
            if w is None:
                assert d.HasField("error") and d.error.code == "INVALID_ARGUMENT" and d.error.field == "tti_s"
                assert len(d.owner) == 0
            else:
                assert not d.HasField("error")
                _assert_same(d, st, w)
    tiny = pb.SlotRequest(cell_id="x", slot=0, preset="spectrum", user_ids=[1], resource_ids=[1], rx_power_dbm=[-70.0])
    too_many = pb.CellsRequest(cells=[tiny] * (_core().settings.max_cells_per_call + 1))
    with pytest.raises(grpc.RpcError) as info:
        unary(too_many, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith("cells: ")
    channel.close()


def test_violations_and_fallback_are_reported(served) -> None:
    _, client = served
    ref = _core()
    rng = np.random.default_rng(2)
    state = _spectrum_slot(rng, "viol", 0)
    msg = client.schedule(state, policy="all_to_first")
    expected = ref.schedule(state, policy="all_to_first")
    assert not expected.valid_before_repair and expected.violations
    _assert_same(msg, state, expected)
    assert {v.kind for v in msg.violations} >= {"cap_exceeded"}

    state = _spectrum_slot(rng, "fallback", 0)
    msg = client.schedule(state, policy="broken")
    _assert_same(msg, state, ref.schedule(state, policy="broken"))
    assert msg.policy == "greedy" and msg.fallback_reason == "error" and "model exploded" in msg.fallback


def test_stream_equals_core_in_order_and_one_to_one(served) -> None:
    _, client = served
    ref = _core()
    rng = np.random.default_rng(3)
    states = [_mac_slot(rng, "stream-lockstep", s) for s in range(20)]
    with client.stream() as stream:
        feedback: dict[int, float] = {}
        for state in states:
            msg = stream.decide(state, feedback=feedback)
            _assert_same(msg, state, ref.schedule(state, feedback=feedback))
            feedback = {int(u): 256.0 for u in state.user_ids}

    # pipelined: all requests written before any answer is read; answers come back in order
    ref = _core()
    states = [_mac_slot(rng, "stream-pipelined", s) for s in range(30)]
    answers = list(client.stub.StreamSlots(iter([slot_to_request(s) for s in states]), timeout=10))
    assert [a.slot for a in answers] == list(range(30))
    for state, msg in zip(states, answers, strict=True):
        _assert_same(msg, state, ref.schedule(state))


def test_stream_bad_message_is_answered_in_place_and_the_stream_goes_on(served) -> None:
    _, client = served
    ref = _core()
    rng = np.random.default_rng(4)
    s0, s1, s2 = (_mac_slot(rng, "stream-bad", s) for s in range(3))
    bad = slot_to_request(s1)
    bad.buffer_bits[3] = float("nan")
    raw = [
        slot_to_request(s0).SerializeToString(),
        bad.SerializeToString(),
        b"\x0a\xff\xff",
        slot_to_request(s2).SerializeToString(),
    ]
    # a raw-bytes stream, so that undecodable bytes reach the server too
    call = client.channel.stream_stream(
        "/gnbsched.v1.Scheduler/StreamSlots", response_deserializer=pb.SlotDecision.FromString
    )
    a0, a1, a2, a3 = list(call(iter(raw), timeout=10))
    _assert_same(a0, s0, ref.schedule(s0))
    assert a1.error.code == "INVALID_ARGUMENT" and a1.error.field == "buffer_bits[3]"
    assert "slot 1" in a1.error.message and "stream-bad" in a1.error.message
    assert len(a1.owner) == 0 and a1.slot == 1
    assert a2.error.code == "INVALID_ARGUMENT" and a2.error.field == "request"
    # the bad slot left the cell's history untouched: s2 decides as if s1 never came
    _assert_same(a3, s2, ref.schedule(s2))


def _valid_request() -> pb.SlotRequest:
    return slot_to_request(_spectrum_slot(np.random.default_rng(5), "invalid", 0), include_rate=False)


def _edit(**fields):
    def apply(req: pb.SlotRequest) -> None:
        for name, value in fields.items():
            if isinstance(value, list):
                getattr(req, name)[:] = value
            else:
                setattr(req, name, value)

    return apply


def _set_rate(rows: int, cols: int, values: list[float]):
    def apply(req: pb.SlotRequest) -> None:
        req.rate_bps.rows, req.rate_bps.cols = rows, cols
        req.rate_bps.values[:] = values

    return apply


def _set_utility(rows: int, cols: int, values: list[float]):
    def apply(req: pb.SlotRequest) -> None:
        req.utility.rows, req.utility.cols = rows, cols
        req.utility.values[:] = values

    return apply


def _set_both(req: pb.SlotRequest) -> None:
    _set_rate(7, 10, [1.0e6] * 70)(req)
    _set_utility(7, 10, [500.0] * 70)(req)


def _fading(rows: int, cols: int, values: list[float]):
    def apply(req: pb.SlotRequest) -> None:
        req.fading_gain.rows, req.fading_gain.cols = rows, cols
        req.fading_gain.values[:] = values

    return apply


def _set_feedback(ids: list[int], bits: list[float]):
    def apply(req: pb.SlotRequest) -> None:
        req.feedback.user_ids[:] = ids
        req.feedback.delivered_bits[:] = bits

    return apply


def _many_users(n: int):
    def apply(req: pb.SlotRequest) -> None:
        req.user_ids[:] = list(range(n))
        req.rx_power_dbm[:] = [-80.0] * n
        req.eligible[:] = []

    return apply


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_edit(user_ids=[100, 100, 102, 103, 104, 105, 106]), "user_ids[1]"),
        (_edit(rx_power_dbm=[float("nan")] * 7), "rx_power_dbm[0]"),
        (_edit(bandwidth_hz=[1e6, 1e6, -5.0] + [1e6] * 7), "bandwidth_hz[2]"),
        (_edit(eligible=[True, False]), "eligible"),
        (_edit(preset="lte"), "preset"),
        (_edit(policy="no-such-policy"), "policy"),
        (_edit(cell_id=""), "cell_id"),
        (_edit(deadline_ms=-1.0), "deadline_ms"),
        (_edit(max_resources_per_user=0), "max_resources_per_user"),
        (_edit(tti_s=0.0), "tti_s"),
        (_edit(resource_ids=[]), "resource_ids"),
        (_set_rate(7, 9, [1.0] * 63), "rate_bps"),
        (_set_rate(7, 10, [1.0] * 69), "rate_bps.values"),
        (_set_rate(7, 10, [float("inf")] * 70), "rate_bps[0][0]"),
        (_set_both, "rate_bps,utility"),
        (_set_utility(7, 9, [1.0] * 63), "utility"),
        (_set_utility(7, 10, [1.0] * 69 + [-1.0]), "utility[6][9]"),
        (_set_utility(7, 10, [float("nan")] * 70), "utility[0][0]"),
        (_set_feedback([100, 101], [1.0]), "feedback.delivered_bits"),
        (_set_feedback([100, 101], [1.0, float("nan")]), "feedback.delivered_bits[1]"),
        (_set_feedback([100, 100], [1.0, 2.0]), "feedback.user_ids[1]"),
        (_many_users(LIMITS["max_users"] + 1), "user_ids"),
        (_edit(slot=-1), "slot"),
        (_edit(cell_id="c" * 257), "cell_id"),
        (_edit(deadline_ms=1e9), "deadline_ms"),
        (_edit(rb_per_rbg=0), "rb_per_rbg"),
        (_edit(noise_density_dbm_hz=float("nan")), "noise_density_dbm_hz"),
        (_edit(rx_power_dbm=[-80.0] * 6 + [500.0]), "rx_power_dbm[6]"),
        (_edit(spectral_efficiency=[1.0] * 5), "spectral_efficiency"),
        (_edit(spectral_efficiency=[1.0] * 6 + [99.0]), "spectral_efficiency[6]"),
        (_edit(interference_dbm=[-100.0] * 3), "interference_dbm"),
        (_edit(available=[True] * 11), "available"),
        (_edit(buffer_bits=[-1.0] * 7), "buffer_bits[0]"),
        (_edit(resource_ids=[1, 2, 3, 4, 5, 6, 7, 8, 9, 9]), "resource_ids[9]"),
        (_fading(7, 10, [1.0] * 69 + [-1.0]), "fading_gain[6][9]"),
        (_fading(10, 7, [1.0] * 70), "fading_gain"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(served, edit, field: str) -> None:
    _, client = served
    req = _valid_request()
    edit(req)
    with pytest.raises(grpc.RpcError) as info:
        client.schedule_request(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith(f"{field}:"), info.value.details()
    # the server keeps serving
    assert len(client.schedule_request(_valid_request()).owner) == 10


def test_mac_rate_bps_is_bit_per_second_and_utility_is_used_as_given(served) -> None:
    """mac over gRPC: ``rate_bps`` (bit/s) → utility ``rate_bps · tti_s`` bits per RBG against
    buffers in bits; ``utility`` as given; both → INVALID_ARGUMENT naming both, on the unary call
    and in place on the stream (which goes on)."""
    _, client = served
    rate = [0.87e6, 0.87e6, 0.34e6, 1.69e6, 1.52e6, 1.69e6]  # 2 users × 3 RBGs, Mbit/s-scale

    def request(cell: str, *, rate_bps=None, utility=None, tti_s: float = 0.0005) -> pb.SlotRequest:
        req = pb.SlotRequest(
            cell_id=cell,
            slot=0,
            preset="mac",
            policy="pf",
            tti_s=tti_s,
            user_ids=[1, 2],
            buffer_bits=[2048.0, 512.0],
            resource_ids=[0, 1, 2],
        )
        for name, values in (("rate_bps", rate_bps), ("utility", utility)):
            if values is not None:
                m = getattr(req, name)
                m.rows, m.cols = 2, 3
                m.values[:] = values
        return req

    by_rate = client.schedule_request(request("g-units-rate", rate_bps=rate))
    assert list(by_rate.owner) == [1, 1, 2]  # 435 / 845 bits per RBG: user 2's 512 bits fit on one
    assert by_rate.utility == pytest.approx(0.87e6 * 0.0005 * 2 + 512.0)
    bits = [x * 0.0005 for x in rate]
    by_utility = client.schedule_request(request("g-units-utility", utility=bits))
    assert (list(by_utility.owner), by_utility.utility) == (list(by_rate.owner), by_rate.utility)
    raw = client.schedule_request(request("g-units-raw", utility=rate))  # weights are not converted
    assert raw.utility == pytest.approx(2048.0 + 512.0)
    longer = client.schedule_request(request("g-units-tti", rate_bps=rate, tti_s=0.002))
    assert longer.utility == pytest.approx(2048.0 + 512.0)

    both = request("g-units-both", rate_bps=rate, utility=bits)
    with pytest.raises(grpc.RpcError) as info:
        client.schedule_request(both)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert details.startswith("rate_bps,utility:") and "utility" in details.split(":", 1)[1], details
    answers = list(client.stub.StreamSlots(iter([both, request("g-units-after", rate_bps=rate)]), timeout=10))
    assert answers[0].error.code == "INVALID_ARGUMENT" and answers[0].error.field == "rate_bps,utility"
    assert "rate_bps" in answers[0].error.message and len(answers[0].owner) == 0
    assert list(answers[1].owner) == [1, 1, 2]


def test_slot_to_request_carries_the_mac_utility_exactly() -> None:
    """The simulators' mac utility (bits per slot) travels as ``utility``, spectrum's as ``rate_bps``
    (bit/s): decoding gives the very same matrix back (no · tti_s / tti_s round trip)."""
    rng = np.random.default_rng(11)
    for state in (_mac_slot(rng, "rt-mac", 0), _spectrum_slot(rng, "rt-spectrum", 0)):
        req = slot_to_request(state)
        assert req.HasField("utility") == (state.preset == "mac")
        assert req.HasField("rate_bps") == (state.preset == "spectrum")
        back = request_to_slot(req, max_users=64, max_resources=64).state
        np.testing.assert_array_equal(back.utility, state.utility)


def test_mac_without_physical_fields_names_spectral_efficiency(served) -> None:
    _, client = served
    req = slot_to_request(_mac_slot(np.random.default_rng(6), "mac-missing", 0), include_rate=False)
    req.ClearField("spectral_efficiency")
    with pytest.raises(grpc.RpcError) as info:
        client.schedule_request(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("spectral_efficiency:")


def test_undecodable_bytes_and_oversized_messages_do_not_break_the_server(served) -> None:
    _, client = served
    raw_call = client.channel.unary_unary(
        "/gnbsched.v1.Scheduler/Schedule", response_deserializer=pb.SlotDecision.FromString
    )
    with pytest.raises(grpc.RpcError) as info:
        raw_call(b"\x0a\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request:")

    big = _valid_request()
    big.rate_bps.rows, big.rate_bps.cols = 7, 10
    big.rate_bps.values[:] = [1.0] * (LIMITS["max_body_bytes"] // 8 + 10)  # > max_body_bytes
    with pytest.raises(grpc.RpcError) as info:
        client.schedule_request(big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(client.schedule_request(_valid_request()).owner) == 10


def test_blocking_io_policies_run_off_the_event_loop(served) -> None:
    _, client = served
    rng = np.random.default_rng(7)
    client.schedule(_spectrum_slot(rng, "probe-a", 0), policy="blocking_probe")
    client.schedule(_spectrum_slot(rng, "probe-b", 0), policy="inline_probe")
    assert _InlineProbe.threads == ["grpc-server"]  # the loop's thread
    assert len(_BlockingProbe.threads) == 1 and _BlockingProbe.threads[0] != "grpc-server"


def test_health_and_reflection_answer(served) -> None:
    _, client = served
    health = health_pb2_grpc.HealthStub(client.channel)
    for name in ("", "gnbsched.v1.Scheduler"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(client.channel)
    assert {"gnbsched.v1.Scheduler", "grpc.health.v1.Health"} <= set(db.get_services())
    service = descriptor_pool.DescriptorPool(db).FindServiceByName("gnbsched.v1.Scheduler")
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "Schedule": ("gnbsched.v1.SlotRequest", "gnbsched.v1.SlotDecision"),
        "StreamSlots": ("gnbsched.v1.SlotRequest", "gnbsched.v1.SlotDecision"),
        "ScheduleCells": ("gnbsched.v1.CellsRequest", "gnbsched.v1.CellsDecision"),
        "StreamTtis": ("gnbsched.v1.CellsRequest", "gnbsched.v1.CellsDecision"),
    }


class _FlakyStore(MemoryStore):
    up = False

    def ping(self) -> bool:
        return self.up


def test_health_follows_readiness_and_graceful_stop(monkeypatch) -> None:
    monkeypatch.setattr(grpc_server, "HEALTH_POLL_S", 0.05)
    store = _FlakyStore()
    core = ServiceCore(Settings(), store=store)
    core.preload()  # as ``gnbsched serve`` does: the store is then all readiness waits for
    srv = GrpcServerThread(core)
    channel = grpc.insecure_channel(srv.target)
    health = health_pb2_grpc.HealthStub(channel)

    def status() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service="gnbsched.v1.Scheduler"), timeout=5).status

    try:
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
        store.up = True
        deadline = time.monotonic() + 5
        while status() != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert status() == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop(grace_s=0.5)
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.SchedulerStub(channel).Schedule(_valid_request(), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_request_round_trip_keeps_the_slot() -> None:
    """slot_to_request → request_to_slot reproduces every field the policies read."""
    rng = np.random.default_rng(8)
    se_per_rbg = make_slot(
        "mac",
        [5, 3, 9],
        [0, 1],
        spectral_efficiency=rng.uniform(0.2, 1.2, (3, 2)),
        buffer_bits=[512.0, 0.0, 256.0],
        cell_id="rt",
        slot=5,
    )
    for state in (_spectrum_slot(rng, "rt", 3), _mac_slot(rng, "rt", 4), se_per_rbg):
        req = pb.SlotRequest.FromString(
            slot_to_request(
                state, feedback={int(state.user_ids[0]): 5.0}, policy="greedy", include_rate=state is not se_per_rbg
            ).SerializeToString()
        )
        dec = request_to_slot(req, max_users=4096, max_resources=4096)
        back = dec.state
        for name in (
            "user_ids",
            "resource_ids",
            "utility",
            "resource_available",
            "user_eligible",
            "bandwidth_hz",
            "buffer_bits",
            "rx_power_dbm",
            "spectral_efficiency",
        ):
            a, b = getattr(state, name), getattr(back, name)
            assert (a is None and b is None) or np.array_equal(a, b), name
        assert (back.preset, back.cell_id, back.slot, back.tti_s, back.max_resources_per_user) == (
            state.preset,
            state.cell_id,
            state.slot,
            state.tti_s,
            state.max_resources_per_user,
        )
        assert dec.policy == "greedy" and dec.feedback == {int(state.user_ids[0]): 5.0}


def test_failed_chain_is_unavailable_and_the_stream_goes_on() -> None:
    with (
        GrpcServerThread(ServiceCore(Settings(fallbacks=[]), store=MemoryStore(), policies=_policies())) as srv,
        SchedulerClient(srv.target) as client,
    ):
        rng = np.random.default_rng(9)
        s0, s1 = _spectrum_slot(rng, "no-chain", 0), _spectrum_slot(rng, "no-chain", 1)
        with pytest.raises(grpc.RpcError) as info:
            client.schedule(s0, policy="broken")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "model exploded" in info.value.details()
        answers = list(
            client.stub.StreamSlots(
                iter([slot_to_request(s0, policy="broken"), slot_to_request(s1, policy="greedy")]), timeout=10
            )
        )
        assert answers[0].error.code == "UNAVAILABLE" and len(answers[0].owner) == 0
        assert answers[1].policy == "greedy" and len(answers[1].owner) == s1.num_res


# ------------------------------------------------------------------------------- REST == gRPC


def _rest_body(req: pb.SlotRequest) -> dict:
    """The JSON body of POST /schedule equal to a SlotRequest (the REST contract)."""
    n, r = len(req.user_ids), len(req.resource_ids)
    users = [{"id": int(u)} for u in req.user_ids]
    for name in ("rx_power_dbm", "buffer_bits", "eligible"):
        for row, v in zip(users, getattr(req, name), strict=False):
            row[name] = v
    if len(req.spectral_efficiency) == n:
        for row, v in zip(users, req.spectral_efficiency, strict=True):
            row["spectral_efficiency"] = v
    if req.HasField("fading_gain"):
        for i, row in enumerate(users):
            row["fading_gain"] = list(req.fading_gain.values[i * r : (i + 1) * r])
    resources = [{"id": int(x)} for x in req.resource_ids]
    for name in ("bandwidth_hz", "available", "interference_dbm"):
        for row, v in zip(resources, getattr(req, name), strict=False):
            row[name] = v
    body = {"cell_id": req.cell_id, "slot": req.slot, "preset": req.preset, "users": users, "resources": resources}
    for name in ("policy", "deadline_ms", "max_resources_per_user", "tti_s"):
        if req.HasField(name):
            body[name] = getattr(req, name)
    for name in ("rate_bps", "utility"):
        if req.HasField(name):
            vals = list(getattr(req, name).values)
            body[name] = [vals[i * r : (i + 1) * r] for i in range(n)]
    if req.HasField("feedback"):
        body["feedback"] = {
            "delivered_bits": {
                str(u): b for u, b in zip(req.feedback.user_ids, req.feedback.delivered_bits, strict=True)
            }
        }
    return body


def test_same_request_same_decision_over_rest_and_grpc(uvicorn_server) -> None:
    import httpx

    from service.api.rest.app import create_app

    rest = uvicorn_server(create_app(_core()))
    with (
        GrpcServerThread(_core()) as srv,
        SchedulerClient(srv.target) as client,
        httpx.Client(base_url=rest.url, timeout=10) as http,
    ):
        rng = np.random.default_rng(10)
        fb_s: dict[int, float] = {}
        fb_m: dict[int, float] = {}
        for slot in range(8):
            fading = rng.exponential(1.0, (7, 10))
            spectrum = _spectrum_slot(rng, "both-spectrum", slot, fading_gain=fading)
            req_s = slot_to_request(spectrum, include_rate=False, feedback=fb_s)
            req_s.interference_dbm[:] = [INTERFERENCE_DBM] * 10
            req_s.fading_gain.rows, req_s.fading_gain.cols = fading.shape
            req_s.fading_gain.values[:] = fading.ravel().tolist()
            mac = _mac_slot(rng, "both-mac", slot)
            req_m = slot_to_request(mac, feedback=fb_m, policy="max_weight" if slot % 2 else "pf")
            req_v = slot_to_request(_spectrum_slot(rng, "both-viol", slot), policy="all_to_first")
            for req in (req_s, req_m, req_v):
                got = decision_as_dict(client.schedule_request(req))
                resp = http.post("/schedule", json=_rest_body(req))
                assert resp.status_code == 200, resp.text
                ref = resp.json()
                for key in ("owner", "policy", "fallback", "valid_before_repair", "violations", "utility"):
                    assert got[key] == ref[key], key
                assert {str(k): v for k, v in got["allocation"].items()} == ref["allocation"]
            fb_s = {int(u): float(rng.uniform(0, 1e6)) for u in spectrum.user_ids[:3]}
            fb_m = {int(u): float(rng.integers(0, 4) * 256) for u in mac.user_ids}

        # the same bad input is rejected by both, naming the same field
        bad = slot_to_request(_mac_slot(rng, "both-bad", 0))
        bad.buffer_bits[2] = -5.0
        with pytest.raises(grpc.RpcError) as info:
            client.schedule_request(bad)
        resp = http.post("/schedule", json=_rest_body(bad))
        assert resp.status_code == 422 and resp.json()["field"] == "users[2].buffer_bits"
        assert info.value.details().startswith("buffer_bits[2]:")


def test_binding_a_port_in_use_fails_clearly(served) -> None:
    srv, _ = served
    with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{srv.port}"):
        GrpcServerThread(_core(), port=srv.port)


def test_grpc_requests_are_counted_in_the_metrics() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from service.metrics import Metrics

    metrics = Metrics()
    core = ServiceCore(Settings(**LIMITS), store=MemoryStore(), policies=_policies(), observer=metrics)
    with GrpcServerThread(core) as srv, SchedulerClient(srv.target) as client:
        rng = np.random.default_rng(12)
        client.schedule(_mac_slot(rng, "metrics", 0))
        client.schedule(_spectrum_slot(rng, "metrics-fb", 0), policy="broken")
        bad = _valid_request()
        bad.preset = "mac"
        bad.cell_id = ""
        with pytest.raises(grpc.RpcError):
            client.schedule_request(bad)
        from service.api.grpc.convert import slot_to_request

        cells = [slot_to_request(_mac_slot(rng, f"metrics-c{k}", 0)) for k in range(3)]
        answer = client.schedule_cells(pb.CellsRequest(cells=[cells[0], bad, cells[1], cells[2]]))
        assert [d.HasField("error") for d in answer.decisions] == [False, True, False, False]
    body, _ = metrics.exposition()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }

    def requests(**labels: str) -> float:
        return sum(
            v
            for (name, lab), v in samples.items()
            if name == "gnbsched_requests_total" and labels.items() <= dict(lab).items()
        )

    default_mac = Settings(**LIMITS).default_policy("mac")  # the request names no policy
    assert requests(transport="grpc", preset="mac", policy=default_mac, outcome="ok") == 4  # 1 + 3 in the batch
    assert requests(transport="grpc", preset="spectrum", policy="broken", outcome="fallback") == 1
    assert requests(transport="grpc", preset="mac", outcome="rejected") == 2  # alone, and in the batch
    assert samples[("gnbsched_request_seconds_count", (("transport", "grpc"),))] == 3

    def stage(name: str, stage: str) -> float:
        return sum(
            v
            for (n, lab), v in samples.items()
            if n == name and dict(lab).get("stage") == stage and dict(lab).get("transport") == "grpc"
        )

    for name in ("decode", "state", "encode"):  # the server's own stages: the five decided slots
        assert stage("gnbsched_stage_seconds_count", name) == 5, name
        assert stage("gnbsched_stage_seconds_sum", name) > 0, name
