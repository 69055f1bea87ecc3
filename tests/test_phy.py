"""Physical-layer kernels (SPEC §2–§3): path loss, Shannon rate, SNR, TBS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service import phy


def test_dbm_watt_conversions():
    assert phy.dbm_to_w(30.0) == pytest.approx(1.0)
    assert phy.dbm_to_w(0.0) == pytest.approx(1e-3)
    assert phy.w_to_dbm(np.array([1e-3, 1.0])).tolist() == pytest.approx([0.0, 30.0])
    assert phy.w_to_dbm(0.0) == -math.inf
    x = np.linspace(-150, 50, 21)
    np.testing.assert_allclose(phy.w_to_dbm(phy.dbm_to_w(x)), x, atol=1e-9)


def test_rx_power_free_space_reference_and_exponent():
    """At 1 m the log-distance model is free space: P_t + 20·log10(λ / 4π); each decade of
    distance then costs 10·α dB."""
    lam = phy.SPEED_OF_LIGHT_M_S / 3.5e9
    p = phy.rx_power_dbm(np.array([1.0, 10.0, 100.0]))
    assert p[0] == pytest.approx(23.0 + 20 * math.log10(lam / (4 * math.pi)))
    assert p[0] == pytest.approx(-20.3291, abs=1e-4)  # by hand: 23 − 43.3291
    assert np.diff(p).tolist() == pytest.approx([-35.0, -35.0])
    p2 = phy.rx_power_dbm(
        np.array([100.0]), tx_power_dbm=20.0, tx_gain_dbi=3.0, rx_gain_dbi=2.0, carrier_hz=2e9, pathloss_exponent=2.0
    )
    lam2 = phy.SPEED_OF_LIGHT_M_S / 2e9
    assert p2[0] == pytest.approx(25.0 + 20 * math.log10(lam2 / (4 * math.pi)) - 40.0)


def test_shannon_rate_matches_formula_and_shapes():
    p_rx = np.array([-90.0, -100.0, -70.0])  # [N]
    bw = np.array([1e6, 5e6])  # [R]
    rate = phy.shannon_rate_bps(p_rx, bw)
    assert rate.shape == (3, 2)
    snr = 10 ** ((p_rx[:, None] - (-174 + 10 * np.log10(bw[None, :]))) / 10)
    np.testing.assert_allclose(rate, bw[None, :] * np.log2(1 + snr), rtol=1e-12)
    # more power, more rate; zero fading gain, zero rate
    assert (rate[2] > rate[0]).all() and (rate[0] > rate[1]).all()
    assert (phy.shannon_rate_bps(p_rx, bw, fading_gain=np.zeros((3, 2))) == 0).all()


def test_snr_db_is_rx_power_minus_noise():
    snr = phy.snr_db(np.array([-90.0]), np.array([1e6, 1e7]))
    assert snr.tolist()[0] == pytest.approx([24.0, 14.0])


def test_noise_power():
    assert phy.noise_power_w(np.array([1.0]))[0] == pytest.approx(10 ** (-204 / 10))


def test_tbs_bits_spec_values():
    """TBS per RBG = 4 · 12 · 14 · SE for the three channel states."""
    tbs = phy.tbs_bits(phy.MAC_SE_LEVELS)
    assert tbs.tolist() == pytest.approx([157.5168, 404.2752, 790.1376])
    assert phy.tbs_bits(np.ones((2, 3)), rb_per_rbg=1).shape == (2, 3)
    assert phy.tbs_bits(1.0, rb_per_rbg=1) == pytest.approx(168.0)
