"""Slot state and decision: plain dataclasses over numpy arrays (SPEC §1).

Shapes: ``N`` users (UEs), ``R`` resources (channels in the spectrum preset, RBGs in the mac
preset). A decision is the DCM vector ``owner`` of shape [R] with tokens in ``{0..N}``:
``0`` leaves the resource unused, ``k`` grants it to the user at index ``k-1`` of the slot.
User and resource *ids* only appear at the edges; the per-user view is always derived.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from service import phy
from service.errors import InvalidSlotError

Preset = Literal["spectrum", "mac"]
PRESETS: tuple[str, ...] = get_args(Preset)

#: MAC preset default: TTI of 0.5 ms (numerology μ = 1, 30 kHz), 4 RBs per RBG, 256-bit dPDUs.
DEFAULT_TTI_S = 0.0005
DEFAULT_RB_PER_RBG = 4
DPDU_BITS = 256


@dataclass(frozen=True, slots=True, eq=False)
class SlotState:
    """One cell, one slot.

    Attributes (N users, R resources):
        preset: ``"spectrum"`` (LSA: utility = Shannon rate, one resource per user) or ``"mac"``
            (UDTS: utility = TBS bits per RBG, several RBGs per user, limited by the buffer).
        user_ids: int64 [N], unique.
        resource_ids: int64 [R], unique.
        utility: float64 [N, R], >= 0, what a user gets from a resource in this slot. Spectrum:
            rate in bit/s; mac: bits per RBG per slot (TTI), the unit of ``buffer_bits`` and of
            ``served_bits``. ``make_slot`` derives it from the physical fields, or from a
            ``rate_bps`` matrix in bit/s (mac: times ``tti_s``); a caller's unitless ``utility``
            matrix is taken as it is (mac: the buffers are then compared in that unit).
        resource_available: bool [R]; false = primary user present / RBG not in this cell's pool.
        user_eligible: bool [N]; false = the user may own nothing this slot.
        max_resources_per_user: per-user cap (1 in spectrum, R by default in mac).
        bandwidth_hz: float64 [R].
        buffer_bits: float64 [N] queued bits, or None for full buffers.
        rx_power_dbm: float64 [N] or None (spectrum physical field).
        spectral_efficiency: float64 [N] or [N, R] bit/s/Hz, or None (mac physical field).
        retx_bits: float64 [N] bits of the transport block pending HARQ retransmission (0 = none),
            or None when no retransmission is pending (mac only; given together with ``retx_rbgs``).
        retx_rbgs: int64 [N] RBGs that retransmission needs, in [0, R], > 0 exactly where
            ``retx_bits`` > 0, or None (mac only). A user with one pending is eligible even with
            an empty ``buffer_bits`` (the block waits in its HARQ buffer, not in the queue).
    """

    preset: str
    user_ids: np.ndarray
    resource_ids: np.ndarray
    utility: np.ndarray
    resource_available: np.ndarray
    user_eligible: np.ndarray
    max_resources_per_user: int
    bandwidth_hz: np.ndarray
    buffer_bits: np.ndarray | None = None
    rx_power_dbm: np.ndarray | None = None
    spectral_efficiency: np.ndarray | None = None
    cell_id: str = "cell-0"
    slot: int = 0
    tti_s: float = DEFAULT_TTI_S
    retx_bits: np.ndarray | None = None
    retx_rbgs: np.ndarray | None = None

    @property
    def num_ue(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_res(self) -> int:
        return int(self.resource_ids.shape[0])

    def admissible(self) -> np.ndarray:
        """bool [N, R]: pairs allowed by availability and eligibility."""
        return self.user_eligible[:, None] & self.resource_available[None, :]

    def retx_need(self) -> np.ndarray | None:
        """int64 [N]: RBGs each user's pending HARQ retransmission must get this slot, or None when
        the slot has no ``retx_rbgs``.

        ``min(retx_rbgs, max_resources_per_user)`` for an eligible user with ``retx_rbgs > 0`` (the
        set P of the rule "retransmissions first", ``service.pag.checks.rule_retx_first``: the cap
        wins over a larger ``retx_rbgs``), 0 for every other user.
        """
        if self.retx_rbgs is None:
            return None
        need: np.ndarray = np.where(self.user_eligible, np.minimum(self.retx_rbgs, self.max_resources_per_user), 0)
        return need.astype(np.int64, copy=False)

    def retx_order(self) -> np.ndarray:
        """int64 [P]: the indices of the users with a retransmission to serve (``retx_need() > 0``)
        in the order they are served: larger ``retx_bits`` first, ties by the smaller user id."""
        need = self.retx_need()
        if need is None or self.retx_bits is None:
            return np.zeros(0, np.int64)
        p = np.flatnonzero(need > 0)
        return p[np.lexsort((self.user_ids[p], -self.retx_bits[p]))]


def _as_1d(
    name: str, values: Sequence | np.ndarray, dtype: type, n: int | None = None, *, checked: bool = False
) -> np.ndarray:
    """``values`` as a 1-D array of ``dtype`` (length ``n`` if given), or InvalidSlotError naming
    ``name``: ids must be integers (no fractional, NaN or infinite values), flags booleans (or
    0/1), floats finite. ``checked``: an array already typed is the caller's to give and its values
    were checked (``make_slot``'s ``checked``): taken as it is, only its length checked."""
    if checked and isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype == dtype:
        if n is not None and values.shape[0] != n:
            raise InvalidSlotError(name, f"expected {n} values, got {values.shape[0]}")
        return values
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype == dtype:
        arr: np.ndarray = values.copy()  # already typed: only the length and finiteness to check
    else:
        arr = _converted(name, values, dtype)
    if n is not None and arr.shape[0] != n:
        raise InvalidSlotError(name, f"expected {n} values, got {arr.shape[0]}")
    if dtype is float and not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InvalidSlotError(f"{name}[{i}]", f"must be finite, got {arr[i]}")
    return arr


def _converted(name: str, values: Sequence | np.ndarray, dtype: type) -> np.ndarray:
    """``values`` (a list, or an array of another dtype or shape) as a 1-D array of ``dtype``;
    InvalidSlotError naming ``name`` (``_as_1d``'s rules for ids and flags)."""
    try:
        raw = np.asarray(values)
        if raw.ndim != 1:
            raise InvalidSlotError(name, f"expected a 1-D list, got shape {raw.shape}")
        if dtype is bool and raw.dtype.kind != "b" and raw.size:
            if raw.dtype.kind not in "iuf" or not np.isin(raw, (0, 1)).all():
                raise InvalidSlotError(name, "expected booleans (true/false or 0/1)")
        if dtype is not float and raw.dtype.kind == "f" and raw.size:
            bad = ~np.isfinite(raw) | (raw != np.round(raw))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InvalidSlotError(f"{name}[{i}]", f"must be an integer, got {raw[i]}")
        return raw.astype(dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, InvalidSlotError):
            raise
        raise InvalidSlotError(name, f"not a list of {dtype.__name__}: {exc}") from None


def _as_int(name: str, value: object) -> int:
    """An integer setting (an integral float is accepted), or InvalidSlotError naming ``name``."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    raise InvalidSlotError(name, f"must be an integer, got {value!r}")


def _as_2d(
    name: str, values: np.ndarray | Sequence, shapes: tuple[tuple[int, ...], ...], *, checked: bool = False
) -> np.ndarray:
    """``values`` as a finite, non-negative float64 array of one of ``shapes``, or InvalidSlotError.
    ``checked``: a float64 array of one of ``shapes`` whose values were checked is taken as it is."""
    if checked and isinstance(values, np.ndarray) and values.dtype == np.float64 and values.shape in shapes:
        return values
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidSlotError(name, f"not a numeric matrix: {exc}") from None
    if arr.shape not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise InvalidSlotError(name, f"expected shape {want} (users × resources), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidSlotError(name, "must be finite (no NaN/inf)")
    if (arr < 0).any():
        raise InvalidSlotError(name, "must be >= 0")
    return arr


def _check_unique(name: str, ids: np.ndarray) -> None:
    """Raise on an empty id list (field ``name``) or a duplicate id (``name[i].id``)."""
    if ids.size == 0:
        raise InvalidSlotError(name, "must not be empty")
    if ids.size == 1 or (ids[1:] > ids[:-1]).all():  # increasing (the usual order): unique
        return
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        i = int(order[dup[0] + 1])
        raise InvalidSlotError(f"{name}[{i}].id", f"duplicate id {int(ids[i])}")


def _overflow_quiet(checked: bool) -> AbstractContextManager[object]:
    """Around the bits-per-slot products of ``make_slot``: numpy's overflow warning off when the
    values are unchecked (an overflow is refused right after as a non-finite utility); nothing
    for checked ones, whose contract ranges keep the products finite (rates <= 1e18 bit/s with
    ``tti_s`` <= 1 s, SE <= 64 bit/s/Hz with ``rb_per_rbg`` <= 275)."""
    return nullcontext() if checked else np.errstate(over="ignore")


def make_slot(
    preset: str,
    user_ids: Sequence[int] | np.ndarray,
    resource_ids: Sequence[int] | np.ndarray,
    *,
    bandwidth_hz: Sequence[float] | np.ndarray | None = None,
    resource_available: Sequence[bool] | np.ndarray | None = None,
    user_eligible: Sequence[bool] | np.ndarray | None = None,
    max_resources_per_user: int | None = None,
    rate_bps: np.ndarray | Sequence[Sequence[float]] | None = None,
    utility: np.ndarray | Sequence[Sequence[float]] | None = None,
    rx_power_dbm: Sequence[float] | np.ndarray | None = None,
    fading_gain: np.ndarray | None = None,
    interference_dbm: Sequence[float] | np.ndarray | None = None,
    spectral_efficiency: np.ndarray | Sequence | None = None,
    buffer_bits: Sequence[float] | np.ndarray | None = None,
    retx_bits: Sequence[float] | np.ndarray | None = None,
    retx_rbgs: Sequence[int] | np.ndarray | None = None,
    rb_per_rbg: int = DEFAULT_RB_PER_RBG,
    noise_density_dbm_hz: float = -174.0,
    cell_id: str = "cell-0",
    slot: int = 0,
    tti_s: float = DEFAULT_TTI_S,
    checked: bool = False,
) -> SlotState:
    """Validate a slot's fields and compute its utility matrix.

    Utility (float64 [N, R], rows = users, cols = resources), from the first source given:
      * ``utility``: caller-provided unitless weights (>= 0, finite), used as they are. In mac the
        buffers (``buffer_bits``) and the per-user bits of ``served_bits`` are compared with it
        directly, so they should be in the same unit (bits per resource per slot, for a
        meaningful buffer cap);
      * ``rate_bps``: caller-provided achievable rates in bit/s. Spectrum: the utility is the
        rate; mac: ``rate_bps · tti_s``, the bits per RBG per slot;
      * spectrum: Shannon rate from ``rx_power_dbm`` [N], ``bandwidth_hz`` [R], optional
        ``fading_gain`` [N, R] and ``interference_dbm`` [R] (SPEC §2);
      * mac: TBS bits per RBG ``n_RB · 12 · 14 · SE`` from ``spectral_efficiency`` [N] or [N, R]
        (SPEC §3).

    HARQ retransmissions (mac only): ``retx_bits`` [N] (bits of the pending transport block, >= 0,
    finite) and ``retx_rbgs`` [N] (RBGs it needs, integers in [0, R]) are given together or not at
    all, and ``retx_rbgs[u] > 0`` exactly where ``retx_bits[u] > 0``. A mac user with a
    retransmission pending is eligible even when its ``buffer_bits`` is 0.

    Raises ``InvalidSlotError`` naming the field for empty, duplicate, non-finite, negative or
    wrongly shaped input, and naming ``rate_bps,utility`` when both matrices are given.

    ``checked``: every value given was already checked against the request contract's ranges
    (``service.api.contract.RULES``, as both transports do before calling this) and the typed
    arrays are the caller's to give: they are used without a copy and without checking their
    values' finiteness and sign again (the contract's ranges are within ``make_slot``'s, and keep
    the TBS and the bits per slot finite). Lengths, shapes, unique ids, the HARQ fields and the
    Shannon rates are checked either way.
    """
    if preset not in PRESETS:
        raise InvalidSlotError("preset", f"unknown preset {preset!r}; expected one of {list(PRESETS)}")
    uids = _as_1d("users.id", user_ids, np.int64, checked=checked)
    rids = _as_1d("resources.id", resource_ids, np.int64, checked=checked)
    _check_unique("users", uids)
    _check_unique("resources", rids)
    n, r = uids.shape[0], rids.shape[0]

    if bandwidth_hz is None:
        bw = np.full(r, 1.0e6 if preset == "spectrum" else 30e3 * 12 * rb_per_rbg)
    else:
        bw = _as_1d("resources.bandwidth_hz", bandwidth_hz, float, r, checked=checked)
        if not checked and (bw <= 0).any():
            i = int(np.flatnonzero(bw <= 0)[0])
            raise InvalidSlotError(f"resources[{i}].bandwidth_hz", f"must be > 0, got {bw[i]}")
    avail = (
        np.ones(r, bool)
        if resource_available is None
        else _as_1d("resources.available", resource_available, bool, r, checked=checked)
    )
    elig = (
        np.ones(n, bool)
        if user_eligible is None
        else _as_1d("users.eligible", user_eligible, bool, n, checked=checked).copy()
    )

    buf = None
    if buffer_bits is not None:
        buf = _as_1d("users.buffer_bits", buffer_bits, float, n, checked=checked)
        if not checked and (buf < 0).any():
            i = int(np.flatnonzero(buf < 0)[0])
            raise InvalidSlotError(f"users[{i}].buffer_bits", f"must be >= 0, got {buf[i]}")
    retx_b, retx_r = _retx(preset, retx_bits, retx_rbgs, n, r)
    if buf is not None and preset == "mac":
        # nothing to send: owns nothing (SPEC §1); a pending retransmission is something to send
        elig &= (buf > 0) if retx_r is None else (buf > 0) | (retx_r > 0)

    cap = (
        (1 if preset == "spectrum" else r)
        if max_resources_per_user is None
        else _as_int("max_resources_per_user", max_resources_per_user)
    )
    if cap < 1:
        raise InvalidSlotError("max_resources_per_user", f"must be >= 1, got {cap}")
    if _as_int("rb_per_rbg", rb_per_rbg) < 1:
        raise InvalidSlotError("rb_per_rbg", f"must be >= 1, got {rb_per_rbg}")
    if not np.isfinite(noise_density_dbm_hz):
        raise InvalidSlotError("noise_density_dbm_hz", f"must be finite, got {noise_density_dbm_hz}")

    p_rx = None if rx_power_dbm is None else _as_1d("users.rx_power_dbm", rx_power_dbm, float, n, checked=checked)
    se = None
    if spectral_efficiency is not None:
        se = _as_2d("users.spectral_efficiency", spectral_efficiency, ((n,), (n, r)), checked=checked)

    if tti_s <= 0 or not np.isfinite(tti_s):
        raise InvalidSlotError("tti_s", f"must be > 0, got {tti_s}")
    if rate_bps is not None and utility is not None:
        raise InvalidSlotError(
            "rate_bps,utility",
            "give either rate_bps (achievable rates, bit/s) or utility (unitless weights used as given), not both",
        )
    if utility is not None:
        util = _as_2d("utility", utility, ((n, r),), checked=checked)
    elif rate_bps is not None:
        util = _as_2d("rate_bps", rate_bps, ((n, r),), checked=checked)
        if preset == "mac":
            with _overflow_quiet(checked):
                util = util * float(tti_s)  # bit/s -> bits per RBG per slot
            if not checked and not np.isfinite(util).all():
                raise InvalidSlotError("rate_bps", "the bits per slot computed from these values are not finite")
    elif preset == "spectrum":
        if p_rx is None:
            raise InvalidSlotError(
                "users.rx_power_dbm", "required for the spectrum preset when rate_bps and utility are absent"
            )
        fg = None if fading_gain is None else _as_2d("fading_gain", fading_gain, ((n, r),))
        intf = None if interference_dbm is None else _as_1d("resources.interference_dbm", interference_dbm, float, r)
        with np.errstate(over="ignore"):
            util = phy.shannon_rate_bps(
                p_rx, bw, fading_gain=fg, interference_dbm=intf, noise_density_dbm_hz=noise_density_dbm_hz
            )
        if not np.isfinite(util).all():  # finite fields can still overflow (e.g. absurd rx power)
            raise InvalidSlotError("users.rx_power_dbm", "the rate computed from these values is not finite")
    else:
        if se is None:
            raise InvalidSlotError(
                "users.spectral_efficiency", "required for the mac preset when rate_bps and utility are absent"
            )
        with _overflow_quiet(checked):
            tbs = phy.tbs_bits(se, rb_per_rbg)
        if tbs.ndim == 1:  # per user: the same on every RBG
            util = np.empty((n, r))
            util[:] = tbs[:, None]
        else:
            util = tbs  # [N, R], a new array
        if not checked and not np.isfinite(util).all():
            raise InvalidSlotError("users.spectral_efficiency", "the TBS computed from these values is not finite")

    return SlotState(
        preset=preset,
        user_ids=uids,
        resource_ids=rids,
        utility=util,
        resource_available=avail,
        user_eligible=elig,
        max_resources_per_user=cap,
        bandwidth_hz=bw,
        buffer_bits=buf,
        rx_power_dbm=p_rx,
        spectral_efficiency=se,
        cell_id=cell_id,
        slot=int(slot),
        tti_s=float(tti_s),
        retx_bits=retx_b,
        retx_rbgs=retx_r,
    )


def check_retx_given(preset: str, bits_given: bool, rbgs_given: bool) -> None:
    """The first checks of the HARQ retransmission fields, the same on every transport: refused
    outside the mac preset (naming ``users.retx_bits``, else ``users.retx_rbgs``), then given
    together or not at all (naming the missing one)."""
    if not (bits_given or rbgs_given):
        return
    if preset != "mac" and preset in PRESETS:  # an unknown preset is refused as such
        name = "retx_bits" if bits_given else "retx_rbgs"
        raise InvalidSlotError(
            f"users.{name}", f"HARQ retransmissions are a mac preset field; not accepted in the {preset} preset"
        )
    if not (bits_given and rbgs_given):
        missing = "retx_rbgs" if bits_given else "retx_bits"
        raise InvalidSlotError(f"users.{missing}", RETX_TOGETHER)


#: why a ``retx_bits`` without ``retx_rbgs`` (or the other way round) is refused
RETX_TOGETHER = "missing: retx_bits and retx_rbgs are given together (both or neither)"


def _retx(
    preset: str,
    retx_bits: Sequence[float] | np.ndarray | None,
    retx_rbgs: Sequence[int] | np.ndarray | None,
    n: int,
    r: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The HARQ retransmission columns (float64 [N] bits, int64 [N] RBGs) of a slot, checked:
    mac only, both or neither, bits >= 0 and finite, RBGs in [0, R], RBGs > 0 iff bits > 0.
    Errors name the field the REST way (``users[3].retx_rbgs``, ``users.retx_bits``)."""
    check_retx_given(preset, retx_bits is not None, retx_rbgs is not None)
    if retx_bits is None or retx_rbgs is None:
        return None, None
    bits = _as_1d("users.retx_bits", retx_bits, float, n)
    if (bits < 0).any():
        i = int(np.flatnonzero(bits < 0)[0])
        raise InvalidSlotError(f"users[{i}].retx_bits", f"must be >= 0, got {bits[i]}")
    rbgs = _as_1d("users.retx_rbgs", retx_rbgs, np.int64, n)
    bad = (rbgs < 0) | (rbgs > r)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidSlotError(f"users[{i}].retx_rbgs", f"must be in [0, R], got {int(rbgs[i])} (R = {r} resources)")
    no_rbgs = (bits > 0) & (rbgs == 0)
    no_bits = (rbgs > 0) & (bits == 0)
    if no_rbgs.any() or no_bits.any():
        i = int(np.flatnonzero(no_rbgs | no_bits)[0])
        if no_rbgs[i]:
            raise InvalidSlotError(
                f"users[{i}].retx_rbgs", f"must be > 0 when retx_bits > 0 (got 0 with retx_bits {bits[i]:g})"
            )
        raise InvalidSlotError(
            f"users[{i}].retx_bits", f"must be > 0 when retx_rbgs > 0 (got 0 with retx_rbgs {int(rbgs[i])})"
        )
    return bits, rbgs


