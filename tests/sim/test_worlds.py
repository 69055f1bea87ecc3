"""World families (``service.sim.worlds``): seeded, policy-independent exogenous processes, units
that change nothing physical, the held-out contract of the trainer, and KPIs that mean what
their names say."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.sim.worlds import (
    HELD_OUT,
    MAC_FAMILIES,
    SPECTRUM_FAMILIES,
    WorldConfig,
    WorldEnv,
    random_world,
    spectrum_instance,
    training_families,
)
from service.types import slot_utility

PSET = PolicySet()


def _rollout(cfg: WorldConfig, policy: str, slots: int, seed: int = 4) -> tuple[WorldEnv, list[np.ndarray]]:
    env = WorldEnv(cfg, seed=seed)
    state, history = env.state(), CellHistory.empty()
    owners = []
    for _ in range(slots):
        d = decide(state, history, policy, policies=PSET)
        owners.append(d.owner)
        history = record_decision(history, state, d.owner)
        res = env.step(d.owner)
        history = apply_feedback(history, res.feedback)
        state = res.state
    return env, owners


@pytest.mark.parametrize("family", list(MAC_FAMILIES))
def test_same_seed_same_rollout_and_valid_states(family: str) -> None:
    cfg = random_world(family, np.random.default_rng(3), num_ue=12, num_rbg=9)
    a, owners_a = _rollout(cfg, "pf", 60)
    b, owners_b = _rollout(cfg, "pf", 60)
    assert all(np.array_equal(x, y) for x, y in zip(owners_a, owners_b, strict=True))
    assert a.kpis() == b.kpis()
    k = a.kpis()
    assert 0.0 <= k["bler"] <= 1.0 and 0.0 <= k["rbg_utilisation"] <= 1.0 and 0.0 < k["jain_throughput"] <= 1.0
    assert k["cell_throughput_bps"] > 0
    st = a.state()
    assert st.preset == "mac" and st.utility.shape == (12, 9) and st.tti_s == cfg.tti_s
    # rate_bps is bit/s: the mac utility is rate · tti_s, bits per RBG per slot
    assert np.allclose(st.utility / (cfg.rbg_bandwidth_hz * cfg.tti_s * cfg.unit_scale), a.reports[0])


def test_the_exogenous_processes_do_not_depend_on_the_policy() -> None:
    """Channels and arrivals of one seed are the same whatever is scheduled: the offered load and
    the channel reports match between an idle cell and pf."""
    cfg = replace(
        random_world("rayleigh-mixture", np.random.default_rng(8), num_ue=10, num_rbg=8, load=0.8), busy_fraction=0.3
    )
    busy, _ = _rollout(cfg, "pf", 80)
    idle = WorldEnv(cfg, seed=4)
    for _ in range(80):
        idle.step(np.zeros(cfg.num_rbg, np.int64))
    assert idle.arrived_bits == busy.arrived_bits > 0
    assert np.array_equal(idle.reports[0], busy.reports[0]) and np.array_equal(idle.available, busy.available)
    assert idle.kpis()["cell_throughput_bps"] == 0.0


def test_unit_scale_changes_the_numbers_not_the_physics() -> None:
    """The same world in another unit: pf (scale-free) decides the same, so every KPI is equal,
    while the state's rates and buffers are scaled."""
    cfg = random_world("los_mix-bernoulli", np.random.default_rng(2), num_ue=15, num_rbg=11, load=1.0, unit_scale=1.0)
    base, owners = _rollout(cfg, "pf", 80)
    for c in (1e-4, 1e5):
        other, owners_c = _rollout(replace(cfg, unit_scale=c), "pf", 80)
        assert all(np.array_equal(x, y) for x, y in zip(owners, owners_c, strict=True))
        assert other.kpis() == base.kpis()
        assert np.allclose(other.state().utility, c * base.state().utility)


def test_load_drives_the_offered_traffic() -> None:
    cfg = random_world("rayleigh-periodic", np.random.default_rng(5), num_ue=20, num_rbg=12, unit_scale=1.0)
    offered = [_rollout(replace(cfg, load=load), "pf", 200)[0].kpis()["offered_load_bps"] for load in (0.3, 1.2)]
    assert 2.5 < offered[1] / offered[0] < 5.5  # 4x the load, within the randomness of the arrivals


def test_held_out_families_are_never_training_families() -> None:
    for preset, fams in (("mac", MAC_FAMILIES), ("spectrum", SPECTRUM_FAMILIES)):
        train = training_families(preset)
        assert set(train).isdisjoint(HELD_OUT[preset]) and set(HELD_OUT[preset]) <= set(fams)
        assert len(HELD_OUT[preset]) >= 2 and set(train) | set(HELD_OUT[preset]) == set(fams)
    channels = {MAC_FAMILIES[f].channel for f in training_families("mac")}
    traffic = {MAC_FAMILIES[f].traffic for f in training_families("mac")}
    assert "rician" not in channels and "bursty" not in traffic  # a whole model of each is unseen


def test_random_world_draws_its_ranges() -> None:
    rng = np.random.default_rng(0)
    worlds = [random_world("rayleigh-mixture", rng) for _ in range(200)]
    assert min(w.num_ue for w in worlds) >= 2 and max(w.num_ue for w in worlds) <= 128
    assert min(w.num_rbg for w in worlds) >= 4 and max(w.num_rbg for w in worlds) <= 69
    scales = np.log10([w.unit_scale for w in worlds])
    assert scales.min() < -2 and scales.max() > 2  # six decades
    assert {w.scs_hz for w in worlds} == {15e3, 30e3} and {w.report_se for w in worlds} == {False, True}
    busy = np.array([w.busy_fraction for w in worlds])
    assert (busy == 0).any() and 0.3 < busy.max() <= 0.4  # worlds without and with busy RBGs


def test_unknown_models_are_refused() -> None:
    with pytest.raises(ValueError, match="channel model"):
        WorldConfig(channel="awgn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="traffic model"):
        WorldConfig(traffic="poisson")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spectrum family"):
        spectrum_instance("flat", 3, 3, np.random.default_rng(0))


@pytest.mark.parametrize("family", list(SPECTRUM_FAMILIES))
def test_spectrum_instances_are_valid_slots_in_bit_per_s(family: str) -> None:
    rng = np.random.default_rng(1)
    st = spectrum_instance(family, 30, 20, rng, busy_fraction=0.25, unit_scale=1.0)
    assert st.preset == "spectrum" and st.utility.shape == (30, 20)
    assert (st.utility >= 0).all() and np.isfinite(st.utility).all()
    assert int((~st.resource_available).sum()) == 5
    assert 1e3 < float(np.median(st.utility)) < 1e10  # bit/s of a 0.2-100 MHz channel
    d = decide(st, CellHistory.empty(), "km", policies=PSET)
    assert d.valid_before_repair and slot_utility(st, d.owner) > 0
