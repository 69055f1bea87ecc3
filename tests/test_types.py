"""Slot model (SPEC §1–§3): ``make_slot`` validation, utility from physical fields, decision views."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import phy
from service.errors import InvalidSlotError
from service.types import (
    DEFAULT_RB_PER_RBG,
    allocation,
    make_slot,
    owner_ids,
    resources_per_user,
    served_bits,
    slot_utility,
)

RATE = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]  # 2 users × 3 resources


def _spec(**kw):
    args = {"rate_bps": RATE}
    args.update(kw)
    return make_slot("spectrum", [10, 20], [100, 200, 300], **args)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"preset": "lte"}, "preset"),
        ({"user_ids": []}, "users"),
        ({"resource_ids": []}, "resources"),
        ({"user_ids": [10, 10]}, "users[1].id"),
        ({"resource_ids": [100, 200, 100]}, "resources[2].id"),
        ({"user_ids": [10, 1.5]}, "users.id[1]"),
        ({"user_ids": [10, math.nan]}, "users.id[1]"),
        ({"user_ids": [10, math.inf]}, "users.id[1]"),
        ({"user_ids": [10, 2**70]}, "users.id"),
        ({"user_ids": [[10, 20]]}, "users.id"),
        ({"resource_ids": ["a", "b", "c"]}, "resources.id"),
        ({"bandwidth_hz": [1e6, -1.0, 1e6]}, "resources[1].bandwidth_hz"),
        ({"bandwidth_hz": [1e6, 0.0, 1e6]}, "resources[1].bandwidth_hz"),
        ({"bandwidth_hz": [1e6, math.nan, 1e6]}, "resources.bandwidth_hz[1]"),
        ({"bandwidth_hz": [1e6, 1e6]}, "resources.bandwidth_hz"),
        ({"resource_available": [True, False]}, "resources.available"),
        ({"resource_available": [True, "no", True]}, "resources.available"),
        ({"user_eligible": [True, math.nan]}, "users.eligible"),
        ({"buffer_bits": [1.0, -2.0]}, "users[1].buffer_bits"),
        ({"buffer_bits": [1.0, math.inf]}, "users.buffer_bits[1]"),
        ({"max_resources_per_user": 0}, "max_resources_per_user"),
        ({"max_resources_per_user": 1.5}, "max_resources_per_user"),
        ({"rate_bps": [[1.0, 2.0], [3.0, 4.0]]}, "rate_bps"),
        ({"rate_bps": [[1.0, 2.0, 3.0]]}, "rate_bps"),
        ({"rate_bps": [[1.0, 2.0, 3.0], [4.0, math.nan, 6.0]]}, "rate_bps"),
        ({"rate_bps": [[1.0, 2.0, 3.0], [4.0, math.inf, 6.0]]}, "rate_bps"),
        ({"rate_bps": [[1.0, 2.0, 3.0], [4.0, -5.0, 6.0]]}, "rate_bps"),
        ({"rate_bps": [[1.0, 2.0, 3.0], [4.0, 5.0]]}, "rate_bps"),
        ({"rate_bps": [["x", 2.0, 3.0], [4.0, 5.0, 6.0]]}, "rate_bps"),
        ({"utility": RATE}, "rate_bps,utility"),  # both matrices: refused, naming both
        ({"utility": [[0.0] * 3] * 2, "rx_power_dbm": [-80.0, -90.0]}, "rate_bps,utility"),
        ({"rate_bps": None, "utility": [[1.0, 2.0], [3.0, 4.0]]}, "utility"),
        ({"rate_bps": None, "utility": [[1.0, 2.0, 3.0], [4.0, math.nan, 6.0]]}, "utility"),
        ({"rate_bps": None, "utility": [[1.0, 2.0, 3.0], [4.0, math.inf, 6.0]]}, "utility"),
        ({"rate_bps": None, "utility": [[1.0, 2.0, 3.0], [4.0, -0.5, 6.0]]}, "utility"),
        ({"rate_bps": None}, "users.rx_power_dbm"),
        ({"rate_bps": None, "rx_power_dbm": [-80.0]}, "users.rx_power_dbm"),
        ({"rate_bps": None, "rx_power_dbm": [-80.0, math.nan]}, "users.rx_power_dbm[1]"),
        ({"rate_bps": None, "rx_power_dbm": [-80.0, 1e300]}, "users.rx_power_dbm"),
        ({"rate_bps": None, "rx_power_dbm": [-80.0, -90.0], "fading_gain": np.ones((2, 2))}, "fading_gain"),
        ({"rate_bps": None, "rx_power_dbm": [-80.0, -90.0], "fading_gain": -np.ones((2, 3))}, "fading_gain"),
        (
            {"rate_bps": None, "rx_power_dbm": [-80.0, -90.0], "interference_dbm": [-100.0]},
            "resources.interference_dbm",
        ),
        ({"tti_s": 0.0}, "tti_s"),
        ({"rb_per_rbg": 0}, "rb_per_rbg"),
        ({"rb_per_rbg": 1.5}, "rb_per_rbg"),
        ({"max_resources_per_user": True}, "max_resources_per_user"),
        ({"noise_density_dbm_hz": math.nan}, "noise_density_dbm_hz"),
    ],
)
def test_bad_input_raises_invalid_slot_error_naming_the_field(kwargs, field):
    args = {"preset": "spectrum", "user_ids": [10, 20], "resource_ids": [100, 200, 300], "rate_bps": RATE}
    args.update(kwargs)
    with pytest.raises(InvalidSlotError) as info:
        make_slot(args.pop("preset"), args.pop("user_ids"), args.pop("resource_ids"), **args)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":") and info.value.message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "users.spectral_efficiency"),  # missing physical field
        ({"spectral_efficiency": [0.6]}, "users.spectral_efficiency"),
        ({"spectral_efficiency": np.ones((2, 2))}, "users.spectral_efficiency"),
        ({"spectral_efficiency": [0.6, math.nan]}, "users.spectral_efficiency"),
        ({"spectral_efficiency": [0.6, -0.1]}, "users.spectral_efficiency"),
        ({"spectral_efficiency": ["good", "poor"]}, "users.spectral_efficiency"),
        ({"spectral_efficiency": [0.6, 1e308]}, "users.spectral_efficiency"),
    ],
)
def test_mac_physical_fields_are_validated(kwargs, field):
    with pytest.raises(InvalidSlotError) as info:
        make_slot("mac", [1, 2], [0, 1, 2], **kwargs)
    assert info.value.field == field


def test_invalid_slot_error_is_a_value_error():
    with pytest.raises(ValueError, match="users"):
        make_slot("spectrum", [], [1], rate_bps=np.zeros((0, 1)))


def test_defaults_per_preset():
    spec = _spec()
    assert spec.max_resources_per_user == 1
    assert spec.resource_available.all() and spec.user_eligible.all()
    assert np.array_equal(spec.bandwidth_hz, [1e6] * 3)
    mac = make_slot("mac", [1, 2], [0, 1, 2, 3], spectral_efficiency=[0.2344, 1.1758])
    assert mac.max_resources_per_user == 4  # R
    assert np.array_equal(mac.bandwidth_hz, [30e3 * 12 * DEFAULT_RB_PER_RBG] * 4)
    assert mac.buffer_bits is None and mac.num_ue == 2 and mac.num_res == 4
    assert mac.user_ids.dtype == np.int64 and mac.utility.dtype == np.float64


def test_integral_float_and_numpy_ids_are_accepted():
    st = make_slot(
        "spectrum",
        np.array([3.0, 1.0]),
        np.array([7], np.int32),
        rate_bps=[[1.0], [2.0]],
        max_resources_per_user=np.int64(1),
    )
    assert st.user_ids.tolist() == [3, 1] and st.resource_ids.tolist() == [7]
    mac = make_slot("mac", [1], [0, 1, 2], spectral_efficiency=[1.0], max_resources_per_user=2.0, rb_per_rbg=2.0)
    assert mac.max_resources_per_user == 2 and mac.utility[0, 0] == pytest.approx(2 * 168.0)


def test_mac_users_without_data_are_ineligible():
    st = make_slot(
        "mac",
        [1, 2, 3],
        [0, 1],
        spectral_efficiency=[0.6, 0.6, 0.6],
        buffer_bits=[100.0, 0.0, 5.0],
        user_eligible=[True, True, False],
    )
    assert st.user_eligible.tolist() == [True, False, False]
    # spectrum: an empty buffer does not change eligibility
    sp = _spec(buffer_bits=[0.0, 0.0])
    assert sp.user_eligible.all()


def test_make_slot_does_not_alias_caller_arrays():
    elig = np.array([True, True])
    st = make_slot("mac", [1, 2], [0], spectral_efficiency=[0.6, 0.6], buffer_bits=[0.0, 8.0], user_eligible=elig)
    assert elig.all()  # the caller's mask was not modified by the empty-buffer rule
    assert st.user_eligible.tolist() == [False, True]


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("buffer_bits", [0.0, math.nan]),
        ("buffer_bits", [math.inf, 1.0]),
        ("buffer_bits", [1.0, 2.0, 3.0]),
        ("bandwidth_hz", [1e6, -math.inf, 1e6]),
        ("user_eligible", [True]),
    ],
)
def test_typed_arrays_are_checked_as_lists_are(field, values):
    """numpy arrays of the field's own dtype take a shorter path through ``make_slot``: the
    same refusals, naming the same element, as the same values given as a list."""
    dtype = bool if field == "user_eligible" else np.float64
    errors = []
    for supplied in (list(values), np.asarray(values, dtype)):
        with pytest.raises(InvalidSlotError) as info:
            make_slot("mac", [1, 2], [0, 1, 2], spectral_efficiency=[0.6, 1.2], **{field: supplied})
        errors.append((info.value.field, info.value.message))
    assert errors[0] == errors[1]


def test_typed_arrays_give_the_slot_lists_give_and_are_copied():
    buf = np.array([100.0, 0.0])
    bw = np.array([1.44e6, 1.44e6, 0.72e6])
    typed = make_slot("mac", np.array([1, 2]), np.array([0, 1, 2]), spectral_efficiency=np.array([0.6, 1.2]),
                      buffer_bits=buf, bandwidth_hz=bw)  # fmt: skip
    listed = make_slot("mac", [1, 2], [0, 1, 2], spectral_efficiency=[0.6, 1.2], buffer_bits=buf.tolist(),
                       bandwidth_hz=bw.tolist())  # fmt: skip
    for name in ("user_ids", "resource_ids", "utility", "bandwidth_hz", "buffer_bits", "user_eligible"):
        assert np.array_equal(getattr(typed, name), getattr(listed, name)), name
    assert not np.shares_memory(typed.buffer_bits, buf) and not np.shares_memory(typed.bandwidth_hz, bw)
    assert typed.utility.shape == (2, 3) and np.array_equal(typed.utility[:, 0], typed.utility[:, 2])


def _slot_fields(state) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    source=st.sampled_from(["se_user", "se_rbg", "rate", "utility", "shannon"]),
    n=st.integers(1, 12),
    r=st.integers(1, 9),
)
def test_checked_slot_equals_the_unchecked_slot(seed, source, n, r):
    """``checked=True`` (what both transports pass, after the contract's checks) skips only the
    value checks: on values within the contract it builds the very slot the full checks build."""
    rng = np.random.default_rng(seed)
    preset = "spectrum" if source == "shannon" or (source == "rate" and seed % 2) else "mac"
    kw = {
        "bandwidth_hz": rng.uniform(1e5, 2e6, r),
        "resource_available": rng.random(r) < 0.8,
        "user_eligible": rng.random(n) < 0.9,
        "buffer_bits": np.where(rng.random(n) < 0.2, 0.0, rng.uniform(0, 1e5, n)),
        "rb_per_rbg": int(rng.integers(1, 17)),
        "tti_s": float(rng.choice([1e-3, 5e-4, 1.25e-4])),
        "max_resources_per_user": int(rng.integers(1, r + 1)),
    }
    if source == "se_user":
        kw["spectral_efficiency"] = rng.uniform(0, 7.4, n)
    elif source == "se_rbg":
        kw["spectral_efficiency"] = rng.uniform(0, 7.4, (n, r))
    elif source == "rate":
        kw["rate_bps"] = rng.uniform(0, 1e8, (n, r))
    elif source == "utility":
        kw["utility"] = rng.uniform(0, 1e4, (n, r))
    else:
        kw["rx_power_dbm"] = rng.uniform(-120, -60, n)
        kw["fading_gain"] = rng.exponential(1.0, (n, r))
    uids = rng.choice(10**6, n, replace=False).astype(np.int64)
    rids = np.arange(r, dtype=np.int64) * 3
    full = make_slot(preset, uids, rids, cell_id="c", slot=7, **kw)
    checked = make_slot(preset, uids.copy(), rids.copy(), cell_id="c", slot=7, checked=True,
                        **{k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kw.items()})  # fmt: skip
    fields = _slot_fields(full)
    assert len(fields) >= 16
    for name, value in fields.items():
        other = getattr(checked, name)
        if isinstance(value, np.ndarray):
            assert other is not None and value.dtype == other.dtype and np.array_equal(value, other), name
        else:
            assert value == other, name


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"buffer_bits": np.ones(3)}, "users.buffer_bits"),
        ({"bandwidth_hz": np.ones(2) * 1e6}, "resources.bandwidth_hz"),
        ({"user_eligible": np.ones(1, bool)}, "users.eligible"),
        ({"user_ids": np.array([4, 4], np.int64)}, "users[1].id"),
        ({"spectral_efficiency": np.ones((2, 2))}, "users.spectral_efficiency"),
        ({"retx_bits": np.array([8.0, 0.0]), "retx_rbgs": np.array([0, 0])}, "users[0].retx_rbgs"),
        ({"retx_bits": np.array([8.0, 0.0]), "retx_rbgs": np.array([4, 0])}, "users[0].retx_rbgs"),
    ],
)
def test_checked_slot_still_checks_the_slot_s_structure(kwargs, field):
    """What the contract's per-field ranges cannot know (lengths, shapes, unique ids, the HARQ
    pairs and ``retx_rbgs`` <= R) is refused with ``checked=True`` as without it."""
    args = {"user_ids": np.array([4, 5], np.int64), "spectral_efficiency": np.array([0.6, 1.2]), **kwargs}
    for checked in (False, True):
        with pytest.raises(InvalidSlotError) as info:
            make_slot("mac", resource_ids=np.arange(3, dtype=np.int64), checked=checked, **args)
        assert info.value.field == field


def test_checked_slot_takes_the_caller_s_typed_arrays_without_a_copy():
    """The transports' freshly decoded arrays are not copied again (the point of ``checked``)."""
    buf, se = np.array([100.0, 8.0]), np.array([0.6, 1.2])
    state = make_slot("mac", np.array([1, 2]), np.array([0, 1]), spectral_efficiency=se, buffer_bits=buf, checked=True)
    assert state.buffer_bits is buf and state.spectral_efficiency is se


