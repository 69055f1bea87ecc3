"""REST and gRPC enforce one contract: one set of hostile requests, rendered to both wires, is
accepted or refused alike — by the two decoders in process and by a real ``gnbsched serve``.

Every case is a *semantic* request (one of a few valid base slots, column-wise, plus one
mutation expressed once) rendered to both wire forms: the ``POST /schedule`` JSON body
(``users[i].<field>``, ``resources[j].<field>``, ``feedback.delivered_bits`` keyed by decimal
id) and a ``gnbsched.v1.SlotRequest`` (packed arrays, row-major ``Matrix``, feedback as parallel
arrays). A mutation is

* ``(field, value)``: set a top-level field or a whole column / matrix (``None``: absent);
* ``(field, index, value)``: set one element (``index`` = ``i`` or ``(i, j)``; for ``feedback``
  the bits of entry ``i``);
* ``("users", n)`` / ``("resources", n)``: resize the slot (columns repeated cyclically);
* ``("rest", path, value)`` / ``("grpc", path, value)``: a change only one wire can express
  (JSON types, non-canonical feedback keys, values beyond the proto's integer types; duplicate
  ids or unequal lengths in parallel arrays) — the case then runs on that wire alone.

Each case states the expected outcome: ``OK`` or the refused field in canonical form
(``users.buffer_bits[2]``, ``feedback[0]`` for feedback entry 0, ``rate_bps`` for any element of
it). The transports' field names are mapped to that form by ``rest_canonical`` /
``grpc_canonical`` (the small naming table). Accepted cases must decode to equal slots field by
field (the utility bit for bit); refused ones must name the same field with the same error kind.
Besides the hand-written hostile cases, the bounds of every ranged rule of
``service.api.contract.RULES`` are swept (just inside and just outside each bound, and NaN / ±inf
for floats), and ``test_every_rule_is_covered`` checks that every rule is exercised.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc
import httpx
import numpy as np
import pytest

from service.api.contract import INT64_MAX, RULES, Limits, ScheduleArgs
from service.api.grpc.convert import request_to_slot, slot_to_request
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2_grpc as pb_grpc
from service.api.rest.codec import decode_schedule
from service.errors import GRPC_CODE, HTTP_STATUS, ErrorKind, InvalidSlotError
from service.policies import names
from service.trace import rest_request
from service.types import SlotState

MAX_USERS = MAX_RESOURCES = 16
LIMITS = Limits(MAX_USERS, MAX_RESOURCES)
KNOWN = frozenset(names())
OK = "ok"
NAN, INF = float("nan"), float("inf")
INT32_MAX = 2**31 - 1


def up(x: float) -> float:
    return float(np.nextafter(x, INF))


def down(x: float) -> float:
    return float(np.nextafter(x, -INF))


# ----------------------------------------------------------------------------- the base slots

TOP = (
    "cell_id",
    "slot",
    "preset",
    "policy",
    "deadline_ms",
    "max_resources_per_user",
    "tti_s",
    "rb_per_rbg",
    "epoch",
    "noise_density_dbm_hz",
)
USER_COLUMNS = (
    "rx_power_dbm",
    "spectral_efficiency",
    "buffer_bits",
    "eligible",
    "fading_gain",
    "retx_bits",
    "retx_rbgs",
)
RESOURCE_COLUMNS = ("bandwidth_hz", "available", "interference_dbm")
MATRICES = ("rate_bps", "utility")

MAC: dict[str, Any] = {
    "cell_id": "parity-mac",
    "slot": 41,
    "preset": "mac",
    "policy": "pf",
    "max_resources_per_user": 2,
    "tti_s": 0.0005,
    "rb_per_rbg": 4,
    "user_ids": [3, 11, 5],
    "spectral_efficiency": [1.5, 3.25, 0.75],
    "buffer_bits": [4000.0, 2.5e5, 9e5],
    "eligible": [True, True, False],
    "resource_ids": [8, 1, 2, 9],
    "available": [True, False, True, True],
    "feedback": [(3, 1000.0), (5, 0.0)],
}
SPECTRUM: dict[str, Any] = {
    "cell_id": "parity-spectrum",
    "slot": 7,
    "preset": "spectrum",
    "policy": "km",
    "noise_density_dbm_hz": -174.0,
    "user_ids": [0, 42, 17],
    "rx_power_dbm": [-60.0, -72.5, -55.25],
    "eligible": [True, True, True],
    "fading_gain": [[1.0, 0.5, 2.0, 0.25], [0.75, 1.25, 0.1, 3.0], [2.5, 0.05, 1.0, 1.5]],
    "resource_ids": [4, 5, 6, 7],
    "bandwidth_hz": [1e6, 2e6, 1e6, 5e5],
    "available": [True, True, False, True],
    "interference_dbm": [-100.0, -95.0, -300.0, -90.0],
    "feedback": [(42, 1.5e6)],
}
BASES: dict[str, dict[str, Any]] = {
    "mac": MAC,
    "spectrum": SPECTRUM,
    # mac with SE per (user, resource): N·R values on gRPC, a list per user on REST
    "mac_se": {**MAC, "spectral_efficiency": [[1.5, 2.0, 0.5, 4.0], [3.25, 0.0, 1.0, 2.0], [0.75, 0.75, 6.5, 1.0]]},
    # mac with a rate matrix: the utility is rate_bps · tti_s
    "mac_rate": {**MAC, "rate_bps": [[2e6, 1e6, 0.0, 5e5], [3e6, 3e6, 1e6, 2e6], [1e5, 4e6, 2e6, 1e6]]},
    # mac with unitless weights used as given
    "mac_utility": {**MAC, "utility": [[900.0, 12.5, 0.0, 300.0], [1.0, 2.0, 3.0, 4.0], [50.0, 60.0, 70.0, 80.0]]},
    # spectrum with rates given (the physical fields still travel, and are checked)
    "spectrum_rate": {**SPECTRUM, "rate_bps": [[1e6, 2e6, 3e6, 4e6], [5e5, 0.0, 1e7, 2e6], [3e6, 3e6, 3e6, 1e6]]},
    # mac with a HARQ retransmission pending for user 11 (2 RBGs), none for the others
    "mac_retx": {**MAC, "retx_bits": [0.0, 3000.0, 0.0], "retx_rbgs": [0, 2, 0]},
    # mac with the retransmission fields given, none pending
    "mac_retx_none": {**MAC, "retx_bits": [0.0, 0.0, 0.0], "retx_rbgs": [0, 0, 0]},
}


def _resize_users(s: dict[str, Any], n: int) -> None:
    n0 = len(s["user_ids"])
    s["user_ids"] = [100 + i for i in range(n)]
    for name in (*USER_COLUMNS, *MATRICES):
        if s.get(name) is not None:
            s[name] = [copy.deepcopy(s[name][i % n0]) for i in range(n)]


def _resize_resources(s: dict[str, Any], r: int) -> None:
    r0 = len(s["resource_ids"])
    s["resource_ids"] = [200 + j for j in range(r)]
    for name in RESOURCE_COLUMNS:
        if s.get(name) is not None:
            s[name] = [s[name][j % r0] for j in range(r)]
    for name in ("fading_gain", *MATRICES, "spectral_efficiency"):
        m = s.get(name)
        if m is not None and m and isinstance(m[0], list):
            s[name] = [[row[j % r0] for j in range(r)] for row in m]


# ----------------------------------------------------------------------------- the cases


class Case(NamedTuple):
    base: str
    mutation: tuple
    expect: str  # OK, or the refused field in canonical form

    @property
    def wire(self) -> str:
        """ "both", "rest" or "grpc": where the mutation can be expressed."""
        return self.mutation[0] if self.mutation and self.mutation[0] in ("rest", "grpc") else "both"

    @property
    def id(self) -> str:
        text = f"{self.base}:{self.mutation!r}"
        return text if len(text) <= 90 else text[:87] + "..."


def C(base: str, *mutation: Any, expect: str = OK) -> Case:
    return Case(base, mutation, expect)


def _semantic(case: Case) -> dict[str, Any]:
    """The semantic request of a case (its base with the mutation applied, unless wire-only)."""
    s = copy.deepcopy(BASES[case.base])
    m = case.mutation
    if not m or m[0] in ("rest", "grpc"):
        return s
    if m[0] == "users" and len(m) == 2:
        _resize_users(s, m[1])
    elif m[0] == "resources" and len(m) == 2:
        _resize_resources(s, m[1])
    elif len(m) == 2:
        s[m[0]] = copy.deepcopy(m[1])
    else:
        field, index, value = m
        if field == "feedback":
            uid, _ = s["feedback"][index]
            s["feedback"][index] = (uid, value)
        elif isinstance(index, tuple):
            s[field][index[0]][index[1]] = value
        else:
            s[field][index] = value
    return s


#: ranged rule -> (base, semantic field, element index or None) of its bound cases
BOUND_WHERE: dict[str, tuple[str, str, Any]] = {
    "slot": ("mac", "slot", None),
    "deadline_ms": ("mac", "deadline_ms", None),
    "max_resources_per_user": ("mac", "max_resources_per_user", None),
    "tti_s": ("mac_rate", "tti_s", None),
    "rb_per_rbg": ("mac", "rb_per_rbg", None),
    "epoch": ("mac", "epoch", None),
    "noise_density_dbm_hz": ("spectrum", "noise_density_dbm_hz", None),
    "users.id": ("mac", "user_ids", 1),
    "users.rx_power_dbm": ("spectrum", "rx_power_dbm", 1),
    "users.spectral_efficiency": ("mac", "spectral_efficiency", 1),
    "users.buffer_bits": ("mac", "buffer_bits", 1),
    "users.fading_gain": ("spectrum", "fading_gain", (1, 2)),
    "resources.id": ("mac", "resource_ids", 2),
    "resources.bandwidth_hz": ("mac", "bandwidth_hz", None),
    "resources.interference_dbm": ("spectrum", "interference_dbm", 3),
    "rate_bps": ("spectrum_rate", "rate_bps", (0, 1)),
    "utility": ("mac_utility", "utility", (2, 3)),
    "delivered_bits": ("mac", "feedback", 0),
}
#: ranged rules whose bounds are hand-written cases (``RETX``): the lower bound of ``retx_bits`` is
#: accepted only where ``retx_rbgs`` is 0 and its upper one only where it is > 0, and the upper
#: bound of ``retx_rbgs`` is the slot's R
HAND_BOUNDED = {"users.retx_bits", "users.retx_rbgs"}


def _bound_cases() -> list[Case]:
    """Just inside and just outside each bound of every ranged rule (plus NaN and ±inf for floats),
    on a base where the field matters and an element in the middle of the slot."""
    cases = []
    for key, rule in RULES.items():
        if key not in BOUND_WHERE:
            continue
        base, field, index = BOUND_WHERE[key]
        canon = "feedback" if key == "delivered_bits" else key
        if index is not None:
            canon += "".join(f"[{k}]" for k in (index if isinstance(index, tuple) else (index,)))
        values: list[tuple[Any, bool]] = []
        if rule.kind == "int":
            lo, hi = int(rule.lo), int(rule.hi)
            values = [(lo, True), (lo - 1, False), (hi, True), (hi + 1, False)]
        else:
            lo, hi = float(rule.lo), float(rule.hi)
            values = [(up(lo), True), (lo, False)] if rule.lo_open else [(lo, True), (down(lo), False)]
            values += [(hi, True), (up(hi), False), (NAN, False), (INF, False), (-INF, False)]
        for value, ok in values:
            expect = OK if ok else canon
            if field == "bandwidth_hz":  # a column the base lacks: give it, with the value at resource 2
                cases.append(C(base, field, [1.44e6, 1.44e6, value, 1.44e6], expect=OK if ok else f"{canon}[2]"))
            elif index is None:
                too_wide = rule.kind == "int" and (value > (INT32_MAX if key == "rb_per_rbg" else INT64_MAX))
                cases.append(
                    C(base, "rest", (field,), value, expect=expect)
                    if too_wide
                    else C(base, field, value, expect=expect)
                )
            elif rule.kind == "int" and value > INT64_MAX:  # an id beyond int64: JSON only
                group = "users" if key.startswith("users") else "resources"
                cases.append(C(base, "rest", (group, index, "id"), value, expect=expect))
            else:
                cases.append(C(base, field, index, value, expect=expect))
    return cases


#: a request of 16 (17) feedback entries: at (over) the limit of max_users
FB16 = [(i, 1.0) for i in range(16)]
FB17 = [(i, 1.0) for i in range(17)]

HOSTILE: list[Case] = [
    # the base slots as they are
    *(C(name) for name in BASES),
    # --- reserved ids: -1 is the decision's "unused" owner, so negative ids are refused
    C("mac", "user_ids", 0, -1, expect="users.id[0]"),
    C("mac", "user_ids", 2, -(2**63), expect="users.id[2]"),
    C("spectrum", "user_ids", 1, -1, expect="users.id[1]"),
    C("mac", "resource_ids", 0, -1, expect="resources.id[0]"),
    C("spectrum", "resource_ids", 3, -7, expect="resources.id[3]"),
    C("mac", "user_ids", 0, 0),
    C("mac", "user_ids", 2, 3, expect="users.id[2]"),  # duplicate of user 0
    C("mac", "resource_ids", 3, 1, expect="resources.id[3]"),  # duplicate of resource 1
    # --- top-level ranges
    C("spectrum", "noise_density_dbm_hz", 100.0, expect="noise_density_dbm_hz"),
    C("spectrum", "noise_density_dbm_hz", -1e308, expect="noise_density_dbm_hz"),
    C("mac", "noise_density_dbm_hz", -99.0, expect="noise_density_dbm_hz"),  # checked in mac too
    C("spectrum", "noise_density_dbm_hz", None),
    C("mac", "rb_per_rbg", 276, expect="rb_per_rbg"),
    C("mac", "rb_per_rbg", 0, expect="rb_per_rbg"),
    C("mac", "rb_per_rbg", -4, expect="rb_per_rbg"),
    C("mac", "rb_per_rbg", 275),
    C("mac", "epoch", -1, expect="epoch"),
    C("mac", "epoch", 0),
    C("mac", "slot", -1, expect="slot"),
    C("mac", "tti_s", 0.0, expect="tti_s"),
    C("mac", "tti_s", 2.0, expect="tti_s"),
    C("mac", "tti_s", -0.0005, expect="tti_s"),
    C("mac", "deadline_ms", 0.0, expect="deadline_ms"),
    C("mac", "deadline_ms", -5.0, expect="deadline_ms"),
    C("mac", "deadline_ms", 60_001.0, expect="deadline_ms"),
    C("mac", "deadline_ms", 500.0),
    C("mac", "max_resources_per_user", 0, expect="max_resources_per_user"),
    C("mac", "max_resources_per_user", -3, expect="max_resources_per_user"),
    C("mac", "max_resources_per_user", None),
    C("mac", "cell_id", "", expect="cell_id"),
    C("mac", "cell_id", "c"),
    C("mac", "cell_id", "x" * 256),
    C("mac", "cell_id", "x" * 257, expect="cell_id"),
    C("spectrum", "cell_id", "é" * 256),  # characters, not bytes
    C("spectrum", "cell_id", "é" * 257, expect="cell_id"),
    C("mac", "preset", "", expect="preset"),
    C("mac", "preset", "MAC", expect="preset"),
    C("mac", "preset", "lte", expect="preset"),
    C("spectrum_rate", "preset", "mac"),  # rates given: a mac slot without physical fields
    C("mac", "policy", "no-such-policy", expect="policy"),
    C("mac", "policy", "", expect="policy"),
    C("mac", "policy", None),  # the service's default
    C("spectrum", "policy", "greedy"),
    # --- per-entry values
    C("mac", "buffer_bits", 2, NAN, expect="users.buffer_bits[2]"),
    C("mac", "buffer_bits", 0, -5.0, expect="users.buffer_bits[0]"),
    C("mac", "buffer_bits", [0.0, 0.0, 0.0]),  # nothing to send: nobody owns anything
    C("mac", "spectral_efficiency", 2, 64.5, expect="users.spectral_efficiency[2]"),
    C("mac_se", "spectral_efficiency", (2, 1), -0.5, expect="users.spectral_efficiency[2][1]"),
    C("mac_se", "spectral_efficiency", (1, 3), INF, expect="users.spectral_efficiency[1][3]"),
    C("mac_se", "spectral_efficiency", (0, 2), 64.0),
    C("spectrum", "rx_power_dbm", 0, 101.0, expect="users.rx_power_dbm[0]"),
    C("spectrum", "rx_power_dbm", 2, -INF, expect="users.rx_power_dbm[2]"),
    C("spectrum", "fading_gain", (0, 0), -1.0, expect="users.fading_gain[0][0]"),
    C("spectrum", "fading_gain", (2, 3), NAN, expect="users.fading_gain[2][3]"),
    C("spectrum", "bandwidth_hz", 1, 0.0, expect="resources.bandwidth_hz[1]"),
    C("spectrum", "bandwidth_hz", 0, -1e6, expect="resources.bandwidth_hz[0]"),
    C("spectrum", "bandwidth_hz", 3, 1e12),
    C("spectrum", "interference_dbm", 0, NAN, expect="resources.interference_dbm[0]"),
    C("spectrum", "interference_dbm", 1, 100.5, expect="resources.interference_dbm[1]"),
    C("spectrum", "available", [False, False, False, False]),
    C("mac", "eligible", [False, False, False]),
    C("spectrum_rate", "rate_bps", (2, 2), -1.0, expect="rate_bps[2][2]"),
    C("spectrum_rate", "rate_bps", (1, 0), INF, expect="rate_bps[1][0]"),
    C("mac_rate", "rate_bps", (0, 3), 1e18),
    C("mac_rate", "rate_bps", (0, 3), NAN, expect="rate_bps[0][3]"),
    C("mac_utility", "utility", (0, 0), -1e-9, expect="utility[0][0]"),
    C("mac_utility", "utility", (1, 1), 1e19, expect="utility[1][1]"),
    # --- rate_bps together with utility; missing physical fields
    C("mac_rate", "utility", BASES["mac_utility"]["utility"], expect="rate_bps,utility"),
    C("spectrum_rate", "utility", BASES["mac_utility"]["utility"], expect="rate_bps,utility"),
    C("mac", "spectral_efficiency", None, expect="users.spectral_efficiency"),
    C("spectrum", "rx_power_dbm", None, expect="users.rx_power_dbm"),
    C("spectrum_rate", "rx_power_dbm", None),  # rates given: no physical field needed
    C("mac_utility", "spectral_efficiency", None),
    # --- shapes: an all-or-none column given for some users; matrices of the wrong shape
    C("mac", "buffer_bits", [1.0, 2.0], expect="users.buffer_bits"),
    C("mac", "spectral_efficiency", [1.0, 2.0], expect="users.spectral_efficiency"),
    C("spectrum", "rx_power_dbm", [-60.0], expect="users.rx_power_dbm"),
    C("mac_utility", "utility", [[1.0, 2.0, 3.0]] * 3, expect="utility"),
    C("mac_utility", "utility", [[1.0, 2.0, 3.0, 4.0]] * 2, expect="utility"),
    C("spectrum_rate", "rate_bps", [[1.0] * 5] * 3, expect="rate_bps"),
    C("spectrum", "fading_gain", [[1.0] * 4] * 2, expect="users.fading_gain"),
    C("mac_se", "spectral_efficiency", [[1.0] * 3] * 3, expect="users.spectral_efficiency"),
    # --- sizes: at and over the configured limits, and empty
    C("spectrum", "users", MAX_USERS),
    C("spectrum", "users", MAX_USERS + 1, expect="users"),
    C("mac", "resources", MAX_RESOURCES),
    C("mac", "resources", MAX_RESOURCES + 1, expect="resources"),
    C("spectrum_rate", "users", 1),
    C("mac_se", "users", 1),
    C("mac_se", "resources", 1),  # N·R = N values: per user or per (user, resource)?
    C("mac", "resources", 1),
    C("mac", "user_ids", [], expect="users"),
    C("mac", "resource_ids", [], expect="resources"),
    # --- feedback
    C("mac", "feedback", [(1, -5.0)], expect="feedback[0]"),
    C("mac", "feedback", [(3, 1.0), (5, NAN)], expect="feedback[1]"),
    C("mac", "feedback", [(-1, 5.0)], expect="feedback[0]"),
    C("mac", "feedback", [(3, 1.0), (-(2**63), 5.0)], expect="feedback[1]"),
    C("mac", "feedback", [(0, 0.0)]),
    C("mac", "feedback", [(INT64_MAX, 1e18)]),
    C("mac", "feedback", [(999, 1.0)]),  # not a user of the slot: the cell's history decides
    C("mac", "feedback", []),  # no entry: no feedback
    C("mac", "feedback", None),
    C("mac", "feedback", FB16),
    C("mac", "feedback", FB17, expect="feedback"),
    # --- JSON only: non-canonical feedback keys, types, values beyond the proto's integers
    *(
        C("mac", "rest", ("feedback", "delivered_bits"), {key: 5.0}, expect="feedback[0]")
        for key in (
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "",
            "1.0",
            "0x1",
            "00",
            "１",
            "1e3",
            "9223372036854775808",
            "99999999999999999999",
        )
    ),
    C("mac", "rest", ("feedback", "delivered_bits"), {"3": 1.0, "0": 2.0, "9223372036854775807": 3.0}),
    C("mac", "rest", ("feedback", "delivered_bits"), {"3": "5"}, expect="feedback[0]"),
    C("mac", "rest", ("feedback", "delivered_bits"), {"3": None}, expect="feedback[0]"),
    C("mac", "rest", ("feedback", "delivered_bits"), [1.0, 2.0], expect="feedback"),
    C("mac", "rest", ("feedback",), [], expect="feedback"),
    C("mac", "rest", ("feedback", "delivered"), {}, expect="feedback.delivered"),
    C("mac", "rest", ("slot",), "41", expect="slot"),
    C("mac", "rest", ("slot",), 41.0, expect="slot"),
    C("mac", "rest", ("slot",), True, expect="slot"),
    C("mac", "rest", ("slot",), None, expect="slot"),
    C("mac", "rest", ("epoch",), 1.5, expect="epoch"),
    C("mac", "rest", ("rb_per_rbg",), 4.0, expect="rb_per_rbg"),
    C("mac", "rest", ("tti_s",), "0.0005", expect="tti_s"),
    C("mac", "rest", ("deadline_ms",), [5], expect="deadline_ms"),
    C("mac", "rest", ("max_resources_per_user",), 2**64, expect="max_resources_per_user"),
    C("mac", "rest", ("cell_id",), 7, expect="cell_id"),
    C("mac", "rest", ("preset",), ["mac"], expect="preset"),
    C("mac", "rest", ("policy",), 3, expect="policy"),
    C("mac", "rest", ("users", 0, "id"), 3.0, expect="users.id[0]"),
    C("mac", "rest", ("users", 1, "id"), "11", expect="users.id[1]"),
    C("mac", "rest", ("users", 2, "id"), -(2**63) - 1, expect="users.id[2]"),
    C("mac", "rest", ("resources", 1, "id"), 2**64, expect="resources.id[1]"),
    C("mac", "rest", ("users", 1, "buffer_bits"), "12", expect="users.buffer_bits[1]"),
    C("mac", "rest", ("users", 1, "buffer_bits"), True, expect="users.buffer_bits[1]"),
    C("mac", "rest", ("users", 1, "buffer_bits"), 2**64 - 1, expect="users.buffer_bits[1]"),  # an integer, out of range
    C("mac", "rest", ("users", 0, "eligible"), 1, expect="users.eligible[0]"),
    C("mac", "rest", ("resources", 0, "available"), "yes", expect="resources.available[0]"),
    C("mac", "rest", ("users", 0, "bufer_bits"), 1.0, expect="users.bufer_bits[0]"),
    C("mac", "rest", ("users", 1), [], expect="users[1]"),
    C("mac", "rest", ("users",), {"id": 3}, expect="users"),
    C("mac", "rest", ("colour",), "red", expect="colour"),
    C("mac_se", "rest", ("users", 1, "spectral_efficiency"), 2.0, expect="users.spectral_efficiency"),  # mixed forms
    C("mac_utility", "rest", ("utility", 1), {"0": 1.0}, expect="utility[1]"),
    C("mac_utility", "rest", ("utility", 1, 2), "3", expect="utility[1][2]"),
    # a resource without bandwidth_hz takes the preset's default on REST (a gRPC array is all or none)
    C("spectrum", "rest", ("resources", 2, "bandwidth_hz"), None),
    # --- gRPC only: parallel arrays and packed lengths
    C("mac", "grpc", ("feedback", "user_ids"), [3, 3], expect="feedback[1]"),  # duplicate id
    C("mac", "grpc", ("feedback", "delivered_bits"), [1.0, 2.0, 3.0], expect="feedback"),
    C("mac", "grpc", ("feedback", "user_ids"), [3], expect="feedback"),
    C("mac_utility", "grpc", ("utility", "values"), [1.0] * 11, expect="utility"),
    C("mac", "grpc", ("spectral_efficiency",), [1.0] * 5, expect="users.spectral_efficiency"),
    C("mac", "grpc", ("eligible",), [True, False], expect="users.eligible"),
    C("spectrum", "grpc", ("bandwidth_hz",), [1e6] * 3, expect="resources.bandwidth_hz"),
    C("spectrum", "grpc", ("available",), [True] * 5, expect="resources.available"),
]

#: HARQ retransmissions (mac only; both or neither; retx_rbgs in [0, R], > 0 iff retx_bits > 0);
#: mac_retx: R = 4, user 1 has 3000 bits in 2 RBGs pending, users 0 and 2 none
RETX: list[Case] = [
    # bounds of retx_bits: [0, 1e18], finite
    C("mac_retx", "retx_bits", 0, 0.0),
    C("mac_retx", "retx_bits", 0, down(0.0), expect="users.retx_bits[0]"),
    C("mac_retx", "retx_bits", 1, 1e18),
    C("mac_retx", "retx_bits", 1, up(1e18), expect="users.retx_bits[1]"),
    C("mac_retx", "retx_bits", 1, NAN, expect="users.retx_bits[1]"),
    C("mac_retx", "retx_bits", 1, INF, expect="users.retx_bits[1]"),
    C("mac_retx", "retx_bits", 1, -INF, expect="users.retx_bits[1]"),
    # bounds of retx_rbgs: [0, R]
    C("mac_retx", "retx_rbgs", 0, 0),
    C("mac_retx", "retx_rbgs", 0, -1, expect="users.retx_rbgs[0]"),
    C("mac_retx", "retx_rbgs", 2, -(2**63), expect="users.retx_rbgs[2]"),
    C("mac_retx", "retx_rbgs", 1, 4),  # R = 4 (one busy, cap 2: the cap wins, documented)
    C("mac_retx", "retx_rbgs", 1, 5, expect="users.retx_rbgs[1]"),
    C("mac_retx", "retx_rbgs", 1, INT64_MAX, expect="users.retx_rbgs[1]"),
    C("mac_retx", "rest", ("users", 1, "retx_rbgs"), 2**63, expect="users.retx_rbgs[1]"),
    C("mac_retx", "resources", 2),  # R = 2 fits the 2 RBGs
    C("mac_retx", "resources", 1, expect="users.retx_rbgs[1]"),  # R = 1 does not
    # retx_rbgs > 0 exactly where retx_bits > 0
    C("mac_retx", "retx_rbgs", 1, 0, expect="users.retx_rbgs[1]"),
    C("mac_retx", "retx_bits", 1, 0.0, expect="users.retx_bits[1]"),
    C("mac_retx", "retx_rbgs", 0, 1, expect="users.retx_bits[0]"),
    C("mac_retx", "retx_bits", 2, 256.0, expect="users.retx_rbgs[2]"),
    C("mac_retx", "retx_bits", [0.0, 0.0, 0.0], expect="users.retx_bits[1]"),
    C("mac_retx", "retx_rbgs", [0, 0, 0], expect="users.retx_rbgs[1]"),
    C("mac", "retx_bits", [0.0, 0.0, 0.0], expect="users.retx_rbgs"),
    C("mac_retx", "retx_bits", [0.0, 3000.0, 512.0], expect="users.retx_rbgs[2]"),
    C("mac_retx", "retx_rbgs", [0, 2, 1], expect="users.retx_bits[2]"),
    C("mac_retx", "buffer_bits", [0.0, 0.0, 0.0]),  # an empty queue: the retransmission still goes
    # both or neither
    C("mac_retx", "retx_rbgs", None, expect="users.retx_rbgs"),
    C("mac_retx", "retx_bits", None, expect="users.retx_bits"),
    C("mac_retx", "retx_bits", [0.0, 3000.0], expect="users.retx_bits"),  # REST: users[2] lacks it
    C("mac_retx", "retx_rbgs", [0, 2], expect="users.retx_rbgs"),
    C("mac_retx", "rest", ("users", 1, "retx_rbgs"), None, expect="users.retx_rbgs[1]"),
    C("mac_retx", "grpc", ("retx_rbgs",), [0, 2, 0, 0], expect="users.retx_rbgs"),
    # mac only: refused in spectrum, even when zero
    C("spectrum", "retx_bits", [0.0, 1000.0, 0.0], expect="users.retx_bits"),
    C("spectrum", "retx_rbgs", [0, 1, 0], expect="users.retx_rbgs"),
    C("spectrum_rate", "retx_bits", [0.0, 0.0, 0.0], expect="users.retx_bits"),
    # JSON types
    C("mac_retx", "rest", ("users", 1, "retx_rbgs"), 2.0, expect="users.retx_rbgs[1]"),
    C("mac_retx", "rest", ("users", 1, "retx_rbgs"), True, expect="users.retx_rbgs[1]"),
    C("mac_retx", "rest", ("users", 1, "retx_rbgs"), "2", expect="users.retx_rbgs[1]"),
    C("mac_retx", "rest", ("users", 1, "retx_bits"), "3000", expect="users.retx_bits[1]"),
    C("mac_retx", "rest", ("users", 1, "retx_bits"), 3000),  # a JSON integer is a number
]

CASES: list[Case] = HOSTILE + RETX + _bound_cases()


# ----------------------------------------------------------------------------- the two wire forms


def _set_path(obj: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if value is None and isinstance(obj, dict):
        obj.pop(path[-1], None)
    else:
        obj[path[-1]] = value


def to_rest(s: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /schedule`` body of a semantic request (a column shorter than the users: the
    last entries lack the field)."""
    doc: dict[str, Any] = {k: s[k] for k in TOP if s.get(k) is not None}
    users: list[dict[str, Any]] = [{"id": uid} for uid in s["user_ids"]]
    for name in USER_COLUMNS:
        if s.get(name) is not None:
            for row, value in zip(users, s[name], strict=False):
                row[name] = value
    resources: list[dict[str, Any]] = [{"id": rid} for rid in s["resource_ids"]]
    for name in RESOURCE_COLUMNS:
        if s.get(name) is not None:
            for row, value in zip(resources, s[name], strict=False):
                row[name] = value
    doc["users"], doc["resources"] = users, resources
    for name in MATRICES:
        if s.get(name) is not None:
            doc[name] = s[name]
    if s.get("feedback") is not None:
        doc["feedback"] = {"delivered_bits": {str(uid): bits for uid, bits in s["feedback"]}}
    return copy.deepcopy(doc)


