"""HARQ retransmissions in the request contract: ``users[].retx_bits`` / ``retx_rbgs`` (REST) and
``retx_bits`` / ``retx_rbgs`` (gRPC) are accepted and refused alike by both transports, with the
same messages; they travel in the slot record, the request digest and both renderers; and a real
``gnbsched serve`` answers a request that carries them, over REST and gRPC, with a decision that
serves the retransmissions first. (The bounds sweep of every rule is in
``test_transport_parity.py``, which covers these two fields too.)"""

from __future__ import annotations

import copy
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.contract import RULES, Limits, ScheduleArgs
from service.api.grpc.convert import request_to_slot, slot_to_request
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc
from service.api.rest.app import create_app
from service.api.rest.codec import decode_schedule
from service.api.rest.openapi import ScheduleRequest
from service.config import Settings
from service.core import ServiceCore
from service.errors import InvalidSlotError
from service.metrics import Metrics
from service.pag import is_valid
from service.pag.checks import RETX_NOT_FIRST
from service.policies.base import Policy, PolicyContext
from service.policies.registry import PolicySet, names
from service.serialize.slot_codec import slot_from_dict, slot_to_dict
from service.state import MemoryStore
from service.state.record import request_digest
from service.trace import rest_request
from service.types import SlotState

LIMITS = Limits(64, 64)
KNOWN = frozenset(names())

#: mac, 4 users, 6 RBGs (RBG 5 busy); user 20 has a 2000-bit block pending in 2 RBGs (and an empty
#: queue), user 30 a 600-bit block in 1 RBG; users 10 and 40 have new data only
BASE: dict[str, Any] = {
    "cell_id": "retx",
    "slot": 3,
    "preset": "mac",
    "users": [
        {"id": 10, "spectral_efficiency": 1.1758, "buffer_bits": 50_000.0, "retx_bits": 0.0, "retx_rbgs": 0},
        {"id": 20, "spectral_efficiency": 0.2344, "buffer_bits": 0.0, "retx_bits": 2000.0, "retx_rbgs": 2},
        {"id": 30, "spectral_efficiency": 0.6016, "buffer_bits": 900.0, "retx_bits": 600.0, "retx_rbgs": 1},
        {"id": 40, "spectral_efficiency": 1.1758, "buffer_bits": 40_000.0, "retx_bits": 0.0, "retx_rbgs": 0},
    ],
    "resources": [{"id": j, **({"available": False} if j == 5 else {})} for j in range(6)],
}
NEEDS = {20: 2, 30: 1}


def to_grpc(doc: dict[str, Any]) -> pb.SlotRequest:
    """The ``SlotRequest`` of a REST body whose users all carry the same fields (or none)."""
    req = pb.SlotRequest(cell_id=doc["cell_id"], slot=doc["slot"], preset=doc["preset"])
    if "policy" in doc:
        req.policy = doc["policy"]
    users, resources = doc["users"], doc["resources"]
    req.user_ids[:] = [u["id"] for u in users]
    for name in ("spectral_efficiency", "buffer_bits", "rx_power_dbm", "retx_bits", "retx_rbgs"):
        if any(name in u for u in users):
            getattr(req, name)[:] = [u[name] for u in users]
    req.resource_ids[:] = [r["id"] for r in resources]
    req.available[:] = [r.get("available", True) for r in resources]
    return req


def decode_rest(doc: Any) -> ScheduleArgs | InvalidSlotError:
    try:
        return decode_schedule(doc, LIMITS, KNOWN)
    except InvalidSlotError as exc:
        return exc


def decode_grpc(req: pb.SlotRequest) -> ScheduleArgs | InvalidSlotError:
    try:
        return request_to_slot(req, max_users=64, max_resources=64, known_policies=KNOWN)
    except InvalidSlotError as exc:
        return exc


def variant(**changes: Any) -> dict[str, Any]:
    """BASE with ``users[i].<field>`` changes: ``{"retx_rbgs": {1: 0}}`` (None removes the field)."""
    doc = copy.deepcopy(BASE)
    for name, per_user in changes.items():
        if name == "preset":
            doc["preset"] = per_user
            continue
        for i, value in per_user.items():
            if value is None:
                doc["users"][i].pop(name, None)
            else:
                doc["users"][i][name] = value
    return doc