def test_admissible_is_eligibility_times_availability():
    st = _spec(resource_available=[True, False, True], user_eligible=[False, True])
    assert st.admissible().tolist() == [[False, False, False], [True, False, True]]


# ----------------------------------------------------------------------------- utility from physics


def test_spectrum_rate_from_physical_fields_matches_spec_by_hand():
    """SPEC §2 at d = 100 m, f = 3.5 GHz, α = 3.5, P_t = 23 dBm, B = 1 MHz, N0 = −174 dBm/Hz.

    λ = c/f = 0.0856550 m; 20·log10(λ/4π) = −43.3291 dB; path loss over 100 m at α = 3.5 = 70 dB
    ⇒ P_rx = 23 − 43.3291 − 70 = −90.3291 dBm. Noise N0·B = −114 dBm ⇒ SNR = 23.6709 dB = 232.855
    ⇒ rate = 1e6 · log2(233.855) = 7.86947 Mbit/s.
    """
    p_rx = phy.rx_power_dbm(np.array([100.0]))
    assert p_rx[0] == pytest.approx(-90.3291, abs=1e-4)
    st = make_slot("spectrum", [1], [1, 2], rx_power_dbm=p_rx, bandwidth_hz=[1e6, 2e6])
    assert st.utility[0, 0] == pytest.approx(7.86947e6, rel=1e-5)
    # 2 MHz: twice the bandwidth, noise 3 dB higher: 2e6·log2(1 + 232.855/2)
    assert st.utility[0, 1] == pytest.approx(2e6 * math.log2(1 + 232.855 / 2), rel=1e-5)
    assert st.rx_power_dbm[0] == pytest.approx(-90.3291, abs=1e-4)


