"""Assignment kernels shared by repair and the policies (pure numpy / scipy; the greedy fill
compiled with numba).

All work on a ``SlotState`` and a score matrix float64 [N, R]; they respect availability,
eligibility, the per-user cap and, in the mac preset, the user's queued data (a user is not
given more RBGs once its scheduled TBS covers its buffer).

``serve_retx`` / ``retx_first`` serve the pending HARQ retransmissions of a mac slot before any
new data (the PAG rule ``retx_not_first``): the baselines start from it and give the remaining
RBGs to the users without a retransmission, and repair uses it to mend a decision that breaks
the rule.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.history import HistoryView
from service.jit import kernel
from service.types import SlotState, make_slot, slot_utility

#: tolerance (in RBGs) of ceil(buffer / TBS): a buffer that is an exact multiple of the TBS needs
#: that many RBGs even when the division rounds a few ulps up (e.g. both given in other units)
NEED_TOLERANCE = 1e-9
_NONE = np.zeros(0)


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels of the greedy fill, the idle spread and
    round robin on a 2 × 2 slot, so that no served decision pays for it; ``ServiceCore.preload`` calls it
    before the service is ready."""
    state = make_slot("mac", [0, 1], [0, 1], utility=np.ones((2, 2)), buffer_bits=[1.0, 1.0])
    greedy_fill(state, state.utility)
    behind = HistoryView(np.ones(2), np.array([0.0, 1.0]), np.full(2, -1), np.ones(2, bool), np.zeros(2, np.int64))
    spread_idle(state, np.array([1, 0]), behind)
    round_robin(state, behind)


def serve_retx(state: SlotState, owner: np.ndarray | None = None) -> np.ndarray:
    """``owner`` [R] (default: empty) with every pending retransmission served as far as the RBGs go.

    The users of P (``SlotState.retx_order``: larger ``retx_bits`` first, ties by user id) in turn
    get RBGs until they hold ``need[u] = SlotState.retx_need()[u]`` (``min(retx_rbgs, cap)``),
    taken in this order: (1) available RBGs nobody holds, the user's highest utility first;
    (2) RBGs of users outside P, the lowest utility to their holder first; (3) RBGs a user of P
    holds beyond its own need, the lowest utility to it first (ties everywhere: the lower
    resource index). An RBG is never taken from a user of P that is at or below its need, and
    every other RBG keeps its owner, so a decision that satisfies "retransmissions first" comes
    back unchanged. The result satisfies it whatever ``owner`` was (given it is otherwise valid:
    legal pairs, caps respected). Returns the DCM int64 [R].
    """
    owner = np.zeros(state.num_res, np.int64) if owner is None else owner.copy()
    need = state.retx_need()
    order = state.retx_order()
    if need is None or order.size == 0:
        return owner
    util = state.utility
    held = np.bincount(owner, minlength=state.num_ue + 1)[1:]
    in_p = need > 0
    for u in order.tolist():
        k = int(need[u] - held[u])
        if k <= 0:
            continue
        free = np.flatnonzero(state.resource_available & (owner == 0))
        if free.size:  # (1) unused RBGs, the user's best first
            take = free[np.lexsort((free, -util[u, free]))[:k]]
            owner[take] = u + 1
            held[u] += take.size
            k -= take.size
        if k > 0:  # (2) new data of users outside P, what their holders lose least first
            res = np.flatnonzero(owner > 0)
            res = res[~in_p[owner[res] - 1]]
            if res.size:
                holders = owner[res] - 1
                pick = np.lexsort((res, util[holders, res]))[:k]
                np.subtract.at(held, holders[pick], 1)
                owner[res[pick]] = u + 1
                held[u] += pick.size
                k -= pick.size
        if k > 0:  # (3) RBGs of users of P beyond their own need, the lowest utility to them first
            surplus = [v for v in np.flatnonzero(in_p & (held > need)).tolist() if v != u]
            cand: list[np.ndarray] = []
            for v in surplus:
                mine = np.flatnonzero(owner == v + 1)
                cand.append(mine[np.lexsort((mine, util[v, mine]))[: held[v] - need[v]]])
            if cand:
                res = np.concatenate(cand)
                holders = owner[res] - 1
                pick = np.lexsort((res, util[holders, res]))[:k]
                np.subtract.at(held, holders[pick], 1)
                owner[res[pick]] = u + 1
                held[u] += pick.size
    return owner


