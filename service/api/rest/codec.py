"""``POST /schedule`` JSON: decode a request into its slot, encode a decision (the REST hot path).

``decode_schedule`` takes the dict ``orjson`` decoded and builds the numpy columns of the slot
directly — one list comprehension and one ``np.array`` per field, no per-user Python object —
checking each against its rule in ``service.api.contract.RULES`` (the table the gRPC converter
uses too), then calls ``service.types.make_slot``. Every rejection is an ``InvalidSlotError``
whose ``field`` names the offending field (``users[3].buffer_bits``, ``rate_bps[2][7]``,
``feedback.delivered_bits.17``); ``LimitExceededError`` for N or R above the configured limits.

JSON shapes (N users, R resources): ``users[i]`` and ``resources[j]`` objects with the fields of
the ``users`` / ``resources`` rules; ``rate_bps`` / ``utility`` [N][R]; ``feedback``:
``{"delivered_bits": {"<user id>": bits}}``. Per entry, ``eligible`` / ``available`` default to
true, ``bandwidth_hz`` to the preset's default and ``interference_dbm`` to none; a user's
``retx_bits`` and ``retx_rbgs`` are given together or not at all (not at all: 0, no
retransmission pending); the other numeric fields are given for every entry or for none.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from service.api.contract import (
    INT64_MAX,
    NO_INTERFERENCE_DBM,
    RULES,
    Limits,
    Rule,
    ScheduleArgs,
    check_column,
    check_feedback,
    check_ids,
    check_utility_finite,
    default_bandwidth_hz,
)
from service.errors import InvalidSlotError, LimitExceededError
from service.types import PRESETS, RETX_TOGETHER, Decision, SlotState, check_retx_given, make_slot

__all__ = ["decode_schedule", "encode_decision", "field_path"]

TOP_FIELDS = frozenset(name for name, rule in RULES.items() if rule.group in ("top", "matrix")) | {
    "users",
    "resources",
    "feedback",
}
USER_FIELDS = frozenset(rule.name for rule in RULES.values() if rule.group == "users")
RESOURCE_FIELDS = frozenset(rule.name for rule in RULES.values() if rule.group == "resources")
FEEDBACK_FIELDS = frozenset(rule.name for rule in RULES.values() if rule.group == "feedback")

_NUM = frozenset({int, float})
_INT = frozenset({int})
_BOOL = frozenset({bool})
_NONE = type(None)


def field_path(parent: str, name: str) -> str:
    """Dotted path of member ``name`` of ``parent`` (top level: ``parent`` = ""); a name that is
    empty or not a plain identifier is quoted: ``body[""]``, ``users[0]["a.b"]``."""
    if name.isidentifier():
        return f"{parent}.{name}" if parent else name
    return f"{parent or 'body'}[{json.dumps(name)}]"


def _type_name(x: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        _NONE: "null",
    }.get(type(x), type(x).__name__)


def _number(field: str, x: Any, rule: Rule) -> float:
    if type(x) not in _NUM:
        raise InvalidSlotError(field, f"expected a number, got {_type_name(x)}")
    return rule.check_scalar(field, x)


def _integer(field: str, x: Any, rule: Rule) -> int:
    if type(x) is not int:
        raise InvalidSlotError(field, f"expected an integer, got {_type_name(x)}")
    return rule.check_int(field, x)


def _optional(doc: Mapping[str, Any], name: str, parse: Any) -> Any:
    """``parse(field, value, rule)`` of a top-level field, or its rule's default when absent."""
    rule = RULES[name]
    value = doc.get(name)
    return rule.default if value is None else parse(name, value, rule)


# ----------------------------------------------------------------------------- columns


def _first_bad(col: list, ok: frozenset[type]) -> int:
    return next(i for i, x in enumerate(col) if type(x) not in ok)


def _column(rows: list[dict], key: str, group: str, ok: frozenset[type], what: str, default: Any = None) -> list | None:
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


