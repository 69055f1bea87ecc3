"""One cell for one TTI of the MAC (UDTS) simulator: what the base station sees, and what the air
interface does with a DCM (SPEC §3, Stackelberg paper III, B).

Each TTI ``t`` of one cell (``M`` RBGs, the UEs attached, a pool of RBGs the cell may use):

1. **Observe** (``observe_cell``, TTI boundary ``t·TTI``): the base station builds the
   ``SlotState`` the policy sees — the UEs present (sorted by id), their buffer from the last
   buffer status report (the FIFO at the end of TTI ``t−1``, before this TTI's arrivals) and
   their spectral efficiency *as sampled at the boundary* (stale CSI: the true state may jump
   during the TTI).
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
   head.
6. **Leader utility** of the TTI (eq. 5), ``ω·min(1, bits / (M_pool · max TBS per RBG)) +
   (1 − ω)·JFI(cumulative RBGs)``, is the step reward; feedback = delivered bits per UE.

Legacy UEs are *present* in the ``SlotState`` (the BS knows they are attached) but never
eligible and with ``buffer_bits = 0`` (they send no buffer status reports): the pipeline cannot
schedule them, and their collisions with scheduled UEs happen in the air. A DCM token that names
a legacy UE is ignored by that UE (the RBG stays empty unless a legacy UE picks it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service import kpi
from service.sim.mac_config import MacConfig
from service.sim.mac_stats import MacStats
from service.sim.mac_ue import MacUe, agentic_rbg_count
from service.types import SlotState, make_slot


def partition_max_bits(cfg: MacConfig, num_available: int) -> float:
    """The cell's maximum deliverable bits per TTI: every available RBG at the best TBS."""
    return num_available * cfg.max_bits_per_rbg


def observe_cell(
    cfg: MacConfig, ues: list[MacUe], pool: np.ndarray, tti: int, cell_id: str, rbg_ids: np.ndarray | None = None
) -> SlotState:
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
    return make_slot(
        "mac",
        ids,
        rids,
        spectral_efficiency=se,
        buffer_bits=buf,
        user_eligible=elig,
        resource_available=pool,
        rb_per_rbg=cfg.rb_per_rbg,
        cell_id=cell_id,
        slot=tti,
        tti_s=cfg.tti_s,
    )


def play_cell_tti(
    cfg: MacConfig, ues: list[MacUe], owner: np.ndarray, pool: np.ndarray, tti: int, stats: MacStats
) -> tuple[dict[int, float], dict[str, Any], float]:
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
            tx = g[
                : agentic_rbg_count(
                    len(g), tbs, buf, num_rbg=num_res, dpdu_bits=dpdu, c1=cfg.c1, c2=cfg.c2, tbler=cfg.tbler
                )
            ]
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
    info = {
        "delivered_bits": delivered_total,
        "used_rbgs": used,
        "collided_rbgs": n_clash,
        "collisions": n_collided_tbs,
        "erasures": n_erased,
        "drops": dropped,
        "declined_rbgs": declined,
        "num_ue": len(ues),
        "throughput_scaled": thr_scaled,
        "jfi": jfi,
    }
    return feedback, info, utility
