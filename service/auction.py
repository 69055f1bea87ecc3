"""Auction kernels of the large-scale spectrum assignment (numpy / scipy, numba kernels; no I/O).

All work on a value matrix float64 [U, F] >= 0 (eligible users × free channels) and solve the
single-connectivity assignment ``max Σ value[u, c]`` over matchings (SPEC §1–§2); a matching is
channel-of-user int64 [U] (-1 or ``FREE`` / ``OUT`` = none). The policy ``auction``
(``service.policies.sparse``) runs them as stages, each leaving a valid decision behind:

0. **Cheap starts** — ``sorted_fill``: strongest users on the widest channels, the optimum
   without fading, O(n log n); ``sampled_bids``: each user bids for its best of a few
   candidate channels, a few compiled rounds, O(U·m).
   **Lists** — ``dense_lists``: the dense value matrix copied out of the slot's utility in row
   blocks, each row's exact top-k list found while it is in cache (one compiled pass: a
   threshold from strided group maxima, then an exact selection among the few entries above
   it); ``top_lists`` the same on reduced values, for the rows it is given.
   **Coarse** — ``market_prices``: the final prices estimated from a small sub-market (a random
   ``1/16`` of the users and of the channels), fitted on the channels' bandwidth and mean value;
   ``segment_lists``: each user's best channel by value minus those prices in each of ``k``
   column segments (one compiled pass over the rows, no dense copy); ``auction_prices`` with a
   large ``ε`` from the estimated prices on those (or the exact) lists and no list refresh (a
   few rounds, O(U·k) each), completed by ``best_free_fill`` (leftover users bid for their best
   free channels on their dense rows): within a few per cent of the optimum, early.
1. **Prices** — ``auction_prices``: a forward Jacobi auction (Bertsekas) with increment ``ε``,
   every unassigned user bidding at once (each round one compiled pass), each user holding the
   outside option "no channel" worth 0. A user bids from a list of its best channels by
   *reduced* value ``value − price`` (``top_lists``), with an upper bound on everything off the
   list; prices only rise, so the bound stays valid and the list is rebuilt from the dense row
   only when it no longer proves the best bid. Sparsifying by raw value fails here because
   path loss makes the strongest users best on every channel; reduced value does not.
2. **Exact on a sparse graph** — ``candidate_pairs``: pairs within a slack of each user's best
   reduced value, the auction's pairs and enough completion pairs for a full matching;
   ``sparse_max_matching`` solves it exactly with
   ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp).
3. **Certificate** — ``matching_prices``: channel prices that prove the matching optimal on the
   graph (difference constraints of LP duality, Bellman–Ford, kept close to the auction's
   prices); ``dual_check`` tests them on every pair (complementary slackness). Any prices give
   the bound ``OPT ≤ Σ_c p_c + Σ_u max(0, max_c value[u, c] − p_c)``.

The interruptible dense passes (the lists) run over row blocks of about 65536 entries and ask
their clock between blocks; the others are one compiled call over every row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from service.jit import kernel

FREE = -1  # user still bidding
OUT = -2  # user took the outside option (no channel is worth its price)
_CHUNK_ELEMS = 1 << 16  # the lists run over row blocks of about this many entries (a clock check each)
MIN_MARKET_CHANNELS = 64  # market_prices: the fewest channels its sub-market prices (the fit's points)


@cache
def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels of ``sampled_bids``, ``segment_lists``,
    ``dense_lists``, ``top_lists``, ``auction_prices``, ``candidate_pairs``, ``matching_prices``
    and ``dual_check`` on tiny matrices, and run ``market_prices`` once (its first least-squares
    fit costs milliseconds), so that no decision pays for them (nor learns them as a stage's
    cost): ``ServiceCore.preload`` and the ``auction`` policy call it; once per process."""
    segment_lists(np.ones((2, 2)), np.arange(2), np.zeros(2), 1)
    market_prices(np.eye(8) + 1.0, np.arange(8), np.arange(8), np.ones(8), np.random.default_rng(0), fraction=2)
    sampled_bids(np.array([[0, 1], [1, 0]]), np.ones((2, 2)), 2)
    for rows, cols in ((None, None), (np.arange(2), None), (None, np.arange(2)), (np.arange(2), np.arange(2))):
        dense_lists(np.ones((2, 2)), rows, cols, 1)
    value = np.eye(3) + 1.0
    auc = auction_prices(value, 0.5, list_size=2)
    candidate_pairs(value, auc, 1.0)
    rows, cols = np.divmod(np.arange(9), 3)  # the complete graph: every price constraint is an edge
    prices = matching_prices(value, rows, cols, np.arange(3), tol=1e-9, max_iter=6)
    dual_check(value, np.zeros(3) if prices is None else prices, np.arange(3), 1e-9)