def _float_column(rows: list[dict], key: str, group: str, default: float | None = None) -> np.ndarray | None:
    """float64 [len(rows)] of a numeric field, each within its rule; None if absent."""
    col = _column(rows, key, group, _NUM, "a number", default)
    if col is None:
        return None
    return check_column(RULES[f"{group}.{key}"], np.array(col, dtype=np.float64), f"{group}[{{i}}].{key}")


def _int_column(rows: list[dict], key: str, group: str, default: int | None = None) -> np.ndarray | None:
    """int64 [len(rows)] of an integer field, each within its rule; None if absent."""
    col = _column(rows, key, group, _INT, "an integer", default)
    if col is None:
        return None
    rule = RULES[f"{group}.{key}"]
    try:
        arr = np.array(col, dtype=np.int64)
    except OverflowError:
        i = next(i for i, x in enumerate(col) if not -INT64_MAX - 1 <= x <= INT64_MAX)
        raise InvalidSlotError(f"{group}[{i}].{key}", rule.problem(col[i])) from None
    return check_column(rule, arr, f"{group}[{{i}}].{key}")


def _retx_columns(users: list[dict], ukeys: set[str], preset: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``retx_bits`` float64 [N] and ``retx_rbgs`` int64 [N] (a user with neither: 0, 0), or
    (None, None) when no user has them. Checked in the order the gRPC converter uses: the preset,
    both fields present (a user with only one of them is refused, naming the other), the ranges."""
    check_retx_given(preset, "retx_bits" in ukeys, "retx_rbgs" in ukeys)
    if "retx_bits" not in ukeys:
        return None, None
    for i, row in enumerate(users):
        if ("retx_bits" in row) != ("retx_rbgs" in row):
            missing = "retx_rbgs" if "retx_bits" in row else "retx_bits"
            raise InvalidSlotError(f"users[{i}].{missing}", RETX_TOGETHER)
    bits = _float_column(users, "retx_bits", "users", RULES["users.retx_bits"].default)
    rbgs = _int_column(users, "retx_rbgs", "users", RULES["users.retx_rbgs"].default)
    return bits, rbgs


def _id_column(rows: list[dict], group: str) -> np.ndarray:
    col = _column(rows, "id", group, _INT, "an integer")
    if col is None:
        raise InvalidSlotError(f"{group}[0].id", "required")
    try:
        ids = np.array(col, dtype=np.int64)
    except OverflowError:
        i = next(i for i, x in enumerate(col) if not -INT64_MAX - 1 <= x <= INT64_MAX)
        raise InvalidSlotError(f"{group}[{i}].id", f"out of the int64 range: {col[i]}") from None
    return check_ids(ids, f"{group}[{{i}}].id")


def _bool_column(rows: list[dict], key: str, group: str) -> np.ndarray | None:
    """bool [len(rows)]; an entry without the key takes its rule's default."""
    try:
        col = list(map(itemgetter(key), rows))
    except KeyError:
        default = RULES[f"{group}.{key}"].default
        col = [row.get(key, default) for row in rows]
    if set(map(type, col)) != _BOOL:
        i = _first_bad(col, _BOOL)
        raise InvalidSlotError(f"{group}[{i}].{key}", f"expected a boolean, got {_type_name(col[i])}")
    return np.array(col, dtype=bool)


def _matrix(rows: Any, field: str, n: int, r: int, rule: Rule) -> np.ndarray:
    """float64 [n, r] from a list of ``n`` lists of ``r`` numbers, each within ``rule``.

    ``field`` is the name of row ``i`` with ``{i}`` in it (``rate_bps[{i}]``,
    ``users[{i}].fading_gain``); a bad element is named ``<row>[j]``.
    """
    if type(rows) is not list or len(rows) != n:
        got = f"{len(rows)} rows" if type(rows) is list else _type_name(rows)
        raise InvalidSlotError(
            field.replace("[{i}]", ""), f"expected {n} rows of {r} numbers (users × resources), got {got}"
        )
    if set(map(type, rows)) != {list}:
        i = next(i for i, row in enumerate(rows) if type(row) is not list)
        raise InvalidSlotError(field.format(i=i), f"expected an array of {r} numbers, got {_type_name(rows[i])}")
    if set(map(len, rows)) != {r}:
        i = next(i for i, row in enumerate(rows) if len(row) != r)
        raise InvalidSlotError(field.format(i=i), f"expected {r} values (one per resource), got {len(rows[i])}")
    if not set(map(type, chain.from_iterable(rows))) <= _NUM:
        i, j = next((i, j) for i, row in enumerate(rows) for j, x in enumerate(row) if type(x) not in _NUM)
        raise InvalidSlotError(f"{field.format(i=i)}[{j}]", f"expected a number, got {_type_name(rows[i][j])}")
    return check_column(rule, np.array(rows, dtype=np.float64), field + "[{j}]")


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
        raise InvalidSlotError(
            field_path("feedback", min(extra)), f"unknown field; expected one of {sorted(FEEDBACK_FIELDS)}"
        )
    delivered = doc.get("delivered_bits")
    if delivered is None:
        return None
    if type(delivered) is not dict:
        raise InvalidSlotError(
            "feedback.delivered_bits", f"expected an object {{user id: bits}}, got {_type_name(delivered)}"
        )
    if not delivered:  # no entry is no feedback, as an empty gRPC ``Feedback``
        return None
    if len(delivered) > max_entries:
        raise LimitExceededError(
            "feedback.delivered_bits", f"{len(delivered)} entries exceed the limit of {max_entries}"
        )
    ids: list[int] = []
    bits: list[float] = []
    for key, value in delivered.items():
        field = f"feedback.delivered_bits.{key}"
        if not (key.isascii() and key.isdigit()) or len(key) > 19 or (key[0] == "0" and key != "0"):
            raise InvalidSlotError(field, "keys must be user ids (canonical decimal integers >= 0)")
        if type(value) not in _NUM:
            raise InvalidSlotError(field, f"expected a number, got {_type_name(value)}")
        ids.append(int(key))
        bits.append(float(value))
    if any(uid > INT64_MAX for uid in ids):
        i = next(i for i, uid in enumerate(ids) if uid > INT64_MAX)
        raise InvalidSlotError(f"feedback.delivered_bits.{ids[i]}", "user id out of the int64 range")
    return check_feedback(np.array(ids, np.int64), np.array(bits, np.float64), "feedback.delivered_bits.{key}")


# ----------------------------------------------------------------------------- request


DEFAULT_LIMITS = Limits()


def decode_schedule(doc: Any, limits: Limits = DEFAULT_LIMITS, policies: Collection[str] | None = None) -> ScheduleArgs:
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
    max_chars = int(RULES["cell_id"].hi)  # type: ignore[arg-type]
    if type(cell_id) is not str or not 0 < len(cell_id) <= max_chars:
        raise InvalidSlotError(
            "cell_id", f"expected a non-empty string of at most {max_chars} characters, got {_type_name(cell_id)}"
        )
    if "slot" not in doc:
        raise InvalidSlotError("slot", "required")
    slot = _integer("slot", doc["slot"], RULES["slot"])
    preset = doc.get("preset")
    if preset not in PRESETS or type(preset) is not str:
        raise InvalidSlotError("preset", f"expected one of {list(PRESETS)}, got {preset!r}")
    policy = doc.get("policy")
    if policy is not None:
        if type(policy) is not str:
            raise InvalidSlotError("policy", f"expected a policy name (string), got {_type_name(policy)}")
        if policies is not None and policy not in policies:
            raise InvalidSlotError(
                "policy", f"unknown policy {policy[:64]!r}; registered: {', '.join(sorted(policies))}"
            )
    deadline_ms = _optional(doc, "deadline_ms", _number)
    cap = _optional(doc, "max_resources_per_user", _integer)
    epoch = _optional(doc, "epoch", _integer)
    tti_s = _optional(doc, "tti_s", _number)
    rb_per_rbg = _optional(doc, "rb_per_rbg", _integer)
    noise_dbm_hz = _optional(doc, "noise_density_dbm_hz", _number)

    users, ukeys = _records(doc, "users", USER_FIELDS, limits.max_users)
    resources, rkeys = _records(doc, "resources", RESOURCE_FIELDS, limits.max_resources)
    n, r = len(users), len(resources)

    # one column per field that some entry has; absent fields cost nothing
    user_ids = _id_column(users, "users")
    resource_ids = _id_column(resources, "resources")
    bandwidth_hz = interference_dbm = available = None
    if "bandwidth_hz" in rkeys:
        bandwidth_hz = _float_column(resources, "bandwidth_hz", "resources", default_bandwidth_hz(preset, rb_per_rbg))
    if "available" in rkeys:
        available = _bool_column(resources, "available", "resources")
    if "interference_dbm" in rkeys:
        interference_dbm = _float_column(resources, "interference_dbm", "resources", NO_INTERFERENCE_DBM)
    eligible = rx_power_dbm = buffer_bits = spectral_efficiency = fading_gain = None
    if "eligible" in ukeys:
        eligible = _bool_column(users, "eligible", "users")
    if "rx_power_dbm" in ukeys:
        rx_power_dbm = _float_column(users, "rx_power_dbm", "users")
    if "buffer_bits" in ukeys:
        buffer_bits = _float_column(users, "buffer_bits", "users")
    retx_bits, retx_rbgs = _retx_columns(users, ukeys, preset)
    if "spectral_efficiency" in ukeys:
        se_col = _column(users, "spectral_efficiency", "users", _NUM | {list}, "a number or an array of numbers")
        se_col = se_col or []
        se_types = set(map(type, se_col))
        if list in se_types and se_types & _NUM:
            i = next(i for i, x in enumerate(se_col) if type(x) is list)
            raise InvalidSlotError(
                f"users[{i}].spectral_efficiency",
                "mixes per-resource arrays and single numbers; use one form for every user",
            )
        if list in se_types:
            spectral_efficiency = _matrix(
                se_col, "users[{i}].spectral_efficiency", n, r, RULES["users.spectral_efficiency"]
            )
            if r == 1:  # one value per user either way: [N], as gRPC reads its N = N·R values
                spectral_efficiency = spectral_efficiency.reshape(n)
        elif se_col:
            spectral_efficiency = _float_column(users, "spectral_efficiency", "users")
    if "fading_gain" in ukeys:
        fg_col = _column(users, "fading_gain", "users", frozenset({list}), "an array of numbers (one per resource)")
        fading_gain = (
            None if fg_col is None else _matrix(fg_col, "users[{i}].fading_gain", n, r, RULES["users.fading_gain"])
        )
    rate = doc.get("rate_bps")
    rate_bps = None if rate is None else _matrix(rate, "rate_bps[{i}]", n, r, RULES["rate_bps"])
    weights = doc.get("utility")
    utility = None if weights is None else _matrix(weights, "utility[{i}]", n, r, RULES["utility"])

    feedback = _feedback(doc.get("feedback"), limits.max_users)

    state = make_slot(
        preset,
        user_ids,
        resource_ids,
        bandwidth_hz=bandwidth_hz,
        resource_available=available,
        user_eligible=eligible,
        max_resources_per_user=cap,
        rate_bps=rate_bps,
        utility=utility,
        rx_power_dbm=rx_power_dbm,
        fading_gain=fading_gain,
        interference_dbm=interference_dbm,
        spectral_efficiency=spectral_efficiency,
        buffer_bits=buffer_bits,
        retx_bits=retx_bits,
        retx_rbgs=retx_rbgs,
        rb_per_rbg=rb_per_rbg,
        noise_density_dbm_hz=noise_dbm_hz,
        cell_id=cell_id,
        slot=slot,
        tti_s=tti_s,
        checked=True,  # every value is within the contract's rules (checked above)
    )
    check_utility_finite(
        state,
        rate=rate_bps is not None,
        utility=utility is not None,
        names={"rx_power_dbm": "users.rx_power_dbm", "spectral_efficiency": "users.spectral_efficiency"},
    )
    return ScheduleArgs(state, policy, deadline_ms, feedback, epoch)


# ----------------------------------------------------------------------------- response


def encode_decision(state: SlotState, decision: Decision) -> dict[str, Any]:
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
        "replayed": decision.replayed,
    }