def test_spectrum_rate_uses_fading_and_interference():
    p_rx = np.array([-90.0, -80.0])
    g = np.array([[0.5, 2.0], [1.0, 0.0]])
    st = make_slot(
        "spectrum",
        [1, 2],
        [1, 2],
        rx_power_dbm=p_rx,
        fading_gain=g,
        interference_dbm=[-114.0, -200.0],
        bandwidth_hz=[1e6, 1e6],
    )
    noise_w = 10 ** ((-114 - 30) / 10)
    p_w = 10 ** ((p_rx - 30) / 10)
    denom = np.array([2 * noise_w, noise_w + 10 ** ((-200 - 30) / 10)])
    expected = 1e6 * np.log2(1 + g * p_w[:, None] / denom[None, :])
    np.testing.assert_allclose(st.utility, expected, rtol=1e-12)
    assert st.utility[1, 1] == 0.0  # a deep fade carries nothing


def test_mac_utility_is_tbs_per_rbg():
    """SPEC §3: TBS = n_RB · 12 · 14 · SE; 4 RBs per RBG: 0.6016 → 404.2752 bits per RBG."""
    st = make_slot("mac", [1, 2], [0, 1, 2], spectral_efficiency=[0.6016, 1.1758])
    assert st.utility[0].tolist() == pytest.approx([404.2752] * 3)
    assert st.utility[1].tolist() == pytest.approx([4 * 12 * 14 * 1.1758] * 3)
    per_rbg = make_slot("mac", [1], [0, 1], spectral_efficiency=[[0.2344, 1.1758]], rb_per_rbg=2)
    assert per_rbg.utility[0].tolist() == pytest.approx([2 * 168 * 0.2344, 2 * 168 * 1.1758])


