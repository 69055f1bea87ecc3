"""Multi-cell UDTS with tier-0 RBG partitioning (SPEC §3; Stackelberg paper Table IV, D-A).

A hyper-cellular network: one controlling cell (CBS) owns the global pool of
``num_cells · rbg_per_cell`` RBGs and every ``partition_period_tti`` TTIs splits it among the
``num_cells`` data cells (DBSs):

* **equal** (static): contiguous blocks of ``⌊R/C⌋`` RBGs (the first ``R mod C`` cells get one more);
* **proportional** (demand-aware): contiguous blocks sized by the largest-remainder method in
  proportion to each cell's demand — buffered bits (BSRs) plus bits that arrived in the last
  period — with at least ``min_rbg_per_cell`` RBGs per cell (equal when nobody has demand);
* **random**: every RBG goes to a uniformly drawn cell (a cell may get none).

Each data cell then schedules locally exactly like the single cell (``service.sim.mac``): its
``SlotState`` lists the whole pool, with the RBGs outside its partition unavailable, and only
the UEs attached to it. Partitions are disjoint, so cells do not collide with each other.

Coupling: every cell ``c`` serves ``local_ue_per_cell`` local UEs, and one **edge UE** per cell
sits on the border of cells ``c`` and ``c+1 (mod C)`` (for two cells, both edge UEs share the one
pair). An edge UE is attached to one of its two cells at a time and moves to the other at random
(hand-over after a geometric dwell of mean ``edge_dwell_tti`` TTIs) with its buffer, shifting
load between neighbours — which the proportional CBS tracks and the others do not. The edge UE's
channel follows the same chain towards whichever cell serves it (simplification).

UE traffic: ``p_a`` cycles over ``traffic`` in creation order across the whole network (local UEs
of cell 0, 1, ..., then the edge UEs), so cells carry different loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from service.sim.base import StepResult
from service.sim.channel import UeChannel, UniformStream, stream
from service.sim.mac_cell import observe_cell, play_cell_tti
from service.sim.mac_config import MacConfig
from service.sim.mac_stats import MacStats
from service.sim.mac_ue import MacUe
from service.types import SlotState

PartitionStrategy = Literal["equal", "proportional", "random"]
PARTITION_STRATEGIES: tuple[str, ...] = ("equal", "proportional", "random")

_P_PARTITION, _P_HANDOVER, _P_MC_CHANNEL = 10, 11, 12


def partition_rbgs(
    strategy: str,
    num_rbg: int,
    num_cells: int,
    *,
    demand: np.ndarray | None = None,
    uniform: np.ndarray | None = None,
    min_rbg_per_cell: int = 1,
) -> np.ndarray:
    """Tier-0 partition of a pool of ``num_rbg`` RBGs among ``num_cells`` cells.

    demand: float [C] (proportional); uniform: float [R] U(0,1) draws (random).
    Returns int64 [R]: the cell each RBG belongs to — disjoint and covering by construction.
    """
    if num_cells < 1 or num_rbg < 0:
        raise ValueError("num_cells must be >= 1 and num_rbg >= 0")
    if strategy == "random":
        if uniform is None or uniform.shape != (num_rbg,):
            raise ValueError(f"random partition needs {num_rbg} uniform draws")
        return np.minimum((uniform * num_cells).astype(np.int64), num_cells - 1)
    if strategy == "equal":
        sizes = np.full(num_cells, num_rbg // num_cells, np.int64)
        sizes[: num_rbg % num_cells] += 1
    elif strategy == "proportional":
        d = np.zeros(num_cells) if demand is None else np.clip(np.asarray(demand, dtype=np.float64), 0.0, None)
        if d.shape != (num_cells,):
            raise ValueError(f"demand must have shape ({num_cells},), got {d.shape}")
        floor = min(min_rbg_per_cell, num_rbg // num_cells)
        spare = num_rbg - floor * num_cells
        if d.sum() <= 0:
            d = np.ones(num_cells)
        quota = spare * d / d.sum()
        sizes = floor + np.floor(quota).astype(np.int64)
        left = num_rbg - int(sizes.sum())
        order = np.lexsort((np.arange(num_cells), -(quota - np.floor(quota))))  # largest remainder first
        sizes[order[:left]] += 1
    else:
        raise ValueError(f"unknown partition strategy {strategy!r}; expected one of {PARTITION_STRATEGIES}")
    return np.repeat(np.arange(num_cells, dtype=np.int64), sizes)


@dataclass(frozen=True)
class MultiCellConfig:
    """Parameters of the multi-cell model (per-cell physics from ``cell``)."""

    #: data cells C
    num_cells: int = 3
    #: average RBGs per cell; the global pool has num_cells · rbg_per_cell RBGs (our default:
    #: 4, so that the partition binds at the default load — the paper's value was lost)
    rbg_per_cell: int = 4
    #: local UEs per cell (plus one shared edge UE per cell: 5 UEs per cell on average)
    local_ue_per_cell: int = 4
    #: tier-0 strategy of the controlling cell
    partition: PartitionStrategy = "equal"
    #: TTIs between two re-partitions (10 ms)
    partition_period_tti: int = 20
    #: floor of the proportional partition
    min_rbg_per_cell: int = 1
    #: mean TTIs an edge UE stays with one of its two cells (geometric)
    edge_dwell_tti: float = 100.0
    #: per-cell physics, traffic list (cycled over all UEs), follower kinds, KPI weights; its
    #: population fields (num_ue, num_ue_cycle, ...) and num_rbg are not used here
    cell: MacConfig = field(default_factory=lambda: MacConfig(num_ue=5))

    def __post_init__(self) -> None:
        if self.num_cells < 1 or self.rbg_per_cell < 1 or self.local_ue_per_cell < 0:
            raise ValueError("num_cells and rbg_per_cell must be >= 1, local_ue_per_cell >= 0")
        if self.partition not in PARTITION_STRATEGIES:
            raise ValueError(f"unknown partition {self.partition!r}; expected one of {PARTITION_STRATEGIES}")
        if self.edge_dwell_tti < 1 or self.partition_period_tti < 1:
            raise ValueError("edge_dwell_tti and partition_period_tti must be >= 1")

    @property
    def num_rbg(self) -> int:
        return self.num_cells * self.rbg_per_cell


@dataclass(slots=True)
class MultiStepResult:
    """One played TTI of every cell: ``cells[c]`` is cell c's ``StepResult``; ``reward`` the mean
    leader utility over cells; ``partition`` int64 [R] the partition of the *next* TTI."""

    cells: list[StepResult]
    reward: float
    partition: np.ndarray
    done: bool = False


class MultiCellEnv:
    """C data cells under one controlling cell. Not a ``SlotEnv`` (one decision per cell per TTI):
    ``reset`` returns one ``SlotState`` per cell, ``step`` takes one DCM per cell."""

    preset = "mac"

    def __init__(self, config: MultiCellConfig | None = None, *, seed: int = 0) -> None:
        self.cfg = config or MultiCellConfig()
        self.seed = seed
        self._init(seed)

    def _init(self, seed: int) -> None:
        cfg, cell = self.cfg, self.cfg.cell
        self.seed = seed
        self.tti = 0
        self.stats = [MacStats() for _ in range(cfg.num_cells)]
        self._u_part: UniformStream = stream(seed, _P_PARTITION, 0)
        self.ues: list[MacUe] = []
        self.serving: dict[int, int] = {}  # ue id -> cell
        self.edge_pair: dict[int, tuple[int, int]] = {}
        self._u_handover: dict[int, UniformStream] = {}
        k = 0
        creations: list[tuple[int, tuple[int, int] | None]] = [
            (c, None) for c in range(cfg.num_cells) for _ in range(cfg.local_ue_per_cell)
        ]
        if cfg.num_cells >= 2:
            creations += [(c, (c, (c + 1) % cfg.num_cells)) for c in range(cfg.num_cells)]
        for home, pair in creations:
            ue_id = k + 1
            fixed = (
                None
                if cell.fixed_channel_states is None
                else cell.fixed_channel_states[k % len(cell.fixed_channel_states)]
            )
            ch = UeChannel(cell.channel, stream(seed, _P_MC_CHANNEL, ue_id), 0.0, fixed_state=fixed)
            ue = MacUe(
                ue_id,
                cell.followers[k % len(cell.followers)],
                cell.traffic[k % len(cell.traffic)],
                ch,
                seed=seed,
                joined_tti=0,
                initial_dpdu=cell.buffer_dpdu if cell.full_buffer else 0,
            )
            self.ues.append(ue)
            self.serving[ue_id] = home
            if pair is not None:
                self.edge_pair[ue_id] = pair
                self._u_handover[ue_id] = stream(seed, _P_HANDOVER, ue_id)
            k += 1
        self._arrived_bits = np.zeros(cfg.num_cells)
        self.partition = self._partition()
        self._done = False

    # -- tier 0 --------------------------------------------------------------------------
    def demand_bits(self) -> np.ndarray:
        """float [C]: what each cell asks the CBS for — BSR backlog + last period's arrivals."""
        d = self._arrived_bits.copy()
        for u in self.ues:
            if u.schedulable:
                d[self.serving[u.ue_id]] += u.buffer_bits(self.cfg.cell.dpdu_bits)
        return d

    def _partition(self) -> np.ndarray:
        cfg = self.cfg
        u = np.array([self._u_part.next() for _ in range(cfg.num_rbg)])  # drawn for every strategy
        return partition_rbgs(
            cfg.partition,
            cfg.num_rbg,
            cfg.num_cells,
            demand=self.demand_bits(),
            uniform=u,
            min_rbg_per_cell=cfg.min_rbg_per_cell,
        )

    def cell_ues(self, c: int) -> list[MacUe]:
        """UEs attached to cell ``c``, sorted by id (the order of its SlotState's users)."""
        return [u for u in self.ues if self.serving[u.ue_id] == c]

    def _observe(self) -> list[SlotState]:
        rids = np.arange(self.cfg.num_rbg, dtype=np.int64)
        self._cell_ues = [self.cell_ues(c) for c in range(self.cfg.num_cells)]
        return [
            observe_cell(self.cfg.cell, self._cell_ues[c], self.partition == c, self.tti, f"cell-{c}", rids)
            for c in range(self.cfg.num_cells)
        ]

    # -- env -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> list[SlotState]:
        self._init(self.seed if seed is None else seed)
        self._states = self._observe()
        return self._states

    def step(self, owners: Sequence[np.ndarray], *, raw_valid: Sequence[bool] | None = None) -> MultiStepResult:
        """Play one TTI: ``owners[c]`` is cell c's DCM [R] over the whole pool (tokens index the
        UEs of cell c's current state)."""
        cfg = self.cfg
        if self._done:
            raise RuntimeError("the episode is over; call reset()")
        if len(owners) != cfg.num_cells:
            raise ValueError(f"expected {cfg.num_cells} DCMs (one per cell), got {len(owners)}")
        results: list[tuple[dict[int, float], dict[str, Any], float]] = []
        for c in range(cfg.num_cells):
            if raw_valid is not None:
                self.stats[c].valid.append(bool(raw_valid[c]))
            before = self.stats[c].arrived_dpdus
            results.append(
                play_cell_tti(
                    cfg.cell, self._cell_ues[c], np.asarray(owners[c]), self.partition == c, self.tti, self.stats[c]
                )
            )
            self._arrived_bits[c] += (self.stats[c].arrived_dpdus - before) * cfg.cell.dpdu_bits
        self.tti += 1
        for uid, (a, b) in self.edge_pair.items():  # hand-overs at the TTI boundary
            if self._u_handover[uid].next() < 1.0 / cfg.edge_dwell_tti:
                self.serving[uid] = b if self.serving[uid] == a else a
        if self.tti % cfg.partition_period_tti == 0:
            self.partition = self._partition()
            self._arrived_bits[:] = 0.0
        self._states = self._observe()
        self._done = cfg.cell.episode_tti is not None and self.tti >= cfg.cell.episode_tti
        steps = [StepResult(self._states[c], fb, util, self._done, info) for c, (fb, info, util) in enumerate(results)]
        return MultiStepResult(steps, float(np.mean([r[2] for r in results])), self.partition.copy(), self._done)

    @property
    def states(self) -> list[SlotState]:
        return list(self._states)

    def kpis(self) -> dict[str, float]:
        """Network KPIs (per-UE throughput over all UEs, sums over cells) plus
        ``cell{c}_throughput_mbps`` and the mean RBGs each cell was given."""
        cell = self.cfg.cell
        out = MacStats.merge(self.stats).kpis(cell.tti_s, cell.dpdu_bits)
        for c, s in enumerate(self.stats):
            k = s.kpis(cell.tti_s, cell.dpdu_bits)
            out[f"cell{c}_throughput_mbps"] = k["cell_throughput_mbps"]
            out[f"cell{c}_rbgs"] = float(np.mean(s.avail_rbg_t)) if s.avail_rbg_t else math.nan
        out["num_cells"] = float(self.cfg.num_cells)
        return out
