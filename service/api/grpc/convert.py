"""Protobuf ↔ core types for the gRPC transport (``proto/gnbsched/v1/scheduler.proto``).

The hot path stays column-wise: packed repeated fields go straight into numpy
(``np.asarray`` on a upb repeated container is a single copy, ~7 µs for 6 900 doubles), the
decision goes back as packed int64 arrays; no per-user Python objects are built except the
feedback mapping the core takes (``{user_id: delivered_bits}``).

Field names in errors are the proto's (``user_ids[3]``, ``buffer_bits``, ``rate_bps``), mapped
from the dotted names ``service.types.make_slot`` reports (``users[3].id``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.api.contract import (
    RULES,
    ScheduleArgs,
    check_column,
    check_feedback,
    check_ids,
    check_utility_finite,
)
from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb
from service.errors import InvalidSlotError, LimitExceededError
from service.types import Decision, SlotState, check_retx_given, make_slot

__all__ = [
    "decision_to_pb",
    "error_to_pb",
    "owner_ids_to_tokens",
    "proto_field",
    "request_to_slot",
    "slot_to_request",
]

_USER_FIELDS = {"id": "user_ids", "eligible": "eligible"}
_RESOURCE_FIELDS = {"id": "resource_ids", "available": "available"}
_DOTTED = re.compile(r"^(users|resources)(\[\d+\])?(?:\.(\w+))?(.*)$")


def feedback_field(name: str, req: pb.SlotRequest) -> str:
    """The proto field of a feedback entry named the REST way (``feedback.delivered_bits.<user
    id>``, as the core names an unknown user): ``feedback.user_ids[i]``; other names unchanged."""
    prefix = "feedback.delivered_bits."
    if not name.startswith(prefix) or not name[len(prefix) :].lstrip("-").isdigit():
        return name
    uid = int(name[len(prefix) :])
    ids = list(req.feedback.user_ids)
    return f"feedback.user_ids[{ids.index(uid)}]" if uid in ids else "feedback.user_ids"


def proto_field(name: str) -> str:
    """Map a ``make_slot`` field path to the proto field: ``users[3].id`` → ``user_ids[3]``,
    ``users.buffer_bits`` → ``buffer_bits``, ``resources`` → ``resource_ids``."""
    m = _DOTTED.match(name)
    if m is None:
        return name
    group, index, attr, rest = m.groups()
    table = _USER_FIELDS if group == "users" else _RESOURCE_FIELDS
    field = table.get(attr or "id", attr or "")
    return f"{field}{index or ''}{rest}"


def _floats(key: str, values, expected: int) -> np.ndarray | None:
    """float64 [expected] from a packed repeated double, each within the rule of ``key`` (a
    ``RULES`` name); None when empty (absent). Errors name the element: ``buffer_bits[3]``."""
    k = len(values)
    if k == 0:
        return None
    rule = RULES[key]
    if k != expected:
        raise InvalidSlotError(rule.proto, f"expected {expected} values (or none), got {k}")
    return check_column(rule, np.asarray(values, dtype=np.float64), rule.proto + "[{i}]")


def _ints(key: str, values, expected: int) -> np.ndarray | None:
    """int64 [expected] from a packed repeated int64, each within the rule of ``key``; None when
    empty (absent). Errors name the element: ``retx_rbgs[3]``."""
    k = len(values)
    if k == 0:
        return None
    rule = RULES[key]
    if k != expected:
        raise InvalidSlotError(rule.proto, f"expected {expected} values (or none), got {k}")
    return check_column(rule, np.asarray(values, dtype=np.int64), rule.proto + "[{i}]")


def _bools(field: str, values, expected: int) -> np.ndarray | None:
    k = len(values)
    if k == 0:
        return None
    if k != expected:
        raise InvalidSlotError(field, f"expected {expected} values (or none), got {k}")
    return np.asarray(values, dtype=bool)


def _matrix(key: str, m: pb.Matrix, n: int, r: int) -> np.ndarray:
    """float64 [n, r] from a row-major ``Matrix``, each within the rule of ``key``; errors name
    ``field[i][j]``."""
    field = RULES[key].proto
    if (m.rows, m.cols) != (n, r):
        raise InvalidSlotError(field, f"expected shape ({n}, {r}) (users × resources), got ({m.rows}, {m.cols})")
    if len(m.values) != n * r:
        raise InvalidSlotError(f"{field}.values", f"expected rows·cols = {n}·{r} = {n * r} values, got {len(m.values)}")
    return check_column(RULES[key], np.asarray(m.values, dtype=np.float64).reshape(n, r), field + "[{i}][{j}]")


def _optional(req: pb.SlotRequest, name: str) -> Any:
    """A proto3 ``optional`` scalar checked against its rule, or the rule's default when unset."""
    rule = RULES[name]
    if not req.HasField(name):
        return rule.default
    value = getattr(req, name)
    return rule.check_int(name, value) if rule.kind == "int" else rule.check_scalar(name, value)


