"""Assignment kernels shared by repair and the policies (pure numpy / scipy).

All work on a ``SlotState`` and a score matrix float64 [N, R]; they respect availability,
eligibility, the per-user cap and, in the mac preset, the user's queued data (a user is not
given more RBGs once its scheduled TBS covers its buffer).

``serve_retx`` / ``retx_first`` serve the pending HARQ retransmissions of a mac slot before any
new data (the PAG rule ``retx_not_first``): the baselines start from it and give the remaining
RBGs to the users without a retransmission, and repair uses it to mend a decision that breaks
the rule.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.types import SlotState

#: tolerance (in RBGs) of ceil(buffer / TBS): a buffer that is an exact multiple of the TBS needs
#: that many RBGs even when the division rounds a few ulps up (e.g. both given in other units)
NEED_TOLERANCE = 1e-9


def remaining_bits(state: SlotState, owner: np.ndarray) -> np.ndarray | None:
    """float64 [N]: buffer bits not yet covered by ``owner`` (mac with known buffers), else None."""
    if state.preset != "mac" or state.buffer_bits is None:
        return None
    used = owner > 0
    sched = np.bincount(
        owner[used] - 1, weights=state.utility[owner[used] - 1, np.flatnonzero(used)], minlength=state.num_ue
    )
    return state.buffer_bits - sched


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
    score: float64 [N, R]. Returns the DCM int64 [R].
    """
    owner = np.zeros(state.num_res, np.int64) if owner is None else owner.copy()
    cap = state.max_resources_per_user
    counts = np.bincount(owner, minlength=state.num_ue + 1)[1:]
    remaining = remaining_bits(state, owner)
    if remaining is not None:  # covered once within NEED_TOLERANCE of an RBG: the same rule at every scale
        remaining = remaining - NEED_TOLERANCE * state.utility.max(axis=1, initial=0.0)
    cand = state.user_eligible & (counts < cap)
    if remaining is not None:
        cand &= remaining > 0
    if users is not None:
        sel = np.zeros(state.num_ue, bool)
        sel[users] = True
        cand &= sel
    cand_users = np.flatnonzero(cand)
    free = np.flatnonzero(state.resource_available & (owner == 0))
    if cand_users.size == 0 or free.size == 0:
        return owner
    sub = score.take(cand_users, axis=0).take(free, axis=1)  # [U, F]
    # a pair of zero utility carries nothing (rate 0: out of range) and is never granted: the
    # general path skips it (checked on the whole matrix first, the common slot has none)
    if state.utility.min(initial=1.0) <= 0 and (state.utility.take(cand_users, axis=0).take(free, axis=1) <= 0).any():
        _greedy_pairs(state, sub, cand_users, free, owner, counts, remaining)
        return owner
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(sub.sum())  # False for NaN / inf anywhere (or a sum overflow)
    if not finite:  # general path
        _greedy_pairs(state, sub, cand_users, free, owner, counts, remaining)
    elif (sub == sub[:, :1]).all():
        _greedy_row_constant(state, sub[:, 0], cand_users, free, owner, counts, remaining)
    elif cap - counts[cand_users].min() <= 1:
        _greedy_single(sub, cand_users, free, owner)
    else:
        _greedy_pairs(state, sub, cand_users, free, owner, counts, remaining)
    return owner


def _greedy_single(sub: np.ndarray, cand_users: np.ndarray, free: np.ndarray, owner: np.ndarray) -> None:
    """``greedy_fill`` when every candidate can take one more resource: rounds of mutually
    first pairs (best of its row and of its column, ties by lower index), which the sequential
    greedy takes whatever else it takes. sub: finite [U, F]; fills ``owner`` in place."""
    m = sub.copy()  # [U, F]; taken rows / columns become -inf
    mt = np.ascontiguousarray(sub.T)  # [F, U], the same for column-wise argmax
    row_idx = np.arange(m.shape[0])
    row_open = np.ones(m.shape[0], bool)
    left = min(m.shape)
    while left:
        best_col = m.argmax(axis=1)  # [U] first max of each row: lowest resource among ties
        best_row = mt.argmax(axis=1)  # [F] first max of each column: lowest user among ties
        mutual = np.flatnonzero((best_row[best_col] == row_idx) & row_open)
        cols = best_col[mutual]
        owner[free[cols]] = cand_users[mutual] + 1
        row_open[mutual] = False
        m[mutual] = -np.inf
        m[:, cols] = -np.inf
        mt[cols] = -np.inf
        mt[:, mutual] = -np.inf
        left -= mutual.size


