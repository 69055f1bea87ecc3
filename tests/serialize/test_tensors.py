"""The student's tensor serializer (SPEC §5): shapes, scale invariance, equivariance, edge cases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from service.history import CellHistory, HistoryView, apply_feedback, record_decision
from service.policies.assignment import random_valid
from service.serialize.tensors import (
    FEATURE_VERSION,
    NUM_GLOBAL,
    NUM_PAIR,
    NUM_RES,
    NUM_USER,
    USER_FEATURES,
    StudentBatch,
    StudentInputs,
    feature_spec,
    serialize,
    serialize_many,
)
from service.sim.mac import make_mac_env
from service.sim.spectrum import SpectrumConfig, SpectrumEnv
from service.types import make_slot


def _mac_with_history(steps: int = 30):
    env = make_mac_env("fixed-5", seed=3)
    state, history = env.reset(), CellHistory.empty()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        owner = random_valid(state, rng)
        history = record_decision(history, state, owner)
        res = env.step(owner)
        history, state = apply_feedback(history, res.feedback), res.state
    return state, history.view(state)


def test_shapes_dtypes_and_masks():
    state = SpectrumEnv(SpectrumConfig(num_ue=7, num_channels=11, num_busy=3), seed=1).reset()
    x = serialize(state)
    assert x.global_feats.shape == (NUM_GLOBAL,) and x.user_feats.shape == (7, NUM_USER)
    assert x.res_feats.shape == (11, NUM_RES) and x.pair_feats.shape == (NUM_PAIR, 11, 7)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in x.arrays())
    np.testing.assert_array_equal(x.user_mask, state.user_eligible)
    np.testing.assert_array_equal(x.res_mask, state.resource_available)
    # pair channel 0 is the utility relative to the slot's best admissible pair, 0 where inadmissible
    adm = state.admissible().T
    np.testing.assert_allclose(x.pair_feats[0][adm], (state.utility.T[adm] / state.utility.T[adm].max()), rtol=1e-6)
    assert (x.pair_feats[:, ~adm] == 0).all()
    assert feature_spec()["version"] == FEATURE_VERSION


def test_scale_free_in_the_utility_unit():
    state, view = _mac_with_history()
    x = serialize(state, view)
    # the same slot in another utility unit (utility given, so the SE channel is 0 there: skip it)
    scaled = make_slot(
        "mac",
        state.user_ids,
        state.resource_ids,
        utility=state.utility * 1000.0,
        buffer_bits=state.buffer_bits * 1000.0,
        resource_available=state.resource_available,
        user_eligible=state.user_eligible,
        slot=state.slot,
    )
    view_scaled = type(view)(
        view.avg_served * 1000.0, view.cum_resources, view.last_served_slot, view.known, view.first_seen_slot
    )
    se_col = USER_FEATURES.index("spectral_efficiency")
    x.user_feats[:, se_col] = 0.0
    y = serialize(scaled, view_scaled)
    for a, b in zip(x.arrays(), y.arrays(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_permuting_users_and_resources_permutes_the_tensors():
    state, view = _mac_with_history()
    rng = np.random.default_rng(1)
    pu, pr = rng.permutation(state.num_ue), rng.permutation(state.num_res)
    se = state.spectral_efficiency if state.spectral_efficiency.ndim == 1 else state.spectral_efficiency[:, pr]
    perm = make_slot(
        "mac",
        state.user_ids[pu],
        state.resource_ids[pr],
        spectral_efficiency=se[pu],
        buffer_bits=state.buffer_bits[pu],
        resource_available=state.resource_available[pr],
        user_eligible=state.user_eligible[pu],
        slot=state.slot,
    )
    pview = type(view)(
        view.avg_served[pu], view.cum_resources[pu], view.last_served_slot[pu], view.known[pu], view.first_seen_slot[pu]
    )
    x, y = serialize(state, view), serialize(perm, pview)
    np.testing.assert_allclose(y.global_feats, x.global_feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.user_feats, x.user_feats[pu], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.res_feats, x.res_feats[pr], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.pair_feats, x.pair_feats[:, pr][:, :, pu], rtol=1e-5, atol=1e-6)


def test_degenerate_slots_stay_finite_and_buffers_are_reused():
    cases = [
        make_slot("spectrum", [1], [1], rate_bps=[[0.0]]),  # one user, one channel, zero rate
        make_slot("spectrum", [1, 2], [1, 2, 3], rate_bps=np.ones((2, 3)), user_eligible=[False, False]),
        make_slot("mac", [1, 2], [1, 2], spectral_efficiency=[0.2, 0.6], buffer_bits=[0.0, 0.0]),
        make_slot(
            "mac",
            [1, 2, 3],
            [1, 2],
            spectral_efficiency=[0.2, 0.6, 1.1],
            buffer_bits=[1e3, 0.0, 5e3],
            resource_available=[False, False],
        ),
    ]
    for state in cases:
        x = serialize(state)
        assert all(np.isfinite(a).all() for a in x.arrays())
    state = make_slot("mac", [1, 2, 3], [1, 2], spectral_efficiency=[0.2, 0.6, 1.1], buffer_bits=[1e3, 0.0, 5e3])
    buf = StudentInputs.empty(3, 2)
    out = serialize(state, None, buf)
    assert out is buf  # filled in place
    again = serialize(state, None, buf)
    for a, b in zip(again.arrays(), serialize(state).arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert serialize(state, None, StudentInputs.empty(2, 2)).shape == (3, 2)  # wrong shape: fresh arrays


def test_resource_rate_uses_the_time_each_user_has_been_present():
    """Two users with the same cumulative RBGs: the one that joined later has the higher rate."""
    state = make_slot(
        "mac",
        [1, 2, 3],
        [0, 1, 2, 3],
        spectral_efficiency=[0.2344, 0.6016, 1.1758],
        buffer_bits=[512.0, 512.0, 512.0],
        slot=100,
    )
    view = HistoryView(
        np.ones(3), np.array([10.0, 10.0, 20.0]), np.full(3, 90), np.ones(3, bool), np.array([0, 50, 0])
    )  # present 101, 51 and 101 slots
    x = serialize(state, view)
    rate = np.array([10 / 101, 10 / 51, 20 / 101])
    col = USER_FEATURES.index("resource_rate_rel")
    np.testing.assert_allclose(x.user_feats[:, col], rate / rate.mean() - 1.0, rtol=1e-5)
    # the x_u feature itself does not see presence
    np.testing.assert_allclose(
        x.user_feats[:, USER_FEATURES.index("cum_resources_rel")], [-0.25, -0.25, 0.5], rtol=1e-5
    )
    # reported spectral efficiency, in units of 8 bit/s/Hz
    np.testing.assert_allclose(
        x.user_feats[:, USER_FEATURES.index("spectral_efficiency")], np.array([0.2344, 0.6016, 1.1758]) / 8.0, rtol=1e-6
    )
    # without presence (a view that does not carry it) the rate is x_u itself
    y = serialize(state, HistoryView(view.avg_served, view.cum_resources, view.last_served_slot, view.known))
    np.testing.assert_allclose(y.user_feats[:, col], [-0.25, -0.25, 0.5], rtol=1e-5)


def _mixed_slots(rng: np.random.Generator, count: int) -> tuple[list, list[HistoryView | None]]:
    """``count`` slots of random presets and sizes (busy resources, ineligible users, physical
    fields or none), each after a few random decisions of its own cell; some without history."""
    states, views = [], []
    for _ in range(count):
        seed = int(rng.integers(10**6))
        if rng.random() < 0.5:
            env = make_mac_env("standard", seed=seed, num_ue=int(rng.integers(1, 40)), num_rbg=int(rng.integers(1, 30)))
        else:
            n, r = int(rng.integers(1, 30)), int(rng.integers(1, 20))
            env = SpectrumEnv(SpectrumConfig(num_ue=n, num_channels=r, num_busy=int(rng.integers(0, r))), seed=seed)
        state, history = env.reset(), CellHistory.empty()
        for _ in range(int(rng.integers(0, 4))):
            owner = random_valid(state, rng)
            history = record_decision(history, state, owner)
            state = env.step(owner).state
        states.append(state)
        views.append(None if rng.random() < 0.25 else history.view(state))
    return states, views


def test_a_slot_serialized_in_any_padded_batch_is_bitwise_the_slot_alone() -> None:
    rng = np.random.default_rng(21)
    reused = None
    for _ in range(15):
        states, views = _mixed_slots(rng, int(rng.integers(1, 7)))
        if reused is None or reused.capacity[0] != len(states):
            reused = StudentBatch.empty(len(states), 50, 40)  # larger than any slot: more padding
        for batch in (serialize_many(states, views), serialize_many(states, views, reused)):
            assert batch.shapes == [(s.num_ue, s.num_res) for s in states]
            for b, (state, view) in enumerate(zip(states, views, strict=True)):
                alone = serialize(state, view)
                for got, want in zip(batch.item(b).arrays(), alone.arrays(), strict=True):
                    np.testing.assert_array_equal(got, want)
                n, r = state.num_ue, state.num_res
                x = batch.inputs  # the padding of a reused buffer is zero again
                assert not x.user_feats[b, n:].any() and not x.res_feats[b, r:].any()
                assert not x.pair_feats[b, :, r:].any() and not x.pair_feats[b, :, :, n:].any()
                assert not x.user_mask[b, n:].any() and not x.res_mask[b, r:].any()


def test_the_features_are_those_of_their_definitions() -> None:
    """A few features recomputed from their definitions (tensors' docstrings) on a mac slot with
    history and busy RBGs: the vectorised kernel computes what the names say."""
    state, view = _mac_with_history()
    avail = np.zeros(state.num_res, bool)
    avail[::2] = True
    state = replace(state, resource_available=avail)
    x = serialize(state, view)
    elig = state.user_eligible
    adm = state.utility[:, avail][elig]
    u_ref = adm.max()
    g = dict(zip(feature_spec()["global"], x.global_feats, strict=True))
    np.testing.assert_allclose(g["utility_mean"], (adm / u_ref).sum() / (elig.sum() * avail.sum()), rtol=1e-6)
    np.testing.assert_allclose(g["available_resource_fraction"], avail.mean(), rtol=1e-7)
    cum = view.cum_resources
    np.testing.assert_allclose(g["fairness_jfi"], cum.sum() ** 2 / (cum.size * (cum**2).sum()), rtol=1e-6)
    u = {name: x.user_feats[:, k] for k, name in enumerate(USER_FEATURES)}
    best = np.where(elig, state.utility[:, avail].max(axis=1) / u_ref, 0.0)
    np.testing.assert_allclose(u["best_utility"], best, rtol=1e-6)
    need = state.buffer_bits / np.maximum(state.utility[:, avail].max(axis=1), 1e-300)
    np.testing.assert_allclose(u["buffer_log"][elig], np.log1p(need[elig]), rtol=1e-5)
    np.testing.assert_array_equal(x.res_mask, avail)
    np.testing.assert_array_equal(x.pair_feats[4], avail[:, None] & elig[None, :])


def test_feature_extremes_are_the_min_and_max_over_each_slot_s_own_rows():
    """``tensor_kernel.extremes`` (the run-time range check's pass) against numpy on padded
    batches: eligible users only, every resource and pair of the slot, never its padding; a NaN
    feature is skipped, a block with no rows gives +inf / -inf; any N (its pair pass runs four
    users at a time)."""
    from service.serialize import tensor_kernel

    rng = np.random.default_rng(5)
    for trial in range(200):
        size, n_pad, r_pad = int(rng.integers(1, 4)), int(rng.integers(1, 23)), int(rng.integers(1, 9))
        g = rng.standard_normal((size, 3)).astype(np.float32)
        uf = rng.standard_normal((size, n_pad, 4)).astype(np.float32)
        rf = rng.standard_normal((size, r_pad, 2)).astype(np.float32)
        pc = rng.standard_normal((size, 5, r_pad, n_pad)).astype(np.float32)
        if trial % 3 == 0:  # zeros of both signs, infinities and NaN
            pc[rng.random(pc.shape) < 0.2] = 0.0
            pc[rng.random(pc.shape) < 0.2] = -0.0
            pc[rng.random(pc.shape) < 0.05] = np.inf
            pc[rng.random(pc.shape) < 0.1] = np.nan
        mask = (rng.random((size, n_pad)) < 0.7).astype(np.float32)
        num_ue, num_res = rng.integers(0, n_pad + 1, size), rng.integers(0, r_pad + 1, size)
        low, high = tensor_kernel.extremes(g, uf, rf, pc, mask, num_ue, num_res)
        for b in range(size):
            n, r = num_ue[b], num_res[b]
            users = uf[b, :n][mask[b, :n] > 0]
            blocks = [g[b][None, :], users, rf[b, :r], pc[b, :, :r, :n].reshape(5, -1).T]
            want_lo, want_hi = [], []
            for block in blocks:
                for k in range(block.shape[1]):
                    col = block[:, k][~np.isnan(block[:, k])]
                    want_lo.append(col.min() if col.size else np.inf)
                    want_hi.append(col.max() if col.size else -np.inf)
            assert np.array_equal(low[b], np.array(want_lo, np.float32)), trial
            assert np.array_equal(high[b], np.array(want_hi, np.float32)), trial