def request_to_slot(
    req: pb.SlotRequest, *, max_users: int, max_resources: int, known_policies: frozenset[str] | None = None
) -> ScheduleArgs:
    """Validate and decode one ``SlotRequest`` with the rules of ``service.api.contract`` (the
    table ``POST /schedule`` uses).

    Shapes: per-user arrays [N] (N = len(user_ids); ``retx_bits`` and ``retx_rbgs`` both or
    neither), per-resource arrays [R]; ``rate_bps`` (bit/s),
    ``utility`` (unitless) and ``fading_gain`` are N × R row-major; ``spectral_efficiency`` is [N] or [N·R] (row-major
    [N, R]). Raises ``InvalidSlotError`` (``LimitExceededError`` for N or R above the limits)
    whose ``field`` is the proto field name, with the element index where there is one.
    """
    try:
        return _decode(req, max_users, max_resources, known_policies)
    except LimitExceededError:
        raise
    except InvalidSlotError as exc:
        field = proto_field(exc.field)
        if field == exc.field:
            raise
        raise InvalidSlotError(field, exc.message) from None


def _decode(
    req: pb.SlotRequest, max_users: int, max_resources: int, known_policies: frozenset[str] | None
) -> ScheduleArgs:
    n, r = len(req.user_ids), len(req.resource_ids)
    if n > max_users:
        raise LimitExceededError("user_ids", f"{n} users exceed the configured limit of {max_users}")
    if r > max_resources:
        raise LimitExceededError("resource_ids", f"{r} resources exceed the configured limit of {max_resources}")
    if n == 0:
        raise InvalidSlotError("user_ids", "must not be empty")
    if r == 0:
        raise InvalidSlotError("resource_ids", "must not be empty")
    max_chars = int(RULES["cell_id"].hi)  # type: ignore[arg-type]
    if not 0 < len(req.cell_id) <= max_chars:
        raise InvalidSlotError("cell_id", f"expected a non-empty string of at most {max_chars} characters")
    if req.slot < 0:
        raise InvalidSlotError("slot", RULES["slot"].problem(req.slot))

    policy = req.policy if req.HasField("policy") else None
    if policy is not None and known_policies is not None and policy not in known_policies:
        raise InvalidSlotError(
            "policy", f"unknown policy {policy[:64]!r}; registered: {', '.join(sorted(known_policies))}"
        )
    deadline_ms = _optional(req, "deadline_ms")
    max_resources_per_user = _optional(req, "max_resources_per_user")
    epoch = _optional(req, "epoch")
    tti_s = _optional(req, "tti_s")
    rb_per_rbg = _optional(req, "rb_per_rbg")
    noise_dbm_hz = _optional(req, "noise_density_dbm_hz")

    # packed repeated -> numpy: one copy each; empty = absent -> None
    user_ids = check_ids(np.asarray(req.user_ids, dtype=np.int64), "user_ids[{i}]")
    resource_ids = check_ids(np.asarray(req.resource_ids, dtype=np.int64), "resource_ids[{i}]")
    rx_power_dbm = _floats("users.rx_power_dbm", req.rx_power_dbm, n)
    buffer_bits = _floats("users.buffer_bits", req.buffer_bits, n)
    check_retx_given(req.preset, len(req.retx_bits) > 0, len(req.retx_rbgs) > 0)  # as REST: before the ranges
    retx_bits = _floats("users.retx_bits", req.retx_bits, n)
    retx_rbgs = _ints("users.retx_rbgs", req.retx_rbgs, n)
    eligible = _bools("eligible", req.eligible, n)
    bandwidth_hz = _floats("resources.bandwidth_hz", req.bandwidth_hz, r)
    available = _bools("available", req.available, r)
    interference_dbm = _floats("resources.interference_dbm", req.interference_dbm, r)
    k = len(req.spectral_efficiency)
    if k not in (0, n, n * r):
        raise InvalidSlotError(
            "spectral_efficiency", f"expected {n} (per user) or {n * r} (N·R row-major) values, got {k}"
        )
    se = _floats("users.spectral_efficiency", req.spectral_efficiency, k)
    if se is not None and k != n:
        se = se.reshape(n, r)  # [N, R]
    rate = _matrix("rate_bps", req.rate_bps, n, r) if req.HasField("rate_bps") else None
    weights = _matrix("utility", req.utility, n, r) if req.HasField("utility") else None
    fading = _matrix("users.fading_gain", req.fading_gain, n, r) if req.HasField("fading_gain") else None

    state = make_slot(
        req.preset,
        user_ids,
        resource_ids,
        bandwidth_hz=bandwidth_hz,
        resource_available=available,
        user_eligible=eligible,
        max_resources_per_user=max_resources_per_user,
        rate_bps=rate,
        utility=weights,
        rx_power_dbm=rx_power_dbm,
        fading_gain=fading,
        interference_dbm=interference_dbm,
        spectral_efficiency=se,
        buffer_bits=buffer_bits,
        retx_bits=retx_bits,
        retx_rbgs=retx_rbgs,
        rb_per_rbg=rb_per_rbg,
        noise_density_dbm_hz=noise_dbm_hz,
        cell_id=req.cell_id,
        slot=req.slot,
        tti_s=tti_s,
        checked=True,  # every value is within the contract's rules (checked above)
    )
    check_utility_finite(state, rate=rate is not None, utility=weights is not None, names={})
    return ScheduleArgs(state, policy, deadline_ms, _feedback(req, max_users), epoch)


