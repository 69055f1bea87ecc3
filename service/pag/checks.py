"""PAG checks on a raw policy output (SPEC §4, use 2).

A raw output comes in one of three forms:
  * DCM form: int array [R] of tokens in ``{0..N}`` (index space; ``k`` = user index ``k-1``);
  * user→resource form: ``{user_id: resource_id | [resource_id, ...]}`` (id space; the LSA
    mapping dictionary); several users may claim one resource (contention);
  * text: a JSON document holding either form — ``{"owner": [user_id | null, ...]}`` (DCM in
    id space, aligned with the slot's resources) or ``{"allocation": {...}}`` / a bare mapping.

``check`` turns any form into candidate (user, resource) index pairs and reports every
violation as a typed ``Violation``; it never raises on bad content. Each rule is a small
function so tests and the teacher can reuse them.

Besides the grammar of SPEC §4 (length, domain, busy resources, eligibility, caps, contention),
a mac slot that reports pending HARQ retransmissions (``SlotState.retx_rbgs``) is checked
against "retransmissions first" (``rule_retx_first``, kind ``retx_not_first``): as a gNB MAC
scheduler serves the retransmissions of its HARQ processes before new transmissions, no RBG
may carry new data while a retransmission is short of the RBGs it needs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.types import SlotState, Violation

RawAction = np.ndarray | Mapping[Any, Any] | str | Sequence[Any]

UNPARSABLE = "unparsable"
WRONG_LENGTH = "wrong_length"
OUT_OF_DOMAIN = "out_of_domain"
BUSY_RESOURCE = "busy_resource"
INELIGIBLE_USER = "ineligible_user"
CAP_EXCEEDED = "cap_exceeded"
CONTENTION = "contention"
RETX_NOT_FIRST = "retx_not_first"
VIOLATION_KINDS = (
    UNPARSABLE,
    WRONG_LENGTH,
    OUT_OF_DOMAIN,
    BUSY_RESOURCE,
    INELIGIBLE_USER,
    CAP_EXCEEDED,
    CONTENTION,
    RETX_NOT_FIRST,
)


@dataclass(slots=True)
class CheckResult:
    """Candidate pairs (index space, [P] each, in output order) and every violation found.

    ``legal`` [P] marks pairs that survive repair step 1 (in domain, resource free, user
    eligible). ``dcm`` is the raw output as a DCM vector when it was one of length R.
    """

    pair_user: np.ndarray
    pair_res: np.ndarray
    legal: np.ndarray
    violations: list[Violation] = field(default_factory=list)
    dcm: np.ndarray | None = None

    @property
    def valid(self) -> bool:
        return not self.violations


# ----------------------------------------------------------------------------- rules


def rule_length(state: SlotState, tokens: np.ndarray) -> list[Violation]:
    """A DCM is exactly R tokens."""
    if tokens.shape != (state.num_res,):
        got = f"{tokens.size}" if tokens.ndim == 1 else f"an array of shape {tokens.shape}"
        return [Violation(WRONG_LENGTH, f"expected {state.num_res} tokens (one per resource), got {got}")]
    return []


def rule_domain(state: SlotState, pu: np.ndarray, pr: np.ndarray) -> list[Violation]:
    """Every pair names a user in 1..N (index 0..N-1) and a resource in 0..R-1."""
    bad = (pu < 0) | (pu >= state.num_ue) | (pr < 0) | (pr >= state.num_res)
    return [
        Violation(
            OUT_OF_DOMAIN,
            f"pair {i}: token {int(pu[i]) + 1} is outside the domain 0..{state.num_ue}"
            if not (0 <= pu[i] < state.num_ue)
            else f"pair {i}: resource index {int(pr[i])} is outside 0..{state.num_res - 1}",
            resource=int(pr[i]) if 0 <= pr[i] < state.num_res else None,
        )
        for i in np.flatnonzero(bad).tolist()
    ]


def rule_busy(state: SlotState, pu: np.ndarray, pr: np.ndarray, in_domain: np.ndarray) -> list[Violation]:
    """No user on an unavailable resource (primary user present / RBG outside the pool)."""
    bad = np.flatnonzero(in_domain & ~state.resource_available[np.where(in_domain, pr, 0)])
    rid, uid = state.resource_ids, state.user_ids
    return [
        Violation(
            BUSY_RESOURCE,
            f"resource {int(rid[pr[i]])} is busy but granted to user {int(uid[pu[i]])}",
            resource=int(pr[i]),
            user=int(pu[i]),
        )
        for i in bad.tolist()
    ]


def rule_eligible(state: SlotState, pu: np.ndarray, pr: np.ndarray, in_domain: np.ndarray) -> list[Violation]:
    """No resource for an ineligible user (inactive, or nothing to send)."""
    bad = np.flatnonzero(in_domain & ~state.user_eligible[np.where(in_domain, pu, 0)])
    rid, uid = state.resource_ids, state.user_ids
    return [
        Violation(
            INELIGIBLE_USER,
            f"user {int(uid[pu[i]])} is not eligible but gets resource {int(rid[pr[i]])}",
            resource=int(pr[i]),
            user=int(pu[i]),
        )
        for i in bad.tolist()
    ]


def rule_cap(state: SlotState, pu: np.ndarray, legal: np.ndarray) -> list[Violation]:
    """No user holds more than ``max_resources_per_user`` resources."""
    counts = np.bincount(pu[legal], minlength=state.num_ue)
    over = np.flatnonzero(counts > state.max_resources_per_user)
    uid = state.user_ids
    return [
        Violation(
            CAP_EXCEEDED,
            f"user {int(uid[u])} holds {int(counts[u])} resources, cap is {state.max_resources_per_user}",
            user=int(u),
        )
        for u in over.tolist()
    ]


def rule_contention(state: SlotState, pr: np.ndarray, legal: np.ndarray) -> list[Violation]:
    """No resource claimed by several users (only possible in user→resource form)."""
    counts = np.bincount(pr[legal], minlength=state.num_res)
    rid = state.resource_ids
    return [
        Violation(CONTENTION, f"resource {int(rid[r])} is claimed by {int(counts[r])} users", resource=int(r))
        for r in np.flatnonzero(counts > 1).tolist()
    ]


def rule_retx_first(state: SlotState, pu: np.ndarray, pr: np.ndarray, legal: np.ndarray) -> list[Violation]:
    """Retransmissions first (mac, HARQ): no RBG for new data while a retransmission is short.

    P = the eligible users with ``retx_rbgs > 0``; user u of P needs ``need[u] = min(retx_rbgs[u],
    max_resources_per_user)`` RBGs (``SlotState.retx_need``: a cap below ``retx_rbgs`` wins). A
    decision violates the rule when some u of P holds fewer than ``need[u]`` RBGs while an
    available RBG does not serve a retransmission: it goes to a user outside P (new data), to a
    user of P beyond its own need (new data again), or it is left unused. So when the available
    RBGs cannot cover all of P, every one of them goes to the retransmissions of P. This is how a
    gNB MAC scheduler works: the retransmissions of pending HARQ processes are scheduled before
    any new transmission. One violation per short user; only the legal pairs count.
    """
    need = state.retx_need()
    if need is None:
        return []
    pu_l, pr_l = pu[legal], pr[legal]
    held = np.bincount(pu_l, minlength=state.num_ue)
    short = np.flatnonzero(held < need)  # need is 0 outside P: nobody else is ever short
    if short.size == 0:
        return []
    uid, rid = state.user_ids, state.resource_ids
    in_p = need > 0
    other = np.flatnonzero(~in_p[pu_l])
    over = np.flatnonzero(in_p & (held > need))
    covered = np.zeros(state.num_res, bool)
    covered[pr_l] = True
    unused = np.flatnonzero(state.resource_available & ~covered)
    if other.size:
        j = int(other[0])
        example = f"resource {int(rid[pr_l[j]])} goes to user {int(uid[pu_l[j]])}, which has no retransmission pending"
    elif over.size:
        v = int(over[0])
        example = (
            f"user {int(uid[v])} holds {int(held[v])} resources, {int(held[v] - need[v])} beyond its retransmission"
        )
    elif unused.size:
        example = f"resource {int(rid[unused[0]])} is left unused"
    else:
        return []  # every available RBG serves a retransmission: there are not enough for all
    return [
        Violation(
            RETX_NOT_FIRST,
            f"user {int(uid[u])} gets {int(held[u])} of the {int(need[u])} resources its pending HARQ "
            f"retransmission needs while {example}",
            user=int(u),
        )
        for u in short.tolist()
    ]


# ----------------------------------------------------------------------------- parsing


def _as_id(v: Any) -> int | None:
    """An integer id from JSON-ish data (int, integral finite float, decimal string), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return int(v) if np.isfinite(v) and float(v).is_integer() else None
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return None
    return None


