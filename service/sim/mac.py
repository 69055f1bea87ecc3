"""Uplink RBG scheduling simulator (UDTS): the MAC preset of SPEC §3 (Stackelberg paper III, B).

One cell, TTIs of 0.5 ms, ``M`` RBGs, a population of UEs that arrive and depart. Each TTI ``t``:

1. **Observe** (TTI boundary ``t·TTI``): the base station builds the ``SlotState`` the policy sees
   — the UEs present (sorted by id), their buffer from the last buffer status report (the FIFO
   at the end of TTI ``t−1``, before this TTI's arrivals) and their spectral efficiency *as
   sampled at the boundary* (stale CSI: the true state may jump during the TTI).
2. **Decide**: the caller passes the DCM ``owner`` [M] (``service.pipeline.decide``).
3. **Arrivals** of TTI ``t`` enter the FIFOs (overflow beyond ``B_max`` dPDUs is dropped and
   counted).
4. **Followers act** on the DCM with their private knowledge (true channel state in force at
   the end of the TTI, true buffer):
   * *agentic*: transmits on a prefix of its granted RBGs: all it needs to send its whole true
     buffer at its true TBS, plus those surplus RBGs its eq. 2 utility
     ``c1·received/attempts + c2·similarity(bitmap, DCM)`` (``attempts`` = RBGs transmitted on)
     prefers to keep — so it releases RBGs it would fill with padding (the BS under-estimated its
     channel or over-estimated its buffer) and declines everything when its buffer is empty;
   * *dictator*: transmits on every granted RBG (padding if it has less data);
   * *legacy*: S-ALOHA, ignores the DCM — with data, transmits with probability ``p`` on one RBG
     drawn uniformly from the cell's pool; on a collision ``p ← max(β·p, p_min)``, on a success
     ``p ← p0``.
5. **Air interface**: a UE's transport block spans its RBGs, TBS = ``Σ 4·12·14·SE_true``
   (``service.phy.tbs_bits``; the UE runs link adaptation on its own, true, state); it carries
   ``min(TBS, buffer)`` bits and arrives iff none of its RBGs carries another UE's transmission
   and an erasure of probability TBLER does not hit. ARQ removes the delivered bits from the FIFO
   head (dPDUs are segmented across TTIs; a dPDU's latency is counted when its last bit arrives).
6. **Leader utility** of the TTI (eq. 5) is the step reward; feedback = delivered bits per UE.

Population: with ``num_ue=None`` the number of UEs steps through ``num_ue_cycle`` every
``population_period_tti`` TTIs (default 2, 3, ..., 10 every 100 ms); arriving UEs get fresh ids
and the next traffic spec / follower kind in arrival order, departing UEs (drawn uniformly) leave
with their buffer (counted as ``departed_dpdus``, not as drops).

Legacy UEs are *present* in the ``SlotState`` (the BS knows they are attached) but never
eligible and with ``buffer_bits = 0`` (they send no buffer status reports): the pipeline cannot
schedule them, and their collisions with scheduled UEs happen in the air. A DCM token that names
a legacy UE is ignored by that UE (the RBG stays empty unless a legacy UE picks it).

Randomness: one ``SeedSequence(seed)`` with one child stream per (process, UE id) — channel,
traffic, erasure, S-ALOHA, phase — and one for the population. The exogenous processes
(channels, arrivals, population) are therefore identical for every policy run with one seed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np

from service import kpi, phy
from service.sim.base import SlotEnv, StepResult
from service.sim.channel import ChannelConfig, UeChannel, UniformStream, stream
from service.sim.traffic import TRAFFIC_CASES, TrafficSpec, default_traffic, parse_mix
from service.types import SlotState, make_slot

FollowerKind = Literal["agentic", "dictator", "legacy"]
FOLLOWER_KINDS: tuple[str, ...] = ("agentic", "dictator", "legacy")

# random-process tags of the per-UE streams (service.sim.channel.stream)
_P_CHANNEL, _P_TRAFFIC, _P_ERASURE, _P_ALOHA, _P_PHASE, _P_POPULATION = range(6)


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


# ----------------------------------------------------------------------------- kernels


def agentic_rbg_count(granted: int, tbs_per_rbg: float, buffer_bits: float, *, num_rbg: int,
                      dpdu_bits: float, c1: float, c2: float, tbler: float = 0.0) -> int:
    """Agentic follower's response to a grant of ``granted`` RBGs: how many of them to use.

    The UE never withholds data the grant can carry (it would only defer it: its long-run
    received count, eq. 4, cannot gain), so ``k >= k_need = min(g, ceil(buffer / TBS_true))``;
    among those it maximises its eq. 2 utility
    ``c1·(1−TBLER)·min(k·TBS, buffer)/(dPDU·k) + c2·(1 − (g − k)/M)`` — it releases surplus RBGs
    it would fill with padding when the efficiency gain outweighs the loss of similarity to the
    DCM (ties: the larger ``k``, closer to the DCM). An empty buffer declines everything.
    """
    if granted <= 0 or buffer_bits <= 0 or tbs_per_rbg <= 0:
        return 0
    k_need = min(granted, math.ceil(buffer_bits / tbs_per_rbg - 1e-9))
    best_k, best_u = granted, -math.inf
    for k in range(granted, k_need - 1, -1):  # from the DCM down: ties keep the larger k
        recv = min(k * tbs_per_rbg, buffer_bits) / dpdu_bits * (1.0 - tbler)
        util = c1 * recv / k + c2 * (1.0 - (granted - k) / num_rbg)
        if util > best_u + 1e-12:
            best_k, best_u = k, util
    return best_k


def partition_max_bits(cfg: MacConfig, num_available: int) -> float:
    """The cell's maximum deliverable bits per TTI: every available RBG at the best TBS."""
    return num_available * cfg.max_bits_per_rbg


