"""REST transport over a real uvicorn server on loopback (httpx client): the ``POST /schedule``
contract, every rejection (4xx naming the field, server keeps serving), metrics, readiness,
the policies endpoint, OpenAPI examples, and blocking policies kept off the event loop."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, ClassVar

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from testkit import AllToFirst, Broken, free_port

from service.api.contract import Limits
from service.api.rest.app import create_app
from service.api.rest.codec import decode_schedule
from service.api.rest.openapi import ScheduleRequest
from service.config import Settings
from service.core import ServiceCore
from service.errors import InvalidSlotError
from service.history import CellHistory
from service.metrics import Metrics
from service.pipeline import decide
from service.policies.base import Policy, PolicyContext
from service.policies.registry import PolicySet, names
from service.state import MemoryStore
from service.state.redis_store import RedisStore
from service.types import SlotState

LIMITS = dict(grpc_port=0, max_users=64, max_resources=32, max_body_bytes=200_000, fallbacks=["greedy"])
CONTRACT_KEYS = {
    "owner",
    "allocation",
    "policy",
    "fallback",
    "valid_before_repair",
    "violations",
    "utility",
    "timings_us",
}
STAGES = {"serialize", "policy", "check", "repair", "total"}


# ----------------------------------------------------------------------------- test policies


class _Slow(Policy):
    name = "slow"

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        time.sleep(0.02)
        return np.zeros(state.num_res, np.int64)


class _ThreadProbe(Policy):
    threads: ClassVar[list[int]] = []

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        type(self).threads.append(threading.get_ident())
        return np.zeros(state.num_res, np.int64)


class _BlockingProbe(_ThreadProbe):
    name = "blocking_probe"
    blocking_io = True
    threads: ClassVar[list[int]] = []


class _InlineProbe(_ThreadProbe):
    name = "inline_probe"
    threads: ClassVar[list[int]] = []


def _policies() -> PolicySet:
    return PolicySet(
        factories={
            "all_to_first": AllToFirst,
            "broken": Broken,
            "slow": _Slow,
            "blocking_probe": _BlockingProbe,
            "inline_probe": _InlineProbe,
        }
    )


def _core(store=None, **overrides: Any) -> ServiceCore:
    return ServiceCore(
        Settings(**{**LIMITS, **overrides}), store=store or MemoryStore(), policies=_policies(), observer=Metrics()
    )


@pytest.fixture(scope="module")
def server(uvicorn_server):
    """One server for the module; tests keep to their own cell ids."""
    return uvicorn_server(create_app(_core()))


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


# ----------------------------------------------------------------------------- requests


def spectrum_doc(cell: str, slot: int = 0, n: int = 7, r: int = 10, seed: int = 0, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1000 * slot)
    users = [{"id": 100 + i, "rx_power_dbm": float(rng.uniform(-110, -60))} for i in range(n)]
    users[-1]["eligible"] = False
    resources = [
        {
            "id": 1 + j,
            "bandwidth_hz": float(rng.uniform(1e6, 1e7)),
            "available": bool(j % 4 != 1),
            "interference_dbm": -105.0,
        }
        for j in range(r)
    ]
    return {"cell_id": cell, "slot": slot, "preset": "spectrum", "users": users, "resources": resources, **extra}


def mac_doc(cell: str, slot: int = 0, n: int = 8, r: int = 6, seed: int = 0, **extra: Any) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1000 * slot)
    ids = rng.permutation(12)[:n] + 1  # the population changes from slot to slot
    users = [
        {
            "id": int(u),
            "spectral_efficiency": float(rng.choice([0.2344, 0.6016, 1.1758])),
            "buffer_bits": float(rng.integers(0, 10) * 256),
        }
        for u in ids
    ]
    resources = [{"id": j, "bandwidth_hz": 1.44e6} for j in range(r)]
    return {"cell_id": cell, "slot": slot, "preset": "mac", "users": users, "resources": resources, **extra}


def post(client: httpx.Client, doc: Any) -> httpx.Response:
    content = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return client.post("/schedule", content=content, headers={"content-type": "application/json"})


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# ----------------------------------------------------------------------------- the contract


def test_spectrum_decision_follows_the_contract_and_equals_decide(client) -> None:
    doc = spectrum_doc("contract-spectrum", policy="km")
    resp = post(client, doc)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert CONTRACT_KEYS <= body.keys()
    assert STAGES <= body["timings_us"].keys()
    assert body["policy"] == "km" and body["fallback"] is None
    assert body["valid_before_repair"] is True and body["violations"] == []

    owner = body["owner"]
    assert len(owner) == len(doc["resources"])
    user_ids = {u["id"] for u in doc["users"]}
    for res, uid in zip(doc["resources"], owner, strict=True):
        if not res["available"]:
            assert uid is None
        assert uid is None or uid in user_ids
    assert doc["users"][-1]["id"] not in owner  # ineligible
    taken = [u for u in owner if u is not None]
    assert len(taken) == len(set(taken))  # spectrum: one channel per user
    expected_alloc: dict[str, list[int]] = {}
    for res, uid in zip(doc["resources"], owner, strict=True):
        if uid is not None:
            expected_alloc.setdefault(str(uid), []).append(res["id"])
    assert body["allocation"] == expected_alloc

    state = decode_schedule(doc).state
    ref = decide(state, CellHistory.empty(), "km", policies=PolicySet(), fallbacks=["greedy"])
    expected_owner = [None if k == 0 else int(state.user_ids[k - 1]) for k in ref.owner.tolist()]
    assert owner == expected_owner
    assert body["utility"] == pytest.approx(ref.utility, rel=1e-12)


@pytest.mark.parametrize("policy", ["pf", "rr"])
def test_mac_over_slots_with_feedback_equals_the_in_process_core(client, policy: str) -> None:
    """Stateful policies: the server's per-cell history (with feedback) evolves as the core's."""
    ref = ServiceCore(Settings(**LIMITS), store=MemoryStore())
    cell = f"mac-feedback-{policy}"
    feedback: dict[str, float] | None = None
    owners_seen = set()
    for slot in range(25):
        doc = mac_doc(cell, slot, seed=3, policy=policy)
        if feedback is not None:
            doc["feedback"] = {"delivered_bits": feedback}
        resp = post(client, doc)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        args = decode_schedule(doc)
        want = ref.schedule(args.state, policy=args.policy, feedback=args.feedback)
        state = args.state
        assert body["owner"] == [None if k == 0 else int(state.user_ids[k - 1]) for k in want.owner.tolist()], slot
        assert body["policy"] == policy
        owners_seen.update(u for u in body["owner"] if u is not None)
        # deliver half of what each scheduled user was given (some transport blocks lost)
        served = {str(u["id"]): 0.0 for u in doc["users"]}
        util = state.utility
        for j, k in enumerate(want.owner.tolist()):
            if k:
                served[str(state.user_ids[k - 1])] += float(util[k - 1, j])
        feedback = {
            uid: min(bits, float(doc["users"][i]["buffer_bits"])) * (0.5 if i % 2 else 1.0)
            for i, (uid, bits) in enumerate(served.items())
        }
    assert len(owners_seen) > 4  # the schedule really rotated over users


def test_a_retried_slot_answers_the_same_bytes_marked_replayed(client) -> None:
    doc = mac_doc("retried", 4, seed=2, policy="pf")
    first = post(client, doc)
    again = post(client, doc)
    assert first.status_code == again.status_code == 200
    assert first.json()["replayed"] is False and again.json()["replayed"] is True
    assert again.content == first.content.replace(b'"replayed":false', b'"replayed":true')
    assert "decode" in first.json()["timings_us"]  # the transport's own stage is kept with the decision
    older = post(client, mac_doc("retried", 3, seed=2, policy="pf"))
    assert older.status_code == 409 and older.json()["field"] == "slot", older.text
    other = post(client, mac_doc("retried", 4, seed=9, policy="pf"))  # slot 4 with other content
    assert other.status_code == 409 and older.json()["error"] == "slot_conflict", other.text
    restarted = post(client, mac_doc("retried", 0, seed=2, policy="pf", epoch=1))  # a new epoch
    assert restarted.status_code == 200 and restarted.json()["replayed"] is False
    stale = post(client, mac_doc("retried", 9, seed=2, policy="pf", epoch=0))
    assert stale.status_code == 409 and stale.json()["field"] == "epoch", stale.text


def test_every_cell_of_a_tti_in_one_call_decides_as_alone(client) -> None:
    """POST /schedule/batch: each cell decided exactly as by POST /schedule, in order, a bad cell
    answered in its place with the status a single call would have had."""
    single = [mac_doc(f"b-single-{k}", 3, seed=k, policy="pf") for k in range(4)]
    batch = [mac_doc(f"b-batch-{k}", 3, seed=k, policy="pf") for k in range(4)]
    batch[1]["tti_s"] = -1.0  # a bad cell
    batch.append(mac_doc("b-batch-0", 2, seed=0, policy="pf"))  # older than its cell's slot 3: 409

    def post_batch(doc: Any) -> httpx.Response:
        return client.post("/schedule/batch", content=orjson.dumps(doc), headers={"content-type": "application/json"})

    resp = post_batch({"cells": batch})
    assert resp.status_code == 200, resp.text
    answers = resp.json()["decisions"]
    assert len(answers) == 5
    for k in (0, 2, 3):
        alone = post(client, single[k]).json()
        assert answers[k]["cell_id"] == f"b-batch-{k}"
        assert answers[k]["owner"] == alone["owner"] and answers[k]["utility"] == alone["utility"]
    assert answers[1]["error"] == "invalid_request" and answers[1]["field"] == "tti_s" and answers[1]["status"] == 422
    assert answers[4]["error"] == "slot_conflict" and answers[4]["status"] == 409
    again = post_batch({"cells": batch[:1]}).json()["decisions"][0]  # a retried cell: replayed
    assert again["replayed"] is True and again["owner"] == answers[0]["owner"]
    bad = post_batch({"cells": "nope"})
    assert bad.status_code == 422 and bad.json()["field"] == "cells"
    assert post_batch({"cell": []}).status_code == 422


def test_rate_matrix_is_the_utility(client) -> None:
    rate = [[4.0e6, 2.0e6, 1.0e6], [3.9e6, 0.5e6, 2.5e6]]
    doc = {
        "cell_id": "rate",
        "slot": 0,
        "preset": "spectrum",
        "users": [{"id": 1}, {"id": 2}],
        "resources": [{"id": 10}, {"id": 20}, {"id": 30}],
        "rate_bps": rate,
        "policy": "km",
    }
    body = post(client, doc).json()
    assert body["owner"] == [1, None, 2]
    assert body["utility"] == pytest.approx(4.0e6 + 2.5e6)


def test_mac_rate_bps_is_bit_per_second_and_utility_is_used_as_given(client) -> None:
    """mac over REST: ``rate_bps`` in bit/s becomes ``rate_bps · tti_s`` bits per RBG, compared
    with the buffers in bits; ``utility`` is taken as it is; both together are refused."""
    users = [{"id": 1, "buffer_bits": 2048.0}, {"id": 2, "buffer_bits": 512.0}]
    resources = [{"id": 0}, {"id": 1}, {"id": 2}]
    rate = [[0.87e6, 0.87e6, 0.34e6], [1.69e6, 1.52e6, 1.69e6]]  # Mbit/s-scale RBG rates
    base = {"slot": 0, "preset": "mac", "policy": "pf", "tti_s": 0.0005, "users": users, "resources": resources}
    by_rate = post(client, {**base, "cell_id": "units-rate", "rate_bps": rate}).json()
    # 435/845 bits per RBG: user 2's 512 bits fit on one RBG, user 1 takes the other two
    assert by_rate["owner"] == [1, 1, 2], by_rate
    assert by_rate["utility"] == pytest.approx(0.87e6 * 0.0005 * 2 + 512.0)
    bits = (np.array(rate) * 0.0005).tolist()
    by_utility = post(client, {**base, "cell_id": "units-utility", "utility": bits}).json()
    assert (by_utility["owner"], by_utility["utility"]) == (by_rate["owner"], by_rate["utility"])
    # a longer TTI carries more bits per RBG: user 1's 2048 bits fit in two RBGs of 1740 bits
    longer = post(client, {**base, "cell_id": "units-tti", "tti_s": 0.002, "rate_bps": rate}).json()
    assert longer["utility"] == pytest.approx(2048.0 + 512.0)
    # the weights are not converted: 1000× the bits per slot, against the same buffers in bits,
    # means every RBG exceeds every buffer (what the old mac reading of rate_bps amounted to)
    raw = post(client, {**base, "cell_id": "units-raw", "utility": rate}).json()
    assert raw["utility"] == pytest.approx(2048.0 + 512.0)
    assert sorted(u for u in raw["owner"] if u is not None) == [1, 2]  # one RBG each is enough
    both = post(client, {**base, "cell_id": "units-both", "rate_bps": rate, "utility": bits})
    assert both.status_code == 422
    err = both.json()
    assert err["error"] == "invalid_request" and err["field"] == "rate_bps,utility"
    assert "rate_bps" in err["message"] and "utility" in err["message"]


def test_default_policy_per_preset_and_fallback_is_reported(client) -> None:
    defaults = Settings(**LIMITS)  # the configured per-preset defaults serve, without falling back
    for preset, body in (
        ("spectrum", post(client, spectrum_doc("default-s")).json()),
        ("mac", post(client, mac_doc("default-m")).json()),
    ):
        assert body["policy"] == defaults.default_policy(preset) and body["fallback"] is None, body
    body = post(client, spectrum_doc("fallback", policy="broken")).json()
    assert body["policy"] == "greedy"
    assert body["fallback_reason"] == "error" and "model exploded" in body["fallback"]
    body = post(client, spectrum_doc("deadline", policy="slow", deadline_ms=1.0)).json()
    assert body["policy"] == "greedy" and body["fallback_reason"] == "deadline"


def test_violations_are_reported_and_repaired(client) -> None:
    doc = spectrum_doc("violations", policy="all_to_first")
    body = post(client, doc).json()
    assert body["policy"] == "all_to_first" and body["valid_before_repair"] is False
    kinds = {v["kind"] for v in body["violations"]}
    assert {"busy_resource", "cap_exceeded"} <= kinds
    taken = [u for u in body["owner"] if u is not None]
    assert len(taken) == len(set(taken))  # repaired: one channel per user


def test_blocking_policies_run_in_the_thread_pool_others_inline(server, client) -> None:
    loop_thread = server.thread.ident
    assert post(client, spectrum_doc("probe-a", policy="blocking_probe")).status_code == 200
    assert post(client, spectrum_doc("probe-b", policy="inline_probe")).status_code == 200
    assert _InlineProbe.threads == [loop_thread]
    assert len(_BlockingProbe.threads) == 1 and _BlockingProbe.threads[0] != loop_thread


def test_openapi_documents_the_contract_and_its_examples_are_served(client) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/schedule"]["post"]
    content = op["requestBody"]["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/ScheduleRequest"}
    schemas = spec["components"]["schemas"]
    assert {"ScheduleRequest", "ScheduleResponse", "ErrorBody", "User", "Resource"} <= schemas.keys()
    assert {"200", "400", "413", "422"} <= op["responses"].keys()
    assert set(schemas["ScheduleResponse"]["properties"]) >= CONTRACT_KEYS
    examples = content["examples"]
    assert len(examples) >= 3
    for name, ex in examples.items():
        ScheduleRequest.model_validate(ex["value"])  # the documented model accepts it
        resp = post(client, {**ex["value"], "cell_id": f"example-{name}"})
        assert resp.status_code == 200, (name, resp.text)
    for path in ("/healthz", "/readyz", "/v1/policies", "/metrics"):
        assert path in spec["paths"]


# ----------------------------------------------------------------------------- rejections


def _set(path: str, value: Any):
    """Mutation: set ``doc[a][b]...`` (ints index lists) to ``value``."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def edit(doc: dict) -> dict:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return doc

    return edit


