"""The ``POST /schedule`` contract (issue 3): JSON decoding, response encoding, documented models.

Two halves, on purpose:

* ``decode_schedule`` / ``encode_decision`` are the hot path. They take the dict ``orjson``
  decoded and build the numpy columns of the slot directly — one list comprehension and one
  ``np.array`` per field, no per-user Python object — then call ``service.types.make_slot``,
  which computes the utility. Every rejection is an ``InvalidSlotError`` whose ``field`` names
  the offending field (``users[3].buffer_bits``, ``rate_bps[2][7]``, ``feedback.delivered_bits.17``);
  ``LimitExceededError`` for N or R above the configured limits.
* The pydantic models (``ScheduleRequest``, ``ScheduleResponse``, ``ErrorBody``) describe the
  same contract for OpenAPI and carry its examples; they are never built per request.

JSON shapes (N users, R resources):
  users[i]: ``id`` int, ``rx_power_dbm`` dBm (spectrum), ``spectral_efficiency`` bit/s/Hz, number
  or [R] list (mac), ``buffer_bits`` bits, ``eligible`` bool, ``fading_gain`` [R] unitless power
  gains (spectrum).
  resources[j]: ``id`` int, ``bandwidth_hz`` Hz, ``available`` bool, ``interference_dbm`` dBm.
  Per entry, ``eligible`` / ``available`` default to true, ``bandwidth_hz`` to the preset's
  default and ``interference_dbm`` to none; the other numeric fields are given for every entry
  or for none.
  rate_bps: [N][R] bit/s (rows in ``users`` order): achievable rates; the utility is the rate
  (spectrum) or ``rate_bps · tti_s`` bits per RBG per slot (mac).
  utility: [N][R] unitless weights, used as the utility as given (mac: compared with
  ``buffer_bits`` as they are). At most one of ``rate_bps`` and ``utility``.
  feedback: ``{"delivered_bits": {"<user id>": bits}}`` — what the previous slot delivered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.errors import InvalidSlotError, LimitExceededError
from service.types import DEFAULT_RB_PER_RBG, DEFAULT_TTI_S, PRESETS, Decision, SlotState, make_slot

__all__ = [
    "ErrorBody",
    "Limits",
    "ScheduleArgs",
    "ScheduleRequest",
    "ScheduleResponse",
    "decode_schedule",
    "encode_decision",
]

TOP_FIELDS = frozenset({"cell_id", "slot", "preset", "policy", "deadline_ms", "max_resources_per_user", "tti_s",
                        "rb_per_rbg", "noise_density_dbm_hz", "users", "resources", "rate_bps", "utility",
                        "feedback"})
USER_FIELDS = frozenset({"id", "rx_power_dbm", "spectral_efficiency", "buffer_bits", "eligible", "fading_gain"})
RESOURCE_FIELDS = frozenset({"id", "bandwidth_hz", "available", "interference_dbm"})
FEEDBACK_FIELDS = frozenset({"delivered_bits"})

MAX_CELL_ID_CHARS = 256
MAX_DEADLINE_MS = 60_000.0
INT64_MAX = 2**63 - 1
#: physical ranges accepted (beyond them the Shannon / TBS formulas overflow or make no sense)
POWER_DBM_RANGE = (-300.0, 100.0)
BANDWIDTH_HZ_MAX = 1e12
SPECTRAL_EFFICIENCY_MAX = 64.0  # bit/s/Hz; 256-QAM tables top out near 7.4
GAIN_MAX = 1e12
BITS_MAX = 1e18
#: largest rate_bps element (bit/s) and utility element (unitless) accepted
RATE_BPS_MAX = 1e18
UTILITY_MAX = 1e18

NOISE_DENSITY_DBM_HZ_RANGE = (-200.0, -100.0)
#: a channel without ``interference_dbm`` when others have one: 1e-33 W, negligible against the
#: thermal noise N0·B of any channel (relative change < 1e-12 for B >= 1 kHz at N0 >= -200 dBm/Hz)
NO_INTERFERENCE_DBM = POWER_DBM_RANGE[0]

_NUM = frozenset({int, float})
_INT = frozenset({int})
_BOOL = frozenset({bool})
_NONE = type(None)


class ScheduleArgs(NamedTuple):
    """A decoded request: what ``ServiceCore.schedule`` takes."""

    state: SlotState
    policy: str | None
    deadline_ms: float | None
    feedback: dict[int, float] | None


@dataclass(frozen=True, slots=True)
class Limits:
    """Largest request accepted: users N, resources R (``Settings.max_users`` / ``max_resources``)."""

    max_users: int = 4096
    max_resources: int = 4096

    @staticmethod
    def from_settings(settings: Any) -> Limits:
        return Limits(int(settings.max_users), int(settings.max_resources))


# ----------------------------------------------------------------------------- scalars


def default_bandwidth_hz(preset: str, rb_per_rbg: int = DEFAULT_RB_PER_RBG) -> float:
    """Bandwidth of a resource that gives none: 1 MHz channel (spectrum), one RBG of
    ``rb_per_rbg`` RBs × 12 subcarriers × 30 kHz (mac, numerology 1) — as ``make_slot``."""
    return 1.0e6 if preset == "spectrum" else 30e3 * 12 * rb_per_rbg


def field_path(parent: str, name: str) -> str:
    """Dotted path of member ``name`` of ``parent`` (top level: ``parent`` = ""); a name that is
    empty or not a plain identifier is quoted: ``body[""]``, ``users[0]["a.b"]``."""
    if name.isidentifier():
        return f"{parent}.{name}" if parent else name
    return f"{parent or 'body'}[{json.dumps(name)}]"


def _type_name(x: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", _NONE: "null"}.get(type(x), type(x).__name__)


def _number(field: str, x: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> float:
    if type(x) not in _NUM:
        raise InvalidSlotError(field, f"expected a number, got {_type_name(x)}")
    v = float(x)
    if not math.isfinite(v):
        raise InvalidSlotError(field, f"must be finite, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise InvalidSlotError(field, f"must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    if hi is not None and v > hi:
        raise InvalidSlotError(field, f"must be <= {hi:g}, got {v:g}")
    return v


def _integer(field: str, x: Any, lo: int, hi: int = INT64_MAX) -> int:
    if type(x) is not int:
        raise InvalidSlotError(field, f"expected an integer, got {_type_name(x)}")
    if not lo <= x <= hi:
        raise InvalidSlotError(field, f"must be in [{lo}, {hi}], got {x}")
    return x


# ----------------------------------------------------------------------------- columns


def _first_bad(col: list, ok: frozenset[type]) -> int:
    return next(i for i, x in enumerate(col) if type(x) not in ok)


def _column(rows: list[dict], key: str, group: str, ok: frozenset[type], what: str,
            default: Any = None) -> list | None:
    """``[row[key] for row in rows]`` with every value's type in ``ok``; None when no row has it.

    An entry without the key takes ``default``; with no default the field is all-or-none.
    """
    try:
        col = list(map(itemgetter(key), rows))
    except KeyError:
        col = [row.get(key, default) for row in rows]
    types = set(map(type, col))
    if types <= ok:
        return col
    if types == {_NONE}:
        return None
    i = _first_bad(col, ok)
    if col[i] is None:
        raise InvalidSlotError(f"{group}[{i}].{key}", "missing (given for other entries: give it for all or none)")
    raise InvalidSlotError(f"{group}[{i}].{key}", f"expected {what}, got {_type_name(col[i])}")


def _float_column(rows: list[dict], key: str, group: str, lo: float | None, hi: float | None,
                  *, lo_open: bool = False, default: float | None = None) -> np.ndarray | None:
    """float64 [len(rows)] from a numeric field, finite and within [lo, hi]; None if absent."""
    col = _column(rows, key, group, _NUM, "a number", default)
    if col is None:
        return None
    arr = np.array(col, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if lo is not None:
        bad |= (arr <= lo) if lo_open else (arr < lo)
    if hi is not None:
        bad |= arr > hi
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        _number(f"{group}[{i}].{key}", col[i], lo, hi, lo_open=lo_open)  # raises with the reason
    return arr


def _int_column(rows: list[dict], key: str, group: str) -> np.ndarray:
    col = _column(rows, key, group, _INT, "an integer")
    if col is None:
        raise InvalidSlotError(f"{group}[0].{key}", "required")
    try:
        return np.array(col, dtype=np.int64)
    except OverflowError:
        i = next(i for i, x in enumerate(col) if not -INT64_MAX - 1 <= x <= INT64_MAX)
        raise InvalidSlotError(f"{group}[{i}].{key}", f"out of the int64 range: {col[i]}") from None


def _bool_column(rows: list[dict], key: str, group: str, default: bool) -> np.ndarray | None:
    """bool [len(rows)]; an entry without the key takes ``default``; None when no entry has it."""
    col = [row.get(key, default) for row in rows]
    if set(map(type, col)) != _BOOL:
        i = _first_bad(col, _BOOL)
        raise InvalidSlotError(f"{group}[{i}].{key}", f"expected a boolean, got {_type_name(col[i])}")
    return np.array(col, dtype=bool)


def _matrix(rows: Any, field: str, n: int, r: int, hi: float) -> np.ndarray:
    """float64 [n, r] from a list of ``n`` lists of ``r`` numbers, each finite and in [0, hi].

    ``field`` is the name of row ``i`` with ``{i}`` in it (``rate_bps[{i}]``,
    ``users[{i}].fading_gain``); a bad element is named ``<row>[j]``.
    """
    if type(rows) is not list or len(rows) != n:
        got = f"{len(rows)} rows" if type(rows) is list else _type_name(rows)
        raise InvalidSlotError(field.replace("[{i}]", ""), f"expected {n} rows of {r} numbers (users × resources), got {got}")
    if set(map(type, rows)) != {list}:
        i = next(i for i, row in enumerate(rows) if type(row) is not list)
        raise InvalidSlotError(field.format(i=i), f"expected an array of {r} numbers, got {_type_name(rows[i])}")
    if set(map(len, rows)) != {r}:
        i = next(i for i, row in enumerate(rows) if len(row) != r)
        raise InvalidSlotError(field.format(i=i), f"expected {r} values (one per resource), got {len(rows[i])}")
    if not set(map(type, chain.from_iterable(rows))) <= _NUM:
        i, j = next((i, j) for i, row in enumerate(rows) for j, x in enumerate(row) if type(x) not in _NUM)
        raise InvalidSlotError(f"{field.format(i=i)}[{j}]", f"expected a number, got {_type_name(rows[i][j])}")
    mat = np.array(rows, dtype=np.float64)
    bad = ~np.isfinite(mat) | (mat < 0) | (mat > hi)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        _number(f"{field.format(i=i)}[{j}]", rows[i][j], 0.0, hi)
    return mat


def _records(doc: Mapping[str, Any], key: str, allowed: frozenset[str], limit: int) -> tuple[list[dict], set[str]]:
    """The list of objects under ``key`` (1..limit entries, known fields only) and the fields used."""
    rows = doc.get(key)
    if rows is None:
        raise InvalidSlotError(key, "required")
    if type(rows) is not list:
        raise InvalidSlotError(key, f"expected an array of objects, got {_type_name(rows)}")
    if not rows:
        raise InvalidSlotError(key, "must not be empty")
    if len(rows) > limit:
        raise LimitExceededError(key, f"{len(rows)} entries exceed the configured limit of {limit}")
    if set(map(type, rows)) != {dict}:
        i = next(i for i, row in enumerate(rows) if type(row) is not dict)
        raise InvalidSlotError(f"{key}[{i}]", f"expected an object, got {_type_name(rows[i])}")
    keys = set().union(*rows)
    extra = keys - allowed
    if extra:
        name = min(extra)
        i = next(i for i, row in enumerate(rows) if name in row)
        raise InvalidSlotError(field_path(f"{key}[{i}]", name), f"unknown field; expected one of {sorted(allowed)}")
    return rows, keys


def _feedback(doc: Any, max_entries: int) -> dict[int, float] | None:
    if doc is None:
        return None
    if type(doc) is not dict:
        raise InvalidSlotError("feedback", f"expected an object, got {_type_name(doc)}")
    extra = set(doc) - FEEDBACK_FIELDS
    if extra:
        raise InvalidSlotError(field_path("feedback", min(extra)), f"unknown field; expected one of {sorted(FEEDBACK_FIELDS)}")
    delivered = doc.get("delivered_bits")
    if delivered is None:
        return None
    if type(delivered) is not dict:
        raise InvalidSlotError("feedback.delivered_bits", f"expected an object {{user id: bits}}, got {_type_name(delivered)}")
    if len(delivered) > max_entries:
        raise LimitExceededError("feedback.delivered_bits", f"{len(delivered)} entries exceed the limit of {max_entries}")
    out: dict[int, float] = {}
    for key, bits in delivered.items():
        field = f"feedback.delivered_bits.{key}"
        body = key[1:] if key[:1] == "-" else key
        if not (body.isascii() and body.isdigit()) or len(body) > 19:
            raise InvalidSlotError(field, "keys must be user ids (decimal integers)")
        uid = int(key)
        if not -INT64_MAX - 1 <= uid <= INT64_MAX:
            raise InvalidSlotError(field, "user id out of the int64 range")
        out[uid] = _number(field, bits, 0.0, BITS_MAX)
    return out


# ----------------------------------------------------------------------------- request


def decode_schedule(doc: Any, limits: Limits = Limits(), policies: Collection[str] | None = None) -> ScheduleArgs:
    """Validate a decoded JSON body of ``POST /schedule`` and build its ``SlotState``.

    ``policies``: names a request may ask for (None = no check). Raises ``InvalidSlotError``
    naming the field, ``LimitExceededError`` when N, R or the feedback exceed ``limits``.
    """
    if type(doc) is not dict:
        raise InvalidSlotError("body", f"expected a JSON object, got {_type_name(doc)}")
    extra = doc.keys() - TOP_FIELDS
    if extra:
        raise InvalidSlotError(field_path("", min(extra)), f"unknown field; expected one of {sorted(TOP_FIELDS)}")

    cell_id = doc.get("cell_id")
    if type(cell_id) is not str or not 0 < len(cell_id) <= MAX_CELL_ID_CHARS:
        raise InvalidSlotError("cell_id", f"expected a non-empty string of at most {MAX_CELL_ID_CHARS} characters, "
                                          f"got {_type_name(cell_id)}")
    if "slot" not in doc:
        raise InvalidSlotError("slot", "required")
    slot = _integer("slot", doc["slot"], 0)
    preset = doc.get("preset")
    if preset not in PRESETS or type(preset) is not str:
        raise InvalidSlotError("preset", f"expected one of {list(PRESETS)}, got {preset!r}")
    policy = doc.get("policy")
    if policy is not None:
        if type(policy) is not str:
            raise InvalidSlotError("policy", f"expected a policy name (string), got {_type_name(policy)}")
        if policies is not None and policy not in policies:
            raise InvalidSlotError("policy", f"unknown policy {policy[:64]!r}; registered: {', '.join(sorted(policies))}")
    deadline = doc.get("deadline_ms")
    deadline_ms = None if deadline is None else _number("deadline_ms", deadline, 0.0, MAX_DEADLINE_MS, lo_open=True)
    cap = doc.get("max_resources_per_user")
    cap = None if cap is None else _integer("max_resources_per_user", cap, 1)
    tti = doc.get("tti_s")
    tti_s = DEFAULT_TTI_S if tti is None else _number("tti_s", tti, 0.0, 1.0, lo_open=True)
    rb = doc.get("rb_per_rbg")
    rb_per_rbg = DEFAULT_RB_PER_RBG if rb is None else _integer("rb_per_rbg", rb, 1, 275)
    n0 = doc.get("noise_density_dbm_hz")
    noise_dbm_hz = -174.0 if n0 is None else _number("noise_density_dbm_hz", n0, *NOISE_DENSITY_DBM_HZ_RANGE)

    users, ukeys = _records(doc, "users", USER_FIELDS, limits.max_users)
    resources, rkeys = _records(doc, "resources", RESOURCE_FIELDS, limits.max_resources)
    n, r = len(users), len(resources)

    # one column per field that some entry has; absent fields cost nothing
    user_ids = _int_column(users, "id", "users")
    resource_ids = _int_column(resources, "id", "resources")
    bandwidth_hz = interference_dbm = available = None
    if "bandwidth_hz" in rkeys:
        bandwidth_hz = _float_column(resources, "bandwidth_hz", "resources", 0.0, BANDWIDTH_HZ_MAX, lo_open=True,
                                     default=default_bandwidth_hz(preset, rb_per_rbg))
    if "available" in rkeys:
        available = _bool_column(resources, "available", "resources", True)
    if "interference_dbm" in rkeys:
        interference_dbm = _float_column(resources, "interference_dbm", "resources", *POWER_DBM_RANGE,
                                         default=NO_INTERFERENCE_DBM)
    eligible = rx_power_dbm = buffer_bits = spectral_efficiency = fading_gain = None
    if "eligible" in ukeys:
        eligible = _bool_column(users, "eligible", "users", True)
    if "rx_power_dbm" in ukeys:
        rx_power_dbm = _float_column(users, "rx_power_dbm", "users", *POWER_DBM_RANGE)
    if "buffer_bits" in ukeys:
        buffer_bits = _float_column(users, "buffer_bits", "users", 0.0, BITS_MAX)
    if "spectral_efficiency" in ukeys:
        se_col = _column(users, "spectral_efficiency", "users", _NUM | {list}, "a number or an array of numbers")
        se_col = se_col or []
        se_types = set(map(type, se_col))
        if list in se_types and se_types & _NUM:
            i = next(i for i, x in enumerate(se_col) if type(x) is list)
            raise InvalidSlotError(f"users[{i}].spectral_efficiency",
                                   "mixes per-resource arrays and single numbers; use one form for every user")
        if list in se_types:
            spectral_efficiency = _matrix(se_col, "users[{i}].spectral_efficiency", n, r, SPECTRAL_EFFICIENCY_MAX)
        elif se_col:
            spectral_efficiency = _float_column(users, "spectral_efficiency", "users", 0.0, SPECTRAL_EFFICIENCY_MAX)
    if "fading_gain" in ukeys:
        fg_col = _column(users, "fading_gain", "users", frozenset({list}), "an array of numbers (one per resource)")
        fading_gain = None if fg_col is None else _matrix(fg_col, "users[{i}].fading_gain", n, r, GAIN_MAX)
    rate = doc.get("rate_bps")
    rate_bps = None if rate is None else _matrix(rate, "rate_bps[{i}]", n, r, RATE_BPS_MAX)
    weights = doc.get("utility")
    utility = None if weights is None else _matrix(weights, "utility[{i}]", n, r, UTILITY_MAX)

    feedback = _feedback(doc.get("feedback"), limits.max_users)

    state = make_slot(
        preset, user_ids, resource_ids, bandwidth_hz=bandwidth_hz, resource_available=available,
        user_eligible=eligible, max_resources_per_user=cap, rate_bps=rate_bps, utility=utility,
        rx_power_dbm=rx_power_dbm,
        fading_gain=fading_gain, interference_dbm=interference_dbm, spectral_efficiency=spectral_efficiency,
        buffer_bits=buffer_bits, rb_per_rbg=rb_per_rbg, noise_density_dbm_hz=noise_dbm_hz,
        cell_id=cell_id, slot=slot, tti_s=tti_s,
    )
    if not np.isfinite(state.utility).all():  # physical fields in range can still combine badly
        source = "utility" if utility is not None else "rate_bps" if rate_bps is not None else (
            "users.rx_power_dbm" if preset == "spectrum" else "users.spectral_efficiency")
        raise InvalidSlotError(source, "the utility computed from these values is not finite")
    return ScheduleArgs(state, policy, deadline_ms, feedback)


# ----------------------------------------------------------------------------- response


def encode_decision(state: SlotState, decision: Decision, *, decode_us: float | None = None) -> dict[str, Any]:
    """The response body of ``POST /schedule`` (ids, not indices; ``owner`` aligned with ``resources``)."""
    owner = decision.owner
    used = owner > 0
    owner_user = state.user_ids[np.maximum(owner - 1, 0)]  # [R]
    owner_list: list[int | None] = owner_user.tolist()
    for j in np.flatnonzero(~used).tolist():
        owner_list[j] = None
    alloc: dict[str, list[int]] = {}
    for uid, rid in zip(owner_user[used].tolist(), state.resource_ids[used].tolist(), strict=True):
        alloc.setdefault(str(uid), []).append(rid)
    timings = dict(decision.timings_us)
    if decode_us is not None:
        timings["decode"] = decode_us
    return {
        "cell_id": state.cell_id,
        "slot": state.slot,
        "owner": owner_list,
        "allocation": alloc,
        "policy": decision.policy,
        "policy_version": decision.policy_version,
        "fallback": decision.fallback,
        "fallback_reason": decision.fallback_reason,
        "valid_before_repair": decision.valid_before_repair,
        "violations": [{"kind": v.kind, "message": v.message} for v in decision.violations],
        "utility": decision.utility,
        "timings_us": timings,
        "notes": decision.notes,
    }


def error_body(exc: InvalidSlotError | None = None, *, error: str = "invalid_request", field: str = "body",
               message: str = "") -> dict[str, str]:
    """``{"error", "field", "message"}`` for a rejection (``field`` is a dotted path)."""
    if exc is not None:
        error = "limit_exceeded" if isinstance(exc, LimitExceededError) else error
        field, message = exc.field, exc.message
    return {"error": error, "field": field, "message": message}


# ----------------------------------------------------------------------------- documented models
# These describe the contract for OpenAPI; the hot path above never instantiates them.

_SPECTRUM_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-7",
    "slot": 1042,
    "preset": "spectrum",
    "policy": "km",
    "deadline_ms": 5.0,
    "users": [
        {"id": 11, "rx_power_dbm": -71.5},
        {"id": 12, "rx_power_dbm": -88.0},
        {"id": 13, "rx_power_dbm": -80.2, "eligible": False},
    ],
    "resources": [
        {"id": 1, "bandwidth_hz": 5.0e6, "available": True},
        {"id": 2, "bandwidth_hz": 2.0e6, "available": False},
        {"id": 3, "bandwidth_hz": 10.0e6, "available": True, "interference_dbm": -100.0},
    ],
}
_MAC_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-3",
    "slot": 77,
    "preset": "mac",
    "policy": "pf",
    "tti_s": 0.0005,
    "users": [
        {"id": 1, "spectral_efficiency": 1.1758, "buffer_bits": 2048},
        {"id": 2, "spectral_efficiency": 0.2344, "buffer_bits": 512},
        {"id": 3, "spectral_efficiency": 0.6016, "buffer_bits": 0},
    ],
    "resources": [{"id": r, "bandwidth_hz": 1.44e6} for r in range(4)],
    "feedback": {"delivered_bits": {"1": 790.0, "2": 0.0}},
}
_RATE_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-9",
    "slot": 5,
    "preset": "spectrum",
    "users": [{"id": 1}, {"id": 2}],
    "resources": [{"id": 10, "bandwidth_hz": 1e6}, {"id": 20, "bandwidth_hz": 1e6}],
    "rate_bps": [[4.1e6, 2.0e6], [3.9e6, 0.5e6]],
}
_MAC_RATE_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-4",
    "slot": 12,
    "preset": "mac",
    "policy": "pf",
    "tti_s": 0.0005,
    # achievable rate per RBG in bit/s (one RBG = 4 PRBs = 1.44 MHz; SE 1.1758 -> ~1.69 Mbit/s);
    # the utility is rate_bps * tti_s bits per RBG per slot (~847 bits), compared with buffer_bits
    "users": [{"id": 1, "buffer_bits": 2048}, {"id": 2, "buffer_bits": 512}],
    "resources": [{"id": r, "bandwidth_hz": 1.44e6} for r in range(3)],
    "rate_bps": [[1.69e6, 1.52e6, 1.69e6], [0.87e6, 0.87e6, 0.34e6]],
}
_UTILITY_EXAMPLE: dict[str, Any] = {
    "cell_id": "cell-5",
    "slot": 3,
    "preset": "spectrum",
    "users": [{"id": 1}, {"id": 2}],
    "resources": [{"id": 10}, {"id": 20}],
    "utility": [[0.9, 0.2], [0.7, 0.6]],
}
REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "spectrum": {"summary": "spectrum access (LSA): channels from received powers", "value": _SPECTRUM_EXAMPLE},
    "mac": {"summary": "uplink RBG scheduling (UDTS) with the previous slot's feedback", "value": _MAC_EXAMPLE},
    "rate_matrix": {"summary": "caller-provided rate matrix in bit/s as the utility", "value": _RATE_EXAMPLE},
    "mac_rate_matrix": {"summary": "mac with caller-provided rates in bit/s (utility = rate_bps * tti_s bits)",
                        "value": _MAC_RATE_EXAMPLE},
    "utility_matrix": {"summary": "caller-provided unitless utility weights, used as given",
                       "value": _UTILITY_EXAMPLE},
}


class User(BaseModel):
    """One user (UE) of the slot."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(description="user id (integer, unitless), unique in the slot")
    rx_power_dbm: float | None = Field(None, ge=POWER_DBM_RANGE[0], le=POWER_DBM_RANGE[1],
                                       description="received power in dBm (spectrum preset, SPEC §2; every user or none)")
    spectral_efficiency: float | list[float] | None = Field(
        None, description="spectral efficiency in bit/s/Hz, one value or one per resource "
                          "(mac preset, SPEC §3; every user or none)")
    buffer_bits: float | None = Field(None, ge=0, le=BITS_MAX,
                                      description="queued data in bits; a mac user with 0 owns nothing (every user or none: "
                                                  "none = full buffers). With a unitless utility matrix the mac buffer "
                                                  "cap compares it with the utility as it is")
    eligible: bool | None = Field(None, description="false: the user may own nothing this slot (default true)")
    fading_gain: list[float] | None = Field(None, description="small-scale power gain per resource, unitless "
                                                              "(linear; spectrum; every user or none)")