def to_grpc(s: dict[str, Any]) -> pb.SlotRequest:
    """The ``SlotRequest`` of a semantic request (matrices row-major with their own shape)."""
    req = pb.SlotRequest(cell_id=s["cell_id"], slot=s["slot"], preset=s["preset"])
    for name in TOP[3:]:
        if s.get(name) is not None:
            setattr(req, name, s[name])
    req.user_ids[:] = s["user_ids"]
    req.resource_ids[:] = s["resource_ids"]
    for name in (*USER_COLUMNS, *RESOURCE_COLUMNS, *MATRICES):
        value = s.get(name)
        if value is None:
            continue
        if name in ("fading_gain", *MATRICES):
            m = getattr(req, name)
            m.rows, m.cols = len(value), len(value[0]) if value else 0
            m.values[:] = [x for row in value for x in row]
        elif value and isinstance(value[0], list):  # spectral efficiency per (user, resource)
            getattr(req, name)[:] = [x for row in value for x in row]
        else:
            getattr(req, name)[:] = value
    if s.get("feedback") is not None:
        req.feedback.SetInParent()
        req.feedback.user_ids[:] = [uid for uid, _ in s["feedback"]]
        req.feedback.delivered_bits[:] = [bits for _, bits in s["feedback"]]
    return req