# ---------------------------------------------------------------------------------------------
# Decision views (derived from the DCM vector, never stored separately)


def owner_ids(state: SlotState, owner: np.ndarray) -> list[int | None]:
    """DCM tokens [R] -> list aligned with ``resource_ids``: the owning user id or None."""
    ids = state.user_ids
    return [None if k == 0 else int(ids[k - 1]) for k in owner.tolist()]


def allocation(state: SlotState, owner: np.ndarray) -> dict[int, list[int]]:
    """DCM tokens [R] -> ``{user_id: [resource_id, ...]}`` (resources in slot order)."""
    out: dict[int, list[int]] = {}
    uids, rids = state.user_ids, state.resource_ids
    for r, k in enumerate(owner.tolist()):
        if k:
            out.setdefault(int(uids[k - 1]), []).append(int(rids[r]))
    return out


def resources_per_user(owner: np.ndarray, num_ue: int) -> np.ndarray:
    """int64 [N]: how many resources each user owns under DCM ``owner`` [R]."""
    return np.bincount(owner, minlength=num_ue + 1)[1:]


def served_bits(state: SlotState, owner: np.ndarray) -> np.ndarray:
    """float64 [N]: what each user gets from ``owner`` in one slot.

    Spectrum: sum of rates of its channels (bit/s). Mac: TBS bits of its RBGs, capped by its
    buffer when the buffer is known (a UE cannot send more than it has queued).
    """
    n, r = state.utility.shape
    # each resource's utility to its owner (an unused one's, token <= 0, goes to bin 0 and is
    # dropped); every user's weights are added in resource order
    tok = np.maximum(owner, 0)
    picked = state.utility[np.maximum(tok - 1, 0), np.arange(r)]
    per_user = np.bincount(tok, weights=picked, minlength=n + 1)[1:]
    if state.preset == "mac" and state.buffer_bits is not None:
        per_user = np.minimum(per_user, state.buffer_bits)
    return per_user