class Resource(BaseModel):
    """One resource: a channel (spectrum) or an RBG (mac)."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(description="resource id (integer, unitless), unique in the slot")
    bandwidth_hz: float | None = Field(None, gt=0, le=BANDWIDTH_HZ_MAX,
                                       description="bandwidth in Hz (default 1 MHz spectrum; one RBG mac: "
                                                   "rb_per_rbg x 12 x 30 kHz = 1.44 MHz)")
    available: bool | None = Field(None, description="false: a primary user is present / not in this cell's pool")
    interference_dbm: float | None = Field(None, ge=POWER_DBM_RANGE[0], le=POWER_DBM_RANGE[1],
                                           description="interference power on this channel in dBm (spectrum; default none)")


class Feedback(BaseModel):
    """What happened in the previous slot of this cell."""

    model_config = ConfigDict(extra="forbid")
    delivered_bits: dict[str, float] = Field(default_factory=dict,
                                             description="user id -> what was really delivered: bits in the slot "
                                                         "(mac), rate in bit/s (spectrum); in the utility's unit "
                                                         "when the request gave a unitless utility matrix")


class ScheduleRequest(BaseModel):
    """One slot of one cell."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SPECTRUM_EXAMPLE, _MAC_EXAMPLE]})
    cell_id: str = Field(min_length=1, max_length=MAX_CELL_ID_CHARS, description="the cell; keys per-cell state")
    slot: int = Field(ge=0, le=INT64_MAX, description="slot (TTI) number, unitless, increasing per cell")
    preset: Literal["spectrum", "mac"] = Field(description="spectrum (LSA channels) or mac (UDTS RBGs)")
    policy: str | None = Field(None, description="registered policy name; default from settings per preset")
    deadline_ms: float | None = Field(None, gt=0, le=MAX_DEADLINE_MS,
                                      description="policy deadline in ms; overrun -> the fallback chain serves")
    max_resources_per_user: int | None = Field(None, ge=1, description="cap per user, a count of resources, unitless "
                                                                       "(1 spectrum, R mac by default)")
    tti_s: float | None = Field(None, gt=0, le=1, description="TTI (slot) length in s (mac, default 0.0005); "
                                                              "mac utility from rate_bps = rate_bps x tti_s bits")
    rb_per_rbg: int | None = Field(None, ge=1, le=275, description="resource blocks per RBG, unitless (mac, default 4)")
    noise_density_dbm_hz: float | None = Field(None, ge=NOISE_DENSITY_DBM_HZ_RANGE[0], le=NOISE_DENSITY_DBM_HZ_RANGE[1],
                                               description="noise density N0 in dBm/Hz (spectrum, default -174)")
    users: list[User] = Field(min_length=1, description="the slot's users; rows of rate_bps / utility in this order")
    resources: list[Resource] = Field(min_length=1, description="the slot's resources; owner is aligned with it")
    rate_bps: list[list[float]] | None = Field(
        None, description="N×R achievable rates in bit/s (users × resources), each in [0, 1e18]; the utility is the "
                          "rate (spectrum) or rate_bps x tti_s bits per RBG per slot (mac); the physical fields are "
                          "then not needed. Not together with utility")
    utility: list[list[float]] | None = Field(
        None, description="N×R unitless utility weights (users × resources), each finite and in [0, 1e18], used as "
                          "the slot's utility as given; in mac buffer_bits (and feedback) are compared with them in "
                          "the same unit. Not together with rate_bps")
    feedback: Feedback | None = None


