"""Large-scale spectrum assignment within a deadline (LSA ultra-dense scales, up to 2000 × 2000).

Policy ``auction`` solves the single-connectivity assignment ``max Σ value[u, c]`` over
matchings of eligible users × free channels (SPEC §1–§2) in stages, each of which leaves a
valid decision behind, so the policy is *anytime* (the kernels and their equations:
``service.auction``):

0. **Cheap starts** — ``sorted``: strongest users (rx power) on the widest channels;
   ``sampled``: each user bids for its best of ``samples`` seeded random channels.
1. **Prices** — the bounded-list forward auction with increment ``ε = eps_rel · max(value)``
   and lists of ``list_size`` channels, stopped when at most ``stop_fraction`` of the users are
   still unassigned.
2. **Exact on a sparse graph** — candidate pairs within ``candidate_slack · ε`` of each user's
   best reduced value (about 6 per user), solved exactly (LAPJVsp).
3. **Certificate** — channel prices that prove the matching optimal, checked on every pair;
   users that violate it get their best pairs added and stage 2 runs again
   (``max_repairs``). The prices' bound on the optimum is reported as ``gap_bound``.

Before each stage the remaining time (``PolicyContext.deadline``) is compared with the stage's
predicted cost (a moving average of what it cost per pair); the auction also checks the clock
every round. At the deadline the best decision so far is returned (the auction's partial
assignment is completed by the sorted rule) and ``ctx.info["anytime"]`` says where it
stopped; ``ctx.info["stage"]`` names the stage that produced the decision. Instances with at
most ``dense_below`` pairs go to the dense exact solver (faster there), as does any cap > 1.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.assign import linear_assignment
from service.auction import (
    FREE,
    auction_prices,
    candidate_pairs,
    dual_check,
    list_upper_bound,
    matching_prices,
    matching_value,
    relative_gap,
    sampled_bids,
    sorted_fill,
    sparse_max_matching,
    top_lists,
)
from service.policies.base import Policy, PolicyContext
from service.policies.registry import register
from service.types import SlotState


class _RoundClock:
    """``stop()`` for the auction: True when one more round, as long as the longest so far,
    would end after ``stop_at`` (a ``perf_counter`` time)."""

    def __init__(self, stop_at: float) -> None:
        self.stop_at = stop_at
        self.last = time.perf_counter()
        self.longest = 0.0

    def __call__(self) -> bool:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        return now + 1.5 * self.longest + 1e-4 > self.stop_at


#: first-call estimates of each stage's cost in seconds per (user, channel) pair, measured on
#: 2 cores at 1424 × 1600; replaced by a moving average of what the instance observes
DEFAULT_STAGE_COST_S = {"sampled": 5e-8, "lists": 3e-9, "auction": 8e-9, "match": 5e-9, "check": 3e-9}


@register("auction")
class Auction(Policy):
    """Anytime large-scale assignment: auction prices → exact sparse matching → certificate.

    Parameters: ``eps_rel`` the auction increment relative to the largest value; ``list_size``
    the candidate list per user; ``stop_fraction`` of users left unassigned when the auction
    hands over to the exact sparse stage; ``candidate_slack`` the graph's width in increments;
    ``max_repairs`` how often violated pairs may be added and the graph re-solved;
    ``dense_below`` the number of pairs up to which the dense exact solver is used instead;
    ``reserve_s`` the time kept for the pipeline's check and repair before the deadline;
    ``stage_cost_s`` first estimates of the stages' cost in seconds per pair (``sampled``,
    ``lists``, ``auction``, ``match``, ``check``; default ``DEFAULT_STAGE_COST_S``), refined as it
    runs; ``samples`` channels per user drawn (seeded) for the stage-0 bids.
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
    ) -> None:
        if not eps_rel > 0 or list_size < 2 or not 0 <= stop_fraction < 1 or candidate_slack < 1:
            raise ValueError("need eps_rel > 0, list_size >= 2, 0 <= stop_fraction < 1, candidate_slack >= 1")
        self.eps_rel, self.list_size, self.stop_fraction = eps_rel, list_size, stop_fraction
        self.candidate_slack, self.max_repairs, self.dense_below = candidate_slack, max_repairs, dense_below
        self.reserve_s, self.samples = reserve_s, samples
        self._cost = {**DEFAULT_STAGE_COST_S, **(stage_cost_s or {})}

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
        m = min(self.samples, res.size)
        if ctx.time_left_s() - self.reserve_s >= self._predict("sampled", users.size * m):
            # stage 0b: bids on a few sampled channels per user (seeded), sorted fill for the rest
            t0 = time.perf_counter()
            cols = ctx.rng.integers(0, res.size, size=(users.size, m))  # [U, m]
            bids = sampled_bids(cols, state.utility[users[:, None], res[cols]], res.size)
            match = sorted_fill(bids, strength, width)
            info["stage"] = "sampled"
            self._observe("sampled", time.perf_counter() - t0, users.size * m)
        if ctx.time_left_s() - self.reserve_s < self._predict("lists", pairs):
            info["anytime"] = f"cut by the deadline before the auction; returned the {info['stage']} decision"
        else:
            if users.size == state.num_ue and res.size == state.num_res:
                value = state.utility  # [U, F]
            else:
                value = state.utility.take(users, axis=0).take(res, axis=1)  # [U, F]
            match = self.solve(value, ctx, strength=strength, width=width, start=match)
        owner = np.zeros(state.num_res, np.int64)
        has = np.flatnonzero(match >= 0)
        has = has[state.utility[users[has], res[match[has]]] > 0]  # zero-value pairs stay unused, as in km
        owner[res[match[has]]] = users[has] + 1
        return owner

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
    ) -> np.ndarray:
        """Channel-of-user int64 [U] (-1 = none) for value [U, F] >= 0; notes go to ``ctx.info``.

        strength [U] / width [F] order the O(n log n) completion of partial matchings (default:
        each user's value on channel 0 / uniform); ``start``: the best full matching found so far
        (its stage named in ``ctx.info["stage"]``; default: the sorted one)."""
        info = ctx.info
        u_n, f_n = value.shape
        pairs = u_n * f_n
        stages: dict[str, float] = {}
        info["stage_ms"] = stages
        strength = value[:, 0] if strength is None else strength
        width = np.zeros(f_n) if width is None else width

        def left() -> float:
            return ctx.time_left_s() - self.reserve_s

        def cut(before: str, match: np.ndarray) -> np.ndarray:
            info["anytime"] = f"cut by the deadline before {before}; returned the {info['stage']} decision"
            return match

        if start is None:
            info["stage"] = "sorted"
            start = sorted_fill(np.full(u_n, FREE, np.int64), strength, width)
        match = start
        if left() < self._predict("lists", pairs):
            return cut("the auction", match)

        # stage 1: prices
        t0 = time.perf_counter()
        k = min(self.list_size, f_n)
        lists = top_lists(value, np.zeros(f_n), None, k)
        ta = time.perf_counter()
        self._observe("lists", ta - t0, pairs)
        stop = None if ctx.deadline is None else _RoundClock(ctx.deadline - self.reserve_s)
        auc = auction_prices(
            value, self.eps_rel, list_size=k, stop_free=int(self.stop_fraction * u_n), stop=stop, lists=lists
        )
        t1 = time.perf_counter()
        stages["auction"] = (t1 - t0) * 1e3
        info["auction_rounds"] = auc.rounds
        partial = np.where(auc.assign >= 0, auc.assign, FREE)
        idle = np.flatnonzero(partial == FREE)
        if idle.size:  # users still bidding try their lists' free channels first, then the sorted rule
            partial[idle] = sampled_bids(auc.lists[idle], auc.list_value[idle], f_n, taken=auc.owner >= 0)
        filled = sorted_fill(partial, strength, width)
        if auc.complete or matching_value(value, filled) >= matching_value(value, match):  # a cut one may be worse
            match = filled
            info["stage"] = "auction"
        if not auc.complete:
            return cut("the auction finished", match)
        self._observe("auction", t1 - ta, pairs)
        ub = list_upper_bound(auc)

        # stage 2: exact on the candidate graph
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

        # stage 3: certificate, and repair of the graph where it fails
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
            viol, ub_p = dual_check(value, prices, match, tol)
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