# ----------------------------------------------------------------------------- UEs


class MacUe:
    """One UE: FIFO of dPDU generation TTIs, channel, traffic and follower state."""

    __slots__ = ("aloha_p", "channel", "cum_rbgs", "delivered_bits", "fifo", "hol_sent_bits", "joined_tti",
                 "kind", "phase", "present_ttis", "spec", "u_aloha", "u_erasure", "u_traffic", "ue_id")

    def __init__(self, ue_id: int, kind: str, spec: TrafficSpec, channel: UeChannel, *, seed: int,
                 joined_tti: int, initial_dpdu: int = 0) -> None:
        self.ue_id = ue_id
        self.kind = kind
        self.spec = spec
        self.channel = channel
        self.u_traffic = stream(seed, _P_TRAFFIC, ue_id)
        self.u_erasure = stream(seed, _P_ERASURE, ue_id)
        self.u_aloha = stream(seed, _P_ALOHA, ue_id)
        self.phase = int(stream(seed, _P_PHASE, ue_id).next() * spec.cycle)
        self.fifo: deque[int] = deque([joined_tti] * initial_dpdu)
        self.hol_sent_bits = 0.0
        self.aloha_p = 0.0
        self.cum_rbgs = 0
        self.delivered_bits = 0.0
        self.present_ttis = 0
        self.joined_tti = joined_tti

    @property
    def schedulable(self) -> bool:
        return self.kind != "legacy"

    def buffer_bits(self, dpdu_bits: int) -> float:
        return len(self.fifo) * dpdu_bits - self.hol_sent_bits

    def arrivals(self, tti: int) -> int:
        """dPDUs generated in TTI ``tti`` (eqs. 47–49); one traffic draw per TTI whatever the kind."""
        u = self.u_traffic.next()
        s = self.spec
        if s.kind == "bernoulli":
            return int(u < s.p_arrival)
        if s.kind == "periodic":
            return int((tti + self.phase) % s.period_tti == 0)
        return s.batch_dpdu if (tti + self.phase) % s.cycle_tti == 0 else 0

    def enqueue(self, count: int, tti: int, capacity: int) -> int:
        """Append ``count`` dPDUs generated at ``tti``; returns how many overflowed (dropped)."""
        room = capacity - len(self.fifo)
        take = min(count, max(room, 0))
        self.fifo.extend([tti] * take)
        return count - take

    def deliver(self, bits: float, tti: int, dpdu_bits: int, latencies: list[int]) -> int:
        """ARQ: remove ``bits`` from the FIFO head; returns dPDUs completed (latency appended)."""
        done = 0
        left = bits + self.hol_sent_bits
        while self.fifo and left >= dpdu_bits - 1e-9:
            latencies.append(tti - self.fifo.popleft())
            left -= dpdu_bits
            done += 1
        self.hol_sent_bits = left if self.fifo else 0.0
        return done