def retx_first(state: SlotState) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Where a baseline starts in a slot with retransmissions to serve: (``serve_retx`` of an empty
    decision, int64 indices of the users without one), or (None, None) when there are none.

    A user with a retransmission pending sends that transport block in the slot (one transport
    block per user per slot, as on an NR PUSCH), so it gets the RBGs of its retransmission and no
    RBG for new data; the baselines then give the RBGs left to the other users by their usual rule.
    """
    order = state.retx_order()
    if order.size == 0:
        return None, None
    need = state.retx_need()
    assert need is not None
    return serve_retx(state), np.flatnonzero(need == 0)


def pf_priority(state: SlotState, avg_served: np.ndarray) -> np.ndarray:
    """float64 [N, R]: proportional fair's priority ``utility[u, r] / avg_served[u]`` (instantaneous
    over average, SPEC §3); averages floored at 1e-9 of the slot's largest utility, so the rule is
    the same at every scale of the bit quantities."""
    top = float(state.utility.max(initial=0.0))
    avg = np.maximum(avg_served, 1e-9 * top if top > 0 else 1e-9)
    return state.utility / avg[:, None]


#: relative tolerance of the bits floor of ``share_tilted_fill``
BITS_TOLERANCE = 1e-9
#: resources per slot added to every user's share before the ratio of ``share_weight`` (a user
#: never served has share 0; its weight is bounded by the tilt's largest bound anyway)
SHARE_EPSILON = 1e-3


@dataclass(frozen=True, slots=True)
class ShareTilt:
    """The resource-share tilt of ``pf_fair`` and of the student's mac decode (``share_tilted_fill``).

    exponent: β of ``share_weight`` (unitless). rich_ratio: users served more than this times the
    eligible users' mean (``avg_served``) are never boosted. bounds: the tilt's bounds c, tried
    strongest first (weights clipped to [1/(1+c), 1+c]). min_bits_ratio: the share of the
    reference decision's scheduled bits (pf's, for ``pf_fair`` and the student) a tilted decision
    must keep to be served. A model card's ``decode.share_tilt`` block carries the same keys.
    """

    exponent: float = 2.0
    rich_ratio: float = 1.0
    bounds: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)
    min_bits_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not (
            self.exponent >= 0.0
            and self.rich_ratio > 0.0
            and all(c > 0.0 for c in self.bounds)
            and 0.0 < self.min_bits_ratio <= 1.0
        ):
            raise ValueError(
                "share tilt: exponent >= 0, rich_ratio > 0, bounds > 0 and min_bits_ratio in (0, 1] "
                f"expected, got {self}"
            )

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ShareTilt:
        """From a card's ``share_tilt`` block (missing keys take the defaults)."""
        d = cls()
        return cls(
            exponent=float(spec.get("exponent", d.exponent)),
            rich_ratio=float(spec.get("rich_ratio", d.rich_ratio)),
            bounds=tuple(float(c) for c in spec.get("bounds", d.bounds)),
            min_bits_ratio=float(spec.get("min_bits_ratio", d.min_bits_ratio)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "exponent": self.exponent,
            "rich_ratio": self.rich_ratio,
            "bounds": list(self.bounds),
            "min_bits_ratio": self.min_bits_ratio,
        }

    def weight(self, view: HistoryView, state: SlotState) -> np.ndarray:
        """``share_weight`` of the slot's users from the cell history ``view``: float64 [N]."""
        return share_weight(
            view.cum_resources,
            view.present_slots(state.slot),
            view.avg_served,
            state.user_eligible,
            self.exponent,
            self.rich_ratio,
        )


def share_weight(
    cum_resources: np.ndarray,
    present_slots: np.ndarray | None,
    avg_served: np.ndarray,
    eligible: np.ndarray,
    exponent: float,
    rich_ratio: float = 1.0,
) -> np.ndarray:
    """float64 [N]: each user's resource-share weight ``((x̄ + ε) / (x_u + ε))^β``.

    ``x_u = cum_resources / present_slots`` is the resources per slot user u has held in the cell
    (the ``x`` of the JFI term of SPEC §3 eq. 5, per slot present), ``x̄`` its mean over the
    eligible users, ε = ``SHARE_EPSILON``, β = ``exponent``. A user served more than
    ``rich_ratio`` times the eligible users' mean (``avg_served``) gets at most 1: the tilt lends
    resources to users below the mean share, not more service to users already above the mean
    throughput (the Jain index of throughput stays within 0.01 of pf's). All inputs [N]; ``present_slots``
    None counts every user present alike. Unitless, and the same at every scale of the bit
    quantities.
    """
    x = cum_resources if present_slots is None else cum_resources / present_slots
    if not eligible.any():
        return np.ones(x.size)
    w = ((x[eligible].mean() + SHARE_EPSILON) / (x + SHARE_EPSILON)) ** exponent
    rich = avg_served > rich_ratio * avg_served[eligible].mean()
    return np.where(rich, np.minimum(w, 1.0), w)


def share_tilted_fill(
    state: SlotState,
    score: np.ndarray,
    weight: np.ndarray,
    tilt: ShareTilt,
    owner: np.ndarray | None = None,
    users: np.ndarray | None = None,
    *,
    reference_score: np.ndarray | None = None,
) -> np.ndarray:
    """``greedy_fill`` on ``score · clip(weight, 1/(1+c), 1+c)`` with the strongest bound c of
    ``tilt.bounds`` whose decision schedules at least ``tilt.min_bits_ratio`` of the bits
    (``slot_utility``) of the reference decision ``greedy_fill(reference_score)`` (default:
    ``score`` itself, untilted); else ``greedy_fill(score)`` if it does; else the reference.

    The tilt raises the JFI term of SPEC §3 eq. 5 where it costs nothing in the slot's throughput
    (the default ratio 1): a slot never schedules less than ``min_bits_ratio`` of what the
    reference rule would (to within ``BITS_TOLERANCE`` relative). score, reference_score: float64 [N, R]; weight: float64 [N] (``share_weight``);
    ``owner`` / ``users`` as in ``greedy_fill`` (the HARQ start of ``retx_first``). Returns the
    DCM int64 [R].
    """
    ref = greedy_fill(state, score if reference_score is None else reference_score, owner, users)
    ref_bits = slot_utility(state, ref)
    # to within 1e-9 relative: the same bits summed over another decision round differently
    floor = tilt.min_bits_ratio * ref_bits - BITS_TOLERANCE * ref_bits
    elig = state.user_eligible
    tried: np.ndarray | None = None
    if elig.any() and not np.all(weight[elig] == 1.0):
        for c in tilt.bounds:
            w = np.clip(weight, 1.0 / (1.0 + c), 1.0 + c)
            if tried is not None and np.array_equal(w, tried):
                continue  # the same weights as a bound already refused
            tried = w
            cand = greedy_fill(state, score * w[:, None], owner, users)
            if slot_utility(state, cand) >= floor:
                return cand
    if reference_score is None:
        return ref
    plain = greedy_fill(state, score, owner, users)
    return plain if slot_utility(state, plain) >= floor else ref


def resource_share(view: HistoryView, state: SlotState) -> np.ndarray:
    """float64 [N]: the resources per slot each of the slot's users has held in the cell,
    ``cum_resources / present_slots`` (the ``x`` of the JFI term of SPEC §3 eq. 5, per slot
    present; ``cum_resources`` alone when the view has no presence)."""
    present = view.present_slots(state.slot)
    return view.cum_resources if present is None else view.cum_resources / present


def spread_idle(state: SlotState, owner: np.ndarray, view: HistoryView) -> np.ndarray:
    """Serve users below the mean resource share on more, weaker RBGs of a slot that leaves RBGs idle.

    ``owner`` [R] is a work-conserving mac decision (pf's, the student's); where it leaves an
    available RBG idle, every user with data is covered (or can use no idle RBG). Each eligible
    user whose share (``resource_share`` of the cell history ``view``) is below the eligible
    users' mean, whose
    buffer the decision covers and who has no HARQ retransmission pending is visited, lowest
    share first (ties: lower user id); its RBGs and the idle ones it can use (utility above 0)
    form a pool, and it is given instead the largest set S of the pool (at most the PAG cap)
    that still covers its buffer and of which every RBG is needed to cover it (the set's sum
    less its smallest RBG does not): the weakest RBGs of the pool, the last one the smallest
    that completes the cover (ties: lower resource id). It keeps its RBGs when S is not larger;
    RBGs it gives up become idle for the next user. Stops when no RBG is idle.

    Every user is served the bits it was (``served_bits``, to within ``NEED_TOLERANCE`` of its
    best TBS: buffers stay covered, the others' RBGs are untouched), so throughput, packet
    latency and the PF averages are those of ``owner``; what changes is the RBG count of the
    users below the mean share, which raises the JFI term of SPEC §3 eq. 5 with RBGs that would
    carry nothing. "Covered" and "needed" use the tolerance of ``greedy_fill``
    (``NEED_TOLERANCE`` of the user's best TBS), so the rule is the same at every scale of the
    bit quantities. Unchanged outside mac or without buffers; the shares are computed only for
    a slot with an idle RBG. Returns the DCM int64 [R] (a new array).
    """
    owner = np.array(owner, np.int64)
    if state.preset != "mac" or state.buffer_bits is None:
        return owner
    elig = state.user_eligible
    if not elig.any() or not (state.resource_available & (owner == 0)).any():
        return owner
    share = resource_share(view, state)
    candidate = elig & (share < share[elig].mean())
    need = state.retx_need()
    if need is not None:
        candidate &= need == 0
    if not candidate.any():
        return owner
    user_order = np.lexsort((state.user_ids, share)).astype(np.int64)
    _spread_kernel(
        np.ascontiguousarray(state.utility, np.float64),
        np.ascontiguousarray(state.buffer_bits, np.float64),
        owner,
        np.ascontiguousarray(state.resource_available, np.bool_),
        user_order[candidate[user_order]],
        np.argsort(state.resource_ids, kind="stable").astype(np.int64),
        int(state.max_resources_per_user),
        NEED_TOLERANCE,
    )
    return owner


def greedy_fill(
    state: SlotState, score: np.ndarray, owner: np.ndarray | None = None, users: np.ndarray | None = None
) -> np.ndarray:
    """Greedy assignment, highest ``score`` first (ties: lower user, then lower resource index).

    Starts from ``owner`` [R] (default: empty) and only fills free available resources, with
    eligible ``users`` (default: all) below their cap and, in mac, with data left: pairs are
    visited in that order and a pair is taken iff its utility is above 0 (a resource where the
    user's rate is 0 carries nothing for it), its resource is still free, its user is below the
    cap and (mac) the user's scheduled TBS does not yet cover its buffer (to within
    ``NEED_TOLERANCE`` of its best TBS, so buffers of whole RBGs in any unit give one decision).
    score: float64 [N, R] (NaN visited last). Returns the DCM int64 [R]. The compiled
    ``_greedy_kernel`` does the work, without the GIL.
    """
    n = state.num_ue
    owner = np.zeros(state.num_res, np.int64) if owner is None else np.array(owner, np.int64)
    selected = np.ones(n, np.bool_)
    if users is not None:
        selected[:] = False
        selected[users] = True
    with_buffer = state.preset == "mac" and state.buffer_bits is not None
    _greedy_kernel(
        np.ascontiguousarray(score, np.float64),
        np.ascontiguousarray(state.utility, np.float64),
        owner,
        np.ascontiguousarray(state.resource_available, np.bool_),
        np.ascontiguousarray(state.user_eligible, np.bool_),
        selected,
        int(state.max_resources_per_user),
        np.ascontiguousarray(state.buffer_bits, np.float64) if with_buffer else _NONE,
        with_buffer,
        NEED_TOLERANCE,
    )
    return owner


def rr_order(state: SlotState, view: HistoryView) -> np.ndarray:
    """int64 [N]: round robin's turn order, by last service (never served first, then oldest;
    ties by fewest resources received so far, then slot order)."""
    return np.lexsort((np.arange(state.num_ue), view.cum_resources, view.last_served_slot)).astype(np.int64)


def round_robin(state: SlotState, view: HistoryView) -> np.ndarray:
    """Round robin's DCM int64 [R] (the ``rr`` policy): eligible users in ``rr_order``, after the
    pending HARQ retransmissions (``retx_first``), take the available resources in turn
    (``rr_kernel``)."""
    order = rr_order(state, view)
    start, users = retx_first(state)
    owner = np.zeros(state.num_res, np.int64) if start is None else start
    selected = np.ones(state.num_ue, np.bool_)
    if users is not None:
        selected[:] = False
        selected[users] = True
    with_buffer = state.preset == "mac" and state.buffer_bits is not None
    rr_kernel(
        order,
        np.ascontiguousarray(state.utility, np.float64),
        owner,
        np.ascontiguousarray(state.resource_available, np.bool_),
        np.ascontiguousarray(state.user_eligible, np.bool_),
        selected,
        int(state.max_resources_per_user),
        np.ascontiguousarray(state.buffer_bits, np.float64) if with_buffer else np.zeros(state.num_ue),
        with_buffer,
    )
    return owner


def copies_per_user(state: SlotState) -> np.ndarray:
    """int64 [N]: how many resources each eligible user can usefully hold.

    min(cap, available resources) and, in mac with known buffers, the RBGs needed to empty the
    buffer at the user's best TBS on an available RBG: ceil(buffer / max TBS − ``NEED_TOLERANCE``).
    """
    avail = state.resource_available
    n_avail = int(avail.sum())
    k = np.full(state.num_ue, min(state.max_resources_per_user, n_avail), np.int64)
    if state.preset == "mac" and state.buffer_bits is not None and k.max(initial=0) > 1:
        best = state.utility[:, avail].max(axis=1)
        need = np.ceil(np.divide(state.buffer_bits, best, out=np.zeros(state.num_ue), where=best > 0) - NEED_TOLERANCE)
        k = np.minimum(k, need.astype(np.int64))
    return np.where(state.user_eligible, k, 0)


def linear_assignment(
    state: SlotState, score: np.ndarray, users: np.ndarray | None = None, resources: np.ndarray | None = None
) -> np.ndarray:
    """Exact max-score assignment (Hungarian / Jonker-Volgenant via scipy) with per-user caps.

    A user with cap ``k > 1`` is replicated ``k`` times; copy ``j`` of user ``u`` (``j = 0`` for
    a single copy) is worth ``min(score, buffer_u − j·TBS)`` on each RBG in mac (the marginal
    value of a j-th RBG: a UE cannot send more than it has queued), so the result is exactly
    optimal for the scheduled-bits objective when a user's TBS is the same on every RBG, and for
    the sum-rate objective whenever the cap is 1.
    Restrict to ``users`` / ``resources`` index subsets if given. Returns the DCM int64 [R].
    """
    owner = np.zeros(state.num_res, np.int64)
    u_sel = np.flatnonzero(state.user_eligible) if users is None else users[state.user_eligible[users]]
    r_sel = (
        np.flatnonzero(state.resource_available)
        if resources is None
        else resources[state.resource_available[resources]]
    )
    if u_sel.size == 0 or r_sel.size == 0:
        return owner
    copies = copies_per_user(state)[u_sel]
    copies = np.minimum(copies, r_sel.size)
    sub = score.take(u_sel, axis=0).take(r_sel, axis=1)  # [U, F]
    if copies.max(initial=0) <= 1:
        rows_user = u_sel[copies > 0]
        mat = sub[copies > 0]  # [U', F]
        j = np.zeros(rows_user.size)
    else:
        rows_user = np.repeat(u_sel, copies)
        j = np.concatenate([np.arange(c) for c in copies])
        mat = np.repeat(sub, copies, axis=0)  # [sum(copies), F]
    if state.preset == "mac" and state.buffer_bits is not None:
        # marginal value of the j-th RBG: what is still queued after j RBGs, scaled to the score
        util = state.utility.take(rows_user, axis=0).take(r_sel, axis=1)  # [rows, F]
        left = np.clip(state.buffer_bits[rows_user][:, None] - j[:, None] * util, 0.0, None)
        mat = np.minimum(mat, left * np.divide(mat, util, out=np.ones_like(mat), where=util > 0))
    if mat.shape[0] == 0:
        return owner
    rows, cols = linear_sum_assignment(mat, maximize=True)
    keep = mat[rows, cols] > 0
    owner[r_sel[cols[keep]]] = rows_user[rows[keep]] + 1
    return owner


@kernel
def _greedy_kernel(
    score: np.ndarray,
    utility: np.ndarray,
    owner: np.ndarray,
    available: np.ndarray,
    eligible: np.ndarray,
    selected: np.ndarray,
    cap: int,
    buffer: np.ndarray,
    with_buffer: bool,
    tolerance: float,
) -> None:
    """``greedy_fill``'s work, in place on ``owner`` [R]: score, utility float64 [N, R];
    available bool [R]; eligible, selected bool [N]; buffer float64 [N] (read when
    ``with_buffer``)."""
    n, r = utility.shape
    counts = np.zeros(n, np.int64)
    for k in range(r):
        if owner[k] > 0:
            counts[owner[k] - 1] += 1
    left = np.full(n, np.inf)
    if with_buffer:
        sched = np.zeros(n)
        for k in range(r):
            if owner[k] > 0:
                sched[owner[k] - 1] += utility[owner[k] - 1, k]
        for u in range(n):
            top = 0.0
            for k in range(r):
                top = max(top, utility[u, k])
            left[u] = (buffer[u] - sched[u]) - tolerance * top
    users = np.empty(n, np.int64)
    num_users = 0
    for u in range(n):
        if eligible[u] and selected[u] and counts[u] < cap and (not with_buffer or left[u] > 0):
            users[num_users] = u
            num_users += 1
    free = np.empty(r, np.int64)
    num_free = 0
    for k in range(r):
        if available[k] and owner[k] == 0:
            free[num_free] = k
            num_free += 1
    if num_users == 0 or num_free == 0:
        return
    users, free = users[:num_users], free[:num_free]
    # scores constant per user on the free resources, all finite, every utility above 0: users by
    # score (ties: lower index) take the lowest free resources in turn
    row_constant = True
    for a in range(num_users):
        u = users[a]
        first = score[u, free[0]]
        if not np.isfinite(first):
            row_constant = False
            break
        for f in range(num_free):
            if score[u, free[f]] != first or not utility[u, free[f]] > 0:
                row_constant = False
                break
        if not row_constant:
            break
    if row_constant:
        keys = np.empty(num_users)
        for a in range(num_users):
            keys[a] = -score[users[a], free[0]]
        order = np.argsort(keys, kind="mergesort")
        start = 0
        for a in order:
            u = users[a]
            while start < num_free and counts[u] < cap and left[u] > 0:
                k = free[start]
                owner[k] = u + 1
                counts[u] += 1
                if with_buffer:
                    left[u] -= utility[u, k]
                start += 1
            if start == num_free:
                return
        return
    # general: the users' next pairs in a heap keyed (NaN, -score, user, resource), so the pairs
    # come out in the order of the sequential greedy; a user's next pair is found by a scan of the
    # free resources for its best one after the pair it last visited (taken resources are passed
    # over, as the sequential greedy passes over their pairs)
    taken = np.zeros(num_free, np.bool_)
    heap = [(0, 0.0, 0, 0)]
    heap.pop()
    for a in range(num_users):
        key = _next_pair(score, users[a], free, taken, (-1, 0.0, -1))
        if key[2] >= 0:
            heap.append((key[0], key[1], a, key[2]))
    heapq.heapify(heap)
    left_res = num_free
    while heap and left_res > 0:
        nan, neg, a, f = heapq.heappop(heap)
        u, k = users[a], free[f]
        if taken[f]:  # its pair now comes later: its best free resource after the last visited
            key = _next_pair(score, u, free, taken, (nan, neg, f))
        else:
            if utility[u, k] > 0:
                owner[k] = u + 1
                taken[f] = True
                left_res -= 1
                counts[u] += 1
                if with_buffer:
                    left[u] -= utility[u, k]
                if counts[u] >= cap or left[u] <= 0:
                    continue  # the user is done
            key = _next_pair(score, u, free, taken, (nan, neg, f))
        if key[2] >= 0:
            heapq.heappush(heap, (key[0], key[1], a, key[2]))


@kernel
def rr_kernel(
    order: np.ndarray,
    utility: np.ndarray,
    owner: np.ndarray,
    available: np.ndarray,
    eligible: np.ndarray,
    selected: np.ndarray,
    cap: int,
    buffer: np.ndarray,
    with_buffer: bool,
) -> None:
    """Round robin's turns, in place on ``owner`` [R]: order int64 [N] (the users in turn order),
    utility float64 [N, R], available bool [R], eligible, selected bool [N], buffer float64 [N]
    (read when ``with_buffer``).

    Rounds over the eligible, selected users in ``order``: a user below ``cap`` with data left
    (mac with buffers: its buffer less the utility of the resources it got this slot, above 0)
    takes the lowest free available resource whose utility for it is above 0 (a resource out of
    its range, CQI 0, carries nothing and is left to the next user); the rounds end when no
    resource is free or a round gives none.
    """
    n, r = utility.shape
    free = np.zeros(r, np.bool_)
    num_free = 0
    for k in range(r):
        if available[k] and owner[k] == 0:
            free[k] = True
            num_free += 1
    counts = np.zeros(n, np.int64)
    left = buffer.copy() if with_buffer else np.zeros(0)
    while num_free > 0:
        progressed = False
        for u in order:
            if num_free == 0:
                break
            if not (eligible[u] and selected[u]) or counts[u] >= cap or (with_buffer and left[u] <= 0):
                continue
            for k in range(r):
                if free[k] and utility[u, k] > 0:
                    free[k] = False
                    num_free -= 1
                    owner[k] = u + 1
                    counts[u] += 1
                    if with_buffer:
                        left[u] -= utility[u, k]
                    progressed = True
                    break
        if not progressed:
            break


@kernel
def _next_pair(
    score: np.ndarray, u: int, free: np.ndarray, taken: np.ndarray, after: tuple[int, float, int]
) -> tuple[int, float, int]:
    """The user's first pair, in (NaN, -score, resource) order, after the key ``after`` among the
    free resources not taken: (NaN, -score, position in ``free``), position -1 when none."""
    best = (2, 0.0, -1)
    for f in range(free.shape[0]):
        if taken[f]:
            continue
        s = score[u, free[f]]
        key = (1, 0.0, f) if np.isnan(s) else (0, -s, f)
        if key > after and (best[2] < 0 or key < best):
            best = key
    return best


@kernel
def _spread_kernel(
    utility: np.ndarray,
    buffer: np.ndarray,
    owner: np.ndarray,
    available: np.ndarray,
    users: np.ndarray,
    res_order: np.ndarray,
    cap: int,
    tolerance: float,
) -> None:
    """``spread_idle``'s work, in place on ``owner`` [R]: utility float64 [N, R], buffer float64 [N],
    available bool [R], ``users`` int64 (the candidates, in visiting order), ``res_order`` int64
    [R] (resource indices by resource id: the order of ties)."""
    n, r = utility.shape
    held = np.zeros(n, np.int64)
    idle = 0
    for k in range(r):
        if owner[k] > 0:
            held[owner[k] - 1] += 1
        elif available[k]:
            idle += 1
    pool = np.empty(r, np.int64)
    caps = np.empty(r)
    for u in users:
        if idle == 0:
            return
        if held[u] == 0:
            continue
        top = 0.0
        for k in range(r):
            top = max(top, utility[u, k])
        want = buffer[u] - tolerance * top  # bits the set must carry, as greedy_fill counts them
        if not want > 0.0:
            continue
        m = 0
        tbs = 0.0
        for k in res_order:
            mine = owner[k] == u + 1
            if mine:
                tbs += utility[u, k]
            if (mine or (owner[k] == 0 and available[k])) and utility[u, k] > 0.0:
                pool[m] = k
                caps[m] = utility[u, k]
                m += 1
        if tbs < want:
            continue  # not covered: its RBGs carry all they can
        order = np.argsort(caps[:m], kind="mergesort")  # weakest first, ties in resource id order
        c = caps[:m][order]
        best_s, best_j = 0, -1
        below = 0.0  # the sum of the s - 1 weakest RBGs
        for s in range(1, min(m, cap) + 1):
            if below >= want:
                break  # the s - 1 weakest already cover the buffer: no larger set needs all its RBGs
            j = s - 1 + np.searchsorted(c[s - 1 : m], want - below)  # the smallest that completes it
            if j < m:
                smallest = c[0] if s > 1 else c[j]
                if below + c[j] - smallest < want:
                    best_s, best_j = s, j
            below += c[s - 1]
        if best_s <= held[u]:
            continue
        for k in range(r):
            if owner[k] == u + 1:
                owner[k] = 0
        for t in range(best_s - 1):
            owner[pool[order[t]]] = u + 1
        owner[pool[order[best_j]]] = u + 1
        idle -= best_s - held[u]
        held[u] = best_s