# ------------------------------------------------------------------------------- row blocks

_pool: ThreadPoolExecutor | None = None
_pool_threads = 0
_pool_lock = threading.Lock()


def _helpers(n: int) -> ThreadPoolExecutor:
    """The shared pool of helper threads of the row-block passes, with at least ``n`` threads."""
    global _pool, _pool_threads
    with _pool_lock:
        if _pool is None or _pool_threads < n:
            old, _pool, _pool_threads = _pool, ThreadPoolExecutor(n, thread_name_prefix="gnbsched-lists"), n
            if old is not None:
                old.shutdown(wait=False)  # its threads end once their work is done
        return _pool


def row_blocks(
    n_rows: int,
    step: int,
    run: Callable[[int, int], None],
    *,
    stop: Callable[[float], bool] | None = None,
    threads: int = 1,
) -> bool:
    """``run(s, e)`` on every row block ``[s, e)`` of ``[0, n_rows)`` (``step`` rows each), taken in
    order by up to ``threads`` threads: the caller's and ``threads − 1`` helpers. ``run`` writes the
    block's rows only (the compiled passes release the GIL), so the result does not depend on which
    thread ran a block. Before each block the caller takes, ``stop(share of the rows taken)`` may
    end the work: no block starts after it (blocks running finish). Returns False when stopped."""
    n_blocks = -(-n_rows // step) if n_rows > 0 else 0
    if n_blocks == 0:
        return True
    lock = threading.Lock()
    taken = [0]
    halt = threading.Event()

    def take() -> int:
        with lock:
            b = taken[0]
            taken[0] = b + 1
        return b

    def helper() -> None:
        while not halt.is_set():
            b = take()
            if b >= n_blocks:
                return
            run(b * step, min(n_rows, (b + 1) * step))

    helpers = max(0, min(threads, n_blocks) - 1)
    running: list[Future[None]] = [_helpers(helpers).submit(helper) for _ in range(helpers)] if helpers else []
    stopped = False
    try:
        while taken[0] < n_blocks:  # (the stop is never asked once every block is taken)
            if stop is not None and stop(taken[0] * step / n_rows):
                stopped = True
                break
            b = take()
            if b >= n_blocks:
                break
            run(b * step, min(n_rows, (b + 1) * step))
    finally:
        halt.set()  # helpers take no block after this one (all are taken, or the work stops)
        for f in running:
            # a helper still queued (the pool busy with another decision's blocks) never starts:
            # the caller does not wait for it; one that ran passes its exception on
            if not f.cancel():
                f.result()
    return not stopped


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
    if u_n and cand_cols.shape[1]:
        _bid_rounds(
            np.ascontiguousarray(cand_cols, np.int64),
            np.ascontiguousarray(cand_value, np.float64),
            match,
            taken,
            rounds,
        )
    return match


@kernel
def _bid_rounds(
    cand_cols: np.ndarray, cand_value: np.ndarray, match: np.ndarray, taken: np.ndarray, rounds: int
) -> None:  # pragma: no cover - compiled; tested through sampled_bids
    """``sampled_bids``' rounds, in place on ``match`` [U] and ``taken`` [F]: every FREE user (in
    index order) picks its first largest finite value among its untaken candidates; each channel
    goes to its highest bid (ties: the first, lower, user)."""
    u_n, m = cand_cols.shape
    best_bid = np.full(taken.size, -np.inf)
    best_user = np.full(taken.size, -1, np.int64)
    touched = np.empty(u_n, np.int64)
    for _ in range(rounds):
        n_touched = 0
        for u in range(u_n):
            if match[u] != FREE:
                continue
            b = -np.inf
            col = -1
            for j in range(m):
                c = cand_cols[u, j]
                if not taken[c] and cand_value[u, j] > b:
                    b = cand_value[u, j]
                    col = c
            if col < 0 or not b < np.inf:
                continue
            n_touched = _offer(col, b, u, best_bid, best_user, touched, n_touched)
        if n_touched == 0:
            break
        for t in range(n_touched):
            c = touched[t]
            match[best_user[c]] = c
            taken[c] = True
            best_bid[c] = -np.inf
            best_user[c] = -1


@kernel
def _offer(
    col: int, bid: float, user: int, best_bid: np.ndarray, best_user: np.ndarray, touched: np.ndarray, n_touched: int
) -> int:  # pragma: no cover - compiled; tested through sampled_bids and auction_prices
    """One bid of a round: channel ``col`` keeps its highest bid (ties: the first bidder, the
    lower user when users bid in index order); a channel's first bid appends it to ``touched``.
    Returns the new count of touched channels."""
    if best_user[col] < 0:
        touched[n_touched] = col
        best_bid[col] = bid
        best_user[col] = user
        return n_touched + 1
    if bid > best_bid[col]:
        best_bid[col] = bid
        best_user[col] = user
    return n_touched


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
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's best channel by reduced value ``source − prices`` in each of ``k`` contiguous
    column segments, in one pass over the rows without copying the dense matrix: the coarse
    stage's cheap lists.

    source: float64 [N, R] >= 0, finite; rows: int64 [U] the rows wanted; prices: float64 [R]
    (``inf`` or NaN for a channel that may not be listed). The segments are ``R // k`` columns
    wide, the last ``R mod k`` columns one more. With prices near the auction's
    (``market_prices``), the lists hold channels the users can win, not only the channels
    everyone wants. Row blocks of a cache-sized share of the matrix, each one compiled pass
    (``_segment_best``) on one of ``threads`` threads (``row_blocks``); before each,
    ``stop(share of the rows done)`` may end the work. Returns
    (channels int64 [U, S] column indices of ``source``, values float64 [U, S], ``-inf`` where a
    segment has no channel that may be listed), S = k (+1 with a remainder), or None when
    ``stop`` returned True.
    """
    source = np.ascontiguousarray(source, np.float64)  # the kernel's layout (a copy only if not C-ordered)
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

    def block(s: int, e: int) -> None:  # the compiled pass over the block's rows, in place (no dense copy)
        _segment_best(source, rows[s:e], price, seg, n_lists, lists[s:e], reduced[s:e])

    if not row_blocks(u_n, step, block, stop=stop, threads=threads):
        return None
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
    stop: Callable[[float], bool] | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The dense value matrix ``source[rows][:, cols]`` and its top-``k`` lists, in one pass.

    source: float64 [N, R] >= 0; rows: int64 [U] / cols: int64 [F] (None: all, and no copy is
    made of a C-ordered float64 ``source``).
    Returns (value float64 [U, F], (lists int64 [U, k], list values float64 [U, k], bound
    float64 [U])), the lists exactly as ``top_lists(value, zeros, None, k)`` gives them (the same
    values and bound; their order within a row, and which of tied channels, may differ), or None
    when ``stop(share of the rows done)``, asked before each row block, returned True.

    Each row block is one compiled pass (``_top_rows``) on one of ``threads`` threads
    (``row_blocks``): a row is copied (when a copy is made) and searched while in cache.
    """
    source = np.ascontiguousarray(source, np.float64)  # the kernel's layout (a copy only if not C-ordered)
    n_src, r_src = source.shape
    u_n = n_src if rows is None else rows.size
    f_n = r_src if cols is None else cols.size
    k = min(k, f_n)
    copy = rows is not None or cols is not None
    value = np.empty((u_n, f_n)) if copy else source
    row_idx = np.arange(n_src) if rows is None else np.asarray(rows, np.int64)
    col_idx = np.arange(r_src) if cols is None else np.asarray(cols, np.int64)
    if k < 1:  # nothing to list
        if copy:
            value[...] = source[row_idx][:, col_idx]
        return value, (np.empty((u_n, 0), np.int64), np.empty((u_n, 0)), np.full(u_n, np.inf))
    lists = np.empty((u_n, k), np.int64)
    vals = np.empty((u_n, k))
    step = max(1, _CHUNK_ELEMS // max(r_src, 1))

    def block(s: int, e: int) -> None:
        _top_rows(source, row_idx[s:e], col_idx, cols is not None, copy, value[s:e], lists[s:e], vals[s:e])

    if not row_blocks(u_n, step, block, stop=stop, threads=threads):
        return None
    return value, (lists, vals, vals.min(axis=1, initial=np.inf))


@kernel
def _top_rows(
    source: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    pick_cols: bool,
    copy: bool,
    value: np.ndarray,
    lists: np.ndarray,
    vals: np.ndarray,
) -> None:  # pragma: no cover - compiled; tested through dense_lists
    """``dense_lists``' row block: row i is ``source[rows[i]]`` (at the columns ``cols`` when
    ``pick_cols``), copied into ``value[i]`` when ``copy``; its ``k = lists.shape[1]`` largest
    entries (``_select_top``) go to ``lists[i]`` (column indices of the row) and ``vals[i]``."""
    f_n = cols.size
    k = lists.shape[1]
    work = _select_work(f_n, k)
    for i in range(rows.size):
        src = source[rows[i]]
        if copy:
            row = value[i]
            for j in range(f_n):
                row[j] = src[cols[j]] if pick_cols else src[j]
        else:
            row = src
        _select_top(row, lists[i], vals[i], work[0], work[1], work[2], work[3])


@kernel
def _top_reduced(
    value: np.ndarray, rows: np.ndarray, prices: np.ndarray, lists: np.ndarray, vals: np.ndarray, bound: np.ndarray
) -> None:  # pragma: no cover - compiled; tested through top_lists
    """``top_lists``: for row i (``value[rows[i]]``), the ``k = lists.shape[1]`` largest reduced
    values ``value − prices`` (``_select_top``): their columns into ``lists[i]``, their values
    (not reduced) into ``vals[i]``, the least of the reduced ones into ``bound[i]``."""
    f_n = value.shape[1]
    k = lists.shape[1]
    work = _select_work(f_n, k)
    red = np.empty(f_n)
    top = np.empty(k)
    for i in range(rows.size):
        row = value[rows[i]]
        for c in range(f_n):
            red[c] = row[c] - prices[c]
        _select_top(red, lists[i], top, work[0], work[1], work[2], work[3])
        least = np.inf
        for q in range(k):
            vals[i, q] = row[lists[i, q]]
            least = min(least, top[q])
        bound[i] = least


@kernel
def _select_work(f_n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Scratch of ``_select_top`` for rows of ``f_n`` entries and lists of ``k``: group maxima,
    the candidates' values and columns, a copy of the values."""
    cap = 4 * k
    return np.empty(max(f_n // 8, 1)), np.empty(cap), np.empty(cap, np.int64), np.empty(cap)


@kernel
def _select_top(
    row: np.ndarray,
    out_c: np.ndarray,
    out_v: np.ndarray,
    gmax: np.ndarray,
    buf_v: np.ndarray,
    buf_c: np.ndarray,
    scratch: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """The ``k = out_c.size`` largest entries of ``row`` [F] (k <= F): their columns into
    ``out_c``, their values into ``out_v``, in no particular order (among entries tied at the
    ``k``-th largest, any).

    A threshold ``t``, a value among the maxima over ``F // 8`` disjoint strided column groups
    with at least ``k`` of those maxima at or above it (``_threshold``), has at least ``k``
    entries at or above it, so the top ``k`` are among them (about ``k`` plus a few), selected
    exactly at the end. Rows with more than ``4·k`` such entries (ties, zero rows) and rows of
    fewer than ``32·k`` entries keep a min-heap of the ``k`` best instead (an entry replaces the
    least only when strictly larger)."""
    f_n = row.size
    k = out_c.size
    group = 8
    g_n = f_n // group
    cap = 4 * k
    if g_n >= 4 * k:
        for g in range(g_n):
            gmax[g] = row[g]
        for q in range(1, group):
            base = q * g_n
            for g in range(g_n):
                if row[base + g] > gmax[g]:
                    gmax[g] = row[base + g]
        t = _threshold(gmax[:g_n], k)
        n = 0
        for j in range(f_n):
            if row[j] >= t:
                if n < cap:
                    buf_v[n] = row[j]
                    buf_c[n] = j
                n += 1
        if n <= cap:
            if n > k:  # the k largest of the n: those above the k-th largest, then ties at it
                scratch[:n] = buf_v[:n]
                kth = _kth_largest(scratch[:n], k)
                q = 0
                for j in range(n):
                    if buf_v[j] > kth:
                        out_v[q] = buf_v[j]
                        out_c[q] = buf_c[j]
                        q += 1
                for j in range(n):
                    if q < k and buf_v[j] == kth:
                        out_v[q] = kth
                        out_c[q] = buf_c[j]
                        q += 1
            else:
                out_v[:] = buf_v[:k]
                out_c[:] = buf_c[:k]
            return
    for j in range(k):
        out_v[j] = row[j]
        out_c[j] = j
    for top in range(k // 2 - 1, -1, -1):
        _sift_down(out_v, out_c, top, k)
    for j in range(k, f_n):
        if row[j] > out_v[0]:
            out_v[0] = row[j]
            out_c[0] = j
            _sift_down(out_v, out_c, 0, k)


@kernel
def _threshold(x: np.ndarray, k: int) -> float:  # pragma: no cover - compiled
    """A value of ``x`` [G] (G >= k >= 1) with at least ``k`` entries of ``x`` at or above it and
    few more: the least entry of the highest histogram bins (64 over ``x``'s range) that hold
    ``k``. Cheaper than the exact ``k``-th largest, whose comparisons branch unpredictably."""
    bins = 64
    lo = x.min()
    hi = x.max()
    if not hi > lo:
        return lo
    scale = (bins - 1e-9) / (hi - lo)
    count = np.zeros(bins, np.int64)
    for g in range(x.size):
        count[int((x[g] - lo) * scale)] += 1
    b = bins - 1
    held = count[b]
    while held < k:
        b -= 1
        held += count[b]
    t = hi
    for g in range(x.size):
        if int((x[g] - lo) * scale) >= b and x[g] < t:
            t = x[g]
    return t


@kernel
def _kth_largest(a: np.ndarray, k: int) -> float:  # pragma: no cover - compiled
    """The ``k``-th largest entry of ``a`` [n] (1 <= k <= n); ``a`` is reordered (quickselect)."""
    target = a.size - k  # its index in ascending order
    lo = 0
    hi = a.size - 1
    while lo < hi:
        mid = (lo + hi) >> 1  # the median of three goes to a[hi]
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[mid] < a[hi]:
            a[mid], a[hi] = a[hi], a[mid]
        pivot = a[hi]
        i = lo
        for j in range(lo, hi):
            if a[j] < pivot:
                a[i], a[j] = a[j], a[i]
                i += 1
        a[i], a[hi] = a[hi], a[i]
        if i == target:
            return a[i]
        if i < target:
            lo = i + 1
        else:
            hi = i - 1
    return a[target]


@kernel
def _sift_down(hv: np.ndarray, hc: np.ndarray, at: int, n: int) -> None:  # pragma: no cover - compiled
    """Restore the min-heap order of ``hv[:n]`` (with its columns ``hc``) below position ``at``."""
    v, c = hv[at], hc[at]
    while True:
        child = 2 * at + 1
        if child >= n:
            break
        if child + 1 < n and hv[child + 1] < hv[child]:
            child += 1
        if hv[child] >= v:
            break
        hv[at], hc[at] = hv[child], hc[child]
        at = child
    hv[at], hc[at] = v, c


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

    value: float64 [U, F]; prices: float64 [F]; rows: int64 [B] (None = all rows); 0 <= k <= F.
    Returns (lists int64 [B, k], list values float64 [B, k] (``value``, not reduced), bound
    float64 [B]) where bound is the ``k``-th best reduced value (>= every reduced value off the
    list). One compiled pass over the rows (``_top_reduced``).
    """
    idx = np.arange(value.shape[0]) if rows is None else np.asarray(rows, np.int64)
    lists = np.empty((idx.size, k), np.int64)
    vals = np.empty((idx.size, k))
    bound = np.full(idx.size, np.inf)
    if k > 0 and idx.size:
        _top_reduced(np.ascontiguousarray(value, np.float64), idx, np.asarray(prices, np.float64), lists, vals, bound)
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
    dense = None  # value in C order for the lists' (re)builds: made once, when a list is built
    if lists is None:
        dense = np.ascontiguousarray(value, np.float64)
        lists = top_lists(dense, prices, None, k)
    cand, list_value, bound = lists  # cand: int64 [U, K]
    if k == f_n:
        bound[:] = -np.inf  # the lists hold every channel
    vmax = float(list_value.max(initial=0.0))  # the lists hold each row's maximum
    eps = eps_rel * vmax if vmax > 0 else 1.0  # all values 0: any increment ends the auction at once
    res = AuctionResult(
        prices, np.full(u_n, FREE, np.int64), np.full(f_n, -1, np.int64), cand, list_value, bound, eps, vmax
    )
    assign, owner = res.assign, res.owner
    free = np.arange(u_n)
    old_prices = np.empty(f_n)  # the prices a round started from: stale lists are rebuilt at them
    best_bid = np.full(f_n, -np.inf)  # the round's highest bid per channel (scratch, reset by the kernel)
    best_user = np.full(f_n, -1, np.int64)
    touched = np.empty(f_n, np.int64)
    stale = np.empty(u_n, np.int64)
    while free.size > stop_free:
        if (stop is not None and stop()) or (max_rounds is not None and res.rounds >= max_rounds):
            res.complete = False
            break
        res.rounds += 1
        n_stale, n_bids = _jacobi_round(
            free, cand, list_value, bound, prices, old_prices, assign, owner, eps, best_bid, best_user, touched, stale
        )
        res.bids += n_bids
        if n_stale:  # the list no longer proves that its best is the best channel: rebuilt, no bid
            rs = stale[:n_stale].copy()
            res.refreshes += rs.size
            if dense is None:
                dense = np.ascontiguousarray(value, np.float64)
            cand[rs], list_value[rs], bound[rs] = top_lists(dense, old_prices, rs, k)
        free = np.flatnonzero(assign == FREE)
    return res


@kernel
def _jacobi_round(
    free: np.ndarray,
    cand: np.ndarray,
    list_value: np.ndarray,
    bound: np.ndarray,
    prices: np.ndarray,
    old_prices: np.ndarray,
    assign: np.ndarray,
    owner: np.ndarray,
    eps: float,
    best_bid: np.ndarray,
    best_user: np.ndarray,
    touched: np.ndarray,
    stale: np.ndarray,
) -> tuple[int, int]:  # pragma: no cover - compiled; tested through auction_prices
    """One round of ``auction_prices`` over the FREE users ``free`` (ascending), in place.

    Each user's best reduced value ``w1`` on its list (the first of the largest) and second best
    ``w2 = max(next best, bound, 0)``; a stale list (``w1 < bound``) goes to ``stale`` and bids
    nothing; ``w1 <= 0`` takes the outside option (OUT); the others bid
    ``price + (w1 − w2) + eps`` for their best channel. Each channel goes to its highest bid (ties:
    the lower user), its previous owner becomes FREE and its price the bid. ``old_prices`` gets
    the prices the round started from. Returns (stale users written to ``stale``, bids made).
    Scratch: ``best_bid`` all ``-inf`` and ``best_user`` on entry and on return; ``touched`` [F]."""
    old_prices[:] = prices
    k = cand.shape[1]
    n_stale = 0
    n_bids = 0
    n_touched = 0
    for i in range(free.size):
        u = free[i]
        k1 = 0
        w1 = list_value[u, 0] - prices[cand[u, 0]]
        second = -np.inf
        for j in range(1, k):
            w = list_value[u, j] - prices[cand[u, j]]
            if w > w1:
                second = max(second, w1)
                k1, w1 = j, w
            else:
                second = max(second, w)
        b = bound[u]
        if w1 < b:
            stale[n_stale] = u
            n_stale += 1
            continue
        if w1 <= 0.0:
            assign[u] = OUT
            continue
        w2 = max(max(second, b), 0.0)
        obj = cand[u, k1]
        n_bids += 1
        n_touched = _offer(obj, prices[obj] + (w1 - w2) + eps, u, best_bid, best_user, touched, n_touched)
    for t in range(n_touched):
        c = touched[t]
        prev = owner[c]
        if prev >= 0:
            assign[prev] = FREE
        winner = best_user[c]
        owner[c] = winner
        assign[winner] = c
        prices[c] = best_bid[c]
        best_bid[c] = -np.inf
        best_user[c] = -1
    return n_stale, n_bids


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
    if risky_rows.size:  # their candidates straight from the dense rows
        r_cols = np.empty(risky_rows.size * f_n, np.int64)
        r_count = _near_best(np.ascontiguousarray(value, np.float64), risky_rows, prices, slack, r_cols)
        rows.append(np.repeat(risky_rows, r_count))
        cols.append(r_cols[: int(r_count.sum())])
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


@kernel
def _near_best(
    value: np.ndarray, rows: np.ndarray, prices: np.ndarray, slack: float, out: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled; tested through candidate_pairs
    """For each row u of ``rows`` [B], the columns c (ascending) with reduced value
    ``value[u, c] − prices[c] >= max(0, max_c(value[u, c] − prices[c])) − slack``, written one row
    after another into ``out``; returns their count per row, int64 [B]."""
    f_n = value.shape[1]
    count = np.zeros(rows.size, np.int64)
    n = 0
    for i in range(rows.size):
        row = value[rows[i]]
        best = 0.0
        for c in range(f_n):
            red = row[c] - prices[c]
            if red > best:
                best = red
        floor = best - slack
        first = n
        for c in range(f_n):
            if row[c] - prices[c] >= floor:
                out[n] = c
                n += 1
        count[i] = n - first
    return count


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
    return _settle_rounds(p, src, w, starts, dst[starts], upward, tol, max_iter)


@kernel
def _settle_rounds(
    p: np.ndarray,
    src: np.ndarray,
    w: np.ndarray,
    starts: np.ndarray,
    heads: np.ndarray,
    upward: bool,
    tol: float,
    max_iter: int,
) -> bool:  # pragma: no cover - compiled; tested through matching_prices
    """``_settle``'s rounds: the edges of head ``heads[g]`` are ``starts[g]`` up to the next start.
    Each round takes every head's best ``p[src] + w`` at the round's start prices (max upward,
    min downward), then moves the heads it improves by more than ``tol``."""
    g_n = heads.size
    e_n = src.size
    best = np.empty(g_n)
    for _ in range(max_iter):
        for g in range(g_n):
            hi = e_n if g == g_n - 1 else starts[g + 1]
            b = p[src[starts[g]]] + w[starts[g]]
            for e in range(starts[g] + 1, hi):
                x = p[src[e]] + w[e]
                if (x > b) if upward else (x < b):
                    b = x
            best[g] = b
        moved = False
        for g in range(g_n):
            if (best[g] > p[heads[g]] + tol) if upward else (best[g] < p[heads[g]] - tol):
                p[heads[g]] = best[g]
                moved = True
        if not moved:
            return True
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


def dual_check(
    value: np.ndarray, prices: np.ndarray, match: np.ndarray, tol: float, *, threads: int = 1
) -> tuple[np.ndarray, float]:
    """Check prices [F] against every pair of value [U, F] (one compiled dense pass, in row blocks
    on ``threads`` threads: ``row_blocks``).

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
    dense = np.ascontiguousarray(value, np.float64)
    price = np.asarray(prices, np.float64)
    best = np.empty(u_n)

    def block(s: int, e: int) -> None:
        _best_reduced(dense[s:e], price, best[s:e])

    row_blocks(u_n, max(1, _CHUNK_ELEMS // max(f_n, 1)), block, threads=threads)
    viol = np.flatnonzero(best > surplus + tol)
    per_user = best if u_n <= f_n else np.maximum(best, 0.0)
    return viol, float(prices.sum() + per_user.sum())


@kernel
def _best_reduced(value: np.ndarray, prices: np.ndarray, best: np.ndarray) -> None:  # pragma: no cover - compiled
    """Each row's largest reduced value ``max_c(value[u, c] − prices[c])`` into ``best`` float64
    [U] (-inf without columns)."""
    for u in range(value.shape[0]):
        row = value[u]
        b = -np.inf
        for c in range(value.shape[1]):
            x = row[c] - prices[c]
            if x > b:
                b = x
        best[u] = b


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