def _pairs_from_mapping(
    state: SlotState, mapping: Mapping[Any, Any], violations: list[Violation]
) -> tuple[np.ndarray, np.ndarray]:
    """{user_id: resource_id | [resource_id]} (ids) -> index pairs; unknown ids -> out_of_domain."""
    uindex = {int(u): i for i, u in enumerate(state.user_ids.tolist())}
    rindex = {int(r): i for i, r in enumerate(state.resource_ids.tolist())}
    pu: list[int] = []
    pr: list[int] = []
    seen: set[tuple[int, int]] = set()  # a pair named twice is one claim
    for key, value in mapping.items():
        user_id = _as_id(key)
        if user_id is None:
            violations.append(Violation(OUT_OF_DOMAIN, f"user key {key!r} is not an integer id"))
            continue
        if user_id not in uindex:
            violations.append(Violation(OUT_OF_DOMAIN, f"unknown user id {user_id}"))
            continue
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is None:
                continue
            res_id = _as_id(v)
            if res_id is None:
                violations.append(Violation(OUT_OF_DOMAIN, f"user {user_id}: resource {v!r} is not an integer id"))
                continue
            if res_id not in rindex:
                violations.append(Violation(OUT_OF_DOMAIN, f"user {user_id}: unknown resource id {v!r}"))
                continue
            pair = (uindex[user_id], rindex[res_id])
            if pair not in seen:
                seen.add(pair)
                pu.append(pair[0])
                pr.append(pair[1])
    return np.asarray(pu, np.int64), np.asarray(pr, np.int64)