def _feedback(req: pb.SlotRequest, max_users: int) -> dict[int, float] | None:
    """Feedback parallel arrays → ``{user_id: delivered_bits}`` (the contract's rule, unique ids)."""
    if not req.HasField("feedback"):
        return None
    fb = req.feedback
    k = len(fb.user_ids)
    if len(fb.delivered_bits) != k:
        raise InvalidSlotError(
            "feedback.delivered_bits", f"expected {k} values (one per feedback.user_ids), got {len(fb.delivered_bits)}"
        )
    if k == 0:
        return None
    if k > max_users:
        raise LimitExceededError("feedback.user_ids", f"{k} entries exceed the limit of {max_users}")
    ids = check_ids(np.asarray(fb.user_ids, dtype=np.int64), "feedback.user_ids[{i}]")
    return check_feedback(
        ids, np.asarray(fb.delivered_bits, dtype=np.float64), "feedback.delivered_bits[{i}]", "feedback.user_ids[{i}]"
    )


def decision_to_pb(state: SlotState, decision: Decision) -> pb.SlotDecision:
    """Encode a decision: ``owner`` [R] as user ids (-1 = unused) and the CSR allocation.

    owner tokens k ∈ {0..N} (SPEC §1) → ``user_ids[k-1]`` or -1; allocation users in request
    order, each user's resources in slot order.
    """
    tok = decision.owner
    uids = state.user_ids
    owner_ids = np.concatenate(([-1], uids))[tok]  # token k -> user_ids[k-1], 0 -> -1
    granted = tok > 0
    tok_g = tok[granted]
    order = np.argsort(tok_g, kind="stable")
    counts = np.bincount(tok_g, minlength=state.num_ue + 1)[1:]
    holders = np.flatnonzero(counts)
    msg = pb.SlotDecision(
        cell_id=state.cell_id,
        slot=state.slot,
        owner=owner_ids.tolist(),
        allocation=pb.Allocation(
            user_ids=uids[holders].tolist(),
            resource_counts=counts[holders].tolist(),
            resource_ids=state.resource_ids[granted][order].tolist(),
        ),
        policy=decision.policy,
        valid_before_repair=decision.valid_before_repair,
        utility=decision.utility,
        timings_us=decision.timings_us,
        policy_version=decision.policy_version,
        replayed=decision.replayed,
    )
    if decision.fallback is not None:
        msg.fallback = decision.fallback
    if decision.fallback_reason is not None:
        msg.fallback_reason = decision.fallback_reason
    if decision.violations:
        msg.violations.extend(pb.Violation(kind=v.kind, message=v.message) for v in decision.violations)
    return msg