ALL = dict.fromkeys(range(4))


# ----------------------------------------------------------------------------- both decoders

#: (changes, REST field, gRPC field) — None: accepted
CASES: list[tuple[dict[str, Any], str | None, str | None]] = [
    ({}, None, None),
    ({"retx_bits": ALL, "retx_rbgs": ALL}, None, None),  # absent: no retransmission pending
    ({"retx_bits": {1: 1e18}}, None, None),
    ({"retx_rbgs": {1: 6}}, None, None),  # R = 6 (one busy: then every available RBG serves P)
    ({"retx_rbgs": {1: 7}}, "users[1].retx_rbgs", "retx_rbgs[1]"),
    ({"retx_rbgs": {0: -1}}, "users[0].retx_rbgs", "retx_rbgs[0]"),
    ({"retx_bits": {2: -0.5}}, "users[2].retx_bits", "retx_bits[2]"),
    ({"retx_bits": {2: float("inf")}}, "users[2].retx_bits", "retx_bits[2]"),
    ({"retx_bits": {2: float("nan")}}, "users[2].retx_bits", "retx_bits[2]"),
    ({"retx_bits": {3: 1e19}}, "users[3].retx_bits", "retx_bits[3]"),
    ({"retx_rbgs": {3: 1}}, "users[3].retx_bits", "retx_bits[3]"),  # RBGs without bits
    ({"retx_bits": {3: 256.0}}, "users[3].retx_rbgs", "retx_rbgs[3]"),  # bits without RBGs
    ({"retx_rbgs": {1: 0}}, "users[1].retx_rbgs", "retx_rbgs[1]"),
    ({"retx_rbgs": ALL}, "users.retx_rbgs", "retx_rbgs"),  # one field for every user, the other for none
    ({"retx_bits": ALL}, "users.retx_bits", "retx_bits"),
    ({"preset": "spectrum"}, "users.retx_bits", "retx_bits"),  # mac only
    ({"preset": "spectrum", "retx_bits": ALL}, "users.retx_rbgs", "retx_rbgs"),
]


@pytest.mark.parametrize(("changes", "rest_field", "grpc_field"), CASES, ids=[repr(c[0])[:60] for c in CASES])
def test_rest_and_grpc_accept_and_refuse_the_same_retx_inputs(changes, rest_field, grpc_field):
    doc = variant(**changes)
    if doc["preset"] == "spectrum":  # the spectrum physical field instead of the mac one
        for u in doc["users"]:
            u.pop("spectral_efficiency")
            u.pop("buffer_bits")
            u["rx_power_dbm"] = -80.0
    rest, grpc_ = decode_rest(doc), decode_grpc(to_grpc(doc))
    if rest_field is None:
        assert isinstance(rest, ScheduleArgs), rest
        assert isinstance(grpc_, ScheduleArgs), grpc_
        for f in ("retx_bits", "retx_rbgs", "user_eligible", "utility"):
            a, b = getattr(rest.state, f), getattr(grpc_.state, f)
            assert (a is None and b is None) or (a.dtype == b.dtype and a.tobytes() == b.tobytes()), f
        return
    assert isinstance(rest, InvalidSlotError) and isinstance(grpc_, InvalidSlotError), (rest, grpc_)
    assert (rest.field, grpc_.field) == (rest_field, grpc_field), (rest, grpc_)
    assert rest.message == grpc_.message  # one check, one message


def test_decoded_columns_units_and_eligibility():
    args = decode_rest(BASE)
    assert isinstance(args, ScheduleArgs)
    s = args.state
    assert s.retx_bits.dtype == np.float64 and s.retx_bits.tolist() == [0.0, 2000.0, 600.0, 0.0]
    assert s.retx_rbgs.dtype == np.int64 and s.retx_rbgs.tolist() == [0, 2, 1, 0]
    assert s.user_eligible.tolist() == [True, True, True, True]  # user 20: empty queue, block pending
    assert s.retx_need().tolist() == [0, 2, 1, 0] and s.retx_order().tolist() == [1, 2]