def test_rate_matrix_overrides_physical_fields():
    st = make_slot("spectrum", [1, 2], [5], rate_bps=[[3.0], [4.0]], rx_power_dbm=[-80.0, -70.0])
    assert st.utility.tolist() == [[3.0], [4.0]]  # spectrum: the rate in bit/s is the utility
    # mac: rate_bps is bit/s too; the utility is bits per RBG per slot = rate_bps · tti_s
    st2 = make_slot("mac", [1], [5, 6], rate_bps=[[2.0e4, 4.0e4]], spectral_efficiency=[1.1758])
    assert st2.tti_s == 0.0005
    assert st2.utility.tolist() == [[10.0, 20.0]]


def test_mac_rate_bps_is_bit_per_second_times_the_tti():
    rate = np.array([[1.6932e6, 0.8664e6, 0.0], [0.3375e6, 1.6932e6, 2.2e6]])  # Mbit/s-scale RBG rates
    for tti in (0.0005, 0.001, 0.000125):
        st = make_slot("mac", [1, 2], [0, 1, 2], rate_bps=rate, buffer_bits=[2048.0, 512.0], tti_s=tti)
        np.testing.assert_array_equal(st.utility, rate * tti)
        assert st.tti_s == tti
    st = make_slot("mac", [1, 2], [0, 1, 2], rate_bps=rate, buffer_bits=[2048.0, 512.0])
    assert st.utility[0, 0] == pytest.approx(846.6)  # ~ one RBG at SE 1.1758 in 0.5 ms
    # the buffers (bits) bind against bits, not bit/s: user 2 sends its 512 bits on one RBG
    assert served_bits(st, np.array([1, 2, 2])).tolist() == pytest.approx([846.6, 512.0])
    # spectrum keeps bit/s whatever the TTI
    sp = make_slot("spectrum", [1, 2], [0, 1, 2], rate_bps=rate, tti_s=0.001)
    np.testing.assert_array_equal(sp.utility, rate)


