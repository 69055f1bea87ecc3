"""Uplink traffic models of the MAC preset (SPEC §3; Stackelberg paper appendix B-D).

Arrivals are counted in dPDUs (256 bits by default) per TTI and UE:

* **Bernoulli** (eq. 47, mMTC): one dPDU with probability ``p_a`` each TTI, i.i.d.
  ``a_t = 1{U_t < p_a}``; by default the UEs cycle through ``p_a ∈ {0.2, 0.5, 0.8}``.
* **Periodic** (eq. 48, URLLC): one dPDU every ``T_p`` TTIs, ``a_t = 1{(t + φ) mod T_p = 0}``.
* **Bursty ON-OFF** (eq. 49, eMBB): a batch of ``b`` dPDUs at the start of each cycle of
  ``T_c`` TTIs, ``a_t = b · 1{(t + φ) mod T_c = 0}``.

The paper's values of ``T_p``, ``b`` and ``T_c`` were lost in the text; our defaults
(``T_p = 2``, ``b = 8``, ``T_c = 16``) give every pattern the same mean load as the middle
Bernoulli rate (0.5 dPDU per TTI), so the traffic cases of Table III differ in their arrival
*pattern* only. The phase ``φ`` of a periodic / bursty UE is drawn uniformly at its arrival
(UEs are not synchronised).

The kernels are pure (numpy in, numpy out); the random draws come from the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

TrafficKind = Literal["bernoulli", "periodic", "bursty"]
KIND_CODES: dict[str, int] = {"bernoulli": 0, "periodic": 1, "bursty": 2}
#: Bernoulli arrival probabilities cycled over the UEs by default (SPEC §3)
DEFAULT_P_ARRIVAL: tuple[float, ...] = (0.2, 0.5, 0.8)


@dataclass(frozen=True)
class TrafficSpec:
    """The arrival process of one UE.

    kind: ``bernoulli`` | ``periodic`` | ``bursty``.
    p_arrival: Bernoulli probability of one dPDU per TTI (bernoulli only).
    period_tti: ``T_p``, TTIs between two dPDUs (periodic only).
    batch_dpdu: ``b``, dPDUs per burst (bursty only).
    cycle_tti: ``T_c``, TTIs of one ON-OFF cycle (bursty only).
    """

    kind: TrafficKind = "bernoulli"
    p_arrival: float = 0.5
    period_tti: int = 2
    batch_dpdu: int = 8
    cycle_tti: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KIND_CODES:
            raise ValueError(f"unknown traffic kind {self.kind!r}; expected one of {list(KIND_CODES)}")
        if not 0.0 <= self.p_arrival <= 1.0:
            raise ValueError(f"p_arrival must be in [0, 1], got {self.p_arrival}")
        if self.period_tti < 1 or self.cycle_tti < 1 or self.batch_dpdu < 0:
            raise ValueError("period_tti and cycle_tti must be >= 1 and batch_dpdu >= 0")

    @property
    def mean_dpdu_per_tti(self) -> float:
        """Long-run arrival rate in dPDUs per TTI."""
        if self.kind == "bernoulli":
            return self.p_arrival
        if self.kind == "periodic":
            return 1.0 / self.period_tti
        return self.batch_dpdu / self.cycle_tti

    @property
    def cycle(self) -> int:
        """Length of the deterministic cycle (1 for Bernoulli): the range of the phase ``φ``."""
        return {"bernoulli": 1, "periodic": self.period_tti, "bursty": self.cycle_tti}[self.kind]

    def short(self) -> str:
        """Compact label, e.g. ``B0.5``, ``P2``, ``O8/16``."""
        if self.kind == "bernoulli":
            return f"B{self.p_arrival:g}"
        if self.kind == "periodic":
            return f"P{self.period_tti}"
        return f"O{self.batch_dpdu}/{self.cycle_tti}"


def bernoulli_arrivals(p_arrival: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Eq. 47: ``a = 1{U < p_a}``. p_arrival, uniform: [N]. Returns int64 [N] dPDUs."""
    return (np.asarray(uniform) < np.asarray(p_arrival)).astype(np.int64)