def _drop(path: str):
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def edit(doc: dict) -> dict:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
        return doc

    return edit


def _rate(rows: Any):
    def edit(doc: dict) -> dict:
        doc["rate_bps"] = rows
        for u in doc["users"]:
            u.pop("rx_power_dbm", None)
        return doc

    return edit


def _fading(doc: dict) -> dict:
    for u in doc["users"]:
        u["fading_gain"] = [1.0] * len(doc["resources"])
    return doc


def _mac(edit=None):
    def make(_: dict) -> dict:
        doc = mac_doc("reject-mac")
        return edit(doc) if edit else doc

    return make


GOOD_RATE = [[1e6] * 10 for _ in range(7)]
REJECTIONS: list[tuple[str, Any, int, str]] = [
    ("malformed json", b'{"cell_id": "x", ', 400, "body"),
    ("NaN literal", b'{"cell_id": "x", "slot": NaN}', 400, "body"),
    ("infinite number", b'{"cell_id": "x", "slot": 0, "tti_s": 1e999}', 400, "body"),
    ("not an object", b"[1, 2, 3]", 422, "body"),
    ("not utf-8", b'{"cell_id": "\xff"}', 400, "body"),
    ("unknown top-level field", _set("polcy", "km"), 422, "polcy"),
    ("missing cell_id", _drop("cell_id"), 422, "cell_id"),
    ("cell_id not a string", _set("cell_id", 7), 422, "cell_id"),
    ("missing slot", _drop("slot"), 422, "slot"),
    ("slot as string", _set("slot", "3"), 422, "slot"),
    ("slot as boolean", _set("slot", True), 422, "slot"),
    ("negative slot", _set("slot", -1), 422, "slot"),
    ("slot beyond int64", _set("slot", 2**64 - 1), 422, "slot"),
    ("unknown preset", _set("preset", "lte"), 422, "preset"),
    ("unknown policy", _set("policy", "no_such_policy"), 422, "policy"),
    ("policy not a string", _set("policy", 3), 422, "policy"),
    ("deadline zero", _set("deadline_ms", 0), 422, "deadline_ms"),
    ("deadline as string", _set("deadline_ms", "5"), 422, "deadline_ms"),
    ("cap zero", _set("max_resources_per_user", 0), 422, "max_resources_per_user"),
    ("cap as float", _set("max_resources_per_user", 1.5), 422, "max_resources_per_user"),
    ("negative tti", _set("tti_s", -0.0005), 422, "tti_s"),
    ("users not a list", _set("users", {"id": 1}), 422, "users"),
    ("users empty", _set("users", []), 422, "users"),
    ("user not an object", _set("users.1", 5), 422, "users[1]"),
    ("user unknown field", _set("users.0.speed", 3), 422, "users[0].speed"),
    ("user id as string", _set("users.2.id", "102"), 422, "users[2].id"),
    ("user id as float", _set("users.0.id", 100.5), 422, "users[0].id"),
    ("user id beyond int64", _set("users.0.id", 2**63), 422, "users[0].id"),
    ("user id missing", _drop("users.3.id"), 422, "users[3].id"),
    ("duplicate user ids", _set("users.4.id", 101), 422, "users[4].id"),
    ("duplicate resource ids", _set("resources.5.id", 1), 422, "resources[5].id"),
    ("rx power as string", _set("users.1.rx_power_dbm", "-70"), 422, "users[1].rx_power_dbm"),
    ("rx power as boolean", _set("users.0.rx_power_dbm", True), 422, "users[0].rx_power_dbm"),
    ("rx power missing for one user", _drop("users.1.rx_power_dbm"), 422, "users[1].rx_power_dbm"),
    ("rx power absurd", _set("users.0.rx_power_dbm", 1e6), 422, "users[0].rx_power_dbm"),
    ("negative bandwidth", _set("resources.1.bandwidth_hz", -5e6), 422, "resources[1].bandwidth_hz"),
    ("zero bandwidth", _set("resources.0.bandwidth_hz", 0), 422, "resources[0].bandwidth_hz"),
    ("available as string", _set("resources.0.available", "yes"), 422, "resources[0].available"),
    ("eligible null", _set("users.0.eligible", None), 422, "users[0].eligible"),
    ("interference as list", _set("resources.2.interference_dbm", [1]), 422, "resources[2].interference_dbm"),
    (
        "fading gain too short",
        lambda d: _set("users.2.fading_gain", [1.0, 2.0])(_fading(d)),
        422,
        "users[2].fading_gain",
    ),
    (
        "fading gain for some users only",
        lambda d: _drop("users.3.fading_gain")(_fading(d)),
        422,
        "users[3].fading_gain",
    ),
    (
        "spectrum without powers or rates",
        lambda d: [u.pop("rx_power_dbm") for u in d["users"]] and d,
        422,
        "users.rx_power_dbm",
    ),
    ("rate_bps not a list", _rate({"a": 1}), 422, "rate_bps"),
    ("rate_bps missing a row", _rate(GOOD_RATE[:-1]), 422, "rate_bps"),
    ("rate_bps short row", _rate([*GOOD_RATE[:1], [1e6] * 9, *GOOD_RATE[2:]]), 422, "rate_bps[1]"),
    ("rate_bps row not a list", _rate([*GOOD_RATE[:2], 5, *GOOD_RATE[3:]]), 422, "rate_bps[2]"),
    ("rate_bps negative", _rate([[1e6, -1.0, *[1e6] * 8], *GOOD_RATE[1:]]), 422, "rate_bps[0][1]"),
    ("rate_bps boolean", _rate([GOOD_RATE[0], [True, *[1e6] * 9], *GOOD_RATE[2:]]), 422, "rate_bps[1][0]"),
    ("rate_bps string", _rate([*GOOD_RATE[:6], [*[1e6] * 9, "1e6"]]), 422, "rate_bps[6][9]"),
    ("rate_bps and utility", lambda d: {**_rate(GOOD_RATE)(d), "utility": [[1.0] * 10] * 7}, 422, "rate_bps,utility"),
    (
        "mac rate_bps and utility",
        _mac(lambda d: {**d, "rate_bps": [[1.7e6] * 6] * 8, "utility": [[850.0] * 6] * 8}),
        422,
        "rate_bps,utility",
    ),
    ("utility missing a row", lambda d: {**d, "utility": [[1.0] * 10] * 6}, 422, "utility"),
    ("utility negative", lambda d: {**d, "utility": [[1.0] * 10] * 6 + [[1.0] * 9 + [-0.5]]}, 422, "utility[6][9]"),
    ("utility string", lambda d: {**d, "utility": [["1"] + [1.0] * 9] + [[1.0] * 10] * 6}, 422, "utility[0][0]"),
    (
        "mac without spectral efficiency",
        _mac(lambda d: [u.pop("spectral_efficiency") for u in d["users"]] and d),
        422,
        "users.spectral_efficiency",
    ),
    ("mac negative buffer", _mac(_set("users.0.buffer_bits", -1)), 422, "users[0].buffer_bits"),
    (
        "mac spectral efficiency mixes forms",
        _mac(_set("users.1.spectral_efficiency", [1.0] * 6)),
        422,
        "users[1].spectral_efficiency",
    ),
    (
        "mac spectral efficiency row too long",
        _mac(
            lambda d: (
                [u.update(spectral_efficiency=[1.0] * (7 if i == 4 else 6)) for i, u in enumerate(d["users"])] and d
            )
        ),
        422,
        "users[4].spectral_efficiency",
    ),
    ("feedback not an object", _set("feedback", [1]), 422, "feedback"),
    ("feedback unknown field", _set("feedback", {"acks": {}}), 422, "feedback.acks"),
    ("feedback key not an id", _set("feedback", {"delivered_bits": {"abc": 5}}), 422, "feedback.delivered_bits.abc"),
    ("feedback negative bits", _set("feedback", {"delivered_bits": {"101": -5}}), 422, "feedback.delivered_bits.101"),
    ("feedback bits as string", _set("feedback", {"delivered_bits": {"101": "5"}}), 422, "feedback.delivered_bits.101"),
    ("too many users", lambda d: spectrum_doc("big", n=65), 413, "users"),
    ("too many resources", lambda d: spectrum_doc("big", r=33), 413, "resources"),
    ("body too large", lambda d: {**d, "cell_id": "x" * 250_000}, 413, "body"),
]