def _greedy_row_constant(
    state: SlotState,
    user_score: np.ndarray,
    cand_users: np.ndarray,
    free: np.ndarray,
    owner: np.ndarray,
    counts: np.ndarray,
    remaining: np.ndarray | None,
) -> None:
    """``greedy_fill`` when a user's score is the same on every free resource (mac: TBS per
    user): users by score (ties: lower index) take the lowest free resources up to their cap
    and, in mac, until their buffer is covered. user_score: [U]; fills ``owner`` in place."""
    cap, n_free = state.max_resources_per_user, free.size
    users = cand_users[np.lexsort((cand_users, -user_score))].tolist()
    room = (cap - counts).tolist()
    left = None if remaining is None else remaining.tolist()
    gain = None
    if left is not None:
        usub = state.utility.take(cand_users, axis=0).take(free, axis=1)  # [U, F]
        if (usub == usub[:, :1]).all():  # TBS per user, the same on every RBG
            gain = dict(zip(cand_users.tolist(), usub[:, 0].tolist(), strict=True))
    takes: list[int] = []
    start = 0
    for u in users:
        take = min(room[u], n_free - start)
        if left is not None:  # the j-th RBG is taken while data is still queued before it
            rem, k = left[u], 0
            while k < take and rem > 0:
                rem -= gain[u] if gain is not None else float(state.utility[u, free[start + k]])
                k += 1
            take = k
        takes.append(take)
        start += take
        if start >= n_free:
            break
    owner[free[:start]] = np.repeat(np.asarray(users[: len(takes)], np.int64) + 1, takes)


def _greedy_pairs(
    state: SlotState,
    sub: np.ndarray,
    cand_users: np.ndarray,
    free: np.ndarray,
    owner: np.ndarray,
    counts: np.ndarray,
    remaining: np.ndarray | None,
) -> None:
    """``greedy_fill`` in general: visit the pairs in order of score. Fills ``owner`` in place."""
    f = free.size
    neg = -sub.ravel()
    order = np.argsort(neg)  # introsort; equals the stable order unless scores tie (or are NaN)
    ranked = neg[order]
    if (ranked[1:] == ranked[:-1]).any() or np.isnan(ranked[-1]):
        order = np.argsort(neg, kind="stable")  # ties keep (user, resource) order
    gain_flat = state.utility.take(cand_users, axis=0).take(free, axis=1).ravel()  # [U·F]
    cap = state.max_resources_per_user
    cnt = counts.tolist()
    left = None if remaining is None else remaining.tolist()
    taken: set[int] = set()
    left_res, left_users = f, cand_users.size
    start, chunk = 0, max(4 * f, 256)  # the pairs are turned into Python values chunk by chunk
    while start < order.size:
        part = order[start : start + chunk]
        start, chunk = start + chunk, 2 * chunk
        for u, res, g in zip(
            cand_users[part // f].tolist(), free[part % f].tolist(), gain_flat[part].tolist(), strict=True
        ):
            if res in taken or cnt[u] >= cap or (left is not None and left[u] <= 0) or g <= 0:
                continue
            owner[res] = u + 1
            taken.add(res)
            cnt[u] += 1
            left_res -= 1
            done = cnt[u] >= cap
            if left is not None:
                left[u] -= g
                done = done or left[u] <= 0
            left_users -= int(done)
            if left_res == 0 or left_users == 0:
                return


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
