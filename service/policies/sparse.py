"""Large-scale spectrum assignment within a deadline (LSA ultra-dense scales, up to 2000 × 2000).

Policy ``auction`` solves the single-connectivity assignment ``max Σ value[u, c]`` over
matchings of eligible users × free channels (SPEC §1–§2) in stages, each of which leaves a
valid decision behind, so the policy is *anytime* (the kernels and their equations:
``service.auction``):

0. **Cheap starts** — ``sorted``: strongest users (rx power) on the widest channels;
   ``sampled``: each user bids for its best of ``samples`` seeded random channels (under a
   deadline only: before the lists when they are not predicted to fit with room left for these
   bids, else only when the lists run late and stop to leave that room).
1. **Lists** — the dense value matrix and every user's ``list_size`` best channels, in one
   blocked pass over the slot's utility (``dense_lists``).
2. **Coarse** (under a deadline only) — the auction with the large increment
   ``coarse_eps_rel · max(value)`` on lists it never rebuilds, for at most ``coarse_rounds``
   rounds (the clock checked every round); users left without a channel bid for their best
   free channels on their dense rows, then the sorted rule: a few per cent from the optimum,
   early. When stages 1 and 3 are predicted to fit, it runs on the exact lists of stage 1 (and
   the auction follows), unless stages 3 and 4 are predicted to fit after stage 1 anyway;
   otherwise it runs *before* stage 1 on cheaper lists read without copying the dense matrix
   (when those are predicted to fit; else on the exact lists, as before): the final
   prices are estimated from a sub-market of ``1/market_fraction`` of the users and channels
   (``market_prices``), each user lists its best channel by value minus those prices in each of
   ``coarse_list_size`` column segments (``segment_lists``), and the auction starts from the
   estimated prices; stage 1 follows if time is left. Either lists stop in time for the sampled
   bids, which run instead when they are cut.
3. **Prices** — the bounded-list forward auction with increment ``ε = eps_rel · max(value)``
   on the same lists, stopped when at most ``stop_fraction`` of the users are still unassigned.
4. **Exact on a sparse graph** — candidate pairs within ``candidate_slack · ε`` of each user's
   best reduced value (about 6 per user), solved exactly (LAPJVsp).
5. **Certificate** — channel prices that prove the matching optimal, checked on every pair;
   users that violate it get their best pairs added and stage 4 runs again
   (``max_repairs``). The prices' bound on the optimum is reported as ``gap_bound``.

Before each stage the remaining time (``PolicyContext.deadline``) is compared with the stage's
predicted cost (a moving average of what it cost per pair); the lists check the clock between
row blocks and the auctions every round. At the deadline the best decision so far is returned
(a cut auction's partial assignment is completed as the coarse one is) and
``ctx.info["anytime"]`` says where it stopped; ``ctx.info["stage"]`` names the stage that
produced the decision. Without a deadline the stages that only serve a deadline (``sampled``,
``coarse``) are skipped. Instances with at most ``dense_below`` pairs go to the dense exact
solver (faster there), as does any cap > 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from service import auction as auction_kernels
from service.assign import linear_assignment
from service.auction import (
    FREE,
    AuctionResult,
    auction_prices,
    best_free_fill,
    candidate_pairs,
    dense_lists,
    dual_check,
    list_upper_bound,
    market_prices,
    matching_prices,
    matching_value,
    relative_gap,
    sampled_bids,
    segment_lists,
    sorted_fill,
    sparse_max_matching,
    top_lists,
)
from service.cores import cores_given
from service.policies.base import Policy, PolicyContext
from service.policies.registry import register
from service.types import SlotState


class _RoundClock:
    """``stop()`` for the auctions, asked every round: True when one more round, as long as the
    longest so far (at first: ``first``), would end after ``stop_at`` (a ``perf_counter`` time).
    ``fired`` records that it did."""

    def __init__(self, stop_at: float, first: float = 0.0) -> None:
        self.stop_at = stop_at
        self.last = time.perf_counter()
        self.longest = first  # an estimate of the first round's length (the longest: every user bids)
        self.fired = False

    def __call__(self) -> bool:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        self.fired = self.fired or now + 1.5 * self.longest + 1e-4 > self.stop_at
        return self.fired


class _ListsClock:
    """``stop(share done)`` for the lists' row blocks: True when the work left, at its expected
    pace (``expected`` seconds for the whole work, ``tail`` of it per unit of row blocks spent on
    what follows the last block) — or at the pace seen so far once a quarter is done, when slower —
    would end after ``stop_at``, so that it stops early enough for what must run after it. A
    stall early on does not extrapolate: only the time it took is lost."""

    def __init__(self, stop_at: float, tail: float, expected: float) -> None:
        self.stop_at = stop_at
        self.loop = expected / (1.0 + tail)  # the row blocks
        self.post = expected - self.loop  # after the last block
        self.start = time.perf_counter()
        self.projected = 0.0  # seconds the whole work is projected to take, at the last call

    def __call__(self, done: float) -> bool:
        now = time.perf_counter()
        elapsed = now - self.start
        slow = 1.0
        if done >= 0.25 and self.loop > 0:
            slow = max(1.0, elapsed / done / self.loop)
        left = ((1.0 - done) * self.loop + self.post) * slow
        self.projected = elapsed + left
        return now + left > self.stop_at


#: seconds per list entry of an auction round in which every listed user bids (a compiled pass,
#: with its Python call: about 8 ns at 1424 users × 16 entries on 2 cores), for the coarse
#: stage's clock
_BID_S_PER_ENTRY = 1e-8
#: what the lists do after their last row block (the values gathered, the bound), relative to
#: their row blocks' time (``_ListsClock``)
_TAIL = {"segments": 0.05, "lists": 0.05}
#: first-call estimates of each stage's cost in seconds per (user, channel) pair (``fill``: per
#: pair of a leftover user and a free channel; ``market``: per pair of the whole instance, for
#: its sub-market) at 1424 × 1600 on 2 cores (``fill`` from its cost relative to ``lists`` on a
#: loaded machine); replaced by a moving average of what the instance observes. ``lists``
#: includes copying the dense matrix. The coarse stage's rounds go by ``_BID_S_PER_ENTRY``.
DEFAULT_STAGE_COST_S = {
    "sampled": 4e-8,
    "market": 1e-9,
    "segments": 1.9e-9,
    "lists": 2.5e-9,
    "fill": 2e-8,
    "auction": 3e-9,
    "match": 5e-9,
    "check": 3e-9,
}


#: the most threads the dense passes (lists, certificate) of one decision use by default: their
#: row blocks scale with the cores up to the memory bandwidth
MAX_LIST_THREADS = 4


@register("auction")
class Auction(Policy):
    """Anytime large-scale assignment: lists → coarse auction → auction prices → exact sparse
    matching → certificate.

    Parameters: ``eps_rel`` the auction increment relative to the largest value; ``list_size``
    the candidate list per user; ``stop_fraction`` of users left unassigned when the auction
    hands over to the exact sparse stage; ``candidate_slack`` the graph's width in increments;
    ``max_repairs`` how often violated pairs may be added and the graph re-solved;
    ``dense_below`` the number of pairs up to which the dense exact solver is used instead;
    ``reserve_s`` the time kept for the pipeline's check and repair before the deadline;
    ``stage_cost_s`` first estimates of the stages' cost in seconds per pair (``sampled``,
    ``market``, ``segments``, ``lists``, ``fill``, ``auction``, ``match``, ``check``;
    default ``DEFAULT_STAGE_COST_S``), refined as it runs; ``samples`` channels per user drawn
    (seeded) for the stage-0 bids; ``coarse_eps_rel``, ``coarse_rounds`` and ``coarse_list_size``
    the coarse stage's increment (relative to the largest value), its most rounds and the number
    of column segments of its cheap lists; ``market_fraction``: the sub-market that estimates the
    prices for those lists holds 1 in ``market_fraction`` of the users and of the channels;
    ``threads``: the threads of the dense passes over the matrix (the lists, the coarse lists,
    the certificate's dual check), which give the same result on any number (default: the cores
    the process is given, ``service.cores.cores_given``, at most ``MAX_LIST_THREADS``).
    """

    name = "auction"
    presets = ("spectrum",)

    def __init__(
        self,
        eps_rel: float = 1e-3,
        list_size: int = 32,
        stop_fraction: float = 0.01,
        candidate_slack: float = 6.0,
        max_repairs: int = 3,
        dense_below: int = 160_000,
        reserve_s: float = 1e-3,
        stage_cost_s: dict[str, float] | None = None,
        samples: int = 32,
        coarse_eps_rel: float = 1e-2,
        coarse_rounds: int = 30,
        coarse_list_size: int = 16,
        market_fraction: int = 16,
        threads: int | None = None,
    ) -> None:
        if not eps_rel > 0 or list_size < 2 or not 0 <= stop_fraction < 1 or candidate_slack < 1:
            raise ValueError("need eps_rel > 0, list_size >= 2, 0 <= stop_fraction < 1, candidate_slack >= 1")
        if not coarse_eps_rel > 0 or coarse_rounds < 0 or coarse_list_size < 1 or market_fraction < 1:
            raise ValueError("need coarse_eps_rel > 0, coarse_rounds >= 0, coarse_list_size >= 1, market_fraction >= 1")
        self.eps_rel, self.list_size, self.stop_fraction = eps_rel, list_size, stop_fraction
        self.candidate_slack, self.max_repairs, self.dense_below = candidate_slack, max_repairs, dense_below
        self.reserve_s, self.samples = reserve_s, samples
        self.coarse_eps_rel, self.coarse_rounds, self.coarse_list_size = coarse_eps_rel, coarse_rounds, coarse_list_size
        self.market_fraction = market_fraction
        self.threads = min(cores_given(), MAX_LIST_THREADS) if threads is None else threads
        if self.threads < 1:
            raise ValueError("need threads >= 1")
        self._cost = {**DEFAULT_STAGE_COST_S, **(stage_cost_s or {})}
        auction_kernels.warm_up()  # the compiled kernels: never timed as a stage's cost

    def _observe(self, stage: str, seconds: float, pairs: int) -> None:
        self._cost[stage] = 0.7 * self._cost[stage] + 0.3 * seconds / max(pairs, 1)

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        info = ctx.info
        if state.max_resources_per_user != 1:  # several channels per user: the exact solver
            info["stage"] = "dense_exact"
            return linear_assignment(state, state.utility)
        users = np.flatnonzero(state.user_eligible)
        res = np.flatnonzero(state.resource_available)
        if users.size * res.size <= self.dense_below:
            info["stage"] = "dense_exact"
            return linear_assignment(state, state.utility)
        # stage 0, before touching the dense matrix: strongest users on the widest channels
        strength = (
            state.utility[users, res[np.argmax(state.bandwidth_hz[res])]]
            if state.rx_power_dbm is None
            else state.rx_power_dbm[users]
        )
        width = state.bandwidth_hz[res]
        info["stage"] = "sorted"
        match = sorted_fill(np.full(users.size, FREE, np.int64), strength, width)
        pairs = users.size * res.size
        n_sampled = users.size * min(self.samples, res.size)
        lists_cost = self._predict("lists", pairs)
        coarse_here = False  # the coarse stage runs in solve(), on the exact lists
        room = 0.0
        if ctx.deadline is not None:
            left = ctx.time_left_s() - self.reserve_s
            # room for the sampled bids after the lists (the lists stop in time for them; when they
            # finish, the coarse stage's completion has that time): the exact lists and the auction
            # predicted to fit -> the exact lists, the coarse stage on them when the auction might
            # not fit after them, then the auction; else the cheaper priced lists predicted to fit ->
            # the coarse stage on them (the exact lists and the auction follow if time is left); else
            # the exact lists predicted to fit -> as in the first case; else the sampled bids
            room = self._cost["sampled"] * n_sampled  # the moving average, no margin
            auction_fits = left >= lists_cost + self._predict("auction", pairs) + room
            priced_fits = left >= (self._cost["market"] + self._cost["segments"]) * pairs + room
            coarse_here = left >= lists_cost + room and (auction_fits or not priced_fits)
            if not coarse_here:
                if priced_fits:
                    match = self._early_coarse(state, ctx, users, res, strength, width, match, room)
                else:
                    match = self._sampled(state, ctx, users, res, strength, width, match)
        if ctx.time_left_s() - self.reserve_s < lists_cost:
            info["anytime"] = f"cut by the deadline before the auction; returned the {info['stage']} decision"
        else:
            # stage 1: the dense matrix and the exact lists, in one pass over the utility (interruptible)
            t0 = time.perf_counter()
            clock = None
            if ctx.deadline is not None:
                stop_at = ctx.deadline - self.reserve_s - (room if coarse_here else 0.0)
                clock = _ListsClock(stop_at, _TAIL["lists"], self._cost["lists"] * pairs)
            built = dense_lists(
                state.utility,
                None if users.size == state.num_ue else users,
                None if res.size == state.num_res else res,
                self.list_size,
                stop=clock,
                threads=self.threads,
            )
            if built is not None:
                info.setdefault("stage_ms", {})["lists"] = (time.perf_counter() - t0) * 1e3
                self._observe("lists", time.perf_counter() - t0, pairs)
                value, lists = built  # [U, F], ([U, K], [U, K], [U])
                match = self.solve(
                    value, ctx, strength=strength, width=width, start=match, lists=lists, coarse=coarse_here
                )
            else:
                if clock is not None and clock.projected > 0:  # learn what they would have cost
                    self._observe("lists", clock.projected, pairs)
                if coarse_here:  # the lists ran late: the sampled bids in the time kept for them
                    match = self._sampled(state, ctx, users, res, strength, width, match)
                info["anytime"] = f"cut by the deadline in the lists; returned the {info['stage']} decision"
        owner = np.zeros(state.num_res, np.int64)
        has = np.flatnonzero(match >= 0)
        has = has[state.utility[users[has], res[match[has]]] > 0]  # zero-value pairs stay unused, as in km
        owner[res[match[has]]] = users[has] + 1
        return owner

    def _sampled(
        self,
        state: SlotState,
        ctx: PolicyContext,
        users: np.ndarray,
        res: np.ndarray,
        strength: np.ndarray,
        width: np.ndarray,
        match: np.ndarray,
    ) -> np.ndarray:
        """Stage 0b when it fits: bids on a few sampled channels per user (seeded), the sorted rule
        for the rest; else ``match`` unchanged."""
        m = min(self.samples, res.size)
        if ctx.time_left_s() - self.reserve_s < self._predict("sampled", users.size * m):
            return match
        t0 = time.perf_counter()
        cols = ctx.rng.integers(0, res.size, size=(users.size, m))  # [U, m]
        flat = (users * state.num_res)[:, None] + res[cols]  # one flat gather: cheaper than two index arrays
        bids = sampled_bids(cols, np.take(state.utility, flat), res.size)
        ctx.info["stage"] = "sampled"
        self._observe("sampled", time.perf_counter() - t0, users.size * m)
        return sorted_fill(bids, strength, width)

    def _early_coarse(
        self,
        state: SlotState,
        ctx: PolicyContext,
        users: np.ndarray,
        res: np.ndarray,
        strength: np.ndarray,
        width: np.ndarray,
        match: np.ndarray,
        room: float,
    ) -> np.ndarray:
        """The coarse stage on the cheap segment lists at estimated prices (no dense copy), when
        the auction is not predicted to complete; the lists stop ``room`` seconds before the
        deadline's reserve, for the sampled bids, which then run instead when they fit."""
        assert ctx.deadline is not None
        pairs = users.size * res.size
        t0 = time.perf_counter()
        # the sub-market draws from a child of the slot's generator, so that the sampled bids after
        # cut lists are those of a slot whose lists never fitted
        sub_rng = ctx.rng.spawn(1)[0]
        est = market_prices(state.utility, users, res, width, sub_rng, fraction=self.market_fraction)  # [F]
        t1 = time.perf_counter()
        ctx.info.setdefault("stage_ms", {})["market"] = (t1 - t0) * 1e3
        self._observe("market", t1 - t0, pairs)
        prices = np.full(state.num_res, np.inf)
        prices[res] = est
        clock = _ListsClock(ctx.deadline - self.reserve_s - room, _TAIL["segments"], self._cost["segments"] * pairs)
        got = segment_lists(state.utility, users, prices, self.coarse_list_size, stop=clock, threads=self.threads)
        if got is None:  # learn what they would have cost, then the sampled bids
            if clock.projected > 0:
                self._observe("segments", clock.projected, pairs)
            ctx.info["anytime"] = "cut by the deadline in the coarse lists"
            return self._sampled(state, ctx, users, res, strength, width, match)
        t2 = time.perf_counter()
        ctx.info["stage_ms"]["coarse_lists"] = (t2 - t1) * 1e3
        self._observe("segments", t2 - t1, pairs)
        pos = np.zeros(state.num_res, np.int64)  # a channel that may not be listed has the value -inf
        pos[res] = np.arange(res.size)
        chan, vals = got

        def rows_of(idx: np.ndarray) -> np.ndarray:
            return state.utility[users[idx]][:, res]

        def score(m: np.ndarray) -> float:
            has = np.flatnonzero(m >= 0)
            return float(state.utility[users[has], res[m[has]]].sum())

        return self._coarse(pos[chan], vals, res.size, rows_of, score, strength, width, match, ctx, start=est)

    def _coarse(
        self,
        lists: np.ndarray,
        list_value: np.ndarray,
        f_n: int,
        rows_of: Callable[[np.ndarray], np.ndarray],
        score: Callable[[np.ndarray], float],
        strength: np.ndarray,
        width: np.ndarray,
        match: np.ndarray,
        ctx: PolicyContext,
        start: np.ndarray | None = None,
    ) -> np.ndarray:
        """The coarse auction (increment ``coarse_eps_rel``, lists never rebuilt, at most
        ``coarse_rounds`` rounds, the clock checked every round, prices from ``start`` [f_n] or 0)
        on lists int64 [U, K] of channels 0..f_n-1 with their values [U, K], completed; its
        matching when it scores at least ``match``'s. rows_of(idx) gives the dense value rows
        [len(idx), f_n]."""
        assert ctx.deadline is not None
        u_n = lists.shape[0]
        t0 = time.perf_counter()
        # rounds stop in time for the completion (the leftover users' bids on their lists, at most
        # a round where every user bids, and the sorted fill: about two such rounds); the first
        # round is one where every user bids
        one_round = _BID_S_PER_ENTRY * lists.size
        clock = _RoundClock(ctx.deadline - self.reserve_s - 2.0 * one_round, first=one_round)
        auc = auction_prices(
            np.broadcast_to(np.float64(0.0), (u_n, f_n)),  # only the shape is read: the lists are never rebuilt
            self.coarse_eps_rel,
            stop_free=int(self.stop_fraction * u_n),
            stop=clock,
            lists=(lists, list_value, np.full(u_n, -np.inf)),
            max_rounds=self.coarse_rounds,
            start_prices=start,
        )
        filled = self._complete(auc, rows_of, strength, width, ctx)
        t1 = time.perf_counter()
        ctx.info.setdefault("stage_ms", {})["coarse"] = (t1 - t0) * 1e3
        ctx.info["coarse_rounds"] = auc.rounds
        if score(filled) >= score(match):
            ctx.info["stage"] = "coarse"
            return filled
        return match

    def _complete(
        self,
        auc: AuctionResult,
        rows_of: Callable[[np.ndarray], np.ndarray],
        strength: np.ndarray,
        width: np.ndarray,
        ctx: PolicyContext,
    ) -> np.ndarray:
        """A full matching from an auction's (partial) assignment: users still bidding try their
        lists' free channels, those left bid for their best free channels on their dense rows
        (``rows_of``; when the time left allows), the rest take the sorted rule."""
        f_n = auc.prices.size
        partial = np.where(auc.assign >= 0, auc.assign, FREE)
        idle = np.flatnonzero(partial == FREE)
        if idle.size:
            partial[idle] = sampled_bids(auc.lists[idle], auc.list_value[idle], f_n, taken=auc.owner >= 0)
        idle = np.flatnonzero(partial < 0)
        fill_pairs = idle.size * (f_n - int(np.count_nonzero(partial >= 0)))
        if fill_pairs and ctx.time_left_s() - self.reserve_s >= self._predict("fill", fill_pairs):
            t0 = time.perf_counter()
            partial = best_free_fill(partial, rows_of(idle))
            self._observe("fill", time.perf_counter() - t0, fill_pairs)
        return sorted_fill(partial, strength, width)

    def _predict(self, stage: str, pairs: int) -> float:
        """Predicted seconds of ``stage`` on ``pairs`` (user, channel) pairs, with a safety margin."""
        return 1.5 * self._cost[stage] * pairs

    def solve(
        self,
        value: np.ndarray,
        ctx: PolicyContext,
        *,
        strength: np.ndarray | None = None,
        width: np.ndarray | None = None,
        start: np.ndarray | None = None,
        lists: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        coarse: bool | None = None,
    ) -> np.ndarray:
        """Channel-of-user int64 [U] (-1 = none) for value [U, F] >= 0; notes go to ``ctx.info``.

        strength [U] / width [F] order the O(n log n) completion of partial matchings (default:
        each user's value on channel 0 / uniform); ``start``: the best full matching found so far
        (its stage named in ``ctx.info["stage"]``; default: the sorted one); ``lists``: the
        users' top lists at zero prices (``dense_lists``), built here when not given; ``coarse``:
        False never runs the coarse stage on them first (default: under a deadline, when the
        auction and the exact stage are not predicted to fit after it anyway)."""
        info = ctx.info
        u_n, f_n = value.shape
        pairs = u_n * f_n
        stages: dict[str, float] = info.setdefault("stage_ms", {})
        strength = value[:, 0] if strength is None else strength
        width = np.zeros(f_n) if width is None else width

        def left() -> float:
            return ctx.time_left_s() - self.reserve_s

        def cut(before: str, match: np.ndarray) -> np.ndarray:
            info["anytime"] = f"cut by the deadline before {before}; returned the {info['stage']} decision"
            return match

        def rows_of(idx: np.ndarray) -> np.ndarray:
            return value[idx]

        def score(m: np.ndarray) -> float:
            return matching_value(value, m)

        if start is None:
            info["stage"] = "sorted"
            start = sorted_fill(np.full(u_n, FREE, np.int64), strength, width)
        match = start
        if lists is None:
            if left() < self._predict("lists", pairs):
                return cut("the auction", match)
            t0 = time.perf_counter()
            built = dense_lists(value, None, None, self.list_size, threads=self.threads)
            assert built is not None  # no stop: always built
            lists = built[1]
            stages["lists"] = (time.perf_counter() - t0) * 1e3
            self._observe("lists", time.perf_counter() - t0, pairs)

        # stage 2 (under a deadline): the coarse auction on the lists, unless the auction and the
        # exact stage are predicted to fit after them anyway
        after = self._predict("auction", pairs) + self._predict("match", pairs)
        if ctx.deadline is not None and coarse is not False and 0 < left() < after:
            match = self._coarse(lists[0], lists[1], f_n, rows_of, score, strength, width, match, ctx)
        if ctx.deadline is not None and left() < 0.5 * self._predict("auction", pairs):
            return cut("the auction", match)  # hopeless: it would be cut long before its end

        # stage 3: prices
        ta = time.perf_counter()
        stop = None if ctx.deadline is None else _RoundClock(ctx.deadline - self.reserve_s)
        auc = auction_prices(value, self.eps_rel, stop_free=int(self.stop_fraction * u_n), stop=stop, lists=lists)
        t1 = time.perf_counter()
        stages["auction"] = (t1 - ta) * 1e3
        info["auction_rounds"] = auc.rounds
        filled = self._complete(auc, rows_of, strength, width, ctx)
        if matching_value(value, filled) >= matching_value(value, match):  # a cut one may be worse
            match = filled
            info["stage"] = "auction"
        if not auc.complete:
            return cut("the auction finished", match)
        self._observe("auction", t1 - ta, pairs)
        ub = list_upper_bound(auc)

        # stage 4: exact on the candidate graph
        if left() < self._predict("match", pairs):
            info["gap_bound"] = relative_gap(value, match, ub)
            return cut("the sparse exact stage", match)
        rows, cols = candidate_pairs(value, auc, self.candidate_slack * auc.eps)
        m2 = sparse_max_matching(value, rows, cols)
        t2 = time.perf_counter()
        stages["sparse_exact"] = (t2 - t1) * 1e3
        self._observe("match", t2 - t1, pairs)
        info["candidate_pairs_per_user"] = round(rows.size / max(u_n, 1), 2)
        if m2 is not None and matching_value(value, m2) >= matching_value(value, match):
            match = m2
            info["stage"] = "sparse_exact"

        # stage 5: certificate, and repair of the graph where it fails
        tol = 1e-9 * auc.max_value + 1e-12
        certified = False
        prices: np.ndarray | None = auc.prices
        for rep in range(self.max_repairs + 1):
            if left() < self._predict("check", pairs):
                info["gap_bound"] = relative_gap(value, match, ub)
                return cut("the optimality certificate", match)
            t3 = time.perf_counter()
            prices = matching_prices(value, rows, cols, match, tol=tol, max_iter=min(u_n + f_n, 500), start=prices)
            if prices is None:
                break
            viol, ub_p = dual_check(value, prices, match, tol, threads=self.threads)
            t4 = time.perf_counter()
            stages["certificate"] = stages.get("certificate", 0.0) + (t4 - t3) * 1e3
            self._observe("check", t4 - t3, pairs)
            ub = min(ub, ub_p)
            if viol.size == 0:
                certified = True
                break
            if rep == self.max_repairs or left() < self._predict("match", pairs):
                break
            cand, _, _ = top_lists(value, prices, viol, min(8, f_n))  # [V, k] channels for the violators
            key = np.unique(np.r_[rows * f_n + cols, np.repeat(viol, cand.shape[1]) * f_n + cand.ravel()])
            rows, cols = key // f_n, key % f_n
            m3 = sparse_max_matching(value, rows, cols)
            if m3 is None:
                break
            match = m3
            info["repairs"] = rep + 1
        info["certified_optimal"] = certified
        if certified:
            info["stage"] = "certified_optimal"
        info["gap_bound"] = 0.0 if certified else relative_gap(value, match, ub)
        info["anytime"] = "complete"
        return match