# ----------------------------------------------------------------------------- accounting


class MacStats:
    """Accumulators behind ``kpis()`` (one cell, or a network merged from cells)."""

    def __init__(self) -> None:
        # per TTI
        self.bits_t: list[float] = []
        self.num_ue_t: list[int] = []
        self.used_rbg_t: list[int] = []
        self.avail_rbg_t: list[int] = []
        self.utility_t: list[float] = []
        self.thr_scaled_t: list[float] = []
        self.jfi_t: list[float] = []
        # events
        self.tx_tbs = 0
        self.ok_tbs = 0
        self.collided_tbs = 0
        self.erased_tbs = 0
        self.collided_rbgs = 0
        self.granted_rbgs = 0
        self.declined_rbgs = 0
        self.padding_rbgs = 0
        self.arrived_dpdus = 0
        self.completed_dpdus = 0
        self.dropped_dpdus = 0
        self.departed_dpdus = 0
        self.queue_sum = 0.0
        self.queue_n = 0
        self.queue_max = 0.0
        self.follower_utility_sum = 0.0
        self.follower_utility_n = 0
        self.latencies: list[int] = []
        self.valid: list[bool] = []
        #: per UE id: [delivered bits, RBGs used, TTIs present]
        self.per_ue: dict[int, list[float]] = {}

    @staticmethod
    def merge(cells: list[MacStats]) -> MacStats:
        """Network totals: per-TTI bits, UEs and RBGs summed, utilities averaged over cells."""
        out = MacStats()
        if not cells:
            return out
        for name in ("bits_t", "num_ue_t", "used_rbg_t", "avail_rbg_t"):
            setattr(out, name, list(np.sum([getattr(c, name) for c in cells], axis=0)))
        for name in ("utility_t", "thr_scaled_t", "jfi_t"):
            setattr(out, name, list(np.mean([getattr(c, name) for c in cells], axis=0)))
        for name in ("tx_tbs", "ok_tbs", "collided_tbs", "erased_tbs", "collided_rbgs", "granted_rbgs",
                     "declined_rbgs", "padding_rbgs", "arrived_dpdus", "completed_dpdus", "dropped_dpdus",
                     "departed_dpdus", "queue_sum", "queue_n", "follower_utility_sum", "follower_utility_n"):
            setattr(out, name, sum(getattr(c, name) for c in cells))
        out.queue_max = max(c.queue_max for c in cells)
        out.latencies = [x for c in cells for x in c.latencies]
        out.valid = [x for c in cells for x in c.valid]
        for c in cells:
            for uid, v in c.per_ue.items():
                acc = out.per_ue.setdefault(uid, [0.0, 0.0, 0.0])
                for i in range(3):
                    acc[i] += v[i]
        return out

    def kpis(self, tti_s: float, dpdu_bits: int) -> dict[str, float]:
        """Every SPEC §3 KPI (see ``service.kpi`` for the definitions)."""
        lat_avg, lat_p95 = kpi.latency_stats(self.latencies)
        per_ue = np.array(list(self.per_ue.values()), dtype=np.float64).reshape(-1, 3)
        present = np.maximum(per_ue[:, 2], 1.0)
        ttis = len(self.bits_t)
        non_collided = self.tx_tbs - self.collided_tbs
        arrived_bits = self.arrived_dpdus * dpdu_bits
        return {
            "ttis": float(ttis),
            "mean_num_ue": float(np.mean(self.num_ue_t)) if ttis else math.nan,
            "throughput_mbps": kpi.throughput_per_ue_mbps(self.bits_t, self.num_ue_t, tti_s),
            "cell_throughput_mbps": kpi.cell_throughput_mbps(self.bits_t, tti_s),
            "offered_load_mbps": arrived_bits / (ttis * tti_s) / 1e6 if ttis else math.nan,
            "fairness_jfi": kpi.jain_fairness(per_ue[:, 1] / present),
            "fairness_jfi_throughput": kpi.jain_fairness(per_ue[:, 0] / present),
            "resource_efficiency": kpi.resource_efficiency(self.completed_dpdus, float(np.sum(self.used_rbg_t))),
            "packet_success_rate": kpi.packet_success_rate(self.ok_tbs, self.tx_tbs),
            "latency_avg_slots": lat_avg,
            "latency_p95_slots": lat_p95,
            "queue_avg_dpdu": self.queue_sum / self.queue_n if self.queue_n else math.nan,
            "queue_max_dpdu": self.queue_max if self.queue_n else math.nan,
            "overflow_drops": float(self.dropped_dpdus),
            "valid_action_rate": kpi.valid_action_rate(self.valid),
            "leader_utility": float(np.mean(self.utility_t)) if ttis else math.nan,
            "throughput_scaled": float(np.mean(self.thr_scaled_t)) if ttis else math.nan,
            "leader_jfi": float(np.mean(self.jfi_t)) if ttis else math.nan,
            "rbg_utilisation": float(np.sum(self.used_rbg_t) / max(np.sum(self.avail_rbg_t), 1)),
            "collision_rate": kpi.packet_success_rate(self.collided_tbs, self.tx_tbs),
            "erasure_rate": kpi.packet_success_rate(self.erased_tbs, non_collided),
            "declined_rbgs_per_tti": self.declined_rbgs / ttis if ttis else math.nan,
            "padding_rbgs_per_tti": self.padding_rbgs / ttis if ttis else math.nan,
            "follower_utility": (self.follower_utility_sum / self.follower_utility_n
                                 if self.follower_utility_n else math.nan),
            "delivered_dpdus": float(self.completed_dpdus),
            "arrived_dpdus": float(self.arrived_dpdus),
            "departed_dpdus": float(self.departed_dpdus),
        }