@pytest.mark.parametrize(("edit", "status", "field"), [pytest.param(e, s, f, id=name) for name, e, s, f in REJECTIONS])
def test_bad_input_is_4xx_naming_the_field(client, edit, status: int, field: str) -> None:
    doc = edit if isinstance(edit, bytes) else edit(copy.deepcopy(spectrum_doc("reject")))
    resp = post(client, doc)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["field"] == field, body
    assert body["message"] and body["error"]


def test_server_keeps_serving_after_bad_input(client) -> None:
    for _, edit, _, _ in REJECTIONS:
        doc = edit if isinstance(edit, bytes) else edit(copy.deepcopy(spectrum_doc("reject")))
        assert post(client, doc).status_code < 500
    assert client.get("/healthz").status_code == 200
    assert client.get("/schedule").status_code == 405
    assert client.post("/schedule", content=b"").status_code == 400
    resp = post(client, spectrum_doc("after-bad-input"))
    assert resp.status_code == 200 and len(resp.json()["owner"]) == 10


def test_oversized_chunked_body_is_refused_without_a_length(client) -> None:
    def chunks():
        yield b'{"cell_id": "'
        for _ in range(30):
            yield b"x" * 10_000

    resp = client.post("/schedule", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["field"] == "body"
    assert post(client, spectrum_doc("after-chunked")).status_code == 200


# ----------------------------------------------------------------------------- metrics, readiness, policies


def test_the_served_app_freezes_its_startup_objects_and_serves_on(uvicorn_server) -> None:
    """``gnbsched serve`` builds its app with ``freeze_gc``: once started, the startup objects are
    out of the collector's scans, and the app serves as before; without it nothing is frozen."""
    import gc

    gc.unfreeze()
    try:
        srv = uvicorn_server(create_app(_core()))
        assert gc.get_freeze_count() == 0
        srv = uvicorn_server(create_app(_core(), freeze_gc=True))
        assert gc.get_freeze_count() > 1000
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert post(c, spectrum_doc("frozen", 0, policy="km")).status_code == 200
    finally:
        gc.unfreeze()


def test_metrics_count_outcomes_stages_repairs_and_fallbacks(uvicorn_server, promtool_check) -> None:
    srv = uvicorn_server(create_app(_core()))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for slot in range(3):
            assert post(c, spectrum_doc("m", slot, policy="km")).status_code == 200
        assert post(c, spectrum_doc("m", 3, policy="broken")).status_code == 200
        assert post(c, spectrum_doc("m", 4, policy="all_to_first")).status_code == 200
        assert post(c, mac_doc("m-mac", 0)).status_code == 200
        assert post(c, b"{not json").status_code == 400
        assert post(c, {**spectrum_doc("m"), "preset": "mac", "users": []}).status_code == 422
        resp = c.get("/metrics")
        text = resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    promtool_check(text)
    m = lambda name, **labels: metric(text, name, **labels)  # noqa: E731
    assert m("gnbsched_requests_total", transport="rest", preset="spectrum", policy="km", outcome="ok") == 3
    assert m("gnbsched_requests_total", preset="spectrum", policy="broken", outcome="fallback") == 1
    assert m("gnbsched_requests_total", preset="spectrum", policy="all_to_first", outcome="ok") == 1
    default_mac = Settings(**LIMITS).default_policy("mac")  # the mac request names no policy
    assert m("gnbsched_requests_total", preset="mac", policy=default_mac, outcome="ok") == 1
    assert m("gnbsched_requests_total", outcome="rejected", policy="none") == 2
    assert m("gnbsched_requests_total", outcome="rejected", preset="mac") == 1  # the preset was readable
    assert m("gnbsched_decisions_total") == 6
    assert m("gnbsched_decisions_total", policy="greedy") == 1  # served the broken one
    assert m("gnbsched_valid_before_repair_total") == 5
    assert m("gnbsched_repairs_total", policy="all_to_first") == 1
    assert m("gnbsched_violations_total", kind="busy_resource") >= 1
    assert m("gnbsched_violations_total", kind="cap_exceeded") >= 1
    assert m("gnbsched_fallbacks_total", requested="broken", served="greedy", reason="error") == 1
    for stage in STAGES:
        assert m("gnbsched_stage_seconds_count", transport="rest", stage=stage) == 6
    for stage in ("decode", "state", "encode"):  # the server's own stages: the 6 decided requests
        assert m("gnbsched_stage_seconds_count", transport="rest", stage=stage) == 6, stage
        assert m("gnbsched_stage_seconds_sum", transport="rest", stage=stage) > 0, stage
    assert m("gnbsched_request_seconds_count", transport="rest") == 6
    assert m("gnbsched_request_seconds_bucket", transport="rest", le="5.0") == 6
    assert m("gnbsched_state_store_up") == 1
    assert m("gnbsched_state_store_errors_total") == 0
    assert m("gnbsched_policy_info", policy="km", version="1") == 1


def test_readiness_policies_loaded_and_metadata(uvicorn_server) -> None:
    srv = uvicorn_server(create_app(_core(preload_policies=["km", "all_to_first"])))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["ready"] is True and body["degraded"] is False and body["store"] == "memory"
        assert {"km", "all_to_first"} <= set(body["policies_loaded"])
        meta = c.get("/v1/policies").json()
        defaults = Settings(**LIMITS)
        assert meta["default"] == {p: defaults.default_policy(p) for p in ("spectrum", "mac")}
        assert meta["fallbacks"] == ["greedy"]
        by_name = {p["name"]: p for p in meta["policies"]}
        assert set(names()) | set(_policies().factories) == set(by_name)
        assert by_name["km"]["loaded"] is True and by_name["pf"]["loaded"] is False
        assert by_name["blocking_probe"]["blocking_io"] is True
        for p in by_name.values():
            assert p["version"] and set(p["presets"]) <= {"spectrum", "mac"}
        text = c.get("/metrics").text
        assert metric(text, "gnbsched_policy_info", policy="all_to_first", version="1") == 1


def test_not_ready_when_a_policy_cannot_load(uvicorn_server) -> None:
    srv = uvicorn_server(create_app(_core(preload_policies=["no_such_policy"])))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        resp = c.get("/readyz")
        assert resp.status_code == 503
        assert "no_such_policy" in resp.json()["preload_error"]
        assert c.get("/healthz").status_code == 200
        assert post(c, spectrum_doc("still-serves")).status_code == 200


def test_state_store_down_refuses_slots_as_retryable(uvicorn_server) -> None:
    """No write goes around the store: a slot whose state cannot be read is refused with 503 and
    Retry-After, and readiness says degraded."""
    dead = free_port()  # a port nobody listens on
    srv = uvicorn_server(create_app(_core(store=RedisStore(f"redis://127.0.0.1:{dead}/0"))))
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["degraded"] is True and ready.json()["store_ok"] is False
        for slot in range(4):
            resp = post(c, mac_doc("degraded", slot, seed=9, policy="pf"))
            assert resp.status_code == 503 and resp.headers["retry-after"] == "1", resp.text
            assert resp.json()["error"] == "store_unavailable" and resp.json()["field"] == "slot"
        text = c.get("/metrics").text
    assert metric(text, "gnbsched_state_store_errors_total", op="load") == 4
    assert metric(text, "gnbsched_state_store_up") == 0
    assert metric(text, "gnbsched_requests_total", outcome="ok") == 0
    assert metric(text, "gnbsched_requests_total", outcome="error") == 4


# ----------------------------------------------------------------------------- decoder robustness

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_PATHS = [
    *(
        k
        for k in (
            "cell_id",
            "slot",
            "preset",
            "policy",
            "deadline_ms",
            "max_resources_per_user",
            "tti_s",
            "rb_per_rbg",
            "noise_density_dbm_hz",
            "users",
            "resources",
            "rate_bps",
            "utility",
            "feedback",
        )
    ),
    *(
        f"users.{i}.{f}"
        for i in (0, 3)
        for f in ("id", "rx_power_dbm", "eligible", "buffer_bits", "spectral_efficiency", "fading_gain")
    ),
    *(f"resources.{j}.{f}" for j in (0, 5) for f in ("id", "bandwidth_hz", "available", "interference_dbm")),
    "users.2",
    "resources.1",
    "feedback.delivered_bits",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.sampled_from(_PATHS), _json_values), min_size=1, max_size=3),
    preset=st.sampled_from(["spectrum", "mac"]),
)
def test_decoder_only_ever_accepts_or_names_the_field(edits, preset: str) -> None:
    """Any value anywhere: a valid slot with finite utility, or InvalidSlotError naming a field."""
    doc = spectrum_doc("fuzz") if preset == "spectrum" else mac_doc("fuzz")
    doc["feedback"] = {"delivered_bits": {"101": 5.0}}
    for path, value in edits:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = doc
        try:
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the parent
    try:
        args = decode_schedule(doc, Limits(64, 32), frozenset(names()))
    except InvalidSlotError as exc:
        assert exc.field and exc.message
        return
    assert np.isfinite(args.state.utility).all() and (args.state.utility >= 0).all()
    decision = decide(
        args.state, CellHistory.empty(), args.policy or "greedy", policies=PolicySet(), fallbacks=["greedy"]
    )
    assert decision.owner.shape == (args.state.num_res,)
