"""KPIs of SPEC §2–§3 as pure functions (numpy in, floats out).

MAC preset KPIs follow the Stackelberg paper section V-A (eqs. 23–24) and its leader and
follower utilities (eqs. 2, 3, 5); the spectrum preset reuses ``jain_fairness`` and ``ratio``.
Conventions for empty inputs are stated per function (they never raise on an empty run; a
quantity that is undefined is NaN, except Jain's index of an all-zero vector, see below).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence[float]


def jain_fairness(x: ArrayLike) -> float:
    """Jain's fairness index ``JFI(x) = (Σ_u x_u)² / (N · Σ_u x_u²)`` of x [N] (x >= 0).

    Ranges from 1/N (one user has everything) to 1 (all equal). An all-zero vector is treated
    as perfectly fair (1.0): nobody has received more than anybody else. Empty x -> NaN.
    """
    v = np.asarray(x, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan")
    sq = float(np.dot(v, v))
    if sq == 0.0:
        return 1.0
    return float(v.sum() ** 2 / (v.size * sq))


def throughput_per_ue_mbps(delivered_bits: ArrayLike, active_ue: ArrayLike, tti_s: float) -> float:
    """Average throughput per active UE (Stackelberg eq. 23), in Mbit/s.

    ``S = (1/T) Σ_t (bits_t / N_t) / TTI`` — bits received by the BS in TTI t divided by the
    number of UEs present in that TTI, averaged over the T TTIs, per second.
    delivered_bits: [T] bits received per TTI; active_ue: [T] UEs present per TTI (TTIs with no
    UE present are skipped). Empty -> NaN.
    """
    bits = np.asarray(delivered_bits, dtype=np.float64)
    n = np.asarray(active_ue, dtype=np.float64)
    ok = n > 0
    if not ok.any():
        return float("nan")
    return float(np.mean(bits[ok] / n[ok]) / tti_s / 1e6)


def cell_throughput_mbps(delivered_bits: ArrayLike, tti_s: float) -> float:
    """Cell (sum) throughput ``Σ_t bits_t / (T · TTI)`` in Mbit/s. delivered_bits: [T]. Empty -> NaN."""
    bits = np.asarray(delivered_bits, dtype=np.float64)
    if bits.size == 0:
        return float("nan")
    return float(bits.mean() / tti_s / 1e6)


def resource_efficiency(received_dpdus: float, used_rbgs: float) -> float:
    """Received dPDUs per used RBG (Stackelberg eq. 24): ``Σ received / Σ RBGs transmitted on``.

    NaN when no RBG was used."""
    return float(received_dpdus / used_rbgs) if used_rbgs > 0 else float("nan")


def packet_success_rate(delivered: float, transmitted: float) -> float:
    """Delivered / transmitted (transport blocks that arrived over transport blocks sent).

    NaN when nothing was transmitted."""
    return float(delivered / transmitted) if transmitted > 0 else float("nan")


def latency_stats(latency_slots: ArrayLike) -> tuple[float, float]:
    """(mean, 95th percentile) of per-dPDU latencies in slots (generation TTI to the TTI its last
    bit was received). latency_slots: [P]. Empty -> (NaN, NaN)."""
    lat = np.asarray(latency_slots, dtype=np.float64)
    if lat.size == 0:
        return float("nan"), float("nan")
    return float(lat.mean()), float(np.percentile(lat, 95))


def queue_stats(buffer_samples: ArrayLike) -> tuple[float, float]:
    """(mean, max) buffer occupancy over all (UE, TTI) samples — queue stability.

    buffer_samples: any shape, in the caller's unit (dPDUs in the MAC KPIs). Empty -> (NaN, NaN).
    """
    q = np.asarray(buffer_samples, dtype=np.float64).ravel()
    if q.size == 0:
        return float("nan"), float("nan")
    return float(q.mean()), float(q.max())


def overflow_drops(dropped_per_tti: ArrayLike) -> int:
    """Total dPDUs dropped at a full FIFO buffer. dropped_per_tti: [T] (or per UE), counts."""
    return int(np.asarray(dropped_per_tti, dtype=np.int64).sum())


def valid_action_rate(valid_before_repair: ArrayLike) -> float:
    """Fraction of raw policy outputs that passed every PAG check before repair (SPEC §4).

    valid_before_repair: [D] booleans, one per decision. Empty -> NaN."""
    v = np.asarray(valid_before_repair, dtype=bool)
    return float(v.mean()) if v.size else float("nan")


def leader_utility(delivered_bits: float, max_bits_per_tti: float, cum_rbgs: ArrayLike, omega: float = 0.5) -> float:
    """Leader (BS) utility of one TTI (Stackelberg eq. 5).

    ``U_BS = ω · min(1, bits_t / bits_max) + (1 − ω) · JFI(x)``, where ``bits_t`` is what the BS
    received in the TTI, ``bits_max`` the cell's maximum deliverable bits per TTI (every RBG at
    the best spectral efficiency) so the throughput term lies in [0, 1], and ``x`` [N] the
    cumulative RBGs used by each UE present up to and including this TTI.
    """
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega must be in [0, 1], got {omega}")
    thr = min(1.0, delivered_bits / max_bits_per_tti) if max_bits_per_tti > 0 else 0.0
    x = np.asarray(cum_rbgs, dtype=np.float64)
    jfi = jain_fairness(x) if x.size else 1.0
    return float(omega * thr + (1.0 - omega) * jfi)


def hamming_similarity(bitmap: ArrayLike, dcm_bitmap: ArrayLike) -> float:
    """Normalized Hamming similarity (Stackelberg eq. 3): ``1 − d_H(a, b) / M`` of two bitmaps [M]."""
    a = np.asarray(bitmap, dtype=bool)
    b = np.asarray(dcm_bitmap, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"bitmaps differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 1.0
    return float(1.0 - np.count_nonzero(a != b) / a.size)


def follower_utility(
    received_dpdus: float, attempts: float, bitmap: ArrayLike, dcm_bitmap: ArrayLike, c1: float = 1.0, c2: float = 1.0
) -> float:
    """Follower (UE) utility of one TTI (Stackelberg eq. 2).

    ``U_u = c1 · received / attempts + c2 · sim(bitmap, DCM bitmap)``; ``attempts`` is the number
    of RBGs the UE transmitted on (the weight of its bitmap); the efficiency term is 0 when the
    UE made no attempt.
    """
    eff = received_dpdus / attempts if attempts > 0 else 0.0
    return float(c1 * eff + c2 * hamming_similarity(bitmap, dcm_bitmap))


def ratio(value: float, reference: float) -> float:
    """``value / reference`` — e.g. a policy's objective over the exact optimum's (``km``) or a
    random valid decision's on the same slots. NaN when the reference is 0 or not finite."""
    if not np.isfinite(reference) or reference == 0:
        return float("nan")
    return float(value / reference)