class Ctx(NamedTuple):
    """What the naming table needs: R (a flat gRPC index of an N·R array → (i, j)), whether the
    spectral efficiency is per resource, the REST feedback keys in order."""

    r: int
    se_matrix: bool
    fb_keys: list[str]


class Wire(NamedTuple):
    rest: dict[str, Any] | None
    grpc: pb.SlotRequest | None
    ctx: Ctx


def render(case: Case) -> Wire:
    s = _semantic(case)
    rest, req = to_rest(s), to_grpc(s)
    wire, m = case.wire, case.mutation
    if wire == "rest":
        _set_path(rest, m[1], copy.deepcopy(m[2]))
        req = None
    elif wire == "grpc":
        target = req
        for name in m[1][:-1]:
            target = getattr(target, name)
        getattr(target, m[1][-1])[:] = m[2]
        rest = None
    se = s.get("spectral_efficiency")
    fb = (rest or {}).get("feedback")
    keys = list(fb["delivered_bits"]) if type(fb) is dict and type(fb.get("delivered_bits")) is dict else []
    return Wire(rest, req, Ctx(len(s["resource_ids"]), bool(se) and isinstance(se[0], list), keys))


# ----------------------------------------------------------------------------- the naming table

_ELEMENT = re.compile(r"(users|resources)\[(\d+)\](?:\.(\w+))?((?:\[\d+\])*)")
_INDEXED = re.compile(r"(.+?)((?:\[\d+\])*)")
#: gRPC field -> canonical (REST rule) name
GRPC_NAMES = {
    "user_ids": "users.id",
    "resource_ids": "resources.id",
    **{name: f"users.{name}" for name in USER_COLUMNS},
    **{name: f"resources.{name}" for name in RESOURCE_COLUMNS},
}

