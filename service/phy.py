"""Physical-layer kernels (pure numpy): path loss, Shannon rate, MAC spectral efficiency and TBS.

Spectrum preset follows SPEC §2 (LSA section III); MAC preset follows SPEC §3
(Stackelberg paper section III, TS 38.214 table 5.1.3.1-1 for the spectral efficiencies).
"""

from __future__ import annotations

import numpy as np

SPEED_OF_LIGHT_M_S = 299_792_458.0

#: Spectral efficiency (bit/s/Hz) of the 3-state channel {poor, medium, good}:
#: MCS indices 2, 6, 10 of TS 38.214 table 5.1.3.1-1 (SPEC §3).
MAC_SE_LEVELS = np.array([0.2344, 0.6016, 1.1758])
SUBCARRIERS_PER_RB = 12
SYMBOLS_PER_SLOT = 14


def dbm_to_w(p_dbm: np.ndarray | float) -> np.ndarray:
    """dBm -> W."""
    return np.power(10.0, (np.asarray(p_dbm, dtype=np.float64) - 30.0) / 10.0)


def w_to_dbm(p_w: np.ndarray | float) -> np.ndarray:
    """W -> dBm (``-inf`` for 0 W)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(p_w, dtype=np.float64)) + 30.0


def rx_power_dbm(
    distance_m: np.ndarray,
    *,
    tx_power_dbm: float = 23.0,
    tx_gain_dbi: float = 0.0,
    rx_gain_dbi: float = 0.0,
    carrier_hz: float = 3.5e9,
    pathloss_exponent: float = 3.5,
) -> np.ndarray:
    """Received power, log-distance path loss with a 1 m free-space reference (SPEC §2).

    ``P_rx = P_t · G_t · G_r · (λ / 4π)² · d^(−α)``.

    distance_m: [N] metres (> 0). Returns [N] dBm.
    """
    d = np.asarray(distance_m, dtype=np.float64)
    wavelength_m = SPEED_OF_LIGHT_M_S / carrier_hz
    fspl_1m_db = 20.0 * np.log10(wavelength_m / (4.0 * np.pi))
    return tx_power_dbm + tx_gain_dbi + rx_gain_dbi + fspl_1m_db - 10.0 * pathloss_exponent * np.log10(d)


def noise_power_w(bandwidth_hz: np.ndarray, noise_density_dbm_hz: float = -174.0) -> np.ndarray:
    """Thermal noise ``N0 · B`` in W. bandwidth_hz: [R]. Returns [R]."""
    return dbm_to_w(noise_density_dbm_hz) * np.asarray(bandwidth_hz, dtype=np.float64)


def shannon_rate_bps(
    rx_power_dbm_u: np.ndarray,
    bandwidth_hz: np.ndarray,
    *,
    fading_gain: np.ndarray | None = None,
    interference_dbm: np.ndarray | None = None,
    noise_density_dbm_hz: float = -174.0,
) -> np.ndarray:
    """Shannon rate of every (user, channel) pair (SPEC §2, LSA eq. 3).

    ``rate[u,c] = B_c · log2(1 + g[u,c] · P_rx(u) / (N0 · B_c + I_c))``

    rx_power_dbm_u: [N]; bandwidth_hz: [R]; fading_gain: [N, R] power gains (None = flat, g = 1);
    interference_dbm: [R] (None = no interference). Returns rate_bps [N, R].
    """
    p_rx_w = dbm_to_w(rx_power_dbm_u)[:, None]  # [N, 1]
    bw = np.asarray(bandwidth_hz, dtype=np.float64)[None, :]  # [1, R]
    denom_w = noise_power_w(bw, noise_density_dbm_hz)  # [1, R]
    if interference_dbm is not None:
        denom_w = denom_w + dbm_to_w(interference_dbm)[None, :]
    sinr = p_rx_w / denom_w  # [N, R]
    if fading_gain is not None:
        sinr = sinr * fading_gain
    return bw * np.log2(1.0 + sinr)


def snr_db(rx_power_dbm_u: np.ndarray, bandwidth_hz: np.ndarray, noise_density_dbm_hz: float = -174.0) -> np.ndarray:
    """Average SNR of every (user, channel) pair without fading, in dB. Returns [N, R]."""
    noise_dbm = w_to_dbm(noise_power_w(bandwidth_hz, noise_density_dbm_hz))
    return np.asarray(rx_power_dbm_u, dtype=np.float64)[:, None] - noise_dbm[None, :]


def tbs_bits(spectral_efficiency: np.ndarray, rb_per_rbg: int = 4) -> np.ndarray:
    """Transport block bits carried by one RBG in one slot (SPEC §3).

    ``TBS = n_RB_per_RBG · 12 · 14 · SE``. spectral_efficiency: any shape (bit/s/Hz per RE).
    Returns the same shape, in bits.
    """
    return rb_per_rbg * SUBCARRIERS_PER_RB * SYMBOLS_PER_SLOT * np.asarray(spectral_efficiency, dtype=np.float64)