def slot_utility(state: SlotState, owner: np.ndarray) -> float:
    """Objective value of a decision: sum-rate (spectrum, bit/s) or scheduled bits (mac)."""
    return float(served_bits(state, owner).sum())


@dataclass(slots=True)
class Violation:
    """One PAG violation of a raw output (SPEC §4)."""

    kind: str
    message: str
    resource: int | None = None  # resource index, when the violation is about one position
    user: int | None = None  # user index, when it is about one user

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


#: the pipeline's stages, the keys of ``Decision.timings_us`` (µs) and of the ``stage`` label of
#: ``gnbsched_stage_seconds`` (``service.pipeline``, ``service.metrics``)
STAGES = ("serialize", "policy", "check", "repair", "total")


@dataclass(slots=True)
class Decision:
    """The slot's decision as the pipeline returns it.

    owner: int64 [R] DCM tokens after repair; the rest says how it was obtained.
    """

    owner: np.ndarray
    policy: str
    valid_before_repair: bool
    violations: list[Violation] = field(default_factory=list)
    utility: float = 0.0
    fallback: str | None = None
    #: bounded label of why the requested policy did not serve (deadline, error, unavailable, ...)
    fallback_reason: str | None = None
    timings_us: dict[str, float] = field(default_factory=dict)
    policy_version: str = ""
    #: free-form notes from the policy (e.g. an anytime policy cut at the deadline)
    notes: dict[str, object] = field(default_factory=dict)
    #: True when the slot was applied before and this is its stored decision (a retry)
    replayed: bool = False
    #: float64 [N] what each user gets from ``owner`` (``served_bits``), kept by the pipeline so
    #: that the cell's history update does not compute it again; not part of the stored decision
    served: np.ndarray | None = field(default=None, repr=False, compare=False)