Canon = tuple[str, tuple[int, ...]]


def _indices(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\[(\d+)\]", text))


def parse_canonical(text: str) -> Canon:
    m = _INDEXED.fullmatch(text)
    assert m is not None, text
    return m.group(1), _indices(m.group(2))


def _feedback_entry(key: str, ctx: Ctx) -> Canon:
    assert key in ctx.fb_keys, f"feedback key {key!r} is not one of the request's {ctx.fb_keys}"
    return "feedback", (ctx.fb_keys.index(key),)


def rest_canonical(field: str, ctx: Ctx) -> Canon:
    """``users[3].buffer_bits`` → ``users.buffer_bits[3]``; ``users[1].fading_gain[2]`` →
    ``users.fading_gain[1][2]``; ``feedback.delivered_bits.<key>`` → ``feedback[<position>]``."""
    if field.startswith("feedback.delivered_bits."):
        return _feedback_entry(field.removeprefix("feedback.delivered_bits."), ctx)
    if field in ("feedback", "feedback.delivered_bits"):
        return "feedback", ()
    m = _ELEMENT.fullmatch(field)
    if m is not None:
        group, i, name, rest = m.groups()
        return (f"{group}.{name}" if name else group), (int(i), *_indices(rest))
    return parse_canonical(field)


def grpc_canonical(field: str, ctx: Ctx) -> Canon:
    """``buffer_bits[3]`` → ``users.buffer_bits[3]``; ``user_ids`` → ``users``;
    ``spectral_efficiency[k]`` (N·R form) → ``users.spectral_efficiency[k // R][k % R]``;
    ``feedback.user_ids[i]`` / ``feedback.delivered_bits[i]`` → ``feedback[i]``."""
    if field.startswith("feedback.delivered_bits.") and not field.endswith("]"):  # named by the core
        return _feedback_entry(field.removeprefix("feedback.delivered_bits."), ctx)
    name, idx = parse_canonical(field)
    name = name.removesuffix(".values")
    if name.startswith("feedback"):
        return "feedback", idx
    if name in ("user_ids", "resource_ids") and not idx:
        return ("users" if name == "user_ids" else "resources"), ()
    if name == "spectral_efficiency" and ctx.se_matrix and len(idx) == 1:
        idx = divmod(idx[0], ctx.r)
    return GRPC_NAMES.get(name, name), idx


def names_expected(got: Canon, expect: str) -> bool:
    """The canonical field names the expected one: the same element, or (a shape or size error,
    expected without an index) the same field."""
    want = parse_canonical(expect)
    return got == want or (not want[1] and got[0] == want[0])


# ----------------------------------------------------------------------------- the decoders


def decode_rest(doc: Any) -> ScheduleArgs | InvalidSlotError:
    try:
        return decode_schedule(doc, LIMITS, KNOWN)
    except InvalidSlotError as exc:  # anything else is a bug: the decoder must name a field
        return exc


def decode_grpc(req: pb.SlotRequest) -> ScheduleArgs | InvalidSlotError:
    try:
        return request_to_slot(req, max_users=MAX_USERS, max_resources=MAX_RESOURCES, known_policies=KNOWN)
    except InvalidSlotError as exc:
        return exc


def assert_same_slot(a: SlotState, b: SlotState) -> None:
    """Field by field; arrays with the same dtype and shape, bit for bit (NaN-free by contract)."""
    for f in dataclasses.fields(SlotState):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), f.name
            assert (x.dtype, x.shape) == (y.dtype, y.shape), f.name
            assert x.tobytes() == y.tobytes(), f"{f.name}: {x} != {y}"
        else:
            assert type(x) is type(y) and x == y, f"{f.name}: {x!r} != {y!r}"


