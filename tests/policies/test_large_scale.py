"""The large-scale anytime policy ``auction`` (service.policies.sparse) against the exact KM.

Properties: on instances of every shape (more users than channels, fewer, ties, zero values,
busy channels, inactive users) it reaches KM's optimum and proves it (certificate); its output
is always PAG-valid and the same for the same slot; its kernels keep their invariants (a cut
auction leaves a valid partial matching with ε-complementary slackness, the dual bound is an
upper bound, the fused lists are the exact top lists, the compiled kernels stay inside their
arrays); at a deadline it returns a valid decision
and says so; the coarse stage is valid, deterministic, better than the sampled bids and never
better than what a longer deadline returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from service import phy
from service.auction import (
    FREE,
    auction_prices,
    best_free_fill,
    candidate_pairs,
    dense_lists,
    dual_check,
    market_prices,
    matching_prices,
    row_blocks,
    sampled_bids,
    segment_lists,
    sorted_fill,
    sparse_max_matching,
    top_lists,
)
from service.history import CellHistory
from service.pag import is_valid
from service.pipeline import decide
from service.policies import PolicyContext, make, names
from service.policies.registry import PolicySet
from service.policies.sparse import Auction
from service.sim.spectrum import make_spectrum_env
from service.types import SlotState, make_slot, slot_utility


def _ctx(state: SlotState, deadline: float | None = None) -> PolicyContext:
    return PolicyContext(CellHistory.empty().view(state), np.random.default_rng(0), deadline)


def _km_value(state: SlotState) -> float:
    return slot_utility(state, make("km")(state, _ctx(state)))


def _lsa_value(value: np.ndarray) -> float:
    r, c = linear_sum_assignment(value, maximize=True)
    return float(value[r, c].sum())


def _spectrum_slot(
    rng: np.random.Generator, n: int, r: int, *, busy: float = 0.2, inactive: float = 0.2, fading: bool = True
) -> SlotState:
    """SPEC §2 slot: users uniform in a 500 m disc, B_c ~ U[1, 10] MHz, Rayleigh fading."""
    dist = np.sqrt(rng.uniform(10.0**2, 500.0**2, n))
    return make_slot(
        "spectrum",
        np.arange(n) + 1,
        np.arange(r) + 1,
        rx_power_dbm=phy.rx_power_dbm(dist),
        bandwidth_hz=rng.uniform(1e6, 10e6, r),
        fading_gain=rng.exponential(size=(n, r)) if fading else None,
        resource_available=rng.random(r) >= busy,
        user_eligible=rng.random(n) >= inactive,
    )


def _cases() -> list[tuple[str, SlotState]]:
    rng = np.random.default_rng(11)
    cases = [
        (f"fading-{n}x{r}", _spectrum_slot(rng, n, r))
        for n, r in [(8, 12), (12, 8), (40, 50), (50, 40), (120, 150), (150, 120), (200, 200)]
    ]
    cases.append(("flat-fading-60x80", _spectrum_slot(rng, 60, 80, fading=False)))  # many ties in structure
    cases.append(("all-eligible-70x70", _spectrum_slot(rng, 70, 70, busy=0.0, inactive=0.0)))
    ints = rng.integers(0, 4, size=(45, 35)).astype(np.float64)  # heavy ties and zero values
    cases.append(("integer-ties-45x35", make_slot("spectrum", np.arange(45), np.arange(35), rate_bps=ints)))
    cases.append(
        ("uniform-random-90x60", make_slot("spectrum", np.arange(90), np.arange(60), rate_bps=rng.random((90, 60))))
    )
    cases.append(("one-channel", make_slot("spectrum", np.arange(5), [7], rate_bps=rng.random((5, 1)))))
    return cases


CASES = _cases()


def test_registered_for_the_spectrum_preset():
    assert "auction" in names()
    pol = make("auction")
    assert pol.presets == ("spectrum",) and pol.metadata()["name"] == "auction"


@pytest.mark.parametrize(("name", "state"), CASES, ids=[c[0] for c in CASES])
def test_reaches_and_certifies_the_km_optimum(name, state):
    pol = Auction(dense_below=0)  # always the auction path, however small the instance
    ctx = _ctx(state)
    owner = pol(state, ctx)
    assert is_valid(state, owner)
    km = _km_value(state)
    assert slot_utility(state, owner) == pytest.approx(km, rel=1e-9, abs=1e-9)
    if state.user_eligible.any() and state.resource_available.any():
        assert ctx.info["certified_optimal"] is True and ctx.info["gap_bound"] == 0.0
        assert ctx.info["anytime"] == "complete" and ctx.info["stage"] == "certified_optimal"
    again = Auction(dense_below=0)(state, _ctx(state))
    assert np.array_equal(owner, again), "same slot, other decision"


def test_scale_iii_within_target_and_certified():
    """The headline: LSA Scale III (2000 users, 2000 channels, 400 busy) with fading, bursty users."""
    state = make_spectrum_env("scale-III", seed=5).reset()
    ctx = _ctx(state)
    owner = make("auction")(state, ctx)
    assert is_valid(state, owner)
    users = np.flatnonzero(state.user_eligible)
    res = np.flatnonzero(state.resource_available)
    opt = _lsa_value(state.utility[np.ix_(users, res)])
    assert slot_utility(state, owner) >= 0.995 * opt
    assert ctx.info["certified_optimal"] is True
    assert slot_utility(state, owner) == pytest.approx(opt, rel=1e-9)


def test_small_instances_go_to_the_dense_solver_and_cap_above_one_too():
    rng = np.random.default_rng(3)
    small = _spectrum_slot(rng, 10, 10)
    ctx = _ctx(small)
    assert slot_utility(small, make("auction")(small, ctx)) == pytest.approx(_km_value(small))
    assert ctx.info["stage"] == "dense_exact"
    multi = make_slot("spectrum", np.arange(30), np.arange(40), rate_bps=rng.random((30, 40)), max_resources_per_user=3)
    ctx = _ctx(multi)
    owner = Auction(dense_below=0)(multi, ctx)
    assert is_valid(multi, owner) and ctx.info["stage"] == "dense_exact"
    assert slot_utility(multi, owner) == pytest.approx(_km_value(multi))


def test_nobody_eligible_or_nothing_free_gives_an_empty_decision():
    a = make_slot("spectrum", [1, 2], [1, 2, 3], rate_bps=np.ones((2, 3)), user_eligible=[False, False])
    b = make_slot("spectrum", [1, 2], [1, 2, 3], rate_bps=np.ones((2, 3)), resource_available=[False] * 3)
    for s in (a, b):
        owner = Auction(dense_below=0)(s, _ctx(s))
        assert is_valid(s, owner) and not owner.any()


def test_a_deadline_already_near_returns_the_sorted_decision_and_says_so():
    rng = np.random.default_rng(4)
    state = _spectrum_slot(rng, 300, 320)
    ctx = _ctx(state, deadline=time.perf_counter() + 1e-4)
    owner = Auction(dense_below=0)(state, ctx)
    assert is_valid(state, owner)
    assert ctx.info["stage"] == "sorted" and ctx.info["anytime"].startswith("cut by the deadline")
    # every eligible user got a channel (there are more free channels than users)
    assert np.count_nonzero(owner) == min(state.user_eligible.sum(), state.resource_available.sum())


def test_a_deadline_inside_the_auction_returns_a_valid_completed_decision():
    """Stage costs predicted as free, a deadline just past the reserve: the policy starts the
    auction and must stop it (or stop before it), returning a full valid decision."""
    rng = np.random.default_rng(14)
    state = _spectrum_slot(rng, 600, 700)
    pol = Auction(dense_below=0, stage_cost_s={"lists": 0.0, "sampled": 0.0}, reserve_s=0.0)
    ctx = _ctx(state, deadline=time.perf_counter() + 3e-3)  # a full solve takes several times that
    owner = pol(state, ctx)
    assert is_valid(state, owner)
    assert ctx.info["anytime"].startswith("cut by the deadline")
    how_far = ("sorted", "sampled", "coarse", "auction", "sparse_exact")  # the machine's speed decides
    assert ctx.info["stage"] in how_far
    assert np.count_nonzero(owner) == min(state.user_eligible.sum(), state.resource_available.sum())


def test_through_the_pipeline_a_predicted_overrun_is_cut_not_replaced():
    """decide() replaces a policy that answers after the deadline. When the auction is predicted
    not to fit (here: stage costs set absurdly high), the policy answers at once with its stage-0
    decision, flagged, and the pipeline keeps it."""
    rng = np.random.default_rng(6)
    state = _spectrum_slot(rng, 400, 450)
    pset = PolicySet(factories={"auction": lambda: Auction(dense_below=0)})
    full = decide(state, CellHistory.empty(), "auction", policies=pset, deadline_s=30.0)
    assert full.notes["anytime"] == "complete" and full.notes["certified_optimal"]
    slow_cost = {"lists": 1.0, "segments": 1.0}  # neither the exact nor the coarse lists fit
    slow = PolicySet(factories={"auction": lambda: Auction(dense_below=0, stage_cost_s=slow_cost)})
    d = decide(state, CellHistory.empty(), "auction", policies=slow, fallbacks=["greedy"], deadline_s=2.0)
    assert d.policy == "auction" and d.fallback is None and is_valid(state, d.owner)
    assert d.valid_before_repair and d.notes["stage"] == "sampled"  # stage 0b fits, the auction does not
    assert d.notes["anytime"].startswith("cut by the deadline before the auction")
    assert d.utility < full.utility
    again = decide(state, CellHistory.empty(), "auction", policies=slow, deadline_s=2.0)
    assert np.array_equal(again.owner, d.owner)  # the sampled channels come from the slot's seeded rng
    none = PolicySet(factories={"auction": lambda: Auction(dense_below=0, stage_cost_s={**slow_cost, "sampled": 1.0})})
    d0 = decide(state, CellHistory.empty(), "auction", policies=none, deadline_s=2.0)
    assert d0.notes["stage"] == "sorted" and is_valid(state, d0.owner) and d0.utility < d.utility


# ----------------------------------------------------------------------------- kernels


def _value(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    s = _spectrum_slot(rng, n, r, busy=0.0, inactive=0.0)
    return s.utility


def test_a_cut_auction_leaves_a_valid_partial_matching_with_eps_slackness():
    rng = np.random.default_rng(8)
    value = _value(rng, 150, 180)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    auc = auction_prices(value, 1e-3, list_size=8, stop=stop)
    assert not auc.complete and auc.rounds == 4
    held = auc.assign[auc.assign >= 0]
    assert np.unique(held).size == held.size  # no channel twice
    assert np.array_equal(auc.owner[held], np.flatnonzero(auc.assign >= 0))
    assert (auc.prices >= 0).all() and (auc.prices[auc.owner < 0] == 0).all()
    # ε-CS for every assigned user on the dense matrix
    for u in np.flatnonzero(auc.assign >= 0):
        best = (value[u] - auc.prices).max()
        assert value[u, auc.assign[u]] - auc.prices[auc.assign[u]] >= max(best, 0.0) - auc.eps * (1 + 1e-9)
    # its completion is a valid full matching
    match = sorted_fill(auc.assign, value[:, 0], np.ones(180))
    assert (match >= 0).all() and np.unique(match).size == match.size


def test_the_list_bound_never_hides_a_better_channel():
    rng = np.random.default_rng(9)
    value = _value(rng, 120, 100)
    auc = auction_prices(value, 2e-3, list_size=6)
    red = value - auc.prices
    off = np.ones_like(value, bool)
    np.put_along_axis(off, auc.lists, False, axis=1)
    assert (np.where(off, red, -np.inf).max(axis=1) <= auc.bound + 1e-6).all()


@pytest.mark.parametrize("shape", [(60, 80), (80, 60)])
def test_certificate_accepts_the_optimum_and_rejects_a_worse_matching(shape):
    rng = np.random.default_rng(10)
    value = _value(rng, *shape)
    u_n, f_n = value.shape
    r, c = linear_sum_assignment(value, maximize=True)
    opt = np.full(u_n, -1, np.int64)
    opt[r] = c
    rows, cols = np.divmod(np.arange(u_n * f_n), f_n)  # the complete graph
    tol = 1e-9 * value.max()
    prices = matching_prices(value, rows, cols, opt, tol=tol, max_iter=u_n + f_n)
    assert prices is not None
    viol, ub = dual_check(value, prices, opt, tol)
    assert viol.size == 0 and ub == pytest.approx(value[r, c].sum(), rel=1e-9)
    worse = opt.copy()
    a, b = np.flatnonzero(worse >= 0)[:2]
    worse[a], worse[b] = worse[b], worse[a]  # a swap: not optimal any more (continuous values)
    assert matching_prices(value, rows, cols, worse, tol=tol, max_iter=u_n + f_n) is None


def test_dual_bound_is_an_upper_bound_for_any_prices():
    rng = np.random.default_rng(12)
    for shape in [(30, 40), (40, 30)]:
        value = _value(rng, *shape)
        opt = _lsa_value(value)
        match = np.full(shape[0], -1, np.int64)
        for _ in range(5):
            prices = rng.uniform(0, value.max(), shape[1])
            _, ub = dual_check(value, prices, match, 0.0)
            assert ub >= opt * (1 - 1e-12)


def test_candidate_graph_admits_a_full_matching_of_the_smaller_side():
    rng = np.random.default_rng(13)
    for shape in [(90, 120), (120, 90)]:
        value = _value(rng, *shape)
        auc = auction_prices(value, 1e-2, list_size=4, stop_free=shape[0] // 5)  # stopped early on purpose
        assert (auc.assign == FREE).sum() <= shape[0] // 5
        rows, cols = candidate_pairs(value, auc, auc.eps)
        match = sparse_max_matching(value, rows, cols)
        assert match is not None
        assert (match >= 0).sum() == min(shape)
        # every pair within the slack of its user's best reduced value (outside option 0) is a candidate
        red = value - auc.prices
        near = red >= (np.maximum(red.max(axis=1), 0.0) - auc.eps)[:, None]
        listed = np.zeros_like(near)
        listed[rows, cols] = True
        assert not (near & ~listed).any()


def test_sampled_bids_give_each_channel_to_its_highest_bidder():
    cols = np.array([[0, 1], [0, 2], [0, 1], [3, 3]])
    vals = np.array([[5.0, 1.0], [7.0, 2.0], [6.0, 4.0], [1.0, 0.5]])
    match = sampled_bids(cols, vals, 4, rounds=1)
    assert match.tolist() == [FREE, 0, FREE, 3]  # channel 0: bids 5, 7, 6 -> user 1
    match = sampled_bids(cols, vals, 4, rounds=3)
    assert match.tolist() == [FREE, 0, 1, 3]  # round 2: channel 1, bids 1 (user 0) and 4 (user 2)


# ----------------------------------------------------------------------------- the coarse stage


def _ladder(state: SlotState) -> dict[str, tuple[str, np.ndarray]]:
    """The decision each stage of the ladder leaves on ``state``, every stage forced by absurd
    predicted costs of the ones after it (a deadline far away: no clock decides anything)."""
    costs = {
        "sorted": {"lists": 1.0, "segments": 1.0, "sampled": 1.0},
        "sampled": {"lists": 1.0, "segments": 1.0},
        "coarse_segments": {"lists": 1.0},  # on the cheap segment lists: the exact ones never fit
        "coarse_exact": {"auction": 1.0, "segments": 1.0},  # on the exact lists: the auction never fits
        "full": {},
    }
    out = {}
    for name, cost in costs.items():
        ctx = _ctx(state, deadline=time.perf_counter() + 60.0)
        owner = Auction(dense_below=0, stage_cost_s=cost)(state, ctx)
        out[name] = (ctx.info["stage"], owner)
    return out


@pytest.mark.parametrize("shape", [(500, 600), (600, 500)])
def test_the_coarse_stage_is_valid_deterministic_and_between_sampled_and_the_optimum(shape):
    state = _spectrum_slot(np.random.default_rng(21), *shape)
    ladder = _ladder(state)
    assert [ladder[k][0] for k in ladder] == ["sorted", "sampled", "coarse", "coarse", "certified_optimal"]
    value = {k: slot_utility(state, owner) for k, (_, owner) in ladder.items()}
    for _, owner in ladder.values():
        assert is_valid(state, owner)
    # a later stage is never worse; the coarse one lands within a few per cent of the optimum
    km = _km_value(state)
    for coarse in ("coarse_segments", "coarse_exact"):
        assert value["sorted"] <= value["sampled"] < value[coarse] <= value["full"]
        assert value[coarse] >= 0.95 * km
    again = _ladder(state)
    for coarse in ("coarse_segments", "coarse_exact"):
        assert np.array_equal(again[coarse][1], ladder[coarse][1]), "same slot, other coarse decision"


def test_the_priced_coarse_stage_holds_where_channels_differ_by_interference_not_width():
    """One bandwidth, a per-channel interference level: the prices come from the channels' values,
    and the coarse stage still lands within a few per cent of the optimum."""
    rng = np.random.default_rng(27)
    n, r = 500, 600
    snr = 10 ** (rng.uniform(-5, 25, n) / 10)[:, None] / rng.uniform(0.5, 3.0, r)
    rate = 5e6 * np.log2(1 + rng.exponential(size=(n, r)) * snr)
    state = make_slot("spectrum", np.arange(n), np.arange(r), rate_bps=rate, bandwidth_hz=np.full(r, 5e6))
    ladder = _ladder(state)
    assert ladder["coarse_segments"][0] == "coarse"
    value = slot_utility(state, ladder["coarse_segments"][1])
    assert slot_utility(state, ladder["sampled"][1]) < value <= slot_utility(state, ladder["full"][1])
    assert value >= 0.985 * _km_value(state)  # prices fitted on the bandwidth alone: 0.980 here


def test_the_coarse_stage_on_the_exact_lists_is_valid_deterministic_and_better_than_sampled():
    """The variant that runs in solve() on the exact lists of stage 1 (when the lists, the coarse
    stage and the auction are predicted to fit)."""
    state = _spectrum_slot(np.random.default_rng(22), 450, 520)
    users = np.flatnonzero(state.user_eligible)
    res = np.flatnonzero(state.resource_available)
    got = dense_lists(state.utility, users, res, 32)
    assert got is not None
    value, lists = got

    def solve() -> tuple[np.ndarray, dict]:
        ctx = _ctx(state, deadline=time.perf_counter() + 60.0)
        pol = Auction(dense_below=0, stage_cost_s={"auction": 1.0})
        copies = (lists[0].copy(), lists[1].copy(), lists[2].copy())
        match = pol.solve(value, ctx, strength=value[:, 0], lists=copies, coarse=True)
        return match, ctx.info

    match, info = solve()
    assert info["stage"] == "coarse" and info["anytime"].startswith("cut by the deadline before the auction")
    held = match[match >= 0]
    assert np.unique(held).size == held.size and (match >= 0).sum() == min(value.shape)  # a full matching
    assert np.array_equal(solve()[0], match)
    sampled = slot_utility(state, _ladder(state)["sampled"][1])
    assert float(value[np.flatnonzero(match >= 0), held].sum()) > sampled
    assert float(value[np.flatnonzero(match >= 0), held].sum()) >= 0.95 * _lsa_value(value)


def test_through_the_pipeline_the_coarse_decision_is_kept_and_flagged():
    state = _spectrum_slot(np.random.default_rng(23), 400, 450)
    for cost, where in (({"lists": 1.0}, "coarse_lists"), ({"auction": 1.0, "segments": 1.0}, "lists")):
        pset = PolicySet(factories={"auction": lambda cost=cost: Auction(dense_below=0, stage_cost_s=cost)})
        d = decide(state, CellHistory.empty(), "auction", policies=pset, fallbacks=["greedy"], deadline_s=60.0)
        assert d.policy == "auction" and d.fallback is None and d.valid_before_repair
        assert d.notes["stage"] == "coarse" and d.notes["coarse_rounds"] >= 1 and where in d.notes["stage_ms"]
        assert ("coarse_lists" in d.notes["stage_ms"]) == (where == "coarse_lists")  # which lists it ran on
        assert d.notes["anytime"] == "cut by the deadline before the auction; returned the coarse decision"
        again = decide(state, CellHistory.empty(), "auction", policies=pset, deadline_s=60.0)
        assert np.array_equal(again.owner, d.owner)


def test_without_time_for_the_auction_the_priced_coarse_stage_runs_first_and_the_exact_lists_after_it():
    """The auction not predicted to fit: the coarse stage on the priced segment lists, not on the
    exact lists; the exact lists still follow (time is left) and the decision stays the coarse one."""
    state = _spectrum_slot(np.random.default_rng(26), 400, 450)
    ctx = _ctx(state, deadline=time.perf_counter() + 60.0)
    owner = Auction(dense_below=0, stage_cost_s={"auction": 1.0})(state, ctx)
    assert ctx.info["stage"] == "coarse" and {"market", "coarse_lists", "lists"} <= set(ctx.info["stage_ms"])
    assert ctx.info["anytime"].startswith("cut by the deadline before the auction")
    only_priced = _ladder(state)["coarse_segments"][1]  # the exact lists never fit
    assert np.array_equal(owner, only_priced)


def test_lists_cut_by_the_deadline_leave_the_sampled_decision(monkeypatch):
    """When the lists stop late (here: always), the sampled bids run in the time kept for them:
    the same decision as when the lists never fit, and the same again."""
    import service.policies.sparse as sparse

    state = _spectrum_slot(np.random.default_rng(25), 400, 450)
    want = _ladder(state)["sampled"][1]
    monkeypatch.setattr(sparse, "dense_lists", lambda *a, **k: None)
    monkeypatch.setattr(sparse, "segment_lists", lambda *a, **k: None)
    for cost in ({}, {"lists": 1.0}):  # cut: the exact lists, the coarse lists
        for _ in range(2):
            ctx = _ctx(state, deadline=time.perf_counter() + 60.0)
            owner = Auction(dense_below=0, stage_cost_s=cost)(state, ctx)
            assert ctx.info["stage"] == "sampled" and ctx.info["anytime"].startswith("cut by the deadline")
            assert np.array_equal(owner, want)


def test_without_a_deadline_the_stages_that_serve_one_are_skipped():
    state = _spectrum_slot(np.random.default_rng(24), 300, 320)
    ctx = _ctx(state)
    Auction(dense_below=0)(state, ctx)
    assert "coarse" not in ctx.info["stage_ms"] and "coarse_lists" not in ctx.info["stage_ms"]
    assert "coarse_rounds" not in ctx.info and ctx.info["stage"] == "certified_optimal"


def _source(rng: np.random.Generator, kind: int, n: int, r: int) -> np.ndarray:
    if kind == 0:
        return rng.exponential(size=(n, r))
    if kind == 1:
        return rng.integers(0, 3, size=(n, r)).astype(np.float64)  # heavy ties
    if kind == 2:
        return np.zeros((n, r))
    if kind == 4:
        return np.round(rng.exponential(size=(n, r)), 1)  # a few ties among the largest entries
    return np.where(rng.random((n, r)) < 0.9, 0.0, rng.random((n, r)))  # mostly zero rows


def test_dense_lists_copy_the_matrix_and_give_exactly_the_top_lists():
    rng = np.random.default_rng(30)
    for trial in range(40):
        n, r = int(rng.integers(1, 120)), int(rng.integers(1, 700))
        src = _source(rng, trial % 4, n, r)
        k = int(rng.integers(1, 8)) if trial % 2 else int(rng.integers(1, 40))  # small k: the threshold path
        rows = np.sort(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False))
        cols = np.sort(rng.choice(r, size=int(rng.integers(1, r + 1)), replace=False))
        for rr, cc in ((rows, cols), (None, cols), (rows, None), (None, None)):
            got = dense_lists(src, rr, cc, k)
            assert got is not None
            value, (lists, vals, bound) = got
            want = src[slice(None) if rr is None else rr][:, slice(None) if cc is None else cc]
            assert np.array_equal(value, want)
            _assert_top(want, lists, vals, bound, min(k, want.shape[1]))


def _assert_top(want: np.ndarray, lists: np.ndarray, vals: np.ndarray, bound: np.ndarray, k: int) -> None:
    """lists/vals/bound are each row's k largest entries of ``want`` (numpy's sort as reference)."""
    ref = -np.sort(-want, axis=1)[:, :k]  # [U, k] descending
    assert lists.shape == vals.shape == (want.shape[0], k)
    assert np.array_equal(np.sort(vals, axis=1), np.sort(ref, axis=1))  # the same values (ties aside)
    assert np.array_equal(bound, ref[:, k - 1])
    assert np.array_equal(np.take_along_axis(want, lists, 1), vals)
    assert all(np.unique(row).size == row.size for row in lists)


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
def test_wide_rows_take_the_threshold_path_and_still_give_exactly_the_top_lists(kind):
    """Rows of 2000 columns with k = 32 (and a few other k): the group-maxima threshold and the exact
    selection above it (with ties at the k-th largest: kind 4), or the heap where ties fill the
    threshold (integer and zero rows)."""
    rng = np.random.default_rng(40 + kind)
    src = _source(rng, kind, 60, 2000)
    for k in (1, 7, 32, 62):
        got = dense_lists(src, None, None, k)
        assert got is not None
        value, (lists, vals, bound) = got
        assert value is src
        _assert_top(src, lists, vals, bound, k)


def test_top_lists_rank_by_reduced_value_and_list_the_values_themselves():
    rng = np.random.default_rng(41)
    for trial in range(30):
        n, r = int(rng.integers(1, 40)), int(rng.integers(1, 1500))
        value = _source(rng, trial % 4, n, r)
        prices = rng.uniform(0.0, value.max(initial=0.0) + 1.0, r) * (trial % 3 > 0)
        rows = rng.choice(n, size=int(rng.integers(0, n + 1)), replace=False)
        k = int(rng.integers(0, min(r, 40) + 1))
        lists, vals, bound = top_lists(value, prices, rows, k)
        assert lists.shape == vals.shape == (rows.size, k) and bound.shape == (rows.size,)
        if k == 0:
            continue
        red = value[rows] - prices
        _assert_top(red, lists, np.take_along_axis(red, lists, 1), bound, k)
        assert np.array_equal(vals, np.take_along_axis(value[rows], lists, 1))  # values, not reduced


@pytest.mark.parametrize("kind", [0, 1, 3])
def test_a_complete_auction_keeps_eps_slackness_and_ends_within_u_eps_of_the_optimum(kind):
    rng = np.random.default_rng(42 + kind)
    for shape in [(70, 90), (90, 70), (1, 5), (5, 1)]:
        value = _source(rng, kind, *shape)
        auc = auction_prices(value, 1e-2, list_size=4)
        assert auc.complete and not (auc.assign == FREE).any()
        held = auc.assign[auc.assign >= 0]
        assert np.unique(held).size == held.size and np.array_equal(auc.owner[held], np.flatnonzero(auc.assign >= 0))
        assert (auc.prices[auc.owner < 0] == 0).all()  # a channel nobody won was never bid for
        red = value - auc.prices
        best = np.maximum(red.max(axis=1), 0.0)
        mine = np.where(auc.assign >= 0, red[np.arange(shape[0]), np.maximum(auc.assign, 0)], 0.0)
        assert (mine >= best - auc.eps * (1 + 1e-9)).all()  # ε-CS, the outside option worth 0
        got = float(value[np.flatnonzero(auc.assign >= 0), held].sum())
        assert got >= _lsa_value(value) - shape[0] * auc.eps * (1 + 1e-9)


def test_a_fortran_ordered_matrix_gives_the_same_results_and_compiles_nothing_new():
    """Fancy indexing hands the policy column-major matrices (``utility[users][:, res]`` is one):
    every kernel entry point takes them, answers as for the C-ordered copy, and never compiles a
    second specialisation in the middle of a decision."""
    import service.auction as kernels

    kernels.warm_up()
    compiled = {n: len(f.signatures) for n, f in vars(kernels).items() if hasattr(f, "signatures")}
    rng = np.random.default_rng(43)
    value_c = rng.exponential(size=(300, 260))
    value_f = np.asfortranarray(value_c)
    assert value_f.flags.f_contiguous and not value_f.flags.c_contiguous
    prices = rng.random(260)
    rows = np.arange(0, 300, 3)
    for args in ((None, None), (rows, None), (None, np.arange(0, 260, 2))):
        got_c, got_f = dense_lists(value_c, *args, 32), dense_lists(value_f, *args, 32)
        assert got_c is not None and got_f is not None
        assert np.array_equal(got_c[0], got_f[0])
        assert all(np.array_equal(a, b) for a, b in zip(got_c[1], got_f[1], strict=True))
    seg_c, seg_f = segment_lists(value_c, rows, prices, 8), segment_lists(value_f, rows, prices, 8)
    assert seg_c is not None and seg_f is not None
    assert all(np.array_equal(a, b) for a, b in zip(seg_c, seg_f, strict=True))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(top_lists(value_c, prices, rows, 7), top_lists(value_f, prices, rows, 7), strict=True)
    )
    auc_c, auc_f = auction_prices(value_c, 1e-3, list_size=4), auction_prices(value_f, 1e-3, list_size=4)
    assert auc_c.refreshes > 0  # the list rebuilds ran on the column-major matrix too
    assert np.array_equal(auc_c.prices, auc_f.prices) and np.array_equal(auc_c.assign, auc_f.assign)
    pairs_c, pairs_f = candidate_pairs(value_c, auc_c, 6 * auc_c.eps), candidate_pairs(value_f, auc_f, 6 * auc_f.eps)
    assert all(np.array_equal(a, b) for a, b in zip(pairs_c, pairs_f, strict=True))
    match = sparse_max_matching(value_c, *pairs_c)
    assert match is not None
    check_c, check_f = dual_check(value_c, auc_c.prices, match, 1e-9), dual_check(value_f, auc_c.prices, match, 1e-9)
    assert np.array_equal(check_c[0], check_f[0]) and check_c[1] == check_f[1]
    state = make_slot("spectrum", np.arange(300), np.arange(260), rate_bps=value_f)
    owner = Auction(dense_below=0)(state, _ctx(state, deadline=time.perf_counter() + 60.0))
    assert is_valid(state, owner)
    assert {n: len(f.signatures) for n, f in vars(kernels).items() if hasattr(f, "signatures")} == compiled


def test_the_compiled_kernels_stay_inside_their_arrays(tmp_path):
    """The kernels run without bounds checks; here, in a child process with numba's bounds checking
    on (and its own cache), on tie-heavy inputs, every stage of the auction policy must run clean."""
    code = """
