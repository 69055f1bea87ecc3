"""Fuzzing the REST API of a real ``gnbsched serve`` process from its own OpenAPI document.

Two generators, a few thousand requests in all (``GNBSCHED_FUZZ_SCALE`` multiplies them for a
deeper run, ``GNBSCHED_FUZZ_RANDOM=1`` draws new examples instead of the derandomized ones):

* **schemathesis** reads ``/openapi.json`` of the running service and generates positive
  (schema-valid) and negative (schema-violating) requests for every operation, with the bearer
  token the service requires;
* **targeted strategies** for the ``/schedule`` body (hypothesis): structurally valid slots of
  every shape the contract allows (N, R up to the limits, every optional field, rate matrices,
  per-resource spectral efficiencies, feedback, every policy, deadlines that force fallbacks),
  then one mutation out of many (wrong types, out-of-range or non-finite numbers, huge ints,
  duplicates, shape mismatches, missing or unknown fields, deep nesting, invalid UTF-8).

Oracles on every response: never a 5xx; a rejection is JSON ``{"error", "field", "message"}``
whose ``field`` names a field of the request (or ``body`` / ``authorization``); an accepted
request yields a decision that passes the PAG checks (``service.pag.check`` on the returned
owner mapped back to tokens), with a policy that was asked for or is a fallback; schemathesis'
own conformance checks (status codes, content types, response schemas). At the end the server
is still healthy and never logged a traceback or an unclassified rejection.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance
from testkit import ServeProcess

from service.api.contract import Limits
from service.api.rest.codec import TOP_FIELDS
from service.config import Settings

from .support import assert_pag_valid, write_student

MAX_USERS, MAX_RESOURCES, MAX_BODY = 40, 24, 256 * 1024
LIMITS = Limits(MAX_USERS, MAX_RESOURCES)
POLICIES = ["km", "greedy", "pf", "rr", "max_weight", "random", "grouped_km", "exhaustive", "de", "student", "teacher"]
FALLBACKS = ["greedy"]
# the service runs with a clean GNBSCHED_* environment: a request naming no policy gets the
# embedded per-preset default
DEFAULTS = Settings.model_construct()
REQUIRED = {"cell_id", "slot", "preset", "users", "resources"}
SCALE = float(os.environ.get("GNBSCHED_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("GNBSCHED_FUZZ_RANDOM", "") not in ("", "0")


def _n(base: int) -> int:
    return max(1, round(base * SCALE))


def _settings(n: int) -> settings:
    return settings(
        max_examples=_n(n),
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, token_file: Path, token: str):
    models = tmp_path_factory.mktemp("fuzz-models")
    write_student(models, "mac", "v1")
    svc = ServeProcess(
        "--auth-token-file",
        str(token_file),
        "--admin",
        "--max-users",
        str(MAX_USERS),
        "--max-resources",
        str(MAX_RESOURCES),
        "--max-body-bytes",
        str(MAX_BODY),
        "--fallbacks",
        ",".join(FALLBACKS),
        env={"GNBSCHED_MODEL_DIR": str(models), "GNBSCHED_TEACHER_TIMEOUT_S": "1"},
    )
    try:
        svc.wait_ready()
        yield svc
        assert httpx.get(svc.url + "/healthz", timeout=5).status_code == 200
        out = svc.output()
        assert "Traceback" not in out, out[-4000:]
        assert "unclassified invalid request" not in out, out[-4000:]
    finally:
        svc.close()


@pytest.fixture(scope="module")
def schema(target):
    import schemathesis
    from schemathesis.config import SchemathesisConfig

    # the service's documented rejections: 400 malformed JSON, 401 token, 413 limits, 422 a field
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "413", "422"]}}}
    )
    return schemathesis.openapi.from_url(target.url + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def session(token: str):
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {token}"
        yield s


# ----------------------------------------------------------------------------- oracles


def check_schedule_answer(doc: Any, status: int, payload: Any) -> str:
    """Assert the oracles for one ``POST /schedule`` answer; return its outcome class."""
    assert status < 500, f"server error {status}: {payload}"
    if status == 200:
        assert isinstance(doc, dict), doc
        assert_pag_valid(doc, payload, LIMITS)
        requested = doc.get("policy") or DEFAULTS.default_policy(doc["preset"])
        served_by = (requested, *FALLBACKS)
        if payload.get("fallback_reason") == "guard":  # the run-time guard served the preset's reference
            served_by = (*served_by, DEFAULTS.guard_reference[doc["preset"]])
        assert payload["policy"] in served_by, payload
        assert (payload["fallback"] is None) == (payload["policy"] == requested), payload
        return "accepted"
    assert status in (400, 401, 409, 413, 422), (status, payload)
    assert isinstance(payload, dict) and set(payload) == {"error", "field", "message"}, payload
    if status == 409:  # a valid request the cell's state refuses (an older or reused slot, an older epoch)
        assert payload["error"] == "slot_conflict" and payload["field"] in ("slot", "epoch"), payload
        return "conflict"
    field = payload["field"]
    assert isinstance(field, str) and field and payload["message"], payload
    root = field.split(".")[0].split("[")[0]
    named = {"body", "authorization"} | REQUIRED
    if isinstance(doc, dict):
        named |= set(doc)
    assert root in named, f"rejection names {field!r}, which is not a field of the request: {payload}"
    if root in TOP_FIELDS and root not in REQUIRED and isinstance(doc, dict):
        assert root in doc, f"rejection names absent optional field {field!r}: {payload}"
    return "rejected"


def _body_of(case: Any) -> Any:
    body = case.body
    if isinstance(body, bytes | bytearray):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
    return None if body.__class__.__name__ == "NotSet" else body


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


# ----------------------------------------------------------------------------- schemathesis


@pytest.mark.parametrize(("mode", "examples"), [("positive", 500), ("negative", 500)])
def test_schedule_from_the_openapi_document(schema, target, session, mode: str, examples: int) -> None:
    from schemathesis import GenerationMode

    op = schema["/schedule"]["POST"]
    outcomes = {"accepted": 0, "rejected": 0, "conflict": 0}

    @_settings(examples)
    @given(case=op.as_strategy(GenerationMode(mode)))
    def run(case) -> None:
        response = case.call(base_url=target.url, session=session, timeout=30)
        outcome = check_schedule_answer(_body_of(case), response.status_code, _json(response))
        outcomes[outcome] += 1
        # schemathesis' checks: no 5xx, documented statuses / content types / response schemas,
        # schema-violating data rejected, auth not ignored; not "schema-valid data accepted":
        # the JSON schema cannot state the cross-field rules (all-or-none fields, shapes, ids)
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    run()
    assert outcomes["rejected"] > 0
    if mode == "positive":  # the documented examples and schema-valid slots get decisions
        assert outcomes["accepted"] > 0


@pytest.mark.parametrize(
    ("path", "method", "modes", "examples"),
    [
        ("/healthz", "GET", ("positive",), 5),
        ("/readyz", "GET", ("positive",), 5),
        ("/v1/policies", "GET", ("positive",), 5),
        ("/metrics", "GET", ("positive",), 5),
        ("/admin/reload", "POST", ("positive", "negative"), 150),
    ],
)
def test_other_operations_from_the_openapi_document(
    schema, target, session, path: str, method: str, modes: tuple[str, ...], examples: int
) -> None:
    """The operations without a request body have no negative space (no parameters to break)."""
    from schemathesis import GenerationMode

    op = schema[path][method]
    for mode in modes:

        @_settings(examples)
        @given(case=op.as_strategy(GenerationMode(mode)))
        def run(case) -> None:
            response = case.call(base_url=target.url, session=session, timeout=30)
            assert response.status_code < 500, response.text
            if response.status_code >= 400 and path == "/admin/reload":
                payload = response.json()
                assert set(payload) == {"error", "field", "message"} and payload["field"], payload
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        run()


# ----------------------------------------------------------------------------- targeted strategies

_ids = st.integers(-(2**63), 2**63 - 1)
_finite = st.floats(allow_nan=False, allow_infinity=False)


def _edge(rng: np.random.Generator, lo: float, hi: float, size: int | tuple[int, ...], edges: bool) -> list:
    """Uniform values in [lo, hi] (log-uniform when the range spans decades), some at the edges."""
    if lo > 0 and hi / lo > 1e3:
        x = np.exp(rng.uniform(np.log(lo), np.log(hi), size))
    elif lo >= 0 and hi > 1e3:
        x = np.where(rng.random(size) < 0.1, 0.0, np.exp(rng.uniform(0.0, np.log(hi), size)))
    else:
        x = rng.uniform(lo, hi, size)
    if edges:
        mask = rng.random(size) < 0.15
        x = np.where(mask, rng.choice([lo, hi], size), x)
    return np.clip(x, lo, hi).tolist()


@st.composite
def valid_slots(draw: st.DrawFn) -> dict[str, Any]:
    """A ``/schedule`` body that follows the contract, of any shape within the limits. Hypothesis
    draws the structure (shape, which optional fields, ids, policy); a seeded generator the bulk
    values (drawing hundreds of floats one by one through hypothesis would dominate the run)."""
    preset = draw(st.sampled_from(["spectrum", "mac"]))
    big = draw(st.integers(0, 4)) == 0
    n = draw(st.integers(1, MAX_USERS if big else 10))
    r = draw(st.integers(1, MAX_RESOURCES if big else 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    edges = draw(st.booleans())
    if draw(st.booleans()):
        user_ids = draw(st.lists(_ids, min_size=n, max_size=n, unique=True))
        res_ids = draw(st.lists(_ids, min_size=r, max_size=r, unique=True))
    else:
        user_ids = (rng.permutation(10 * n) - 3).tolist()[:n]
        res_ids = rng.permutation(10 * r).tolist()[:r]
    users: list[dict[str, Any]] = [{"id": u} for u in user_ids]
    resources: list[dict[str, Any]] = [{"id": j} for j in res_ids]
    doc: dict[str, Any] = {
        "cell_id": draw(st.text(min_size=1, max_size=40)),
        "slot": draw(st.integers(0, 2**63 - 1)),
        "preset": preset,
        "users": users,
        "resources": resources,
    }

    def column(rows: list[dict[str, Any]], key: str, lo: float, hi: float) -> None:
        for row, v in zip(rows, _edge(rng, lo, hi, len(rows), edges), strict=True):
            row[key] = v

    if draw(st.booleans()):  # the utility is a caller-provided rate matrix
        doc["rate_bps"] = _edge(rng, 0.0, 1e12, (n, r), edges)
    elif preset == "spectrum":
        column(users, "rx_power_dbm", -300.0, 100.0)
        if draw(st.booleans()):
            for row, g in zip(users, _edge(rng, 0.0, 1e3, (n, r), edges), strict=True):
                row["fading_gain"] = g
        if draw(st.booleans()):
            column(resources, "interference_dbm", -300.0, 100.0)
        if draw(st.booleans()):
            doc["noise_density_dbm_hz"] = draw(st.floats(-200, -100))
    else:
        if draw(st.booleans()):
            column(users, "spectral_efficiency", 0.0, 64.0)
        else:
            for row, se in zip(users, _edge(rng, 0.0, 64.0, (n, r), edges), strict=True):
                row["spectral_efficiency"] = se
        if draw(st.booleans()):
            doc["rb_per_rbg"] = draw(st.integers(1, 275))
        if draw(st.booleans()):
            doc["tti_s"] = draw(st.floats(1e-6, 1.0))
    if draw(st.booleans()):
        column(users, "buffer_bits", 0.0, 1e18)
    if draw(st.booleans()):
        for row in users:
            if rng.random() < 0.5:
                row["eligible"] = bool(rng.random() < 0.7)
    for row in resources:
        if rng.random() < 0.3:
            row["available"] = bool(rng.random() < 0.7)
        if rng.random() < 0.3:
            row["bandwidth_hz"] = _edge(rng, 1e-3, 1e12, 1, edges)[0]
    if draw(st.booleans()):
        doc["policy"] = draw(st.sampled_from(POLICIES))
    if draw(st.integers(0, 3)) == 0:
        doc["deadline_ms"] = draw(st.floats(1e-6, 60_000.0))
    if draw(st.integers(0, 3)) == 0:
        doc["max_resources_per_user"] = draw(st.integers(1, 2**63 - 1))
    if draw(st.integers(0, 2)) == 0:
        known = [u for u in user_ids if rng.random() < 0.5]
        other = draw(st.lists(_ids, max_size=3))
        doc["feedback"] = {
            "delivered_bits": dict(
                zip(map(str, [*known, *other]), _edge(rng, 0.0, 1e18, len(known) + len(other), edges), strict=True)
            )
        }
    return doc


_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _finite | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _paths(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every (container, key) path of ``doc`` down to its leaves (bounded)."""
    out: list[tuple[Any, ...]] = []

    def walk(node: Any, prefix: tuple[Any, ...]) -> None:
        if len(out) > 400:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                out.append((*prefix, k))
                walk(v, (*prefix, k))
        elif isinstance(node, list):
            for i, v in enumerate(node[:6]):
                out.append((*prefix, i))
                walk(v, (*prefix, i))

    walk(doc, ())
    return out