def _tokens_from_id_list(state: SlotState, owners: Sequence[Any], violations: list[Violation]) -> np.ndarray:
    """[user_id | null, ...] aligned with resources (id space) -> tokens; unknown ids -> -1."""
    uindex = {int(u): i + 1 for i, u in enumerate(state.user_ids.tolist())}
    tokens = np.zeros(len(owners), np.int64)
    for r, v in enumerate(owners):
        if v is None:
            continue
        user_id = None if isinstance(v, str) else _as_id(v)
        if user_id is None:
            violations.append(Violation(OUT_OF_DOMAIN, f"position {r}: {v!r} is not a user id or null", resource=r))
            tokens[r] = -1
            continue
        k = uindex.get(user_id)
        if k is None:
            if user_id == 0:  # 0 = unused when no user has id 0
                continue
            violations.append(Violation(OUT_OF_DOMAIN, f"position {r}: unknown user id {user_id}", resource=r))
            tokens[r] = -1
        else:
            tokens[r] = k
    return tokens


def extract_json(text: str) -> Any:
    """The first JSON value of ``text`` — inside the first fenced code block when there is one.

    Parsed as data only (``json``), never evaluated. Raises ``ValueError`` with the reason when
    there is no JSON object or list, or it does not decode.
    """
    body = text.strip()
    if "```" in body:  # take the first fenced block
        parts = body.split("```")
        if len(parts) >= 3:
            body = parts[1]
            if body.lstrip().lower().startswith("json"):
                body = body.lstrip()[4:]
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON object or list in the answer")
    try:
        doc, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
    return doc


def parse_text(state: SlotState, text: str) -> tuple[np.ndarray | None, Mapping[Any, Any] | None, list[Violation]]:
    """Parse an LLM answer as data only (JSON, never evaluated).

    Accepts ``{"owner": [...]}``, ``{"allocation": {...}}``, a bare ``{user: res}`` mapping or a
    bare list of owner ids, optionally inside a fenced code block. Returns (tokens, mapping,
    violations): exactly one of tokens / mapping is set unless the text is unparsable.
    """
    try:
        doc = extract_json(text)
    except ValueError as exc:
        return None, None, [Violation(UNPARSABLE, str(exc))]
    violations: list[Violation] = []
    if isinstance(doc, dict) and "owner" in doc and isinstance(doc["owner"], list):
        return _tokens_from_id_list(state, doc["owner"], violations), None, violations
    if isinstance(doc, dict) and isinstance(doc.get("allocation"), dict):
        return None, doc["allocation"], violations
    if isinstance(doc, list):
        return _tokens_from_id_list(state, doc, violations), None, violations
    if isinstance(doc, dict):
        return None, doc, violations
    return None, None, [Violation(UNPARSABLE, f"expected a JSON object or list, got {type(doc).__name__}")]


# ----------------------------------------------------------------------------- entry points


