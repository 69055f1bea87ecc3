"""Auction kernels of the large-scale spectrum assignment (numpy / scipy, one numba kernel; no I/O).

All work on a value matrix float64 [U, F] >= 0 (eligible users × free channels) and solve the
single-connectivity assignment ``max Σ value[u, c]`` over matchings (SPEC §1–§2); a matching is
channel-of-user int64 [U] (-1 or ``FREE`` / ``OUT`` = none). The policy ``auction``
(``service.policies.sparse``) runs them as stages, each leaving a valid decision behind:

0. **Cheap starts** — ``sorted_fill``: strongest users on the widest channels, the optimum
   without fading, O(n log n); ``sampled_bids``: each user bids for its best of a few
   candidate channels, a few vectorised rounds, O(U·m).
   **Lists** — ``dense_lists``: the dense value matrix copied out of the slot's utility in row
   blocks, each block's exact top-k lists found while it is in cache (a threshold from strided
   group maxima, then an exact selection among the few entries above it); ``top_lists`` in one.
   **Coarse** — ``market_prices``: the final prices estimated from a small sub-market (a random
   ``1/16`` of the users and of the channels), fitted on the channels' bandwidth and mean value;
   ``segment_lists``: each user's best channel by value minus those prices in each of ``k``
   column segments (one compiled pass over the rows, no dense copy); ``auction_prices`` with a
   large ``ε`` from the estimated prices on those (or the exact) lists and no list refresh (a
   few rounds, O(U·k) each), completed by ``best_free_fill`` (leftover users bid for their best
   free channels on their dense rows): within a few per cent of the optimum, early.
1. **Prices** — ``auction_prices``: a forward Jacobi auction (Bertsekas) with increment ``ε``,
   every unassigned user bidding at once, each user holding the outside option "no channel"
   worth 0. A user bids from a list of its best channels by *reduced* value ``value − price``
   (``top_lists``), with an upper bound on everything off the list; prices only rise, so the
   bound stays valid and the list is rebuilt from the dense row only when it no longer proves
   the best bid. Sparsifying by raw value fails here because path loss makes the strongest
   users best on every channel; reduced value does not.
2. **Exact on a sparse graph** — ``candidate_pairs``: pairs within a slack of each user's best
   reduced value, the auction's pairs and enough completion pairs for a full matching;
   ``sparse_max_matching`` solves it exactly with
   ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp).
3. **Certificate** — ``matching_prices``: channel prices that prove the matching optimal on the
   graph (difference constraints of LP duality, Bellman–Ford, kept close to the auction's
   prices); ``dual_check`` tests them on every pair (complementary slackness). Any prices give
   the bound ``OPT ≤ Σ_c p_c + Σ_u max(0, max_c value[u, c] − p_c)``.

Dense passes run over row blocks of about 65536 entries (cache-sized).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from service.jit import kernel

FREE = -1  # user still bidding
OUT = -2  # user took the outside option (no channel is worth its price)
_CHUNK_ELEMS = 1 << 16  # dense passes run over row blocks of about this many entries (cache-sized)
MIN_MARKET_CHANNELS = 64  # market_prices: the fewest channels its sub-market prices (the fit's points)


def warm_up() -> None:
    """Compile (or load from numba's cache) ``segment_lists``' kernel on a 2 × 2 matrix, so that no
    decision pays for it (nor learns it as the stage's cost): ``ServiceCore.preload`` and the
    ``auction`` policy call it."""
    segment_lists(np.ones((2, 2)), np.arange(2), np.zeros(2), 1)


# ------------------------------------------------------------------------------- stage 0


def sorted_fill(match: np.ndarray, strength: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Complete a partial matching in O(U log U + F log F): users without a channel, strongest
    first, take the unused channels, widest first — the exact optimum without fading (SPEC §2:
    with flat fading the optimum is a sort). match: int64 [U] channel or < 0; strength: [U];
    width: [F]. Returns channel-of-user int64 [U] (-1 = none)."""
    out = np.where(match >= 0, match, -1)
    used = np.zeros(width.size, bool)
    used[out[out >= 0]] = True
    idle_u = np.flatnonzero(out < 0)
    idle_c = np.flatnonzero(~used)
    idle_u = idle_u[np.argsort(-strength[idle_u], kind="stable")]
    idle_c = idle_c[np.argsort(-width[idle_c], kind="stable")]
    m = min(idle_u.size, idle_c.size)
    out[idle_u[:m]] = idle_c[:m]
    return out


def sampled_bids(
    cand_cols: np.ndarray, cand_value: np.ndarray, num_channels: int, rounds: int = 3, taken: np.ndarray | None = None
) -> np.ndarray:
    """Each user bids for its best channel among a few candidates; each channel goes to its
    highest bid (ties: lower user); losers retry on their untaken candidates, ``rounds`` times.

    cand_cols: int64 [U, m] candidate channel indices (e.g. sampled); cand_value: float64 [U, m]
    their values; taken: bool [F] channels already held by others (default none). O(U·m) per
    round. Returns channel-of-user int64 [U] (FREE where none was won).
    """
    u_n = cand_cols.shape[0]
    match = np.full(u_n, FREE, np.int64)
    taken = np.zeros(num_channels, bool) if taken is None else taken.copy()
    for _ in range(rounds):
        free = np.flatnonzero(match == FREE)
        if not free.size:
            break
        v = np.where(taken[cand_cols[free]], -np.inf, cand_value[free])  # [B, m]
        k = v.argmax(axis=1)
        best = v[np.arange(free.size), k]
        ok = np.isfinite(best)
        bidder, col, bid = free[ok], cand_cols[free[ok], k[ok]], best[ok]
        order = np.lexsort((-bid, col))  # by channel, highest bid first
        c = col[order]
        first = np.ones(c.size, bool)
        first[1:] = c[1:] != c[:-1]
        win = order[first]
        match[bidder[win]] = col[win]
        taken[col[win]] = True
    return match


def best_free_fill(match: np.ndarray, idle_value: np.ndarray, *, per_user: int = 8, rounds: int = 4) -> np.ndarray:
    """Users without a channel bid for their ``per_user`` best unused channels (``sampled_bids``
    rounds). match: int64 [U] channel or < 0 of F channels; idle_value: float64 [I, F] the dense
    value rows of the I users without one (``np.flatnonzero(match < 0)``, in that order).

    O(I·C) for C unused channels. Returns channel-of-user int64 [U] (FREE where still none)."""
    out = np.where(match >= 0, match, FREE)
    idle = np.flatnonzero(out < 0)
    f_n = idle_value.shape[1]
    taken = np.zeros(f_n, bool)
    taken[out[out >= 0]] = True
    free_c = np.flatnonzero(~taken)
    if not idle.size or not free_c.size:
        return out
    sub = idle_value[:, free_c]  # [I, C]
    m = min(per_user, free_c.size)
    top = np.argpartition(sub, free_c.size - m, axis=1)[:, free_c.size - m :]  # [I, m]
    out[idle] = sampled_bids(free_c[top], np.take_along_axis(sub, top, 1), f_n, rounds=rounds, taken=taken)
    return out


def market_prices(
    source: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    width: np.ndarray,
    rng: np.random.Generator,
    *,
    fraction: int = 16,
    eps_rel: float = 1e-2,
    max_rounds: int = 30,
) -> np.ndarray:
    """An estimate of the channel prices float64 [F] >= 0 that the auction on
    ``source[rows][:, cols]`` ends with, from a sub-market, in O(U·F / fraction).

    source: float64 [N, R] >= 0; rows: int64 [U]; cols: int64 [F]; width: float64 [F] the
    channels' bandwidths. A seeded random ``1/fraction`` of the users and of the channels (a
    larger share where that leaves fewer than ``MIN_MARKET_CHANNELS`` channels) keeps the
    market's balance of users to channels; its coarse auction (``auction_prices``, increment
    ``eps_rel · max``, at most ``max_rounds`` rounds) prices the sampled channels. A least-squares
    fit of those prices on per-channel features prices every channel (clipped at 0): the
    bandwidth ``w`` and the sampled users' mean value on the channel ``m`` (each over its
    largest), with their squares, so that channels that differ by width or by interference are
    priced alike.
    """
    u_n, f_n = rows.size, cols.size
    share = max(1.0 / fraction, min(1.0, MIN_MARKET_CHANNELS / max(f_n, 1)))  # enough channels to fit on
    su = np.sort(rng.choice(u_n, min(u_n, max(2, round(u_n * share))), replace=False))
    sc = np.sort(rng.choice(f_n, min(f_n, max(2, round(f_n * share))), replace=False))
    sampled = source[rows[su]][:, cols]  # [s, F]: the sampled users on every channel
    auc = auction_prices(np.ascontiguousarray(sampled[:, sc]), eps_rel, list_size=8, max_rounds=max_rounds)

    def unit(x: np.ndarray) -> np.ndarray:
        top = float(x.max(initial=0.0))
        return x / top if top > 0 else np.ones(f_n)

    w, m = unit(width), unit(sampled.mean(axis=0))
    features = np.stack([np.ones(f_n), w, w * w, m, m * m], axis=1)  # [F, 5]
    coef, *_ = np.linalg.lstsq(features[sc], auc.prices, rcond=None)
    return np.maximum(features @ coef, 0.0)


def segment_lists(
    source: np.ndarray,
    rows: np.ndarray,
    prices: np.ndarray,
    k: int,
    *,
    stop: Callable[[float], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's best channel by reduced value ``source − prices`` in each of ``k`` contiguous
    column segments, in one pass over the rows without copying the dense matrix: the coarse
    stage's cheap lists.

    source: float64 [N, R] >= 0, finite; rows: int64 [U] the rows wanted; prices: float64 [R]
    (``inf`` or NaN for a channel that may not be listed). The segments are ``R // k`` columns
    wide, the last ``R mod k`` columns one more. With prices near the auction's
    (``market_prices``), the lists hold channels the users can win, not only the channels
    everyone wants. Row blocks of a cache-sized share of the matrix, each one compiled pass
    (``_segment_best``); before each, ``stop(share of the rows done)`` may end the work. Returns
    (channels int64 [U, S] column indices of ``source``, values float64 [U, S], ``-inf`` where a
    segment has no channel that may be listed), S = k (+1 with a remainder), or None when
    ``stop`` returned True.
    """
    r_src = source.shape[1]
    u_n = rows.size
    k = max(1, min(k, r_src))
    seg = r_src // k
    body = seg * k
    n_lists = k + (body < r_src)
    lists = np.empty((u_n, n_lists), np.int64)
    reduced = np.empty((u_n, n_lists))
    step = max(1, _CHUNK_ELEMS // max(r_src, 1))
    rows = np.asarray(rows, np.int64)
    price = np.asarray(prices, np.float64)
    if np.isnan(price).any():  # an unknown price: the channel may not be listed
        price = np.where(np.isnan(price), np.inf, price)
    for s in range(0, u_n, step):
        if stop is not None and stop(s / u_n):
            return None
        b = min(step, u_n - s)  # the compiled pass over the block's rows, in place (no dense copy)
        _segment_best(source, rows[s : s + b], price, seg, n_lists, lists[s : s + b], reduced[s : s + b])
    values = np.where(np.isfinite(reduced), source[rows[:, None], lists], -np.inf)  # the values themselves
    return lists, values


@kernel
def _segment_best(
    source: np.ndarray,
    rows: np.ndarray,
    prices: np.ndarray,
    seg: int,
    n_lists: int,
    lists: np.ndarray,
    reduced: np.ndarray,
) -> None:  # pragma: no cover - compiled; tested through segment_lists
    """``segment_lists``' row block: for each row of ``rows`` and segment j (columns ``j·seg`` to
    ``(j+1)·seg``, the last one to the end), the first column of largest reduced value
    ``source[row, c] − prices[c]`` (``np.argmax``'s choice: the reduced values are never NaN,
    ``source`` being finite and ``prices`` finite or ``inf``) into ``lists[i, j]`` and that value
    into ``reduced[i, j]``."""
    r_src = source.shape[1]
    for i in range(rows.size):
        row = source[rows[i]]
        for j in range(n_lists):
            lo = j * seg
            hi = r_src if j == n_lists - 1 else lo + seg
            best_c = lo
            best = row[lo] - prices[lo]
            for c in range(lo + 1, hi):
                v = row[c] - prices[c]
                if v > best:
                    best_c, best = c, v
            lists[i, j] = best_c
            reduced[i, j] = best


def dense_lists(
    source: np.ndarray,
    rows: np.ndarray | None,
    cols: np.ndarray | None,
    k: int,
    *,
    group: int = 8,
    stop: Callable[[float], bool] | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The dense value matrix ``source[rows][:, cols]`` and its top-``k`` lists, in one pass.

    source: float64 [N, R] >= 0; rows: int64 [U] / cols: int64 [F] (None: all, no copy is made).
    Returns (value float64 [U, F], (lists int64 [U, k], list values float64 [U, k], bound
    float64 [U])), the lists exactly as ``top_lists(value, zeros, None, k)`` gives them (the same
    channels and bound; their order within a row may differ), or None when ``stop(share of the
    rows done)``, asked before each row block and before the final selection, returned True.

    Row blocks are copied and searched while in cache. In a block, each row's threshold ``t`` is
    the ``k``-th largest maximum over ``F // group`` disjoint strided column groups: ``k`` groups
    reach ``t``, so at least ``k`` entries do, and the exact top ``k`` are among the entries
    ``>= t`` (about ``k`` plus a few collisions), selected at the end on a small padded matrix.
    Rows with many entries at ``t`` (ties, zero rows) and narrow matrices (fewer than ``4·k``
    groups) take ``top_lists`` instead.
    """
    n_src, r_src = source.shape
    u_n = n_src if rows is None else rows.size
    f_n = r_src if cols is None else cols.size
    k = min(k, f_n)
    if rows is None and cols is None:
        value = source
    else:
        value = np.empty((u_n, f_n))
    g_n = f_n // group if group > 0 else 0
    fast = k > 0 and g_n >= 4 * k
    step = max(1, _CHUNK_ELEMS // max(r_src, 1))
    tmp = np.empty((step, r_src)) if (rows is not None and cols is not None) else None
    flats = []
    for s in range(0, u_n, step):
        if stop is not None and stop(s / u_n):
            return None
        blk = value[s : s + step]
        b = blk.shape[0]
        if rows is not None and cols is not None:
            assert tmp is not None
            np.take(source, rows[s : s + step], axis=0, out=tmp[:b])
            np.take(tmp[:b], cols, axis=1, out=blk)
        elif rows is not None:
            np.take(source, rows[s : s + step], axis=0, out=blk)
        elif cols is not None:
            np.take(source[s : s + step], cols, axis=1, out=blk)
        if fast:
            gmax = blk[:, : g_n * group].reshape(b, group, g_n).max(axis=1)  # [b, G] strided groups
            t = np.sort(gmax, axis=1)[:, g_n - k]  # the k-th largest group maximum
            flats.append(np.flatnonzero(blk >= t[:, None]) + s * f_n)
    if stop is not None and stop(1.0):  # asked once more before the final selection
        return None
    if not fast:
        return value, top_lists(value, np.zeros(f_n), None, k)
    flat = np.concatenate(flats) if flats else np.zeros(0, np.int64)
    row = flat // f_n
    cnt = np.bincount(row, minlength=u_n)  # >= k each
    cap = 4 * k
    big = np.flatnonzero((cnt > cap) | (cnt < k))  # many entries at the threshold: exact search on the row
    if big.size:
        keep = (cnt[row] <= cap) & (cnt[row] >= k)
        flat, row = flat[keep], row[keep]
        cnt[big] = 0
    width = int(cnt.max(initial=k))
    start = np.zeros(u_n, np.int64)
    np.cumsum(cnt[:-1], out=start[1:])
    slot = row * width + (np.arange(flat.size) - start[row])
    pad_v = np.full(u_n * width, -np.inf)
    pad_c = np.zeros(u_n * width, np.int64)
    pad_v[slot] = value.ravel().take(flat)
    pad_c[slot] = flat - row * f_n
    pad_v = pad_v.reshape(u_n, width)
    pad_c = pad_c.reshape(u_n, width)
    pick = np.argpartition(pad_v, width - k, axis=1)[:, width - k :] if width > k else np.arange(k)[None, :]
    lists = np.take_along_axis(pad_c, np.broadcast_to(pick, (u_n, k)), 1)
    vals = np.take_along_axis(pad_v, np.broadcast_to(pick, (u_n, k)), 1)
    if big.size:
        lists[big], vals[big], _ = top_lists(value, np.zeros(f_n), big, k)
    return value, (lists, vals, vals.min(axis=1, initial=np.inf))


# ------------------------------------------------------------------------------- stage 1


@dataclass
class AuctionResult:
    """State of the bounded-list auction (U users, F channels, K list size).

    prices: float64 [F]; assign: int64 [U] channel index, FREE or OUT; owner: int64 [F] user
    index or -1; lists: int64 [U, K] candidate channels; list_value: float64 [U, K] their
    values; bound: float64 [U] >= max over channels off the list of ``value − prices``.
    ``complete`` is False when ``stop`` cut the auction before it reached ``stop_free``.
    """

    prices: np.ndarray
    assign: np.ndarray
    owner: np.ndarray
    lists: np.ndarray
    list_value: np.ndarray
    bound: np.ndarray
    eps: float = 0.0
    max_value: float = 0.0
    rounds: int = 0
    bids: int = 0
    refreshes: int = 0
    complete: bool = True


def top_lists(
    value: np.ndarray, prices: np.ndarray, rows: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` best channels by reduced value ``value − prices`` and a bound on the rest.

    value: float64 [U, F]; prices: float64 [F]; rows: int64 [B] (None = all rows).
    Returns (lists int64 [B, k], list values float64 [B, k], bound float64 [B]) where bound is
    the ``k``-th best reduced value (>= every reduced value off the list). Runs over row blocks.
    """
    n_rows = value.shape[0] if rows is None else rows.size
    f = value.shape[1]
    lists = np.empty((n_rows, k), np.int64)
    vals = np.empty((n_rows, k))
    bound = np.empty(n_rows)
    step = max(1, _CHUNK_ELEMS // f)
    for s in range(0, n_rows, step):
        blk = value[s : s + step] if rows is None else value[rows[s : s + step]]  # [b, F]
        red = blk - prices
        part = np.argpartition(red, f - k, axis=1)[:, f - k :]  # [b, k] the k largest
        lists[s : s + step] = part
        vals[s : s + step] = np.take_along_axis(blk, part, 1)
        bound[s : s + step] = np.take_along_axis(red, part, 1).min(axis=1)
    return lists, vals, bound


def auction_prices(
    value: np.ndarray,
    eps_rel: float,
    *,
    list_size: int = 32,
    stop_free: int = 0,
    stop: Callable[[], bool] | None = None,
    lists: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    max_rounds: int | None = None,
    start_prices: np.ndarray | None = None,
) -> AuctionResult:
    """Forward Jacobi auction with outside option 0 (maximisation), bounded candidate lists.

    value: float64 [U, F] >= 0 (only its shape is read when no list is ever rebuilt, as with a
    bound of ``-inf``); the bid increment is ``eps = eps_rel · max(value)``. Every
    round each FREE user finds its best reduced value ``w1`` (channel ``j``) and second best
    ``w2`` (>= 0, the outside option; >= the list bound), bids ``price[j] + w1 − w2 + eps`` or takes the outside
    option when ``w1 <= 0``; each channel goes to its highest bid (ties: lower user index).
    ε-complementary slackness holds for every assigned user throughout, so a complete run is
    within ``U·eps`` of the optimum. Stops when at most ``stop_free`` users are FREE, or when
    ``stop()`` returns True (checked once per round) or after ``max_rounds`` rounds (both leave
    ``complete`` False). ``lists``: the result of ``top_lists(value, zeros, None, list_size)``
    when the caller computed it already (its width is then the list size; it is updated in place
    when a list is rebuilt). A bound of ``-inf`` never rebuilds a list: users bid from their lists
    only and take the outside option once nothing on the list is worth its price (the coarse
    stage's cheap variant). ``start_prices``: float64 [F] >= 0 to start from (default 0), e.g.
    an estimate of the final prices (``market_prices``); any start >= 0 keeps the lists'
    bounds valid, since prices only rise.
    """
    u_n, f_n = value.shape
    k = min(list_size, f_n) if lists is None else lists[0].shape[1]
    prices = np.zeros(f_n) if start_prices is None else np.maximum(start_prices, 0.0)
    cand, list_value, bound = top_lists(value, prices, None, k) if lists is None else lists  # cand: int64 [U, K]
    if k == f_n:
        bound[:] = -np.inf  # the lists hold every channel
    vmax = float(list_value.max(initial=0.0))  # the lists hold each row's maximum
    eps = eps_rel * vmax if vmax > 0 else 1.0  # all values 0: any increment ends the auction at once
    res = AuctionResult(
        prices, np.full(u_n, FREE, np.int64), np.full(f_n, -1, np.int64), cand, list_value, bound, eps, vmax
    )
    assign, owner = res.assign, res.owner
    free = np.arange(u_n)
    while free.size > stop_free:
        if (stop is not None and stop()) or (max_rounds is not None and res.rounds >= max_rounds):
            res.complete = False
            break
        res.rounds += 1
        lf = cand[free]  # [B, K]
        w = list_value[free] - prices[lf]  # [B, K] reduced values
        ar = np.arange(free.size)
        k1 = w.argmax(axis=1)
        w1 = w[ar, k1]
        w[ar, k1] = -np.inf
        b = bound[free]
        w2 = np.maximum(np.maximum(w.max(axis=1), b), 0.0)
        stale = w1 < b  # the list no longer proves that its best is the best channel
        if stale.any():
            rs = free[stale]
            res.refreshes += rs.size
            cand[rs], list_value[rs], bound[rs] = top_lists(value, prices, rs, k)
            keep = ~stale
            free, lf, k1, w1, w2, ar = free[keep], lf[keep], k1[keep], w1[keep], w2[keep], ar[: int(keep.sum())]
        out = w1 <= 0.0
        if out.any():
            assign[free[out]] = OUT
            keep = ~out
            free, lf, k1, w1, w2, ar = free[keep], lf[keep], k1[keep], w1[keep], w2[keep], ar[: int(keep.sum())]
        if free.size:
            obj = lf[ar, k1]
            bid = prices[obj] + (w1 - w2) + eps
            res.bids += free.size
            order = np.lexsort((-bid, obj))  # by channel, highest bid first (stable: lower user)
            o = obj[order]
            first = np.ones(o.size, bool)
            first[1:] = o[1:] != o[:-1]
            win = order[first]
            won, winner = obj[win], free[win]
            prev = owner[won]
            assign[prev[prev >= 0]] = FREE
            owner[won] = winner
            assign[winner] = won
            prices[won] = bid[win]
        free = np.flatnonzero(assign == FREE)
    return res


def fill_in_order(assign: np.ndarray, num_channels: int) -> np.ndarray:
    """Channel-of-user int64 [U] (-1 = none) from a partial matching: users without a channel
    (FREE or OUT) take the unused channels in index order. O(U + F): the last resort when no
    time is left for anything better."""
    out = np.where(assign >= 0, assign, -1)
    used = np.zeros(num_channels, bool)
    used[out[out >= 0]] = True
    idle_users = np.flatnonzero(out < 0)
    idle_ch = np.flatnonzero(~used)
    m = min(idle_users.size, idle_ch.size)
    out[idle_users[:m]] = idle_ch[:m]
    return out


# ------------------------------------------------------------------------------- stage 2


def candidate_pairs(
    value: np.ndarray, auc: AuctionResult, slack: float, *, extra: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse candidate graph from auction prices: (users int64 [E], channels int64 [E]), unique.

    * every pair whose reduced value is within ``slack`` of the user's best: from the user's
      list, or from its dense row when the list's bound cannot exclude the channels off it;
    * the auction's own pairs;
    * completion pairs that make a full matching of the smaller side exist: each user without
      a channel to its ``m`` best unused channels (U <= F), or each unused channel to its ``m``
      best users without one (U > F), ``m`` = the number of unmatched on the smaller side + ``extra``
      (Hall's condition then holds for the unmatched ones).
    value: float64 [U, F].
    """
    u_n, f_n = value.shape
    prices = auc.prices
    red = auc.list_value - prices[auc.lists]  # [U, K]
    best = np.maximum(red.max(axis=1), 0.0)
    risky = auc.bound >= best - slack  # [U] the list cannot prove it holds every candidate
    mask = (red >= (best - slack)[:, None]) & ~risky[:, None]  # [U, K]
    rows = [np.repeat(np.arange(u_n), mask.sum(axis=1)), np.flatnonzero(auc.assign >= 0)]
    cols = [auc.lists[mask], auc.assign[auc.assign >= 0]]
    risky_rows = np.flatnonzero(risky)
    step = max(1, _CHUNK_ELEMS // f_n)
    for s in range(0, risky_rows.size, step):  # their candidates straight from the dense rows
        blk = risky_rows[s : s + step]
        r_red = value[blk] - prices  # [b, F]
        r_best = np.maximum(r_red.max(axis=1), 0.0)
        i, j = np.nonzero(r_red >= (r_best - slack)[:, None])
        rows.append(blk[i])
        cols.append(j)
    idle_u = np.flatnonzero(auc.assign < 0)
    idle_c = np.flatnonzero(auc.owner < 0)
    if idle_u.size and idle_c.size:
        sub = value[idle_u][:, idle_c]  # [a, b]
        if u_n <= f_n:  # every user must be matched: idle users -> their best idle channels
            m = min(idle_c.size, idle_u.size + extra)
            top = np.argpartition(sub, idle_c.size - m, axis=1)[:, idle_c.size - m :]  # [a, m]
            rows.append(np.repeat(idle_u, m))
            cols.append(idle_c[top].ravel())
        else:  # every channel must be matched: idle channels -> their best idle users
            m = min(idle_u.size, idle_c.size + extra)
            top = np.argpartition(sub, idle_u.size - m, axis=0)[idle_u.size - m :]  # [m, b]
            rows.append(idle_u[top].ravel())
            cols.append(np.tile(idle_c, m))
    key = np.unique(np.concatenate(rows) * f_n + np.concatenate(cols))
    return key // f_n, key % f_n


def sparse_max_matching(value: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Maximum-value matching restricted to the pairs (rows [E], cols [E]) that covers the smaller
    side of value [U, F], or None if the pairs admit no such matching.

    Costs ``(max + 1) − value`` are positive, and with values >= 0 a maximum-value matching that
    covers the smaller side exists, so LAPJVsp's minimum-cost full matching maximises the value.
    Returns channel-of-user int64 [U] (-1 = none).
    """
    u_n, f_n = value.shape
    v = value[rows, cols]
    cost = (float(v.max(initial=0.0)) + 1.0) - v
    match = np.full(u_n, -1, np.int64)
    try:
        if u_n <= f_n:
            r, c = min_weight_full_bipartite_matching(csr_array((cost, (rows, cols)), shape=(u_n, f_n)))
            match[r] = c
        else:
            c, r = min_weight_full_bipartite_matching(csr_array((cost, (cols, rows)), shape=(f_n, u_n)))
            match[r] = c
    except ValueError:  # no full matching on these pairs
        return None
    return match


# ------------------------------------------------------------------------------- stage 3


def _settle(
    p: np.ndarray, src: np.ndarray, w: np.ndarray, dst: np.ndarray, *, upward: bool, tol: float, max_iter: int
) -> bool:
    """Bellman–Ford rounds on difference constraints, in place: ``p[dst] >= p[src] + w``
    (``upward``: raise p to the least solution above it) or ``p[dst] <= p[src] + w`` (lower p to
    the greatest solution below it). Edges sorted by dst. Returns False if not settled."""
    if not dst.size:
        return True
    starts = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
    heads = dst[starts]
    reduce = np.maximum.reduceat if upward else np.minimum.reduceat
    for _ in range(max_iter):
        best = reduce(p[src] + w, starts)
        upd = best > p[heads] + tol if upward else best < p[heads] - tol
        if not upd.any():
            return True
        p[heads[upd]] = best[upd]
    return False


def matching_prices(
    value: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    match: np.ndarray,
    *,
    tol: float,
    max_iter: int,
    start: np.ndarray | None = None,
) -> np.ndarray | None:
    """Channel prices p [F] that prove ``match`` optimal on the pairs (rows, cols), near ``start``.

    ``match`` covers the smaller side of value [U, F] (as ``sparse_max_matching`` returns it).
    LP duality, with surplus ``s_u = value[u, m(u)] − p[m(u)]`` and ``s_u + p_c >= value[u, c]``
    on every pair: when U <= F every user is matched (s_u free) and ``p_c >= 0``, ``p_c = 0`` on
    unused channels; when U > F every channel is matched (p_c free) and ``s_u >= 0``,
    ``s_u = 0`` for users without a channel. These are difference constraints
    ``p_c − p[m(u)] >= value[u, c] − value[u, m(u)]`` (``p_c >= value[u, c]`` without a channel,
    ``p[m(u)] <= value[u, m(u)]`` for ``s_u >= 0``); their solutions form a lattice. Bellman–Ford
    rounds find the greatest solution, then the least one above ``min(start, greatest)`` (start:
    e.g. the auction's prices), which stays close to ``start`` so that the dense check passes.
    Returns None when there is no solution (``match`` is not optimal on the pairs) or the rounds
    do not settle within ``max_iter``.
    """
    u_n, f_n = value.shape
    users_side = u_n <= f_n  # the matching covers every user (else: every channel)
    used = np.zeros(f_n, bool)
    has = np.flatnonzero(match >= 0)
    used[match[has]] = True
    mu = match[rows]
    keep = cols != mu
    r, c, mu = rows[keep], cols[keep], mu[keep]
    matched = mu >= 0
    own = value[r, np.where(matched, mu, 0)]
    w = value[r, c] - np.where(matched, own, 0.0)  # p_c >= p[src] + w, src = m(u) or the 0 node
    src = np.where(matched, mu, f_n)
    # greatest solution: p[m(u)] <= p_c − w over matched users' pairs, below the caps
    p_hi = np.full(f_n + 1, np.inf)
    p_hi[f_n] = 0.0
    p_hi[:f_n][~used] = 0.0
    if not users_side:
        p_hi[match[has]] = value[has, match[has]]  # s_u >= 0
    order = np.argsort(mu, kind="stable")[int((~matched).sum()) :]  # matched users' pairs by m(u)
    if not _settle(p_hi, c[order], -w[order], mu[order], upward=False, tol=tol, max_iter=max_iter):
        return None
    if users_side and (p_hi[:f_n] < -tol).any():  # p >= 0 cannot hold
        return None
    # least solution above min(start, greatest)
    p = np.zeros(f_n + 1)
    base = np.zeros(f_n) if start is None else start
    p[:f_n] = np.where(used, np.minimum(np.maximum(base, 0.0) if users_side else base, p_hi[:f_n]), 0.0)
    order = np.argsort(c, kind="stable")
    if not _settle(p, src[order], w[order], c[order], upward=True, tol=tol, max_iter=max_iter):
        return None
    if (p > p_hi + tol).any():  # a lower bound crosses an upper bound: no solution
        return None
    return p[:f_n]


def dual_check(value: np.ndarray, prices: np.ndarray, match: np.ndarray, tol: float) -> tuple[np.ndarray, float]:
    """Check prices [F] against every pair of value [U, F] (one dense pass, row blocks).

    A user violates complementary slackness when some channel's reduced value exceeds its
    surplus ``value[u, m(u)] − p[m(u)]`` (0 without a channel) by more than ``tol``. Returns
    (violating users int64 [V], upper bound on the optimum): ``Σ_c p_c + Σ_u max_c (value − p)``
    when U <= F (prices >= 0, every user matched), with each user's term floored at 0 when U > F.
    """
    u_n, f_n = value.shape
    has = match >= 0
    surplus = np.zeros(u_n)
    idx = np.flatnonzero(has)
    surplus[idx] = value[idx, match[idx]] - prices[match[idx]]
    best = np.empty(u_n)
    step = max(1, _CHUNK_ELEMS // f_n)
    for s in range(0, u_n, step):
        best[s : s + step] = (value[s : s + step] - prices).max(axis=1)
    viol = np.flatnonzero(best > surplus + tol)
    per_user = best if u_n <= f_n else np.maximum(best, 0.0)
    return viol, float(prices.sum() + per_user.sum())


# ------------------------------------------------------------------------------- value and bounds


def matching_value(value: np.ndarray, match: np.ndarray) -> float:
    """Σ value of the pairs of channel-of-user ``match`` [U] (-1 = none)."""
    has = np.flatnonzero(match >= 0)
    return float(value[has, match[has]].sum())


def relative_gap(value: np.ndarray, match: np.ndarray, upper_bound: float) -> float:
    """Relative distance of ``match``'s value to an upper bound on the optimum (>= the true gap)."""
    return max(0.0, 1.0 - matching_value(value, match) / upper_bound) if upper_bound > 0 else 0.0


def list_upper_bound(auc: AuctionResult) -> float:
    """``Σ_c p_c + Σ_u max(0, best reduced value)`` from the lists and their bounds (O(U·K))."""
    red = auc.list_value - auc.prices[auc.lists]
    best = np.maximum(red.max(axis=1), auc.bound)
    return float(auc.prices.sum() + np.maximum(best, 0.0).sum())