def error_to_pb(req: pb.SlotRequest | None, code: str, field: str, message: str) -> pb.SlotDecision:
    """A stream answer for a request that could not be decided (no owner, ``error`` set)."""
    return pb.SlotDecision(
        cell_id=req.cell_id if req is not None else "",
        slot=req.slot if req is not None else 0,
        error=pb.SlotError(code=code, field=field, message=message),
    )


# ---------------------------------------------------------------------------------------------
# client side


def owner_ids_to_tokens(state: SlotState, owner_ids: np.ndarray) -> np.ndarray:
    """Owner user ids int64 [R] aligned with ``state.resource_ids`` (-1 = unused) → DCM tokens
    int64 [R] (``k`` = user index ``k-1``, SPEC §1). Raises ``ValueError`` on a wrong length or
    a user id that is not in the slot."""
    ids = np.asarray(owner_ids, dtype=np.int64)
    if ids.shape != (state.num_res,):
        raise ValueError(
            f"decision has {ids.shape[0] if ids.ndim == 1 else ids.shape} owners for {state.num_res} resources"
        )
    order = np.argsort(state.user_ids, kind="stable")
    sorted_ids = state.user_ids[order]
    granted = ids >= 0
    pos = np.minimum(np.searchsorted(sorted_ids, ids[granted]), sorted_ids.shape[0] - 1)
    if not np.array_equal(sorted_ids[pos], ids[granted]):
        raise ValueError("decision grants a resource to a user id that is not in the slot")
    tok = np.zeros(state.num_res, np.int64)
    tok[granted] = order[pos] + 1
    return tok


def slot_to_request(
    state: SlotState,
    *,
    feedback: Mapping[int, float] | None = None,
    policy: str | None = None,
    deadline_ms: float | None = None,
    include_rate: bool = True,
    epoch: int | None = None,
) -> pb.SlotRequest:
    """Encode a ``SlotState`` (+ the previous slot's feedback) as a ``SlotRequest``.

    With ``include_rate`` the utility matrix [N, R] travels so the service sees exactly the
    simulator's utility (fading, interference): as ``rate_bps`` in spectrum (the utility is a rate
    in bit/s there), as ``utility`` in mac (bits per RBG per slot, taken as given: sending
    ``utility / tti_s`` as bit/s would not come back bit-exact). The physical fields the state has
    (rx_power_dbm, spectral_efficiency, buffer_bits, retx_bits / retx_rbgs) are sent as well since
    policies use them.
    """
    req = pb.SlotRequest(
        cell_id=state.cell_id,
        slot=state.slot,
        preset=state.preset,
        max_resources_per_user=state.max_resources_per_user,
        tti_s=state.tti_s,
        user_ids=state.user_ids.tolist(),
        eligible=state.user_eligible.tolist(),
        resource_ids=state.resource_ids.tolist(),
        bandwidth_hz=state.bandwidth_hz.tolist(),
        available=state.resource_available.tolist(),
    )
    if state.rx_power_dbm is not None:
        req.rx_power_dbm[:] = state.rx_power_dbm.tolist()
    if state.spectral_efficiency is not None:
        req.spectral_efficiency[:] = state.spectral_efficiency.ravel().tolist()
    if state.buffer_bits is not None:
        req.buffer_bits[:] = state.buffer_bits.tolist()
    if state.retx_bits is not None and state.retx_rbgs is not None:
        req.retx_bits[:] = state.retx_bits.tolist()
        req.retx_rbgs[:] = state.retx_rbgs.tolist()
    if include_rate:
        n, r = state.utility.shape
        matrix = req.rate_bps if state.preset == "spectrum" else req.utility
        matrix.rows, matrix.cols = n, r
        matrix.values[:] = state.utility.ravel().tolist()
    if policy is not None:
        req.policy = policy
    if deadline_ms is not None:
        req.deadline_ms = deadline_ms
    if epoch is not None:
        req.epoch = epoch
    if feedback:
        req.feedback.user_ids[:] = list(feedback.keys())
        req.feedback.delivered_bits[:] = [float(v) for v in feedback.values()]
    return req