def _dumps(doc: Any) -> bytes:
    """JSON bytes; integers beyond 64 bits (orjson refuses them) through the standard library."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc, allow_nan=False).encode()


@st.composite
def mutated_slots(draw: st.DrawFn) -> tuple[Any, bytes]:
    """(document or None, the bytes sent): a valid slot with one mutation applied."""
    doc = draw(valid_slots())
    kind = draw(
        st.sampled_from(
            ["none", "replace", "delete", "add", "nonfinite", "huge", "dup", "shape", "raw", "deep", "utf8", "toplevel"]
        )
    )
    if kind == "none":
        return doc, _dumps(doc)
    if kind in ("replace", "delete", "add"):
        path = draw(st.sampled_from(_paths(doc)))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if kind == "replace":
            parent[last] = draw(_junk)
        elif kind == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(_junk)
        else:
            parent.insert(last, draw(_junk))
        return doc, _dumps(doc)
    if kind == "nonfinite":  # JSON extensions a lenient parser would accept
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]))
        field = draw(st.sampled_from(["slot", "deadline_ms", "tti_s"]))
        doc[field] = "__X__"
        return doc, _dumps(doc).replace(b'"__X__"', token.encode())
    if kind == "huge":
        value = draw(st.sampled_from([2**64, -(2**64), 10**30, 1e308, -1e308, 5e-324, -0.0]))
        field = draw(st.sampled_from(["slot", "max_resources_per_user", "deadline_ms", "rb_per_rbg", "tti_s"]))
        doc[field] = value
        return doc, _dumps(doc)
    if kind == "dup":
        group = draw(st.sampled_from(["users", "resources"]))
        doc[group].append(dict(doc[group][0]))
        return doc, _dumps(doc)
    if kind == "shape":
        if doc.get("rate_bps"):
            doc["rate_bps"] = doc["rate_bps"][:-1] if draw(st.booleans()) else [row[:-1] for row in doc["rate_bps"]]
        else:
            doc["rate_bps"] = [[1.0] * (len(doc["resources"]) + 1)] * len(doc["users"])
        return doc, _dumps(doc)
    if kind == "raw":
        return None, draw(st.binary(max_size=64) | st.sampled_from([b"", b"null", b"[]", b"{}", b'"x"', b"{" * 10]))
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return None, b'{"cell_id": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "utf8":
        return None, _dumps(doc).replace(b'"preset"', b'"pre\xffset"', 1)
    top = draw(st.sampled_from([[], [doc], "slot", 3, None, True]))
    return top, _dumps(top)


def test_schedule_with_targeted_strategies(target, token: str) -> None:
    outcomes = {"accepted": 0, "rejected": 0, "conflict": 0}
    with httpx.Client(
        base_url=target.url,
        timeout=60,
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
    ) as client:

        @_settings(1500)
        @given(sent=mutated_slots())
        def run(sent: tuple[Any, bytes]) -> None:
            doc, raw = sent
            response = client.post("/schedule", content=raw)
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
            if doc is None:  # raw bytes: the document the server saw, when they are JSON at all
                try:
                    doc = json.loads(raw)
                except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses
                    doc = None
            outcomes[check_schedule_answer(doc, response.status_code, payload)] += 1

        run()
    print(f"targeted /schedule fuzzing: {outcomes}")
    # valid slots are decided, or refused by their cell's state when an earlier example used the slot
    valid = outcomes["accepted"] + outcomes["conflict"]
    assert outcomes["accepted"] > 0 and valid > _n(1500) // 10 and outcomes["rejected"] > _n(1500) // 10, outcomes


def test_json_edge_numbers_never_reach_a_decision_as_non_finite(target, token: str) -> None:
    """Exactly-representable extremes that pass validation still produce finite utilities or a
    named rejection (``users.rx_power_dbm`` / ``rate_bps``), never a 5xx."""
    docs = []
    for rx in (-300.0, 100.0, -0.0):
        docs.append(
            {
                "cell_id": "edge",
                "slot": 0,
                "preset": "spectrum",
                "users": [{"id": 1, "rx_power_dbm": rx}, {"id": 2, "rx_power_dbm": rx}],
                "resources": [{"id": 1, "bandwidth_hz": 1e12}, {"id": 2, "bandwidth_hz": math.ulp(0.0)}],
            }
        )
    docs.append(
        {
            "cell_id": "edge",
            "slot": 1,
            "preset": "mac",
            "tti_s": 1e-300,
            "rb_per_rbg": 275,
            "users": [{"id": 1, "spectral_efficiency": 64.0, "buffer_bits": 1e18}],
            "resources": [{"id": 1, "bandwidth_hz": 1e12}],
        }
    )
    with httpx.Client(base_url=target.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        for doc in docs:
            r = client.post("/schedule", content=orjson.dumps(doc))
            check_schedule_answer(doc, r.status_code, r.json())