import numpy as np
from service import auction as A
from service.policies.sparse import Auction
from service.policies import PolicyContext
from service.history import CellHistory
from service.types import make_slot
rng = np.random.default_rng(0)
for src in (np.round(rng.exponential(size=(90, 2000)), 1), rng.integers(0, 3, (90, 2000)).astype(float),
            np.zeros((40, 300)), rng.exponential(size=(300, 260))):
    for k in (1, 7, 32):
        A.dense_lists(src, np.arange(0, src.shape[0], 2), None, min(k, src.shape[1]))
        A.top_lists(src, rng.random(src.shape[1]), None, min(k, src.shape[1]))
        A.dense_lists(src, None, np.arange(0, src.shape[1], 3), min(k, src.shape[1]), threads=3)
    A.segment_lists(src, np.arange(src.shape[0]), rng.random(src.shape[1]), 16, threads=3)
    A.dual_check(src, rng.random(src.shape[1]), np.full(src.shape[0], -1), 1e-9, threads=3)
    state = make_slot("spectrum", np.arange(src.shape[0]), np.arange(src.shape[1]), rate_bps=src)
    for deadline in (None, 60.0):
        import time
        ctx = PolicyContext(CellHistory.empty().view(state), np.random.default_rng(0),
                            None if deadline is None else time.perf_counter() + deadline)
        Auction(dense_below=0, threads=2)(state, ctx)