def assert_same_args(a: ScheduleArgs, b: ScheduleArgs) -> None:
    assert_same_slot(a.state, b.state)
    assert (a.policy, a.epoch) == (b.policy, b.epoch)
    assert a.deadline_ms == b.deadline_ms and type(a.deadline_ms) is type(b.deadline_ms)
    assert a.feedback == b.feedback, (a.feedback, b.feedback)
    if a.feedback:  # the same bits, not just equal numbers
        assert list(a.feedback) == list(b.feedback)
        assert np.array(list(a.feedback.values())).tobytes() == np.array(list(b.feedback.values())).tobytes()


def _check_refusal(
    exc: InvalidSlotError | ScheduleArgs, canon: Callable[[str, Ctx], Canon], ctx: Ctx, case: Case
) -> Canon:
    assert isinstance(exc, InvalidSlotError), f"accepted, expected a refusal naming {case.expect}"
    got = canon(exc.field, ctx)
    assert names_expected(got, case.expect), f"refused naming {exc.field!r} ({got}), expected {case.expect}: {exc}"
    return got


# ----------------------------------------------------------------------------- in process


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decoders_agree(case: Case) -> None:
    """Both decoders accept (equal slots, field by field) or both refuse (the same field and kind);
    a case one wire alone can express is checked on that wire."""
    wire = render(case)
    decoded = [(decode_rest(wire.rest), rest_canonical)] if wire.rest is not None else []
    if wire.grpc is not None:
        decoded.append((decode_grpc(wire.grpc), grpc_canonical))
    if case.expect == OK:
        for got, _ in decoded:
            assert isinstance(got, ScheduleArgs), f"refused: {got}"
        if len(decoded) == 2:
            assert_same_args(decoded[0][0], decoded[1][0])  # type: ignore[arg-type]
        return
    named = [_check_refusal(got, canon, wire.ctx, case) for got, canon in decoded]
    if len(decoded) == 2:
        (rest, _), (grpc_, _) = decoded
        assert type(rest) is type(grpc_), (rest, grpc_)  # the same kind: invalid, or over a limit
        (a, ia), (b, ib) = named  # the same field; the same element unless one names the whole field
        assert a == b and (ia == ib or not ia or not ib), (rest, grpc_)


