"""Assignment kernels shared by repair and the policies (pure numpy / scipy).

All work on a ``SlotState`` and a score matrix float64 [N, R]; they respect availability,
eligibility, the per-user cap and, in the mac preset, the user's queued data (a user is not
given more RBGs once its scheduled TBS covers its buffer).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.types import SlotState


def remaining_bits(state: SlotState, owner: np.ndarray) -> np.ndarray | None:
    """float64 [N]: buffer bits not yet covered by ``owner`` (mac with known buffers), else None."""
    if state.preset != "mac" or state.buffer_bits is None:
        return None
    used = owner > 0
    sched = np.bincount(owner[used] - 1, weights=state.utility[owner[used] - 1, np.flatnonzero(used)],
                        minlength=state.num_ue)
    return state.buffer_bits - sched


def greedy_fill(state: SlotState, score: np.ndarray, owner: np.ndarray | None = None,
                users: np.ndarray | None = None) -> np.ndarray:
    """Greedy assignment, highest ``score`` first (ties: lower user, then lower resource index).

    Starts from ``owner`` [R] (default: empty) and only fills free available resources, with
    eligible ``users`` (default: all) below their cap and, in mac, with data left.
    score: float64 [N, R]. Returns the DCM int64 [R].
    """
    owner = np.zeros(state.num_res, np.int64) if owner is None else owner.copy()
    cap = state.max_resources_per_user
    counts = np.bincount(owner, minlength=state.num_ue + 1)[1:].copy()
    remaining = remaining_bits(state, owner)
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
    sub = score[np.ix_(cand_users, free)]  # [U, F]
    # argsort of -score is stable, so ties keep (user, resource) row-major order
    order = np.argsort(-sub, axis=None, kind="stable")
    f = free.size
    taken = np.zeros(state.num_res, bool)
    left_res, left_users = free.size, cand_users.size
    util = state.utility
    for k in order.tolist():
        ui, fi = divmod(k, f)
        u, res = int(cand_users[ui]), int(free[fi])
        if taken[res] or counts[u] >= cap or (remaining is not None and remaining[u] <= 0):
            continue
        owner[res] = u + 1
        taken[res] = True
        counts[u] += 1
        left_res -= 1
        done = counts[u] >= cap
        if remaining is not None:
            remaining[u] -= util[u, res]
            done = done or remaining[u] <= 0
        left_users -= int(done)
        if left_res == 0 or left_users == 0:
            break
    return owner


def copies_per_user(state: SlotState) -> np.ndarray:
    """int64 [N]: how many resources each eligible user can usefully hold.

    min(cap, available resources) and, in mac with known buffers, the RBGs needed to empty the
    buffer at the user's best TBS: ceil(buffer / max TBS).
    """
    n_avail = int(state.resource_available.sum())
    k = np.full(state.num_ue, min(state.max_resources_per_user, n_avail), np.int64)
    if state.preset == "mac" and state.buffer_bits is not None and k.max(initial=0) > 1:
        best = state.utility.max(axis=1)
        need = np.ceil(np.divide(state.buffer_bits, best, out=np.zeros(state.num_ue), where=best > 0))
        k = np.minimum(k, need.astype(np.int64))
    return np.where(state.user_eligible, k, 0)


def linear_assignment(state: SlotState, score: np.ndarray, users: np.ndarray | None = None,
                      resources: np.ndarray | None = None) -> np.ndarray:
    """Exact max-score assignment (Hungarian / Jonker-Volgenant via scipy) with per-user caps.

    A user with cap ``k > 1`` is replicated ``k`` times; copy ``j`` of user ``u`` is worth
    ``min(score, buffer_u − j·TBS)`` on each RBG in mac (the marginal value of a j-th RBG), so
    the result is exactly optimal for the scheduled-bits objective when a user's TBS is the
    same on every RBG, and for the sum-rate objective whenever the cap is 1.
    Restrict to ``users`` / ``resources`` index subsets if given. Returns the DCM int64 [R].
    """
    owner = np.zeros(state.num_res, np.int64)
    u_sel = np.flatnonzero(state.user_eligible) if users is None else users[state.user_eligible[users]]
    r_sel = np.flatnonzero(state.resource_available) if resources is None else resources[state.resource_available[resources]]
    if u_sel.size == 0 or r_sel.size == 0:
        return owner
    copies = copies_per_user(state)[u_sel]
    copies = np.minimum(copies, r_sel.size)
    sub = score[np.ix_(u_sel, r_sel)]  # [U, F]
    if copies.max(initial=0) <= 1:
        rows_user = u_sel[copies > 0]
        mat = sub[copies > 0]
    else:
        rows_user = np.repeat(u_sel, copies)
        j = np.concatenate([np.arange(c) for c in copies])
        mat = np.repeat(sub, copies, axis=0)
        if state.preset == "mac" and state.buffer_bits is not None:
            util = np.repeat(state.utility[np.ix_(u_sel, r_sel)], copies, axis=0)
            left = state.buffer_bits[rows_user][:, None] - j[:, None] * util
            mat = np.minimum(mat, np.clip(left, 0.0, None) * np.divide(mat, util, out=np.ones_like(mat), where=util > 0))
    if mat.shape[0] == 0:
        return owner
    rows, cols = linear_sum_assignment(mat, maximize=True)
    keep = mat[rows, cols] > 0
    owner[r_sel[cols[keep]]] = rows_user[rows[keep]] + 1
    return owner