@pytest.mark.parametrize("preset", ["spectrum", "mac"])
def test_utility_matrix_is_used_as_given(preset):
    weights = [[0.9, 0.0, 3.5], [1e-3, 7.0, 2.0]]
    physical = {"rx_power_dbm": [-80.0, -70.0]} if preset == "spectrum" else {"spectral_efficiency": [1.1758, 0.6]}
    for tti in (0.0005, 0.01):
        st = make_slot(preset, [1, 2], [0, 1, 2], utility=weights, tti_s=tti, **physical)
        assert st.utility.tolist() == weights  # no unit conversion, no physical recomputation
        assert st.utility.dtype == np.float64
    if preset == "mac":  # the buffers compare with the utility as it is
        st = make_slot("mac", [1, 2], [0, 1, 2], utility=weights, buffer_bits=[1.0, 100.0])
        assert served_bits(st, np.array([1, 2, 1])).tolist() == [1.0, 7.0]


def test_rate_bps_and_utility_together_are_refused_naming_both():
    for preset in ("spectrum", "mac"):
        with pytest.raises(InvalidSlotError) as info:
            make_slot(
                preset, [1], [0], rate_bps=[[1e6]], utility=[[500.0]], spectral_efficiency=[1.0], rx_power_dbm=[-80.0]
            )
        assert info.value.field == "rate_bps,utility"
        assert "rate_bps" in info.value.message and "utility" in info.value.message


