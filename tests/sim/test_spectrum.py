"""Spectrum-access simulator (SPEC §2): determinism, spatial model, link budget, occupancy,
activity, fading, KPIs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from service.history import CellHistory
from service.pipeline import decide
from service.policies.assignment import random_valid
from service.policies.registry import PolicySet
from service.sim.base import run_episode
from service.sim.spectrum import (
    PAPER_GRID,
    SCALE_GRID,
    SPECTRUM_SCENARIOS,
    SpectrumConfig,
    SpectrumEnv,
    make_spectrum_env,
    sample_positions_m,
)

PSET = PolicySet()


def _km(state):
    return decide(state, CellHistory.empty(), "km", policies=PSET).owner


def _rollout(env: SpectrumEnv, seed: int, slots: int, policy=_km):
    state = env.reset(seed=seed)
    trace = []
    for _ in range(slots):
        owner = policy(state)
        res = env.step(owner)
        trace.append((state, owner, res.reward, res.feedback))
        state = res.state
    return trace


def test_same_seed_same_rollout_different_seed_differs():
    a = _rollout(make_spectrum_env("poisson"), seed=7, slots=15)
    b = _rollout(make_spectrum_env("poisson"), seed=7, slots=15)
    for (sa, oa, ra, fa), (sb, ob, rb, fb) in zip(a, b, strict=True):
        assert np.array_equal(sa.utility, sb.utility)
        assert np.array_equal(sa.resource_available, sb.resource_available)
        assert np.array_equal(sa.user_eligible, sb.user_eligible)
        assert np.array_equal(oa, ob) and ra == rb and fa == fb
    c = _rollout(make_spectrum_env("poisson"), seed=8, slots=15)
    assert any(
        sa.utility.shape != sc.utility.shape or not np.array_equal(sa.utility, sc.utility)
        for (sa, *_), (sc, *_) in zip(a, c, strict=True)
    )


def test_slot_sequence_does_not_depend_on_the_decisions():
    """Exogenous model: every policy sees the same slots for one seed."""
    env1, env2 = make_spectrum_env("u10-c15-b3"), make_spectrum_env("u10-c15-b3")
    s1, s2 = env1.reset(seed=3), env2.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(10):
        s1 = env1.step(_km(s1)).state
        s2 = env2.step(random_valid(s2, rng)).state
        assert np.array_equal(s1.utility, s2.utility)
        assert np.array_equal(s1.user_eligible, s2.user_eligible)


def test_run_episode_is_deterministic_with_references():
    cfg = replace(SPECTRUM_SCENARIOS["u7-c10-b2"], references=True)
    k1 = run_episode(SpectrumEnv(cfg), lambda s, fb: _km(s), slots=12, seed=5)
    k2 = run_episode(SpectrumEnv(cfg), lambda s, fb: _km(s), slots=12, seed=5)
    assert k1 == k2
    assert k1["ratio_to_km"] == pytest.approx(1.0)
    assert k1["ratio_to_random"] > 1.0
    assert k1["throughput_mbps"] == pytest.approx(k1["km_throughput_mbps"])


def test_poisson_user_count_and_min_distance():
    cfg = SpectrumConfig(mean_num_ue=15.0)
    rng = np.random.default_rng(1)
    counts, dists = [], []
    for _ in range(600):
        pos = sample_positions_m(rng, cfg)
        counts.append(pos.shape[0])
        dists.append(np.hypot(pos[:, 0], pos[:, 1]))
    counts_arr = np.asarray(counts, float)
    d = np.concatenate(dists)
    # Poisson(15): mean 15 and variance 15 (standard errors ~0.16 and ~0.9)
    assert abs(counts_arr.mean() - 15.0) < 0.8
    assert 0.7 < counts_arr.var() / counts_arr.mean() < 1.3
    assert d.min() >= 10.0 and d.max() <= 500.0
    # uniform in area over the annulus: P(d <= 250) = (250² − 10²) / (500² − 10²)
    expected = (250.0**2 - 10.0**2) / (500.0**2 - 10.0**2)
    assert abs((d <= 250.0).mean() - expected) < 0.02


def test_fixed_user_count_and_env_positions():
    env = make_spectrum_env("u12-c15-b6", seed=4)
    state = env.reset()
    assert state.num_ue == 12 and state.num_res == 15
    assert env.distance_m.min() >= 10.0 and env.distance_m.max() <= 500.0
    assert np.allclose(env.distance_m, np.hypot(*env.positions_m.T))
    # channel bandwidths U[1, 10] MHz, fixed over the episode
    assert (state.bandwidth_hz >= 1e6).all() and (state.bandwidth_hz <= 10e6).all()
    nxt = env.step(np.zeros(15, np.int64)).state
    assert np.array_equal(nxt.bandwidth_hz, state.bandwidth_hz)


def test_path_loss_and_rate_values():
    """P_rx = P_t·G_t·G_r·(λ/4π)²·d^−α: 23 dBm at 100 m, 3.5 GHz, α = 3.5 -> −90.33 dBm."""
    cfg = SpectrumConfig(
        num_ue=1,
        num_channels=1,
        fading="flat",
        bursty=False,
        num_busy=0,
        min_distance_m=99.999,
        cell_radius_m=100.001,
        min_bandwidth_hz=1e6,
        max_bandwidth_hz=1e6,
    )
    env = SpectrumEnv(cfg)
    state = env.reset(seed=0)
    d = float(env.distance_m[0])
    lam = 299_792_458.0 / 3.5e9
    p_rx_w = 10 ** ((23.0 - 30.0) / 10) * (lam / (4 * math.pi)) ** 2 * d**-3.5
    assert state.rx_power_dbm[0] == pytest.approx(10 * math.log10(p_rx_w) + 30.0, abs=1e-9)
    assert state.rx_power_dbm[0] == pytest.approx(-90.33, abs=0.01)
    noise_w = 10 ** ((-174.0 - 30.0) / 10) * 1e6
    assert state.utility[0, 0] == pytest.approx(1e6 * math.log2(1 + p_rx_w / noise_w), rel=1e-12)
    assert state.utility[0, 0] == pytest.approx(7.87e6, rel=2e-3)


def test_rayleigh_fading_redrawn_per_slot_and_enters_the_rate():
    env = make_spectrum_env("u15-c20-b4", seed=2)
    s0 = env.reset()
    g0 = env.fading_gain.copy()
    s1 = env.step(np.zeros(20, np.int64)).state
    g1 = env.fading_gain
    assert g0.shape == (15, 20) and not np.array_equal(g0, g1)
    p_rx_w = 10 ** ((s1.rx_power_dbm - 30.0) / 10)
    noise_w = 10 ** ((-174.0 - 30.0) / 10) * s1.bandwidth_hz
    expected = s1.bandwidth_hz[None, :] * np.log2(1 + g1 * p_rx_w[:, None] / noise_w[None, :])
    assert np.allclose(s1.utility, expected, rtol=1e-12)
    # Exp(1) power gains over many slots
    gains = [g0]
    for _ in range(60):
        env.step(np.zeros(20, np.int64))
        gains.append(env.fading_gain)
    g = np.concatenate([x.ravel() for x in gains])
    assert abs(g.mean() - 1.0) < 0.05 and abs(g.var() - 1.0) < 0.1
    assert s0.utility.shape == (15, 20)


def test_interference_lowers_rates():
    base = SpectrumConfig(
        num_ue=4, num_channels=3, num_busy=0, fading="flat", bursty=False, min_bandwidth_hz=5e6, max_bandwidth_hz=5e6
    )
    s_clean = SpectrumEnv(base).reset(seed=1)
    s_intf = SpectrumEnv(replace(base, interference_dbm=(-100.0, -200.0, -90.0))).reset(seed=1)
    assert (s_intf.utility[:, 0] < s_clean.utility[:, 0]).all()
    assert np.allclose(s_intf.utility[:, 1], s_clean.utility[:, 1], rtol=1e-6)  # −200 dBm is negligible
    assert (s_intf.utility[:, 2] < s_intf.utility[:, 0]).all()


@pytest.mark.parametrize("name", ["u5-c5-b1", "u15-c20-b8", "u8-c10-b4"])
def test_flat_fading_km_is_a_sort(name):
    """g = 1: rate(P, B) is supermodular, so the optimum puts the strongest users on the
    widest free channels, in order."""
    env = make_spectrum_env(name, seed=11, fading="flat", bursty=False)
    state = env.reset()
    for _ in range(5):
        owner = _km(state)
        free = np.flatnonzero(state.resource_available)
        by_bw = free[np.argsort(-state.bandwidth_hz[free], kind="stable")]
        by_power = np.argsort(-state.rx_power_dbm, kind="stable")
        k = min(free.size, state.num_ue)
        expected = np.zeros(state.num_res, np.int64)
        expected[by_bw[:k]] = by_power[:k] + 1
        assert np.array_equal(owner, expected)
        state = env.step(owner).state


@pytest.mark.parametrize("name", [*PAPER_GRID, *SCALE_GRID])
def test_busy_count_fixed_per_scenario(name):
    cfg = SPECTRUM_SCENARIOS[name]
    env = SpectrumEnv(cfg)
    state = env.reset(seed=0)
    masks = []
    for _ in range(3 if cfg.num_ue >= 500 else 12):
        assert int((~state.resource_available).sum()) == cfg.num_busy
        assert state.num_ue == cfg.num_ue and state.num_res == cfg.num_channels
        masks.append(state.resource_available)
        state = env.step(np.zeros(state.num_res, np.int64)).state
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])  # redrawn per slot


def test_paper_grid_names_and_unknown_scenario():
    assert [
        (SPECTRUM_SCENARIOS[n].num_ue, SPECTRUM_SCENARIOS[n].num_channels, SPECTRUM_SCENARIOS[n].num_busy)
        for n in (*PAPER_GRID, *SCALE_GRID)
    ] == [
        (5, 5, 1),
        (7, 10, 2),
        (10, 15, 3),
        (15, 20, 4),
        (5, 5, 2),
        (8, 10, 4),
        (12, 15, 6),
        (15, 20, 8),
        (500, 500, 100),
        (1000, 1000, 200),
        (2000, 2000, 400),
    ]
    with pytest.raises(KeyError, match="unknown spectrum scenario"):
        make_spectrum_env("u3-c3-b0")


def test_bernoulli_occupancy_rate():
    env = SpectrumEnv(SpectrumConfig(num_ue=3, num_channels=50, pu_occupancy_prob=0.2))
    state = env.reset(seed=9)
    busy = []
    for _ in range(100):
        busy.append(~state.resource_available)
        state = env.step(np.zeros(50, np.int64)).state
    assert abs(np.mean(busy) - 0.2) < 0.02


def test_bursty_activity_switches_and_inactive_users_get_nothing():
    cfg = SpectrumConfig(num_ue=40, num_channels=40, num_busy=0, activation_prob=0.3, deactivation_prob=0.1)
    env = SpectrumEnv(cfg)
    state = env.reset(seed=2)
    active = []
    for _ in range(200):
        active.append(state.user_eligible)
        state = env.step(np.zeros(40, np.int64)).state
    a = np.asarray(active)
    assert abs(a.mean() - 0.75) < 0.05  # stationary 0.3 / (0.3 + 0.1)
    switches_on = (~a[:-1] & a[1:]).sum() / (~a[:-1]).sum()
    switches_off = (a[:-1] & ~a[1:]).sum() / a[:-1].sum()
    assert abs(switches_on - 0.3) < 0.05 and abs(switches_off - 0.1) < 0.03
    # an inactive user granted a channel is served nothing; the slot counts as a violation
    u = int(np.flatnonzero(~state.user_eligible)[0])
    owner = np.zeros(40, np.int64)
    owner[0] = u + 1
    res = env.step(owner)
    assert res.feedback[int(state.user_ids[u])] == 0.0 and res.reward == 0.0
    assert res.info["violations"] == 1


def test_non_bursty_users_always_active():
    env = SpectrumEnv(SpectrumConfig(num_ue=6, num_channels=4, bursty=False))
    state = env.reset(seed=0)
    for _ in range(20):
        assert state.user_eligible.all()
        state = env.step(np.zeros(4, np.int64)).state


def test_step_feedback_reward_and_busy_channel_collision():
    env = make_spectrum_env("u5-c5-b2", seed=1, bursty=False)
    state = env.reset()
    owner = _km(state)
    res = env.step(owner)
    served = {int(state.user_ids[k - 1]): state.utility[k - 1, r] for r, k in enumerate(owner) if k}
    assert set(res.feedback) == set(state.user_ids.tolist())
    for uid, v in res.feedback.items():
        assert v == pytest.approx(served.get(uid, 0.0))
    assert res.reward == pytest.approx(sum(served.values()))
    assert res.info["violations"] == 0 and res.state.slot == 1
    # a user on a busy channel collides with the primary user: nothing delivered
    state = res.state
    busy = int(np.flatnonzero(~state.resource_available)[0])
    bad = np.zeros(5, np.int64)
    bad[busy] = 1
    res = env.step(bad)
    assert res.reward == 0.0 and res.info["violations"] == 1
    with pytest.raises(ValueError):
        env.step(np.zeros(4, np.int64))
    with pytest.raises(ValueError):
        env.step(np.full(5, 9, np.int64))


def test_kpis_throughput_fairness_utilisation_and_ratios():
    cfg = replace(SPECTRUM_SCENARIOS["u12-c15-b6"], references=True)
    rng = np.random.default_rng(0)
    k_rand = run_episode(SpectrumEnv(cfg), lambda s, fb: random_valid(s, rng), slots=30, seed=3)
    k_km = run_episode(SpectrumEnv(cfg), lambda s, fb: _km(s), slots=30, seed=3)
    assert k_km["ratio_to_km"] == pytest.approx(1.0)
    assert k_rand["ratio_to_km"] < 0.8 and k_rand["ratio_to_random"] == pytest.approx(1.0, abs=0.25)
    assert k_km["km_throughput_mbps"] == k_rand["km_throughput_mbps"]  # same slots
    assert k_km["throughput_mbps"] == pytest.approx(k_km["throughput_bps"] / 1e6)
    assert 0.0 < k_km["jain_fairness"] <= 1.0
    # both fill min(active users, free channels) channels with single connectivity
    assert k_km["resource_utilisation"] == pytest.approx(k_rand["resource_utilisation"])
    assert 0.0 < k_km["resource_utilisation"] <= 1.0
    assert k_km["violation_rate"] == 0.0 and k_km["slots"] == 30


def test_episode_length_sets_done():
    env = SpectrumEnv(SpectrumConfig(num_ue=3, num_channels=3, episode_slots=4))
    state = env.reset(seed=0)
    dones = []
    for _ in range(4):
        res = env.step(np.zeros(3, np.int64))
        dones.append(res.done)
    assert dones == [False, False, False, True]
    assert state.num_res == 3


def test_fairness_kpi_is_jain_of_cumulative_user_throughput():
    cfg = SpectrumConfig(num_ue=2, num_channels=2, num_busy=0, bursty=False, fading="flat")
    env = SpectrumEnv(cfg)
    state = env.reset(seed=0)
    rate = state.utility
    env.step(np.array([1, 0]))  # user 1 on channel 1
    env.step(np.array([0, 2]))  # user 2 on channel 2
    x = np.array([rate[0, 0], rate[1, 1]])
    assert env.kpis()["jain_fairness"] == pytest.approx(x.sum() ** 2 / (2 * (x**2).sum()))
    assert env.kpis()["resource_utilisation"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_ue": 0},
        {"num_channels": 0},
        {"num_channels": 4, "num_busy": 5},
        {"pu_occupancy_prob": 1.5},
        {"min_distance_m": 600.0},
        {"fading": "rician"},
        {"num_channels": 3, "interference_dbm": (-90.0,)},
        {"min_bandwidth_hz": 5e6, "max_bandwidth_hz": 1e6},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        SpectrumConfig(**kwargs)