def check_dcm(state: SlotState, tokens: np.ndarray) -> CheckResult:
    """Check a DCM token vector (index space). Fast path: no Python loop when it is valid."""
    tokens = np.asarray(tokens)
    if tokens.dtype.kind in "iu" and tokens.shape == (state.num_res,):
        valid = _valid_dcm_pairs(state, tokens.astype(np.int64, copy=False))
        if valid is not None:
            return valid
    violations = rule_length(state, tokens)
    if tokens.dtype.kind not in "biuf":
        try:
            tokens = tokens.astype(np.float64)
        except (TypeError, ValueError):
            empty = np.zeros(0, np.int64)
            return CheckResult(
                empty,
                empty,
                np.zeros(0, bool),
                [Violation(UNPARSABLE, f"tokens of type {tokens.dtype} are not numbers")],
            )
    raw = tokens.reshape(-1)
    if raw.dtype.kind == "f":
        integral = np.isfinite(raw) & (raw == np.round(raw)) & (np.abs(raw) < 2.0**62)
        # a token that is not an integer names no user: reported, then read as 0 (unused)
        violations += [
            Violation(OUT_OF_DOMAIN, f"position {r}: token {float(raw[r])} is not an integer", resource=r)
            for r in np.flatnonzero(~integral[: state.num_res]).tolist()
        ]
        flat = np.where(integral, raw, 0.0).astype(np.int64)
    else:
        flat = raw.astype(np.int64, copy=False)
    flat = flat[: state.num_res]
    pr_all = np.arange(flat.size, dtype=np.int64)
    used = flat != 0
    pu, pr = flat[used] - 1, pr_all[used]
    return _check_pairs(state, pu, pr, violations, dcm=flat if flat.size == state.num_res else None)


def valid_result(dcm: np.ndarray) -> CheckResult:
    """``check_dcm``'s answer for a DCM int64 [R] known to pass every rule (``pipeline.decide_many``
    builds it for the DCMs a batch's compiled check passed)."""
    pr = np.flatnonzero(dcm)
    return CheckResult(dcm[pr] - 1, pr, np.ones(pr.size, bool), [], dcm)


def _valid_dcm_pairs(state: SlotState, flat: np.ndarray) -> CheckResult | None:
    """The result of ``check_dcm`` for an int64 [R] DCM that passes every rule, else None."""
    if flat.min() < 0 or flat.max() > state.num_ue:
        return None
    pr = np.flatnonzero(flat)
    pu = flat[pr] - 1
    if not (state.resource_available[pr].all() and state.user_eligible[pu].all()):
        return None
    if (
        pu.size > state.max_resources_per_user
        and np.bincount(pu, minlength=state.num_ue).max() > state.max_resources_per_user
    ):
        return None
    legal = np.ones(pu.size, bool)
    if state.retx_rbgs is not None and rule_retx_first(state, pu, pr, legal):
        return None
    return CheckResult(pu, pr, legal, [], flat)


def _check_pairs(
    state: SlotState, pu: np.ndarray, pr: np.ndarray, violations: list[Violation], dcm: np.ndarray | None = None
) -> CheckResult:
    in_domain = (pu >= 0) & (pu < state.num_ue) & (pr >= 0) & (pr < state.num_res)
    if not in_domain.all():
        violations += rule_domain(state, pu, pr)
    if in_domain.any():
        pu_c, pr_c = np.where(in_domain, pu, 0), np.where(in_domain, pr, 0)
        free = state.resource_available[pr_c]
        elig = state.user_eligible[pu_c]
        legal = in_domain & free & elig
        if not (free | ~in_domain).all():
            violations += rule_busy(state, pu, pr, in_domain)
        if not (elig | ~in_domain).all():
            violations += rule_eligible(state, pu, pr, in_domain)
    else:
        legal = in_domain
    violations += rule_cap(state, pu, legal)
    violations += rule_contention(state, pr, legal)
    violations += rule_retx_first(state, pu, pr, legal)
    return CheckResult(pu, pr, legal, violations, dcm)


def check(state: SlotState, raw: RawAction) -> CheckResult:
    """Run every PAG rule on a raw output of any form (see module doc). Never raises on content."""
    if isinstance(raw, np.ndarray):
        return check_dcm(state, raw)
    violations: list[Violation] = []
    if isinstance(raw, str):
        tokens, mapping, violations = parse_text(state, raw)
        if tokens is not None:
            res = check_dcm(state, np.where(tokens < 0, 0, tokens))
            res.violations[:0] = violations
            return res
        if mapping is None:
            empty = np.zeros(0, np.int64)
            return CheckResult(empty, empty, np.zeros(0, bool), violations)
        raw = mapping
    if isinstance(raw, Mapping):
        pu, pr = _pairs_from_mapping(state, raw, violations)
        return _check_pairs(state, pu, pr, violations)
    if isinstance(raw, Sequence) and not isinstance(raw, bytes | bytearray):
        try:
            tokens = np.asarray(raw)
        except (TypeError, ValueError):  # ragged nesting
            tokens = None
        if tokens is not None and tokens.dtype.kind in "biuf":
            return check_dcm(state, tokens)
    empty = np.zeros(0, np.int64)
    return CheckResult(
        empty, empty, np.zeros(0, bool), [Violation(UNPARSABLE, f"unsupported output type {type(raw).__name__}")]
    )


def is_valid(state: SlotState, owner: np.ndarray) -> bool:
    """True iff the DCM ``owner`` [R] passes every PAG rule."""
    return check_dcm(state, owner).valid