def _accepted() -> list[Case]:
    return [c for c in CASES if c.expect == OK]


@pytest.mark.parametrize("case", _accepted(), ids=[c.id for c in _accepted()])
def test_one_slot_renders_to_two_wire_forms_that_decode_to_it(case: Case) -> None:
    """The project's own renderers of one ``SlotState`` (``service.trace.rest_request`` and
    ``convert.slot_to_request``) decode back to that slot on either wire."""
    wire = render(case)
    first = decode_rest(wire.rest) if wire.rest is not None else decode_grpc(wire.grpc)
    assert isinstance(first, ScheduleArgs)
    state, feedback = first.state, first.feedback
    rest = decode_rest(rest_request(state, feedback, policy=first.policy, deadline_ms=first.deadline_ms))
    grpc_ = decode_grpc(slot_to_request(state, feedback=feedback, policy=first.policy, deadline_ms=first.deadline_ms))
    for got in (rest, grpc_):
        assert isinstance(got, ScheduleArgs), got
        assert_same_slot(got.state, state)
        assert (got.policy, got.deadline_ms) == (first.policy, first.deadline_ms)
        assert got.feedback == feedback


def _rule_of(case: Case) -> str | None:
    """The ``RULES`` key a case's mutation touches (None: the base as it is, or a resize)."""
    m = case.mutation
    if not m or (m[0] in ("users", "resources") and len(m) == 2):
        return None
    if m[0] == "rest":
        path = m[1]
        if path[0] in ("users", "resources") and len(path) == 3:
            return f"{path[0]}.{path[2]}"
        name = path[0]
    elif m[0] == "grpc":
        name = GRPC_NAMES.get(m[1][0], m[1][0])
    else:
        name = {"user_ids": "users.id", "resource_ids": "resources.id"}.get(m[0], GRPC_NAMES.get(m[0], m[0]))
    return "delivered_bits" if name == "feedback" else name