def test_rest_users_without_the_fields_have_none_pending_and_a_user_with_one_is_refused():
    doc = variant(retx_bits={0: None, 3: None}, retx_rbgs={0: None, 3: None})
    args = decode_rest(doc)
    assert isinstance(args, ScheduleArgs)
    assert args.state.retx_bits.tolist() == [0.0, 2000.0, 600.0, 0.0]
    assert args.state.retx_rbgs.tolist() == [0, 2, 1, 0]
    for missing, other in (("retx_rbgs", "retx_bits"), ("retx_bits", "retx_rbgs")):
        err = decode_rest(variant(**{missing: {2: None}}))
        assert isinstance(err, InvalidSlotError) and err.field == f"users[2].{missing}", err
        assert other in err.message
    for value in (2.0, True, "2", None):
        err = decode_rest(variant(retx_rbgs={1: value}))
        assert isinstance(err, InvalidSlotError) and err.field.startswith("users[1].retx_"), (value, err)
    big = decode_rest(variant(retx_rbgs={1: 2**64}))
    assert isinstance(big, InvalidSlotError) and big.field == "users[1].retx_rbgs" and "[0, R]" in big.message


# ----------------------------------------------------------------------------- the documents and the wire


def test_rules_openapi_and_proto_declare_the_fields_with_units():
    bits, rbgs = RULES["users.retx_bits"], RULES["users.retx_rbgs"]
    assert (bits.kind, bits.unit, bits.lo, bits.hi, bits.proto) == ("float", "bit", 0.0, 1e18, "retx_bits")
    assert (rbgs.kind, rbgs.lo, rbgs.hi, rbgs.bounds(), rbgs.proto) == ("int", 0, None, "[0, R]", "retx_rbgs")
    user = ScheduleRequest.model_json_schema()["$defs"]["User"]["properties"]
    assert "[bit]" in user["retx_bits"]["anyOf"][0].get("description", user["retx_bits"].get("description", ""))
    assert user["retx_bits"]["anyOf"][0]["minimum"] == 0 and user["retx_bits"]["anyOf"][0]["maximum"] == 1e18
    assert user["retx_rbgs"]["anyOf"][0]["type"] == "integer" and user["retx_rbgs"]["anyOf"][0]["minimum"] == 0
    fields = pb.SlotRequest.DESCRIPTOR.fields_by_name
    assert (fields["retx_bits"].number, fields["retx_rbgs"].number) == (15, 16)
    assert fields["retx_bits"].type == fields["retx_bits"].TYPE_DOUBLE
    assert fields["retx_rbgs"].type == fields["retx_rbgs"].TYPE_INT64
    numbers = [f.number for f in pb.SlotRequest.DESCRIPTOR.fields]
    assert len(numbers) == len(set(numbers))


def test_slot_record_digest_and_renderers_carry_them():
    state = decode_rest(BASE).state  # type: ignore[union-attr]
    record = orjson.loads(orjson.dumps(slot_to_dict(state)))
    back = slot_from_dict(record)
    assert back.retx_bits.dtype == np.float64 and back.retx_bits.tobytes() == state.retx_bits.tobytes()
    assert back.retx_rbgs.dtype == np.int64 and back.retx_rbgs.tobytes() == state.retx_rbgs.tobytes()
    # a slot without them: no keys (its record and its digest are what they were)
    plain = decode_rest(variant(retx_bits=ALL, retx_rbgs=ALL)).state  # type: ignore[union-attr]
    assert "retx_bits" not in slot_to_dict(plain) and slot_from_dict(slot_to_dict(plain)).retx_rbgs is None
    d = request_digest(state, None, None)
    other = decode_rest(variant(retx_bits={1: 2500.0})).state  # type: ignore[union-attr]
    assert d != request_digest(other, None, None) != request_digest(plain, None, None)
    for got in (decode_rest(rest_request(state)), decode_grpc(slot_to_request(state))):
        assert isinstance(got, ScheduleArgs)
        assert got.state.retx_bits.tolist() == state.retx_bits.tolist()
        assert got.state.retx_rbgs.tolist() == state.retx_rbgs.tolist()