# ----------------------------------------------------------------------------- one cell, one TTI


def observe_cell(cfg: MacConfig, ues: list[MacUe], pool: np.ndarray, tti: int, cell_id: str,
                 rbg_ids: np.ndarray | None = None) -> SlotState:
    """The base station's view at the start of TTI ``tti`` (see module doc, step 1).

    ues: the UEs attached to the cell, sorted by id; pool: bool [R], RBGs this cell may use.
    """
    t_s = tti * cfg.tti_s
    se_levels = cfg.channel.se_levels
    se = np.array([se_levels[u.channel.advance(t_s)] for u in ues], dtype=np.float64)
    buf = np.array([u.buffer_bits(cfg.dpdu_bits) if u.schedulable else 0.0 for u in ues], dtype=np.float64)
    elig = np.array([u.schedulable for u in ues], dtype=bool) & (buf > 0)
    ids = np.array([u.ue_id for u in ues], dtype=np.int64)
    rids = np.arange(pool.size, dtype=np.int64) if rbg_ids is None else rbg_ids
    return make_slot("mac", ids, rids, spectral_efficiency=se, buffer_bits=buf, user_eligible=elig,
                     resource_available=pool, rb_per_rbg=cfg.rb_per_rbg, cell_id=cell_id, slot=tti,
                     tti_s=cfg.tti_s)


