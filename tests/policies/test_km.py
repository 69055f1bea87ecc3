"""``km`` is the exact optimum (SPEC §1): equal to ``exhaustive`` on hundreds of random small
instances, and no other policy beats it."""

from __future__ import annotations

import numpy as np
import pytest

from service import phy
from service.errors import PolicyUnavailableError
from service.history import CellHistory
from service.pag import is_valid
from service.pipeline import decide
from service.policies import PolicyContext, make, names
from service.policies.registry import PolicySet
from service.rng import slot_rng
from service.types import SlotState, make_slot, slot_utility

#: policies that need a model / endpoint (see test_contract.py); compared only when present
EXTERNAL = {"student", "teacher"}
KM, EXHAUSTIVE = make("km"), make("exhaustive")


def _both(state: SlotState) -> tuple[np.ndarray, np.ndarray]:
    ctx = PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot))
    return KM(state, ctx), EXHAUSTIVE(state, ctx)


def _utility(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:
        return rng.exponential(size=(n, r)) * 1e6
    if kind == 1:
        return rng.integers(0, 4, (n, r)).astype(float)  # ties and zeros
    dist = rng.uniform(10, 500, n)  # physical: strong users dominate every channel
    return phy.shannon_rate_bps(
        phy.rx_power_dbm(dist), rng.uniform(1e6, 1e7, r), fading_gain=rng.exponential(size=(n, r))
    )


def _spectrum_instances(count: int, seed: int) -> list[SlotState]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n, r = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        out.append(
            make_slot(
                "spectrum",
                np.arange(n),
                np.arange(r),
                rate_bps=_utility(rng, n, r),
                resource_available=rng.random(r) < 0.8,
                user_eligible=rng.random(n) < 0.9,
                slot=i,
            )
        )
    return out


def _mac_instances(count: int, seed: int) -> list[SlotState]:
    """TBS per user the same on every RBG (SE per user): where km is exact with caps > 1."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n, r = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        se = rng.choice(phy.MAC_SE_LEVELS, n) if rng.random() < 0.7 else rng.uniform(0.1, 2.0, n)
        tbs = phy.tbs_bits(se)
        # buffers: whole and fractional RBGs' worth, empty, or full buffers (None)
        buf = None if rng.random() < 0.2 else np.round(tbs * rng.choice([0.0, 0.5, 1.0, 1.7, 2.0, 3.2, 10.0], n))
        out.append(
            make_slot(
                "mac",
                np.arange(n),
                np.arange(r),
                spectral_efficiency=se,
                buffer_bits=buf,
                max_resources_per_user=int(rng.integers(1, r + 1)),
                resource_available=rng.random(r) < 0.85,
                slot=i,
            )
        )
    return out


def test_km_equals_exhaustive_on_spectrum_instances():
    for state in _spectrum_instances(300, seed=1):
        km, ex = _both(state)
        assert is_valid(state, km) and is_valid(state, ex)
        assert slot_utility(state, km) == pytest.approx(slot_utility(state, ex), rel=1e-9, abs=1e-9), state.utility


def test_km_equals_exhaustive_on_mac_instances_with_caps_and_buffers():
    for state in _mac_instances(300, seed=2):
        km, ex = _both(state)
        assert is_valid(state, km) and is_valid(state, ex)
        assert slot_utility(state, km) == pytest.approx(slot_utility(state, ex), rel=1e-9, abs=1e-9), (
            state.utility[:, 0],
            state.buffer_bits,
            state.max_resources_per_user,
            km,
            ex,
        )


def test_km_is_not_beaten_by_any_policy():
    """Every registered policy, through the pipeline (check + repair), scores at most km."""
    pset = PolicySet()
    instances = _spectrum_instances(25, seed=3) + _mac_instances(10, seed=4)
    for name in names():
        served = make(name).presets
        for state in instances:
            if state.preset not in served:
                continue
            try:
                d = decide(state, CellHistory.empty(), name, policies=pset, seed=5)
            except PolicyUnavailableError:
                assert name in EXTERNAL, f"{name} needs an external resource: list it in EXTERNAL"
                break
            best = slot_utility(state, KM(state, PolicyContext(CellHistory.empty().view(state), slot_rng(5, "", 0))))
            assert d.utility <= best * (1 + 1e-9) + 1e-9, (name, state.utility)


def test_grouped_km_is_km_per_block():
    rng = np.random.default_rng(6)
    state = make_slot("spectrum", np.arange(9), np.arange(7), rate_bps=rng.random((9, 7)))
    ctx = PolicyContext(CellHistory.empty().view(state), rng)
    km = slot_utility(state, KM(state, ctx))
    assert slot_utility(state, make("grouped_km", group_size=9)(state, ctx)) == pytest.approx(km)
    grouped = make("grouped_km", group_size=3)(state, ctx)
    assert is_valid(state, grouped) and slot_utility(state, grouped) <= km + 1e-12
    # blocks: users 0-2 with resources 0-2, users 3-5 with 3-4, users 6-8 with 5-6
    for users, res in (([0, 1, 2], [0, 1, 2]), ([3, 4, 5], [3, 4]), ([6, 7, 8], [5, 6])):
        assert set(grouped[res].tolist()) <= {0, *[u + 1 for u in users]}
    with pytest.raises(ValueError):
        make("grouped_km", group_size=0)


def test_km_uses_every_useful_resource_and_drops_worthless_pairs():
    state = make_slot("spectrum", [1, 2, 3], [1, 2], rate_bps=[[0.0, 0.0], [5.0, 1.0], [4.5, 0.0]])
    km, _ = _both(state)
    assert km.tolist() == [3, 2]  # 4.5 + 1 beats 5 + 0
    zero = make_slot("spectrum", [1], [1], rate_bps=[[0.0]])
    assert _both(zero)[0].tolist() == [0]  # a zero-utility pair is not granted