print("clean")
"""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("clean"), out.stderr[-3000:]


def test_segment_lists_give_each_segments_best_channel_by_reduced_value():
    rng = np.random.default_rng(31)
    for trial in range(60):
        n, r = int(rng.integers(1, 50)), int(rng.integers(1, 300))
        src = _source(rng, trial % 4, n, r)
        rows = rng.choice(n, size=int(rng.integers(0, n + 1)), replace=False)
        prices = rng.uniform(0.0, src.max(initial=0.0) + 1.0, r) * (trial % 3 > 0)  # every third: no prices
        prices[rng.random(r) < 0.3] = np.inf  # channels that may not be listed
        k = int(rng.integers(1, 20))
        got = segment_lists(src, rows, prices, k)
        assert got is not None
        chan, vals = got
        k = min(k, r)
        width = r // k
        member = np.minimum(np.arange(r) // width, k)  # the last r mod k columns: one more segment
        n_lists = k + (k * width < r)
        assert chan.shape == vals.shape == (rows.size, n_lists)
        for i, u in enumerate(rows):
            red = src[u] - prices
            assert (member[chan[i]] == np.arange(n_lists)).all()  # one channel per segment, in order
            for j in range(n_lists):
                best = red[member == j].max()
                if np.isfinite(best):
                    assert red[chan[i, j]] == best and vals[i, j] == src[u, chan[i, j]]
                else:  # nothing in the segment may be listed
                    assert vals[i, j] == -np.inf


def test_segment_lists_take_numpy_s_argmax_and_never_list_an_unpriced_channel():
    """The compiled pass picks what ``np.argmax`` picks (the first of tied values, ties made common
    by rounding), on C- and Fortran-ordered matrices; a NaN price is a channel not to list."""
    rng = np.random.default_rng(34)
    for trial in range(40):
        n, r = int(rng.integers(1, 30)), int(rng.integers(2, 200))
        src = np.round(rng.exponential(1.0, (n, r)), 1)
        if trial % 2:
            src = np.asfortranarray(src)
        rows = rng.permutation(n)
        prices = np.round(rng.uniform(0.0, 1.0, r), 1)
        prices[rng.random(r) < 0.2] = np.nan
        k = int(rng.integers(1, 12))
        got = segment_lists(src, rows, prices, k)
        assert got is not None
        chan, vals = got
        red = src[rows] - np.where(np.isnan(prices), np.inf, prices)
        k = min(k, r)
        bounds = [j * (r // k) for j in range(k)] + ([r // k * k] if r // k * k < r else []) + [r]
        for j in range(len(bounds) - 1):
            lo, hi = bounds[j], bounds[j + 1]
            want = lo + red[:, lo:hi].argmax(axis=1)
            assert np.array_equal(chan[:, j], want)
            listed = np.isfinite(red[np.arange(rows.size), want])
            assert np.array_equal(vals[listed, j], src[rows[listed], want[listed]])
            assert (vals[~listed, j] == -np.inf).all() and not np.isnan(prices[want[listed]]).any()


def test_market_prices_estimate_the_auctions_prices_from_a_seeded_sub_market():
    """Channels that differ by bandwidth (the LSA slot) or, at one bandwidth, by interference: the
    estimate follows the prices the full auction ends with, and is seeded."""
    rng = np.random.default_rng(33)
    wide = _spectrum_slot(rng, 900, 1000, busy=0.0, inactive=0.0)
    width = np.full(1000, 5e6)
    snr = 10 ** (rng.uniform(-5, 25, 900) / 10)[:, None] / rng.uniform(0.5, 3.0, 1000)  # per-channel interference
    noisy = width * np.log2(1 + rng.exponential(size=(900, 1000)) * snr)
    users, res = np.arange(900), np.arange(1000)
    for value, bw in ((wide.utility, wide.bandwidth_hz), (noisy, width)):

        def estimate(seed: int, value=value, bw=bw) -> np.ndarray:
            return market_prices(value, users, res, bw, np.random.default_rng(seed), fraction=8)

        est = estimate(0)
        assert est.shape == (1000,) and (est >= 0).all() and np.isfinite(est).all()
        assert np.array_equal(estimate(0), est)  # seeded
        final = auction_prices(value, 1e-3).prices
        assert np.corrcoef(est, final)[0, 1] > 0.8
        assert 0.5 < est.mean() / final.mean() < 2.0
    for n, r in ((1, 5), (2, 1), (1, 1)):  # markets smaller than any sample: all of them
        tiny = market_prices(rng.random((n, r)), np.arange(n), np.arange(r), np.ones(r), np.random.default_rng(0))
        assert tiny.shape == (r,) and (tiny >= 0).all()


def test_the_lists_stop_when_asked():
    rng = np.random.default_rng(32)
    src = rng.exponential(size=(1200, 400))
    rows, cols = np.arange(0, 1200, 2), np.arange(0, 400, 3)  # several row blocks
    asked: list[float] = []

    def stop_from(stop_at: float):
        def stop(done: float) -> bool:
            asked.append(done)
            return done >= stop_at

        return stop

    for stop_at in (0.0, 0.5):  # asked before each row block: before any, or midway
        asked.clear()
        assert dense_lists(src, rows, cols, 4, stop=stop_from(stop_at)) is None and asked[-1] >= stop_at
        assert (stop_at == 0.0) == (len(asked) == 1)  # stopped before the first block, or after some
        asked.clear()
        assert segment_lists(src, rows, np.zeros(400), 4, stop=stop_from(stop_at)) is None
        assert asked[-1] >= stop_at and (stop_at == 0.0) == (len(asked) == 1)
    asked.clear()
    assert dense_lists(src, rows, cols, 4, stop=stop_from(1.0)) is not None  # never asked once all rows are done
    assert asked and max(asked) < 1.0
    assert dense_lists(src, rows, cols, 4, stop=lambda done: False) is not None
    assert segment_lists(src, rows, np.zeros(400), 4, stop=lambda done: False) is not None


def test_best_free_fill_gives_leftover_users_their_best_free_channels():
    value = np.array([[9.0, 1.0, 5.0, 2.0], [1.0, 8.0, 7.0, 3.0], [4.0, 6.0, 2.0, 1.0]])
    match = np.array([0, FREE, FREE])  # user 0 holds channel 0
    rows = value[np.flatnonzero(match < 0)]
    out = best_free_fill(match, rows)
    assert out.tolist() == [0, 1, 2]  # user 1 bids 8 on channel 1 (beats user 2's 6); user 2 then takes channel 2
    full = np.array([0, 1, 2])
    assert best_free_fill(full, value[:0]).tolist() == [0, 1, 2]


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("n_rows", [0, 1, 9, 10, 11, 64])
def test_row_blocks_run_every_block_once_on_any_number_of_threads(threads, n_rows):
    runs: list[tuple[int, int]] = []
    names: set[str] = set()
    lock = threading.Lock()

    def run(s: int, e: int) -> None:
        time.sleep(0.0005)  # long enough for the helpers to take blocks too
        with lock:
            runs.append((s, e))
            names.add(threading.current_thread().name)

    assert row_blocks(n_rows, 10, run, threads=threads)
    assert sorted(runs) == [(s, min(n_rows, s + 10)) for s in range(0, n_rows, 10)]
    if threads > 1 and n_rows > 40:
        assert len(names) > 1  # the helpers ran blocks too


@pytest.mark.parametrize("threads", [1, 3])
def test_row_blocks_stop_when_asked_and_pass_on_a_helper_s_error(threads):
    runs: list[int] = []
    asked: list[float] = []

    def stop(done: float) -> bool:
        asked.append(done)
        return done >= 0.5

    assert not row_blocks(100, 5, lambda s, e: runs.append(s), stop=stop, threads=threads)
    assert asked[0] == 0.0 and asked[-1] >= 0.5 and all(0.0 <= a <= 1.0 for a in asked)
    assert 0 < len(runs) < 20 and len(set(runs)) == len(runs)  # some blocks, none twice, not all
    asked.clear()
    assert row_blocks(100, 5, lambda s, e: time.sleep(0.0002), stop=lambda done: asked.append(done) or False,
                      threads=threads)  # fmt: skip
    assert asked and max(asked) < 1.0  # never asked once every block is taken: it could only waste them

    def fail(s: int, e: int) -> None:
        if s == 50:
            raise RuntimeError("block 50")
        time.sleep(0.0002)

    with pytest.raises(RuntimeError, match="block 50"):
        row_blocks(100, 5, fail, threads=threads)


def test_row_blocks_do_not_wait_for_a_pool_busy_with_other_work():
    """Decisions in several threads share the helper pool: a helper that has not started when the
    caller has taken every block is dropped, so one decision never waits on another's blocks."""
    import service.auction as kernels

    release = threading.Event()
    pool = kernels._helpers(1)
    busy = [pool.submit(release.wait, 30) for _ in range(kernels._pool_threads)]  # every helper held elsewhere
    try:
        done: list[tuple[int, int]] = []
        t0 = time.perf_counter()
        assert row_blocks(40, 10, lambda s, e: done.append((s, e)), threads=2)
        assert sorted(done) == [(0, 10), (10, 20), (20, 30), (30, 40)]
        assert time.perf_counter() - t0 < 5.0  # not the 30 s the busy helper holds the pool
    finally:
        release.set()
        for f in busy:
            f.result()

    results: dict[int, bool] = {}

    def one(k: int) -> None:  # two callers at once, each with its own blocks
        seen: list[int] = []
        ok = row_blocks(64, 4, lambda s, e: (seen.append(s), time.sleep(0.0002)), threads=2)
        results[k] = ok and sorted(seen) == list(range(0, 64, 4))

    callers = [threading.Thread(target=one, args=(k,)) for k in range(3)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(30)
    assert results == {0: True, 1: True, 2: True}


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_the_dense_passes_on_threads_give_the_single_thread_results(threads):
    """The lists, the coarse lists and the dual check split their rows over threads: the same
    arrays, bit for bit, as on one thread (several row blocks each, ties included)."""
    rng = np.random.default_rng(61)
    for src in (rng.exponential(size=(3000, 100)), rng.integers(0, 3, (2500, 120)).astype(float)):
        n, r = src.shape
        rows, cols = np.arange(0, n, 2), np.arange(0, r, 3)
        prices = rng.random(r)
        for args in ((rows, cols), (None, None)):
            one, many = dense_lists(src, *args, 8), dense_lists(src, *args, 8, threads=threads)
            assert one is not None and many is not None and np.array_equal(one[0], many[0])
            assert all(np.array_equal(a, b) for a, b in zip(one[1], many[1], strict=True))
        seg_one, seg_many = segment_lists(src, rows, prices, 6), segment_lists(src, rows, prices, 6, threads=threads)
        assert seg_one is not None and seg_many is not None
        assert all(np.array_equal(a, b) for a, b in zip(seg_one, seg_many, strict=True))
        match = np.where(rng.random(n) < 0.05, rng.integers(0, r, n), -1)
        viol_one, ub_one = dual_check(src, prices, match, 1e-9)
        viol_many, ub_many = dual_check(src, prices, match, 1e-9, threads=threads)
        assert np.array_equal(viol_one, viol_many) and ub_one == ub_many


def test_the_policy_decides_the_same_on_any_number_of_threads():
    for name, state in CASES[4:8]:
        one = Auction(dense_below=0, threads=1)(state, _ctx(state))
        many = Auction(dense_below=0, threads=3)(state, _ctx(state))
        assert np.array_equal(one, many), name
    with pytest.raises(ValueError, match="threads"):
        Auction(threads=0)