def periodic_arrivals(tti: int, period_tti: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Eq. 48: one dPDU when ``(t + φ) mod T_p = 0``. period_tti, phase: [N]. Returns int64 [N]."""
    return ((tti + np.asarray(phase)) % np.asarray(period_tti) == 0).astype(np.int64)


def bursty_arrivals(tti: int, cycle_tti: np.ndarray, batch_dpdu: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Eq. 49: ``b`` dPDUs when ``(t + φ) mod T_c = 0``. All inputs [N]. Returns int64 [N]."""
    hit = (tti + np.asarray(phase)) % np.asarray(cycle_tti) == 0
    return np.where(hit, np.asarray(batch_dpdu, dtype=np.int64), 0)


def arrivals(
    tti: int,
    kind: np.ndarray,
    p_arrival: np.ndarray,
    period_tti: np.ndarray,
    batch_dpdu: np.ndarray,
    cycle_tti: np.ndarray,
    phase: np.ndarray,
    uniform: np.ndarray,
) -> np.ndarray:
    """dPDUs arriving at each UE in TTI ``tti`` for a mixed population.

    kind: int [N] codes of ``KIND_CODES``; the other arrays [N] hold each UE's parameters
    (ignored where they do not apply); uniform: [N] U(0,1) draws (used by Bernoulli UEs only).
    Returns int64 [N].
    """
    out = np.where(kind == 0, bernoulli_arrivals(p_arrival, uniform), 0)
    out = np.where(kind == 1, periodic_arrivals(tti, period_tti, phase), out)
    return np.where(kind == 2, bursty_arrivals(tti, cycle_tti, batch_dpdu, phase), out)


_MIX_RE = re.compile(r"^(\d+)([BPO])$")


def parse_mix(
    mix: str,
    *,
    p_arrival: tuple[float, ...] = DEFAULT_P_ARRIVAL,
    period_tti: int = 2,
    batch_dpdu: int = 8,
    cycle_tti: int = 16,
) -> tuple[TrafficSpec, ...]:
    """Traffic composition in the notation of Table III -> one spec per UE.

    ``"3B/1P/1O"`` = 3 Bernoulli UEs (``p_a`` cycling over ``p_arrival``), 1 periodic, 1 bursty
    ON-OFF. Raises ValueError on a malformed string.
    """
    specs: list[TrafficSpec] = []
    n_bern = 0
    for part in mix.replace(" ", "").split("/"):
        m = _MIX_RE.match(part)
        if not m:
            raise ValueError(f"bad traffic mix part {part!r} in {mix!r}; expected e.g. '3B/2P' or '2B/3O'")
        count, code = int(m.group(1)), m.group(2)
        for _ in range(count):
            if code == "B":
                specs.append(TrafficSpec("bernoulli", p_arrival=p_arrival[n_bern % len(p_arrival)]))
                n_bern += 1
            elif code == "P":
                specs.append(TrafficSpec("periodic", period_tti=period_tti))
            else:
                specs.append(TrafficSpec("bursty", batch_dpdu=batch_dpdu, cycle_tti=cycle_tti))
    if not specs:
        raise ValueError(f"empty traffic mix {mix!r}")
    return tuple(specs)


def default_traffic(p_arrival: tuple[float, ...] = DEFAULT_P_ARRIVAL) -> tuple[TrafficSpec, ...]:
    """Bernoulli UEs with ``p_a`` cycling over ``p_arrival`` (the paper's standard setting)."""
    return tuple(TrafficSpec("bernoulli", p_arrival=p) for p in p_arrival)


#: Stackelberg Table III traffic compositions with 5 UEs (B: Bernoulli, P: periodic, O: ON-OFF).
TRAFFIC_CASES: dict[str, str] = {
    "case1": "5B",
    "case2": "3B/2P",
    "case3": "2B/3P",
    "case4": "3B/2O",
    "case5": "2B/3O",
    "case6": "3B/1P/1O",
    "case7": "1B/2P/2O",
}
