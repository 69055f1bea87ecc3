"""Decode kernels of the distilled student (pure numpy / scipy): logits [R, N+1] → DCM int64 [R].

Column 0 of the logits is "leave the resource unused", column ``1+u`` user ``u``; every decode
works under the PAG mask (SPEC §4), so its output is valid by construction — with one exception:
of the mac HARQ rule ``retx_not_first`` (pending retransmissions first) only ``pf_anchored``
knows; the other kinds leave it to repair. The model card's ``decode`` block picks one
(``decode``):

* ``capped`` (default, SPEC §4 use 1): **pass 1** visits the resources in order, each takes
  its best admissible token among "leave unused" and the users still below their need
  (``user_needs``: the PAG cap, tightened to the resources that empty the user's buffer,
  as ``assign.copies_per_user``); **pass 2** gives each resource still unused to its best user
  below the PAG cap if that user's logit beats the unused logit by ``surplus_margin`` (surplus
  grants — the leader may give an agentic follower more than its buffer needs, SPEC §3). The
  trainer samples from exactly this two-pass process, so training and serving share one
  action distribution.
* ``assignment`` (single connectivity, cap 1 — the spectrum preset): an exact linear
  assignment (rectangular Jonker-Volgenant) on the pair margins
  ``m[r, u] = logit[r, 1+u] − logit[r, 0]``.
* ``anchored`` (single connectivity — the spectrum preset): an exact assignment on the utility
  weighted by the network, ``utility[u, r] · (1 + b · tanh(m[r, u]))`` (bound ``b`` from the
  card). The network can move a pair's weight by at most a factor (1 ± b), so whatever it
  outputs, on any input, the decision keeps at least ``(1 − b) / (1 + b)`` of the optimum
  sum-rate (0.990 at the shipped b = 0.005), and a pair of zero rate is never granted.
* ``pf_anchored`` (the mac preset): proportional fair's rule with a bounded learned tilt — the
  pairs ranked by ``utility[u, r] / avg_served[u] · (1 + b · tanh(m[r, u]))`` and taken
  greedily under the PAG cap while the user's buffer is not covered (``assign.greedy_fill``),
  after the pending HARQ retransmissions (``assign.retx_first``): work-conserving, like the
  classical schedulers. The network can reorder only pairs whose PF
  priorities lie within a factor (1 + b) / (1 − b) of each other, so throughput, latency and
  fairness stay those of PF on any input, and the tilt is where a teacher that beats PF on the
  whole table can act. With a ``share_tilt`` block (``assign.ShareTilt``: exponent, rich_ratio,
  bounds, min_bits_ratio) the ranked scores also carry the resource-share weight of ``pf_fair``
  (``assign.share_tilted_fill``), and every slot keeps at least ``min_bits_ratio`` of the bits
  pf's own decision schedules, whatever the network outputs. With ``spread_idle: true`` (the
  shipped mac model) the RBGs the decision leaves idle are then spread over the users below the
  mean resource share (``assign.spread_idle``): each user keeps its bits, users below the mean
  share get more, weaker RBGs; with flat margins the decode is ``pf_spread`` exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.assign import (
    NEED_TOLERANCE,
    ShareTilt,
    greedy_fill,
    pf_priority,
    retx_first,
    share_tilted_fill,
    spread_idle,
)
from service.history import CellHistory, HistoryView
from service.types import SlotState

#: default of the model card's ``decode.surplus_margin`` (logit units)
DEFAULT_SURPLUS_MARGIN = 4.0
DECODE_KINDS = ("capped", "assignment", "anchored", "pf_anchored")
#: default bound ``b`` of the anchored decodes (card ``decode.bound``): spectrum, mac
DEFAULT_ANCHOR_BOUND = 0.005
DEFAULT_PF_ANCHOR_BOUND = 0.05


def user_needs(state: SlotState) -> np.ndarray:
    """int64 [N]: resources each user takes in pass 1 at most — the PAG cap, limited to the
    available resources and (mac, known buffers) to ceil(buffer / best TBS on an available
    resource − ``assign.NEED_TOLERANCE``); 0 if ineligible. The same numbers as
    ``assign.copies_per_user`` (tested), with a shortcut for the common slot where every
    resource is available."""
    avail = state.resource_available
    n_avail = int(np.count_nonzero(avail))
    k = min(state.max_resources_per_user, n_avail)
    if state.preset == "mac" and state.buffer_bits is not None and k > 1:
        util = state.utility if n_avail == state.num_res else state.utility[:, avail]
        best = util.max(axis=1) if n_avail else np.zeros(state.num_ue)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(best > 0, np.ceil(state.buffer_bits / best - NEED_TOLERANCE), 0.0)
        need = np.minimum(need, k).astype(np.int64)
    else:
        need = np.full(state.num_ue, k, np.int64)
    return np.where(state.user_eligible, need, 0)


def _capped_argmax(
    masked: np.ndarray, rows: np.ndarray, remaining: np.ndarray, owner: np.ndarray, threshold: np.ndarray | None = None
) -> None:
    """Sequential argmax decode of ``rows`` (in order) with per-user budgets, in place.

    masked: float [R, N+1] logits with −inf where inadmissible; column 0 = unused (only a
    candidate when ``threshold`` is None). remaining: int [N+1] budget per token (index 0
    ignored). threshold: float [R] or None; with a threshold a row takes its best user only if
    that user's logit exceeds it. Equivalent to visiting the rows one by one and masking a user
    once its budget is spent, but vectorised between budget exhaustions.
    """
    cur = masked[rows]  # [L, N+1] copy
    if rows.size > 1 and (cur == cur[0]).all() and (threshold is None or (threshold[rows] == threshold[rows[0]]).all()):
        _fill_identical(cur[0], rows, remaining, owner, None if threshold is None else float(threshold[rows[0]]))
        return
    if threshold is not None:
        cur[:, 0] = -np.inf
    remaining[0] = rows.size  # "unused" is never exhausted
    start = 0
    while start < rows.size:
        cur[start:, np.flatnonzero(remaining <= 0)] = -np.inf  # users whose budget is spent
        block = cur[start:]
        best = block.argmax(axis=1)
        if threshold is not None:
            top = block[np.arange(best.size), best]
            best = np.where(top > threshold[rows[start:]], best, 0)
        counts = np.bincount(best, minlength=remaining.size)
        over = np.flatnonzero(counts[1:] > remaining[1:]) + 1
        if over.size == 0:
            owner[rows[start:]] = best
            return
        # accept the rows before the first one at which some user's budget would be exceeded
        first = min(int(np.flatnonzero(best == u)[remaining[u]]) for u in over.tolist())
        owner[rows[start : start + first]] = best[:first]
        remaining -= np.bincount(best[:first], minlength=remaining.size)
        start += first


def _fill_identical(
    scores: np.ndarray, rows: np.ndarray, remaining: np.ndarray, owner: np.ndarray, threshold: float | None
) -> None:
    """``_capped_argmax`` when every row has the same logits [N+1] (e.g. frequency-flat RBGs):
    the rows go, in order, to the users by decreasing logit (ties: lower index), each taking its
    budget, while the user beats "unused" (``scores[0]``, or ``threshold`` in pass 2)."""
    bar = scores[0] if threshold is None else threshold
    users = np.flatnonzero((scores[1:] > bar) & (remaining[1:] > 0)) + 1
    if users.size == 0:
        if threshold is None:
            owner[rows] = 0
        return
    users = users[np.argsort(-scores[users], kind="stable")]
    take = np.minimum(remaining[users], rows.size)
    tokens = np.repeat(users, take)[: rows.size]
    if tokens.size < rows.size:
        tokens = np.concatenate([tokens, np.zeros(rows.size - tokens.size, np.int64)])
    if threshold is None:
        owner[rows] = tokens
    else:
        owner[rows[tokens > 0]] = tokens[tokens > 0]


def _pag_masked(state: SlotState, logits: np.ndarray) -> np.ndarray:
    """A copy of logits [R, N+1] with −inf where the PAG mask (``pag_mask``) forbids the token."""
    masked = np.array(logits, dtype=np.float64 if logits.dtype == np.float64 else np.float32)
    elig, avail = state.user_eligible, state.resource_available
    if not elig.all():
        masked[:, 1:][:, ~elig] = -np.inf
    if not avail.all():
        masked[~avail, 1:] = -np.inf
    return masked


def decode_capped(
    state: SlotState,
    logits: np.ndarray,
    *,
    needs: np.ndarray | None = None,
    surplus_margin: float = DEFAULT_SURPLUS_MARGIN,
) -> np.ndarray:
    """Two-pass PAG decode of logits [R, N+1] (module doc). Returns the DCM int64 [R].

    Valid by construction: tokens only where ``pag_mask`` allows, no user above the cap.
    """
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    masked = _pag_masked(state, logits)
    need = user_needs(state) if needs is None else needs
    owner = np.zeros(r, np.int64)
    rows = np.flatnonzero(state.resource_available)
    if rows.size == 0:
        return owner
    # pass 1: unused or a user below its need
    remaining = np.zeros(n1, np.int64)
    remaining[1:] = need
    _capped_argmax(masked, rows, remaining, owner)
    # pass 2: surplus grants on the rows left unused, users below the PAG cap
    left = rows[owner[rows] == 0]
    if left.size == 0:
        return owner
    counts = np.bincount(owner, minlength=n1)
    budget = np.where(state.user_eligible, state.max_resources_per_user - counts[1:], 0)
    if budget.max(initial=0) <= 0:
        return owner
    remaining = np.zeros(n1, np.int64)
    remaining[1:] = budget
    _capped_argmax(masked, left, remaining, owner, threshold=masked[:, 0] + surplus_margin)
    return owner


def decode_assignment(state: SlotState, logits: np.ndarray) -> np.ndarray:
    """Exact assignment on the pair margins ``logit[r, 1+u] − logit[r, 0]`` (single connectivity):
    the DCM int64 [R] maximising the summed margin; pairs with a non-positive margin stay unused.

    Works on the [R, N] margin matrix as it comes out of the network, restricted to available
    resources and eligible users (no transpose, no per-user copies: every cap is 1), and calls
    the rectangular Jonker-Volgenant solver directly — the same optimum as
    ``assign.linear_assignment`` on the transposed margins, at a fraction of its overhead.
    """
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    owner = np.zeros(r, np.int64)
    avail, elig = state.resource_available, state.user_eligible
    res_idx = np.arange(r) if avail.all() else np.flatnonzero(avail)
    ue_idx = np.arange(state.num_ue) if elig.all() else np.flatnonzero(elig)
    if res_idx.size == 0 or ue_idx.size == 0:
        return owner
    margin = logits[res_idx] if res_idx.size < r else logits  # [R', N+1]
    # a pair with a negative margin is never better than leaving the resource unused: clip at 0
    # so the (rectangular) assignment is free to skip it
    score = margin[:, 1:] if ue_idx.size == state.num_ue else margin[:, 1 + ue_idx]
    score = np.maximum(score - margin[:, :1], 0.0, dtype=np.float64)  # [R', U']
    rows, cols = linear_sum_assignment(score, maximize=True)
    keep = score[rows, cols] > 0
    owner[res_idx[rows[keep]]] = ue_idx[cols[keep]] + 1
    return owner


def decode_anchored(state: SlotState, logits: np.ndarray, bound: float = DEFAULT_ANCHOR_BOUND) -> np.ndarray:
    """Exact assignment (cap 1) on ``utility[u, r] · (1 + bound · tanh(m[r, u]))`` with the pair
    margins ``m = logit[r, 1+u] − logit[r, 0]``; the DCM int64 [R].

    Guarantee: with S the result and O any valid assignment (the optimum included), every weight
    lies in [1 − b, 1 + b], so ``(1 + b)·U(S) ≥ W(S) ≥ W(O) ≥ (1 − b)·U(O)``: ``U(S) ≥ (1 − b) /
    (1 + b) · U(O)`` whatever the logits. Pairs of zero utility have weight 0 and stay unused.
    """
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    if not 0.0 <= bound < 1.0:
        raise ValueError(f"bound must be in [0, 1), got {bound}")
    owner = np.zeros(r, np.int64)
    avail, elig = state.resource_available, state.user_eligible
    res_idx = np.flatnonzero(avail)
    ue_idx = np.flatnonzero(elig)
    if res_idx.size == 0 or ue_idx.size == 0:
        return owner
    margin = logits[np.ix_(res_idx, 1 + ue_idx)].astype(np.float64) - logits[res_idx, :1]  # [R', U']
    score = state.utility[np.ix_(ue_idx, res_idx)].T * (1.0 + bound * np.tanh(margin))
    rows, cols = linear_sum_assignment(score, maximize=True)
    keep = score[rows, cols] > 0
    owner[res_idx[rows[keep]]] = ue_idx[cols[keep]] + 1
    return owner


def decode_pf_anchored(
    state: SlotState,
    logits: np.ndarray,
    view: HistoryView,
    bound: float = DEFAULT_PF_ANCHOR_BOUND,
    tilt: ShareTilt | None = None,
    spread: bool = False,
) -> np.ndarray:
    """Greedy (``assign.greedy_fill``) on ``pf_priority · (1 + bound · tanh(m))`` with the pair
    margins ``m = logit[r, 1+u] − logit[r, 0]``; the DCM int64 [R]. view: the cell history of the
    slot's users (PF averages; with ``tilt``, also the resources each has held, for
    ``assign.share_tilted_fill``). With ``tilt``, the slot's decision schedules at least
    ``tilt.min_bits_ratio`` of the bits of pf's own decision (flat margins, no tilt), whatever the
    network outputs: the strongest share tilt that does, else the network's tilt alone if it
    does, else pf's decision. Pending HARQ retransmissions are served first
    (``assign.retx_first``, as the baselines do), the other users share the RBGs left. With
    ``spread``, the RBGs the decision leaves idle then go to the users below the mean resource
    share (``assign.spread_idle``; every user keeps its bits). Valid by construction, the PAG
    rule ``retx_not_first`` included."""
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    if not 0.0 <= bound < 1.0:
        raise ValueError(f"bound must be in [0, 1), got {bound}")
    margin = (logits[:, 1:] - logits[:, :1]).T.astype(np.float64)  # [N, R]
    pf = pf_priority(state, view.avg_served)
    score = pf * (1.0 + bound * np.tanh(margin))
    if tilt is None:
        owner = greedy_fill(state, score, *retx_first(state))
    else:
        # the network's tilt and the share tilt both answer to pf's own decision: a slot keeps at
        # least tilt.min_bits_ratio of the bits pf schedules
        owner = share_tilted_fill(state, score, tilt.weight(view, state), tilt, *retx_first(state), reference_score=pf)
    return spread_idle(state, owner, view) if spread else owner


def decode(
    state: SlotState, logits: np.ndarray, spec: dict[str, Any], history: HistoryView | None = None
) -> np.ndarray:
    """Decode logits [R, N+1] with the model card's ``decode`` block (``kind``, ``surplus_margin``,
    ``bound``, ``share_tilt``, ``spread_idle``); ``pf_anchored`` reads ``history`` (a new cell's
    when None)."""
    kind = spec.get("kind", "capped")
    if kind == "pf_anchored":
        view = history if history is not None else CellHistory.empty().view(state)
        tilt = ShareTilt.from_dict(spec["share_tilt"]) if spec.get("share_tilt") else None
        return decode_pf_anchored(
            state,
            logits,
            view,
            float(spec.get("bound", DEFAULT_PF_ANCHOR_BOUND)),
            tilt,
            spread=bool(spec.get("spread_idle", False)),
        )
    if kind == "assignment" and state.max_resources_per_user == 1:
        return decode_assignment(state, logits)
    if kind == "anchored" and state.max_resources_per_user == 1:
        return decode_anchored(state, logits, float(spec.get("bound", DEFAULT_ANCHOR_BOUND)))
    return decode_capped(state, logits, surplus_margin=float(spec.get("surplus_margin", DEFAULT_SURPLUS_MARGIN)))