def test_every_rule_is_covered() -> None:
    """Each rule of the contract is exercised by an accepted and a refused case, and each ranged
    rule just inside and just outside both bounds."""
    seen: dict[str, set[str]] = {key: set() for key in RULES}
    for case in CASES:
        key = _rule_of(case)
        if key in seen:
            seen[key].add(OK if case.expect == OK else "refused")
    missing = {key: sorted(v) for key, v in seen.items() if v != {OK, "refused"}}
    assert not missing, f"rules without an accepted and a refused case: {missing}"
    ranged = {key for key, rule in RULES.items() if rule.lo is not None and rule.kind != "str"}
    assert ranged == set(BOUND_WHERE) | HAND_BOUNDED, ranged ^ (set(BOUND_WHERE) | HAND_BOUNDED)
    assert len(CASES) >= 40


# ----------------------------------------------------------------------------- real servers


def _unique_cell(cell_id: Any, tag: str) -> Any:
    """A cell id of the same length (so the cell_id cases keep their verdict) unique per run."""
    if type(cell_id) is not str or len(cell_id) <= 1:
        return cell_id if type(cell_id) is not str or not cell_id else tag[-1]
    return (tag + cell_id[len(tag) :]) if len(cell_id) >= len(tag) else tag


def _grpc_outcome(stub: Any, req: pb.SlotRequest) -> tuple[str, Any]:
    try:
        return "OK", stub.Schedule(req, timeout=10)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()


