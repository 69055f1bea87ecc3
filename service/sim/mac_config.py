"""Parameters and named scenarios of the MAC (UDTS) simulator (SPEC §3, Stackelberg paper III, B).

``MacConfig`` holds one cell's parameters (defaults: SPEC §3): ``M`` RBGs of ``rb_per_rbg`` RBs
(TBS per RBG = ``rb_per_rbg · 12 · 14 · SE`` bits, ``service.phy.tbs_bits``), TTIs of 0.5 ms,
dPDUs of 256 bits in FIFOs of ``B_max`` dPDUs, the UE population (fixed, or stepping through
``num_ue_cycle``), traffic and follower kind per UE, the channel chain, the erasure rate
TBLER, ω of the leader utility (eq. 5), the follower utility weights ``c1``, ``c2`` (eq. 2) and
the S-ALOHA parameters of legacy UEs.

``MAC_SCENARIOS`` names the paper's settings: the standard one, Table III traffic cases
(5 UEs), Table VII follower mixes (5 UEs), the Fig. 7 dictator ablation and the Table VIII
stress test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, get_args

import numpy as np

from service import phy
from service.sim.channel import ChannelConfig
from service.sim.traffic import TRAFFIC_CASES, TrafficSpec, default_traffic, parse_mix

FollowerKind = Literal["agentic", "dictator", "legacy"]
FOLLOWER_KINDS: tuple[str, ...] = get_args(FollowerKind)


@dataclass(frozen=True)
class MacConfig:
    """Parameters of the MAC (UDTS) model; defaults are SPEC §3."""

    #: M, RBGs in the cell
    num_rbg: int = 8
    #: fixed number of UEs; None = dynamic population stepping through ``num_ue_cycle``
    num_ue: int | None = None
    #: UE counts visited by the dynamic population, one per ``population_period_tti``
    num_ue_cycle: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10)
    #: TTIs between two population changes (arrivals join, departures leave at the boundary)
    population_period_tti: int = 200
    #: ``cycle``: visit ``num_ue_cycle`` in order (wrapping); ``random``: draw uniformly from it
    population_order: Literal["cycle", "random"] = "cycle"
    #: traffic per UE, assigned cyclically in arrival order (default: Bernoulli p_a 0.2/0.5/0.8)
    traffic: tuple[TrafficSpec, ...] = field(default_factory=default_traffic)
    #: follower kind per UE, assigned cyclically in arrival order (Table VII mixes)
    followers: tuple[str, ...] = ("agentic",)
    #: channel chain (states, spectral efficiencies, jump matrix, jump spacing)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    #: fixed channel state per UE (cycled in arrival order) instead of the Markov chain; None = Markov
    fixed_channel_states: tuple[int, ...] | None = None
    #: TTI duration (s): 0.5 ms, numerology μ = 1
    tti_s: float = 0.0005
    #: RBs per RBG (TBS per RBG = rb_per_rbg · 12 · 14 · SE)
    rb_per_rbg: int = 4
    #: dPDU size (bits)
    dpdu_bits: int = 256
    #: FIFO capacity B_max (dPDUs)
    buffer_dpdu: int = 64
    #: every UE always holds ``buffer_dpdu`` dPDUs (FIFO topped up each TTI; traffic ignored)
    full_buffer: bool = False
    #: transport block error rate (erasure probability of a collision-free block)
    tbler: float = 1e-3
    #: ω of the leader utility (eq. 5)
    omega: float = 0.5
    #: follower utility weights (eq. 2): c1 · received/attempts + c2 · Hamming similarity. The
    #: paper's values were lost; ours weigh compliance a quarter of efficiency (with c2 = c1 the
    #: similarity term wins and an agentic UE keeps most of the RBGs it can only pad)
    c1: float = 1.0
    c2: float = 0.25
    #: S-ALOHA: initial / reset transmit probability, back-off factor, floor
    aloha_p0: float = 0.5
    aloha_beta: float = 0.5
    aloha_p_min: float = 0.05
    #: TTIs per episode (``done`` after that many steps); None = endless
    episode_tti: int | None = None
    cell_id: str = "cell-0"

    def __post_init__(self) -> None:
        if self.num_rbg < 1:
            raise ValueError(f"num_rbg must be >= 1, got {self.num_rbg}")
        if self.num_ue is not None and self.num_ue < 1:
            raise ValueError(f"num_ue must be >= 1, got {self.num_ue}")
        if not self.num_ue_cycle or min(self.num_ue_cycle) < 1:
            raise ValueError("num_ue_cycle must hold UE counts >= 1")
        if not self.traffic:
            raise ValueError("traffic must hold at least one TrafficSpec")
        bad = [k for k in self.followers if k not in FOLLOWER_KINDS]
        if not self.followers or bad:
            raise ValueError(f"followers must be a non-empty tuple of {FOLLOWER_KINDS}, got {self.followers}")
        if not 0.0 <= self.tbler <= 1.0:
            raise ValueError(f"tbler must be in [0, 1], got {self.tbler}")
        if not 0.0 <= self.omega <= 1.0:
            raise ValueError(f"omega must be in [0, 1], got {self.omega}")
        if self.buffer_dpdu < 1 or self.dpdu_bits < 1 or self.population_period_tti < 1:
            raise ValueError("buffer_dpdu, dpdu_bits and population_period_tti must be >= 1")

    @cached_property
    def tbs_levels_bits(self) -> np.ndarray:
        """TBS of one RBG per channel state (bits), float64 [S]."""
        return phy.tbs_bits(np.asarray(self.channel.se_levels), self.rb_per_rbg)

    @cached_property
    def max_bits_per_rbg(self) -> float:
        """Largest TBS of one RBG (best state): scales the leader's throughput term."""
        return float(self.tbs_levels_bits.max())


def _table_vii(agentic: int, legacy: int) -> MacConfig:
    return MacConfig(num_ue=agentic + legacy, followers=("agentic",) * agentic + ("legacy",) * legacy)


#: Named scenarios: the paper's standard setting, Table III traffic cases (5 UEs), Table VII
#: follower mixes (5 UEs), the Fig. 7 dictator ablation and the Table VIII stress test.
MAC_SCENARIOS: dict[str, MacConfig] = {
    "standard": MacConfig(),
    "fixed-5": MacConfig(num_ue=5),
    **{name: MacConfig(num_ue=5, traffic=parse_mix(mix)) for name, mix in TRAFFIC_CASES.items()},
    "mix-5a": _table_vii(5, 0),
    "mix-4a1l": _table_vii(4, 1),
    "mix-3a2l": _table_vii(3, 2),
    "mix-1a4l": _table_vii(1, 4),
    "mix-5l": _table_vii(0, 5),
    "dictator-5": MacConfig(num_ue=5, followers=("dictator",)),
    "s-aloha": MacConfig(followers=("legacy",)),
    # Table VIII: 5 UEs with continuous backlog and fixed heterogeneous channels
    # (poor, poor, medium, good, good — the paper's values were lost; ours span the 3 levels)
    "omega-stress": MacConfig(num_ue=5, full_buffer=True, fixed_channel_states=(0, 0, 1, 2, 2)),
}