class ViolationOut(BaseModel):
    kind: str = Field(description="PAG rule: unparsable, wrong_length, out_of_domain, busy_resource, ...")
    message: str


class ScheduleResponse(BaseModel):
    """The slot's decision (always PAG-valid after repair)."""

    cell_id: str
    slot: int = Field(description="slot (TTI) number, unitless, echoed from the request")
    owner: list[int | None] = Field(description="per resource (request order): the owning user id or null")
    allocation: dict[str, list[int]] = Field(description="user id -> resource ids")
    policy: str = Field(description="the policy that produced the decision")
    policy_version: str
    fallback: str | None = Field(description="null, or why the requested policy did not serve")
    fallback_reason: str | None = Field(description="bounded label: deadline, error, unavailable, ...")
    valid_before_repair: bool = Field(description="the raw policy output passed the PAG checks")
    violations: list[ViolationOut] = Field(description="PAG violations of the raw output (repaired)")
    utility: float = Field(description="objective of the decision: sum-rate in bit/s (spectrum) or scheduled bits "
                                       "(mac); in the request's unit when it gave a unitless utility matrix")
    timings_us: dict[str, float] = Field(description="per stage, in µs: serialize, policy, check, repair, total, "
                                                     "decode")
    notes: dict[str, Any] = Field(description="policy notes (e.g. an anytime policy cut at the deadline)")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "cell_id": "cell-7", "slot": 1042, "owner": [11, None, 12], "allocation": {"11": [1], "12": [3]},
        "policy": "km", "policy_version": "1", "fallback": None, "fallback_reason": None,
        "valid_before_repair": True, "violations": [], "utility": 6.1e7,
        "timings_us": {"serialize": 0.4, "policy": 61.0, "check": 9.5, "repair": 3.1, "total": 88.0, "decode": 40.0},
        "notes": {},
    }]})


class ErrorBody(BaseModel):
    """A rejected request: which field and why."""

    error: str = Field(description="invalid_json, invalid_request, limit_exceeded, body_too_large, ...")
    field: str = Field(description="dotted path of the offending field (users[3].buffer_bits), or body")
    message: str

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "invalid_request", "field": "resources[2].bandwidth_hz", "message": "must be > 0, got -5"}]})
