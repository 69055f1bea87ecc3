"""The request contract both transports enforce: one table of field rules, one set of checks.

``RULES`` names every field of a scheduling request once: its REST path, its gRPC field, type,
accepted range, default, unit and meaning. The REST decoder (``service.api.rest.codec``), the
gRPC converter (``service.api.grpc.convert``) and the OpenAPI models
(``service.api.rest.openapi``) all read it, so REST and gRPC accept and refuse the same values,
and the documentation states the ranges that are enforced.

Shapes: N users, R resources. Per-user fields are [N], per-resource fields [R], matrices
[N, R] (rows in user order, columns in resource order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from service.errors import ErrorKind, InvalidSlotError
from service.types import DEFAULT_RB_PER_RBG, DEFAULT_TTI_S, SlotState

INT64_MAX = 2**63 - 1
#: HTTP header / gRPC metadata key naming the request's cell, for proxies that route a cell's
#: traffic to one replica by a consistent hash of it (cell affinity); the service does not need it
CELL_HEADER = "x-gnbsched-cell"
MAX_CELL_ID_CHARS = 256

Group = Literal["top", "users", "resources", "matrix", "feedback"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One request field.

    name: the REST name (member of its group's objects); proto: the gRPC field; kind: the
    value type; [lo, hi] (``lo_open``: (lo, hi]) the accepted range of each value; ``hi_name``:
    the upper bound's name when it depends on the slot (hi None, e.g. ``R``: checked by
    ``service.types.make_slot``); default: the value an absent field takes (None: absent means
    "not given"); unit: SI unit or "unitless"; doc: what it means.
    """

    name: str
    group: Group
    proto: str
    kind: Literal["int", "float", "bool", "str", "matrix"]
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    default: Any = None
    unit: str = ""
    doc: str = ""
    hi_name: str = ""

    def bounds(self) -> str:
        """The accepted range as text: ``[0, 1e+18]``, ``(0, 1]``, ``[0, R]``."""
        hi = self.hi_name if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {hi}]"

    def problem(self, value: float) -> str:
        """Why ``value`` (out of range) is refused, for an error message."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be finite and in {self.bounds()}, got {value}"
        return (
            f"must be in {self.bounds()}, got {value:g}"
            if self.kind == "float"
            else f"must be in {self.bounds()}, got {value}"
        )

    def check_scalar(self, field: str, value: float) -> float:
        """``value`` when it is finite and within the range, else ``InvalidSlotError(field)``."""
        try:
            v = float(value)
        except OverflowError:  # an integer beyond the float range
            raise InvalidSlotError(
                field, f"must be in {self.bounds()}, got an integer of {len(str(value))} digits"
            ) from None
        lo, hi = self.lo, self.hi
        if (
            not math.isfinite(v)
            or (lo is not None and (v <= lo if self.lo_open else v < lo))
            or (hi is not None and v > hi)
        ):
            raise InvalidSlotError(field, self.problem(value))
        return v

    def check_int(self, field: str, value: int) -> int:
        """``value`` when it is within the (integer) range, else ``InvalidSlotError(field)``."""
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise InvalidSlotError(field, self.problem(value))
        return value

    def all_in_range(self, arr: np.ndarray) -> bool:
        """True when every element of ``arr`` is finite and within the range (``out_of_range`` is
        all False), from two reductions: a NaN makes the minimum and maximum NaN. The bounds are
        compared with numpy scalars, as ``out_of_range`` compares them with the array."""
        if arr.size == 0:
            return True
        lo_v, hi_v = arr.min(), arr.max()
        if not (math.isfinite(lo_v) and math.isfinite(hi_v)):
            return False
        lo, hi = self.lo, self.hi
        if lo is not None and (lo_v <= lo if self.lo_open else lo_v < lo):
            return False
        return hi is None or hi_v <= hi

    def out_of_range(self, arr: np.ndarray) -> np.ndarray:
        """bool mask of the elements of ``arr`` that are not finite or not within the range."""
        bad = ~np.isfinite(arr)
        if self.lo is not None:
            bad |= (arr <= self.lo) if self.lo_open else (arr < self.lo)
        if self.hi is not None:
            bad |= arr > self.hi
        return bad


_R = Rule
#: every field of a scheduling request, by REST name (per-entry fields as ``users.<name>`` /
#: ``resources.<name>``)
RULES: dict[str, Rule] = {
    f"{r.group}.{r.name}" if r.group in ("users", "resources") else r.name: r
    for r in (
        _R(
            "cell_id",
            "top",
            "cell_id",
            "str",
            1,
            MAX_CELL_ID_CHARS,
            unit="characters",
            doc="the cell; keys the per-cell state",
        ),
        _R("slot", "top", "slot", "int", 0, INT64_MAX, unit="unitless", doc="slot (TTI) number, increasing per cell"),
        _R("preset", "top", "preset", "str", doc="spectrum (LSA channels) or mac (UDTS RBGs)"),
        _R(
            "policy", "top", "policy", "str", doc="registered policy name; absent: the service's default for the preset"
        ),
        _R(
            "deadline_ms",
            "top",
            "deadline_ms",
            "float",
            0.0,
            60_000.0,
            lo_open=True,
            unit="ms",
            doc="policy deadline; on overrun the fallback chain serves; absent: the service default",
        ),
        _R(
            "max_resources_per_user",
            "top",
            "max_resources_per_user",
            "int",
            1,
            INT64_MAX,
            unit="unitless",
            doc="cap per user, a count of resources (default 1 spectrum, R mac)",
        ),
        _R(
            "tti_s",
            "top",
            "tti_s",
            "float",
            0.0,
            1.0,
            lo_open=True,
            default=DEFAULT_TTI_S,
            unit="s",
            doc="TTI (slot) length (mac); the mac utility from rate_bps is rate_bps · tti_s bits",
        ),
        _R(
            "rb_per_rbg",
            "top",
            "rb_per_rbg",
            "int",
            1,
            275,
            default=DEFAULT_RB_PER_RBG,
            unit="unitless",
            doc="resource blocks per RBG (mac TBS; 275 PRBs is the widest NR carrier, TS 38.101-1)",
        ),
        _R(
            "epoch",
            "top",
            "epoch",
            "int",
            0,
            INT64_MAX,
            unit="unitless",
            doc="the cell's epoch: a larger one than the cell's starts the cell afresh (a simulator restart); a "
            "smaller one is refused (409); absent: the cell's current epoch",
        ),
        _R(
            "noise_density_dbm_hz",
            "top",
            "noise_density_dbm_hz",
            "float",
            -200.0,
            -100.0,
            default=-174.0,
            unit="dBm/Hz",
            doc="thermal noise density N0 (spectrum Shannon rate)",
        ),
        _R("id", "users", "user_ids", "int", 0, INT64_MAX, unit="unitless", doc="user id, unique in the slot"),
        _R(
            "rx_power_dbm",
            "users",
            "rx_power_dbm",
            "float",
            -300.0,
            100.0,
            unit="dBm",
            doc="received power (spectrum preset; every user or none)",
        ),
        _R(
            "spectral_efficiency",
            "users",
            "spectral_efficiency",
            "float",
            0.0,
            64.0,
            unit="bit/s/Hz",
            doc="spectral efficiency, one value or one per resource (mac preset; every user or none)",
        ),
        _R(
            "buffer_bits",
            "users",
            "buffer_bits",
            "float",
            0.0,
            1e18,
            unit="bit",
            doc="queued data; a mac user with 0 (and no retransmission pending) owns nothing (every user or none: "
            "none = full buffers)",
        ),
        _R(
            "retx_bits",
            "users",
            "retx_bits",
            "float",
            0.0,
            1e18,
            default=0.0,
            unit="bit",
            doc="mac: size of the transport block pending HARQ retransmission (0 = none); given together with "
            "retx_rbgs, > 0 exactly where retx_rbgs > 0. Served before new data (PAG rule retx_not_first)",
        ),
        _R(
            "retx_rbgs",
            "users",
            "retx_rbgs",
            "int",
            0,
            None,
            default=0,
            unit="unitless",
            hi_name="R",
            doc="mac: RBGs that pending retransmission needs, a count in [0, R] (0 = none); given together with "
            "retx_bits, > 0 exactly where retx_bits > 0; a cap below it wins",
        ),
        _R("eligible", "users", "eligible", "bool", default=True, doc="false: the user may own nothing this slot"),
        _R(
            "fading_gain",
            "users",
            "fading_gain",
            "matrix",
            0.0,
            1e12,
            unit="unitless",
            doc="small-scale power gain per resource, linear (spectrum; every user or none)",
        ),
        _R(
            "id",
            "resources",
            "resource_ids",
            "int",
            0,
            INT64_MAX,
            unit="unitless",
            doc="resource id, unique in the slot",
        ),
        _R(
            "bandwidth_hz",
            "resources",
            "bandwidth_hz",
            "float",
            0.0,
            1e12,
            lo_open=True,
            unit="Hz",
            doc="bandwidth (default 1 MHz spectrum; one RBG mac: rb_per_rbg × 12 × 30 kHz)",
        ),
        _R(
            "available",
            "resources",
            "available",
            "bool",
            default=True,
            doc="false: a primary user is present / not in this cell's pool",
        ),
        _R(
            "interference_dbm",
            "resources",
            "interference_dbm",
            "float",
            -300.0,
            100.0,
            unit="dBm",
            doc="interference power on the channel (spectrum; default none)",
        ),
        _R(
            "rate_bps",
            "matrix",
            "rate_bps",
            "matrix",
            0.0,
            1e18,
            unit="bit/s",
            doc="N×R achievable rates; the utility is the rate (spectrum) or rate_bps · tti_s bits per RBG per "
            "slot (mac); the physical fields are then not needed. Not together with utility",
        ),
        _R(
            "utility",
            "matrix",
            "utility",
            "matrix",
            0.0,
            1e18,
            unit="unitless",
            doc="N×R utility weights used as the slot's utility as given; in mac buffer_bits and feedback are "
            "compared with them in the same unit. Not together with rate_bps",
        ),
        _R(
            "delivered_bits",
            "feedback",
            "feedback.delivered_bits",
            "float",
            0.0,
            1e18,
            unit="bit",
            doc="user id -> what the previous slot really delivered: bits (mac), bit/s (spectrum); in the "
            "utility's unit when the request gave a unitless utility matrix",
        ),
    )
}

#: a channel without ``interference_dbm`` when others have one: 1e-33 W, negligible against the
#: thermal noise N0·B of any channel (relative change < 1e-12 for B >= 1 kHz at N0 >= -200 dBm/Hz)
NO_INTERFERENCE_DBM = RULES["resources.interference_dbm"].lo


def default_bandwidth_hz(preset: str, rb_per_rbg: int = DEFAULT_RB_PER_RBG) -> float:
    """Bandwidth of a resource that gives none: 1 MHz channel (spectrum), one RBG of
    ``rb_per_rbg`` RBs × 12 subcarriers × 30 kHz (mac, numerology 1) — as ``make_slot``."""
    return 1.0e6 if preset == "spectrum" else 30e3 * 12 * rb_per_rbg


def check_column(rule: Rule, arr: np.ndarray, field: str) -> np.ndarray:
    """``arr`` when every element is finite and within ``rule``'s range; else ``InvalidSlotError``
    naming the first bad element: ``field`` has ``{i}`` (and ``{j}`` for matrices) in it."""
    if rule.all_in_range(arr):
        return arr
    bad = rule.out_of_range(arr)
    if bad.any():
        idx = tuple(int(v) for v in np.argwhere(bad)[0])
        names = dict(zip("ij", idx, strict=False))
        raise InvalidSlotError(field.format(**names), rule.problem(arr[idx].item()))
    return arr


def check_ids(ids: np.ndarray, field: str) -> np.ndarray:
    """int64 ids, each in [0, 2^63 - 1] (``-1`` is the decision's "unused" owner, so negative
    ids are refused); ``field`` has ``{i}`` for the first bad element."""
    if ids.size and int(ids.min()) < 0:
        i = int(np.flatnonzero(ids < 0)[0])
        raise InvalidSlotError(field.format(i=i), f"must be in [0, {INT64_MAX}], got {int(ids[i])}")
    return ids


def check_feedback(user_ids: np.ndarray, bits: np.ndarray, field: str, id_field: str | None = None) -> dict[int, float]:
    """``{user id: delivered bits}`` from parallel arrays: bits in range, ids unique.

    ``field`` names one entry's bits, ``id_field`` (default ``field``) its id, with ``{key}`` for
    the id or ``{i}`` for the position (REST ``feedback.delivered_bits.{key}``, gRPC
    ``feedback.delivered_bits[{i}]`` / ``feedback.user_ids[{i}]``)."""
    rule = RULES["delivered_bits"]
    bad = rule.out_of_range(bits)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidSlotError(field.format(i=i, key=int(user_ids[i])), rule.problem(float(bits[i])))
    if user_ids.size > 1:
        order = np.argsort(user_ids, kind="stable")
        dup = np.flatnonzero(user_ids[order][1:] == user_ids[order][:-1])
        if dup.size:
            i = int(order[dup[0] + 1])
            raise InvalidSlotError(
                (id_field or field).format(i=i, key=int(user_ids[i])), f"duplicate user id {int(user_ids[i])}"
            )
    return dict(zip(user_ids.tolist(), bits.tolist(), strict=True))


def check_utility_finite(state: SlotState, *, rate: bool, utility: bool, names: dict[str, str]) -> None:
    """Values in range can still combine into a non-finite utility: refuse it, naming the source
    field (``names`` maps the REST name to the transport's)."""
    if np.isfinite(state.utility).all():
        return
    source = (
        "utility"
        if utility
        else "rate_bps"
        if rate
        else ("rx_power_dbm" if state.preset == "spectrum" else "spectral_efficiency")
    )
    raise InvalidSlotError(names.get(source, source), "the utility computed from these values is not finite")


class ScheduleArgs(NamedTuple):
    """A decoded request (either transport): what ``ServiceCore.decide`` takes."""

    state: SlotState
    policy: str | None
    deadline_ms: float | None
    feedback: dict[int, float] | None
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Largest request accepted: users N, resources R (``Settings.max_users`` / ``max_resources``)."""

    max_users: int = 4096
    max_resources: int = 4096

    @staticmethod
    def from_settings(settings: Any) -> Limits:
        return Limits(int(settings.max_users), int(settings.max_resources))


def error_body(kind: ErrorKind, field: str, message: str) -> dict[str, str]:
    """``{"error", "field", "message"}`` of a rejection (``field`` is a dotted path)."""
    return {"error": kind.value, "field": field, "message": message}


def invalid_body(exc: InvalidSlotError) -> dict[str, str]:
    """The rejection body of a request that breaks the contract (its kind, field and message)."""
    return error_body(exc.kind, exc.field, exc.message)
