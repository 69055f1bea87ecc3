"""Carrier numerology: PRBs of a channel bandwidth, RBG size, slot duration (pure, no Sionna).

* ``N_RB`` — the maximum transmission bandwidth configuration of TS 38.101-1 Table 5.3.2-1
  (FR1) per subcarrier spacing (kHz) and channel bandwidth (MHz);
* ``nominal_rbg_size`` — TS 38.214 Table 5.1.2.2.1-1: the nominal RBG size ``P`` of a bandwidth
  part of ``N_BWP`` PRBs, configuration 1 or 2;
* ``rbg_prbs`` — TS 38.214 §5.1.2.2.1: ``N_RBG = ⌈(N_BWP + (N_start mod P)) / P⌉`` RBGs, the
  first of ``P − (N_start mod P)`` PRBs, the last of ``(N_start + N_BWP) mod P`` PRBs when that
  is not 0, the others of ``P``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: TS 38.101-1 Table 5.3.2-1 (FR1): N_RB per subcarrier spacing [kHz] and channel bandwidth [MHz]
N_RB: dict[int, dict[int, int]] = {
    15: {5: 25, 10: 52, 15: 79, 20: 106, 25: 133, 30: 160, 40: 216, 50: 270},
    30: {5: 11, 10: 24, 15: 38, 20: 51, 25: 65, 30: 78, 40: 106, 50: 133, 60: 162, 70: 189, 80: 217, 90: 245, 100: 273},
}

#: TS 38.214 Table 5.1.2.2.1-1: (largest BWP size, P for configuration 1, P for configuration 2)
_RBG_TABLE = ((36, 2, 4), (72, 4, 8), (144, 8, 16), (275, 16, 16))


def nominal_rbg_size(n_bwp: int, config: int = 1) -> int:
    """Nominal RBG size ``P`` (PRBs) of a bandwidth part of ``n_bwp`` PRBs (TS 38.214 Table
    5.1.2.2.1-1), RBG configuration 1 or 2."""
    if config not in (1, 2):
        raise ValueError(f"RBG configuration must be 1 or 2, got {config}")
    if not 1 <= n_bwp <= 275:
        raise ValueError(f"bandwidth part size must be 1..275 PRBs, got {n_bwp}")
    for top, p1, p2 in _RBG_TABLE:
        if n_bwp <= top:
            return p1 if config == 1 else p2
    raise AssertionError("unreachable")


def rbg_prbs(n_bwp: int, config: int = 1, n_start: int = 0) -> np.ndarray:
    """int64 [N_RBG]: PRBs of each RBG of a bandwidth part (TS 38.214 §5.1.2.2.1)."""
    p = nominal_rbg_size(n_bwp, config)
    n_rbg = math.ceil((n_bwp + n_start % p) / p)
    sizes = np.full(n_rbg, p, np.int64)
    sizes[0] = p - n_start % p
    last = (n_start + n_bwp) % p
    if n_rbg > 1 and last:
        sizes[-1] = last
    if n_rbg == 1:
        sizes[0] = n_bwp
    assert int(sizes.sum()) == n_bwp
    return sizes


@dataclass(frozen=True)
class Carrier:
    """One downlink carrier: numerology, bandwidth, RBG grid.

    Attributes:
        scs_khz: subcarrier spacing, 15 or 30 kHz (numerology μ = 0, 1).
        bandwidth_mhz: channel bandwidth (a column of ``N_RB``).
        rbg_config: RBG configuration 1 or 2 (TS 38.214 Table 5.1.2.2.1-1).
        carrier_hz: carrier frequency.
    """

    scs_khz: int = 30
    bandwidth_mhz: int = 20
    rbg_config: int = 1
    carrier_hz: float = 3.5e9

    def __post_init__(self) -> None:
        if self.scs_khz not in N_RB:
            raise ValueError(f"subcarrier spacing must be one of {sorted(N_RB)} kHz, got {self.scs_khz}")
        if self.bandwidth_mhz not in N_RB[self.scs_khz]:
            raise ValueError(
                f"bandwidth {self.bandwidth_mhz} MHz has no N_RB at {self.scs_khz} kHz "
                f"(TS 38.101-1 Table 5.3.2-1: {sorted(N_RB[self.scs_khz])})"
            )
        nominal_rbg_size(self.n_prb, self.rbg_config)  # validates the configuration

    @property
    def n_prb(self) -> int:
        """PRBs of the carrier (one bandwidth part over the whole carrier)."""
        return N_RB[self.scs_khz][self.bandwidth_mhz]

    @property
    def scs_hz(self) -> float:
        return self.scs_khz * 1e3

    @property
    def slot_s(self) -> float:
        """Slot (TTI) duration: 14 symbols, 1 ms at 15 kHz, 0.5 ms at 30 kHz."""
        return 1e-3 * 15 / self.scs_khz

    @property
    def prb_hz(self) -> float:
        """Bandwidth of one PRB (12 subcarriers)."""
        return 12 * self.scs_hz

    @property
    def rbg_size(self) -> int:
        """Nominal RBG size ``P`` in PRBs."""
        return nominal_rbg_size(self.n_prb, self.rbg_config)

    @property
    def rbg_prbs(self) -> np.ndarray:
        """int64 [R]: PRBs per RBG."""
        return rbg_prbs(self.n_prb, self.rbg_config)

    @property
    def n_rbg(self) -> int:
        return int(self.rbg_prbs.shape[0])

    @property
    def prb_rbg(self) -> np.ndarray:
        """int64 [n_prb]: the RBG of each PRB."""
        return np.repeat(np.arange(self.n_rbg), self.rbg_prbs)

    @property
    def rbg_bandwidth_hz(self) -> np.ndarray:
        """float64 [R]: bandwidth of each RBG."""
        return self.rbg_prbs * self.prb_hz

    def describe(self) -> str:
        return (
            f"{self.bandwidth_mhz} MHz at {self.scs_khz} kHz: {self.n_prb} PRBs, {self.n_rbg} RBGs of "
            f"{self.rbg_size} PRBs (config {self.rbg_config}), slot {self.slot_s * 1e3:g} ms, "
            f"carrier {self.carrier_hz / 1e9:g} GHz"
        )