def _rest_outcome(http: httpx.Client, doc: dict[str, Any]) -> httpx.Response:
    # json.dumps writes NaN / Infinity (JSON has none): the server refuses them as invalid JSON
    return http.post("/schedule", content=json.dumps(doc).encode(), headers={"content-type": "application/json"})


def _compare_answers(case: Case, ctx: Ctx, rest: httpx.Response | None, code: str | None, answer: Any) -> None:
    where = f"{case.id}: REST {rest.status_code if rest else '-'} {rest.text[:300] if rest else ''} / gRPC {code} {answer if code != 'OK' else ''}"
    if case.expect == OK:
        if rest is not None:
            assert rest.status_code == 200, where
        if code is not None:
            assert code == "OK", where
        if rest is not None and code is not None:
            body = rest.json()
            owner = [-1 if o is None else o for o in body["owner"]]
            assert owner == list(answer.owner), where
            assert (body["policy"], body["utility"], body["replayed"]) == (
                answer.policy,
                answer.utility,
                answer.replayed,
            ), where
        return
    names = []
    if rest is not None:
        body = rest.json()
        kind = ErrorKind(body["error"])
        assert 400 <= rest.status_code < 500 and rest.status_code == HTTP_STATUS[kind], where
        if code is not None:
            assert code == GRPC_CODE[kind], where  # the one table both transports answer from
        if kind is not ErrorKind.INVALID_JSON:  # NaN / Infinity do not parse: no field to compare
            got = rest_canonical(body["field"], ctx)
            assert names_expected(got, case.expect), where
            names.append(got)
    if code is not None:
        assert code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"), where
        got = grpc_canonical(answer.split(": ", 1)[0], ctx)
        assert names_expected(got, case.expect), where
        names.append(got)
    if len(names) == 2:
        assert names[0][0] == names[1][0], where


def test_real_servers_agree(serve_process) -> None:
    """The same cases through one ``gnbsched serve`` (REST and gRPC over one core): REST 200 ⇔ gRPC
    OK with the same owners, REST 4xx ⇔ gRPC INVALID_ARGUMENT naming the same field; then the
    per-cell state rules: 409 ⇔ FAILED_PRECONDITION."""
    proc = serve_process(
        "--policy-mac",
        "pf",
        "--policy-spectrum",
        "km",
        grpc=True,
        env={"GNBSCHED_MAX_USERS": str(MAX_USERS), "GNBSCHED_MAX_RESOURCES": str(MAX_RESOURCES)},
    )
    proc.wait_ready()
    with httpx.Client(base_url=proc.url, timeout=10) as http, grpc.insecure_channel(proc.grpc_target) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        for k, case in enumerate(CASES):
            wire = render(case)
            rest = code = answer = None
            if wire.rest is not None:
                doc = dict(wire.rest)
                doc["cell_id"] = _unique_cell(doc.get("cell_id"), f"p{k}r")
                rest = _rest_outcome(http, doc)
            if wire.grpc is not None:
                req = pb.SlotRequest()
                req.CopyFrom(wire.grpc)
                req.cell_id = _unique_cell(req.cell_id, f"p{k}g")
                code, answer = _grpc_outcome(stub, req)
            _compare_answers(case, wire.ctx, rest, code, answer)

        # the per-cell state rules, the same sequence on each transport (its own cell)
        base = BASES["mac"]
        steps: list[tuple[dict[str, Any], str]] = [
            ({"slot": 5, "epoch": 1}, OK),
            ({"slot": 4, "epoch": 1}, "slot"),  # older than the last applied slot
            ({"slot": 5, "epoch": 1, "buffer_bits": [1.0, 2.0, 3.0]}, "slot"),  # applied, other content
            ({"slot": 5, "epoch": 1}, "replay"),  # the same request again: the stored decision
            ({"slot": 6, "epoch": 0}, "epoch"),  # older epoch
            ({"slot": 6, "epoch": 1, "feedback": [(3, 10.0), (999, 1.0)]}, "feedback[1]"),  # not a user of the cell
            ({"slot": 6, "epoch": 1, "feedback": [(3, 10.0)]}, OK),
            ({"slot": 0, "epoch": 2}, OK),  # a new epoch starts the cell afresh
        ]
        for step, (change, expect) in enumerate(steps):
            s = {**copy.deepcopy(base), **change}
            rest_doc, req = to_rest(s), to_grpc(s)
            rest_doc["cell_id"], req.cell_id = "state-rest", "state-grpc"
            ctx = Ctx(len(s["resource_ids"]), False, [str(uid) for uid, _ in s["feedback"]])
            resp = _rest_outcome(http, rest_doc)
            code, answer = _grpc_outcome(stub, req)
            where = f"step {step} {change}: REST {resp.status_code} {resp.text[:300]} / gRPC {code} {answer}"
            if expect in (OK, "replay"):
                assert resp.status_code == 200 and code == "OK", where
                body = resp.json()
                assert [-1 if o is None else o for o in body["owner"]] == list(answer.owner), where
                assert body["replayed"] is answer.replayed is (expect == "replay"), where
                continue
            body = resp.json()
            kind = ErrorKind(body["error"])
            assert resp.status_code == HTTP_STATUS[kind] and code == GRPC_CODE[kind], where
            assert (resp.status_code, code) == (
                (422, "INVALID_ARGUMENT") if expect.startswith("feedback") else (409, "FAILED_PRECONDITION")
            ), where
            a, b = rest_canonical(body["field"], ctx), grpc_canonical(answer.split(": ", 1)[0], ctx)
            assert a == b == parse_canonical(expect), where