def play_cell_tti(cfg: MacConfig, ues: list[MacUe], owner: np.ndarray, pool: np.ndarray, tti: int,
                  stats: MacStats) -> tuple[dict[int, float], dict[str, Any], float]:
    """Play TTI ``tti`` of one cell under DCM ``owner`` [R] (steps 3–6 of the module doc).

    ues: the UEs the DCM's tokens refer to (token k = ues[k-1]); pool: bool [R].
    Returns (feedback {ue_id: delivered bits}, info, leader utility of the TTI).
    The per-UE loop works on Python scalars (N and M are small; this is the simulator's hot path).
    """
    num_res = pool.size
    owner = np.asarray(owner)
    if owner.shape != (num_res,):
        raise ValueError(f"owner must have shape ({num_res},), got {owner.shape}")
    if owner.size and (owner.min() < 0 or owner.max() > len(ues)):
        raise ValueError(f"owner tokens must lie in 0..{len(ues)}")
    if (owner[~pool] != 0).any():
        raise ValueError("owner grants an RBG outside this cell's pool")
    dpdu = cfg.dpdu_bits
    tbs_levels = cfg.tbs_levels_bits.tolist()
    t_end = (tti + 1) * cfg.tti_s
    pool_idx = np.flatnonzero(pool).tolist()
    n_pool = len(pool_idx)

    # 3. arrivals
    dropped = 0
    for u in ues:
        if cfg.full_buffer:
            u.u_traffic.next()
            dropped += u.enqueue(cfg.buffer_dpdu - len(u.fifo), tti, cfg.buffer_dpdu)
            continue
        n_new = u.arrivals(tti)
        stats.arrived_dpdus += n_new
        dropped += u.enqueue(n_new, tti, cfg.buffer_dpdu)
    stats.dropped_dpdus += dropped

    # 4. followers act on the DCM with their private knowledge
    grants: list[list[int]] = [[] for _ in ues]
    for r, k in enumerate(owner.tolist()):
        if k:
            grants[k - 1].append(r)
    bitmaps: list[list[int]] = []
    tbs_rbg: list[float] = []
    buffers: list[float] = []
    load = [0] * num_res
    declined = 0
    for i, u in enumerate(ues):
        tbs = tbs_levels[u.channel.advance(t_end)]
        buf = u.buffer_bits(dpdu)
        tbs_rbg.append(tbs)
        buffers.append(buf)
        g = grants[i]
        u_aloha, u_pick = u.u_aloha.next(), u.u_aloha.next()  # drawn every TTI: aligned streams
        if u.kind == "legacy":
            if u.aloha_p == 0.0:
                u.aloha_p = cfg.aloha_p0
            tx = [pool_idx[min(int(u_pick * n_pool), n_pool - 1)]] if buf > 0 and n_pool and u_aloha < u.aloha_p else []
        elif u.kind == "dictator":
            tx = g
        else:
            tx = g[:agentic_rbg_count(len(g), tbs, buf, num_rbg=num_res, dpdu_bits=dpdu, c1=cfg.c1, c2=cfg.c2,
                                      tbler=cfg.tbler)]
        if u.schedulable:
            stats.granted_rbgs += len(g)
            declined += len(g) - len(tx)
        for r in tx:
            load[r] += 1
        bitmaps.append(tx)

    # 5. air interface
    n_clash = sum(1 for x in load if x >= 2)
    feedback: dict[int, float] = {}
    delivered_total = 0.0
    used = 0
    n_collided_tbs = n_erased = 0
    follower_sum, follower_n = 0.0, 0
    for i, u in enumerate(ues):
        tx = bitmaps[i]
        n_tx = len(tx)
        u_erase = u.u_erasure.next()
        u.present_ttis += 1
        got = 0.0
        if n_tx:
            used += n_tx
            u.cum_rbgs += n_tx
            payload = min(n_tx * tbs_rbg[i], buffers[i])
            need = math.ceil(payload / tbs_rbg[i] - 1e-9) if payload > 0 else 0
            stats.padding_rbgs += n_tx - need
            stats.tx_tbs += 1
            hit = any(load[r] >= 2 for r in tx)
            erased = (not hit) and u_erase < cfg.tbler
            n_collided_tbs += hit
            n_erased += erased
            if not hit and not erased:
                stats.ok_tbs += 1
                got = payload
                stats.completed_dpdus += u.deliver(payload, tti, dpdu, stats.latencies)
                if u.kind == "legacy":
                    u.aloha_p = cfg.aloha_p0
            elif hit and u.kind == "legacy":
                u.aloha_p = max(cfg.aloha_beta * u.aloha_p, cfg.aloha_p_min)
        if u.schedulable:
            # eq. 2 with eq. 3: the bitmap is a subset of the DCM bitmap, so d_H = |grant| - |bitmap|
            eff = got / dpdu / n_tx if n_tx else 0.0
            follower_sum += cfg.c1 * eff + cfg.c2 * (1.0 - (len(grants[i]) - n_tx) / num_res)
            follower_n += 1
        u.delivered_bits += got
        delivered_total += got
        feedback[u.ue_id] = got
        q = u.buffer_bits(dpdu) / dpdu
        stats.queue_sum += q
        stats.queue_n += 1
        if q > stats.queue_max:
            stats.queue_max = q
        acc = stats.per_ue.get(u.ue_id)
        if acc is None:
            acc = stats.per_ue[u.ue_id] = [0.0, 0.0, 0.0]
        acc[0] += got
        acc[1] += n_tx
        acc[2] += 1
    stats.collided_tbs += n_collided_tbs
    stats.erased_tbs += n_erased
    stats.collided_rbgs += n_clash
    stats.declined_rbgs += declined
    stats.follower_utility_sum += follower_sum
    stats.follower_utility_n += follower_n

    # 6. leader utility (eq. 5)
    max_bits = partition_max_bits(cfg, n_pool)
    thr_scaled = min(1.0, delivered_total / max_bits) if max_bits > 0 else 0.0
    jfi = kpi.jain_fairness([u.cum_rbgs for u in ues]) if ues else 1.0
    utility = cfg.omega * thr_scaled + (1.0 - cfg.omega) * jfi
    stats.bits_t.append(delivered_total)
    stats.num_ue_t.append(len(ues))
    stats.used_rbg_t.append(used)
    stats.avail_rbg_t.append(n_pool)
    stats.utility_t.append(utility)
    stats.thr_scaled_t.append(thr_scaled)
    stats.jfi_t.append(jfi)
    info = {"delivered_bits": delivered_total, "used_rbgs": used, "collided_rbgs": n_clash,
            "collisions": n_collided_tbs, "erasures": n_erased, "drops": dropped, "declined_rbgs": declined,
            "num_ue": len(ues), "throughput_scaled": thr_scaled, "jfi": jfi}
    return feedback, info, utility