# ----------------------------------------------------------------------------- served first, end to end


def _held(allocation: dict[Any, list[int]]) -> dict[int, int]:
    return {int(k): len(v) for k, v in allocation.items()}


def test_a_real_serve_answers_retx_requests_over_rest_and_grpc_with_retransmissions_first(serve_process):
    proc = serve_process(grpc=True)
    proc.wait_ready()
    with httpx.Client(base_url=proc.url, timeout=30) as http, grpc.insecure_channel(proc.grpc_target) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        for k, policy in enumerate(["pf", "rr", "km", None]):  # None: the service's default (the student)
            doc = copy.deepcopy(BASE)
            if policy is not None:
                doc["policy"] = policy
            doc["cell_id"] = f"retx-rest-{k}"
            resp = http.post("/schedule", content=orjson.dumps(doc), headers={"content-type": "application/json"})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            req = to_grpc({**doc, "cell_id": f"retx-grpc-{k}"})
            answer = stub.Schedule(req, timeout=30)
            assert [-1 if o is None else o for o in body["owner"]] == list(answer.owner)
            assert body["policy"] == answer.policy and body["valid_before_repair"] == answer.valid_before_repair
            held = _held(body["allocation"])
            assert all(held.get(uid, 0) == need for uid, need in NEEDS.items()), (policy, body)
            if policy is not None:  # the baselines serve them first by construction
                assert body["valid_before_repair"] is True and body["violations"] == [], body
            else:  # the student does not know the fields: a raw output that breaks the rule is repaired
                assert body["valid_before_repair"] or {v["kind"] for v in body["violations"]} >= {RETX_NOT_FIRST}
        # refused alike, naming the field
        bad = variant(retx_rbgs={2: 0})
        resp = http.post("/schedule", content=orjson.dumps(bad), headers={"content-type": "application/json"})
        assert resp.status_code == 422 and resp.json()["field"] == "users[2].retx_rbgs", resp.text
        with pytest.raises(grpc.RpcError) as err:
            stub.Schedule(to_grpc(bad), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("retx_rbgs[2]: must be > 0 when retx_bits > 0")


class _NewDataFirst(Policy):
    """Every available RBG to the first user without a retransmission: breaks only retx_not_first."""

    name = "new_data_first"

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        need = state.retx_need()
        first = int(np.flatnonzero((need == 0) & state.user_eligible)[0]) if need is not None else 0
        return np.where(state.resource_available, first + 1, 0).astype(np.int64)


def test_a_rule_breaking_output_is_repaired_and_counted(uvicorn_server):
    settings = Settings(grpc_port=0, max_users=64, max_resources=64)
    core = ServiceCore(
        settings, store=MemoryStore(), policies=PolicySet({"new_data_first": _NewDataFirst}), observer=Metrics()
    )
    srv = uvicorn_server(create_app(core))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        doc = {**copy.deepcopy(BASE), "policy": "new_data_first", "max_resources_per_user": 6}
        body = c.post("/schedule", content=orjson.dumps(doc), headers={"content-type": "application/json"}).json()
        text = c.get("/metrics").text
    assert body["valid_before_repair"] is False
    assert {v["kind"] for v in body["violations"]} == {RETX_NOT_FIRST}
    # 20 (2000 bits) first, then 30; both take user 10's RBGs (all worth 790 bits to it): lowest ids first
    assert body["owner"] == [20, 20, 30, 10, 10, None], body
    state = decode_rest({k: v for k, v in doc.items() if k != "policy"}).state  # type: ignore[union-attr]
    assert is_valid(state, np.array([2, 2, 3, 1, 1, 0]))
    counted = sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "gnbsched_violations_total" and s.labels.get("kind") == RETX_NOT_FIRST
    )
    assert counted == 2  # one per short retransmission