# ----------------------------------------------------------------------------- decision views


def test_views_derived_from_the_dcm_vector():
    st = _spec()
    owner = np.array([2, 0, 1])
    assert owner_ids(st, owner) == [20, None, 10]
    assert allocation(st, owner) == {20: [100], 10: [300]}
    assert resources_per_user(owner, 2).tolist() == [1, 1]
    assert served_bits(st, owner).tolist() == [3.0, 4.0]
    assert slot_utility(st, owner) == 7.0
    assert allocation(st, np.zeros(3, np.int64)) == {}


def test_mac_served_bits_are_capped_by_the_buffer():
    st = make_slot("mac", [1, 2], [0, 1, 2], utility=np.full((2, 3), 100.0), buffer_bits=[150.0, 1000.0])
    owner = np.array([1, 1, 2])
    assert served_bits(st, owner).tolist() == [150.0, 100.0]
    assert slot_utility(st, owner) == 250.0
    # spectrum ignores buffers: the rate is the utility
    sp = make_slot(
        "spectrum", [1, 2], [0, 1], rate_bps=np.full((2, 2), 100.0), buffer_bits=[1.0, 1.0], max_resources_per_user=2
    )
    assert slot_utility(sp, np.array([1, 1])) == 200.0


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), preset=st.sampled_from(["mac", "spectrum"]), capped=st.booleans())
def test_served_bits_is_the_sum_of_each_user_s_resources(seed, preset, capped):
    """``served_bits`` against its definition, user by user: the utility of the resources the user
    owns, added in resource order (bit-exact), capped by its buffer in mac; tokens <= 0 serve nobody."""
    rng = np.random.default_rng(seed)
    n, r = int(rng.integers(1, 12)), int(rng.integers(1, 20))
    util = rng.exponential(1e3, (n, r)) * (rng.random((n, r)) < 0.8)
    buf = rng.exponential(2e3, n) if capped else None
    state = make_slot(preset, np.arange(n) * 3, np.arange(r), utility=util, buffer_bits=buf)
    owner = rng.integers(-1, n + 1, r)
    want = np.zeros(n)
    for res, k in enumerate(owner.tolist()):
        if k > 0:
            want[k - 1] += state.utility[k - 1, res]
    if preset == "mac" and buf is not None:
        want = np.minimum(want, state.buffer_bits)
    assert np.array_equal(served_bits(state, owner), want)