# ----------------------------------------------------------------------------- the env


class MacEnv(SlotEnv):
    """Single-cell UDTS environment (``SlotEnv``). See the module doc for one TTI."""

    preset = "mac"

    def __init__(self, config: MacConfig | None = None, *, seed: int = 0) -> None:
        self.cfg = config or MacConfig()
        self.seed = seed
        self._pool = np.ones(self.cfg.num_rbg, bool)
        self._reset_state(seed)

    # -- population ----------------------------------------------------------------------
    def _reset_state(self, seed: int) -> None:
        self.seed = seed
        self.tti = 0
        self.stats = MacStats()
        self._next_index = 0  # arrival counter: assigns traffic / follower kind / id
        self._ues: list[MacUe] = []
        self._u_pop: UniformStream = stream(seed, _P_POPULATION, 0)
        self._done = False

    def _new_ue(self) -> MacUe:
        cfg = self.cfg
        k = self._next_index
        self._next_index += 1
        ue_id = k + 1
        fixed = None if cfg.fixed_channel_states is None else cfg.fixed_channel_states[k % len(cfg.fixed_channel_states)]
        ch = UeChannel(cfg.channel, stream(self.seed, _P_CHANNEL, ue_id), self.tti * cfg.tti_s, fixed_state=fixed)
        return MacUe(ue_id, cfg.followers[k % len(cfg.followers)], cfg.traffic[k % len(cfg.traffic)], ch,
                     seed=self.seed, joined_tti=self.tti,
                     initial_dpdu=cfg.buffer_dpdu if cfg.full_buffer else 0)

    def _target_num_ue(self) -> int:
        cfg = self.cfg
        if cfg.num_ue is not None:
            return cfg.num_ue
        period = self.tti // cfg.population_period_tti
        if cfg.population_order == "cycle":
            return cfg.num_ue_cycle[period % len(cfg.num_ue_cycle)]
        return cfg.num_ue_cycle[min(int(self._u_pop.next() * len(cfg.num_ue_cycle)), len(cfg.num_ue_cycle) - 1)]

    def _update_population(self) -> None:
        """Arrivals / departures at a population boundary so that N reaches its target."""
        if self.cfg.num_ue is not None and self._ues:
            return
        if self._ues and self.tti % self.cfg.population_period_tti != 0:
            return
        target = self._target_num_ue()
        while len(self._ues) > target:  # a uniformly drawn UE departs with its buffer
            i = min(int(self._u_pop.next() * len(self._ues)), len(self._ues) - 1)
            self.stats.departed_dpdus += len(self._ues.pop(i).fifo)
        while len(self._ues) < target:
            self._ues.append(self._new_ue())

    # -- SlotEnv ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> SlotState:
        """Start over at TTI 0; ``seed=None`` reuses the current seed (the same rollout again)."""
        self._reset_state(self.seed if seed is None else seed)
        self._update_population()
        self._state = observe_cell(self.cfg, self._ues, self._pool, self.tti, self.cfg.cell_id)
        return self._state

    @property
    def state(self) -> SlotState:
        """The slot the base station currently sees."""
        return self._state

    @property
    def ues(self) -> list[MacUe]:
        """The UEs present (aligned with ``state.user_ids``)."""
        return list(self._ues)

    def step(self, owner: np.ndarray, *, raw_valid: bool | None = None) -> StepResult:
        """Play the current TTI under DCM ``owner`` [M]; ``raw_valid`` (optional) records whether
        the policy's raw output passed PAG before repair (valid action rate KPI)."""
        if self._done:
            raise RuntimeError("the episode is over; call reset()")
        if raw_valid is not None:
            self.stats.valid.append(bool(raw_valid))
        feedback, info, utility = play_cell_tti(self.cfg, self._ues, owner, self._pool, self.tti, self.stats)
        self.tti += 1
        self._update_population()
        self._state = observe_cell(self.cfg, self._ues, self._pool, self.tti, self.cfg.cell_id)
        self._done = self.cfg.episode_tti is not None and self.tti >= self.cfg.episode_tti
        return StepResult(self._state, feedback, utility, self._done, info)

    def kpis(self) -> dict[str, float]:
        return self.stats.kpis(self.cfg.tti_s, self.cfg.dpdu_bits)


# ----------------------------------------------------------------------------- scenarios


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


def make_mac_env(scenario: str = "standard", *, seed: int = 0, **overrides: Any) -> MacEnv:
    """A ``MacEnv`` for a named scenario, with any ``MacConfig`` field overridden."""
    try:
        cfg = MAC_SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown MAC scenario {scenario!r}; known: {', '.join(MAC_SCENARIOS)}") from None
    return MacEnv(replace(cfg, **overrides) if overrides else cfg, seed=seed)
