"""KPI accounting of the MAC (UDTS) simulator: per-TTI series and event counts behind ``kpis()``.

``MacStats`` accumulates, per TTI, delivered bits, UEs present, RBGs used and available, the
leader utility (eq. 5) with its scaled-throughput and JFI terms; and over the run the transport
blocks sent / delivered / collided / erased, RBGs granted / declined / padded, dPDUs arrived /
completed / dropped / departed, queue lengths (dPDUs), dPDU latencies (TTIs), follower
utilities (eq. 2), PAG validity of raw actions and per-UE [delivered bits, RBGs used, TTIs
present]. ``kpis`` turns them into every SPEC §3 KPI (definitions: ``service.kpi``);
``merge`` sums the cells of a network.
"""

from __future__ import annotations

import math

import numpy as np

from service import kpi


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
        for name in (
            "tx_tbs",
            "ok_tbs",
            "collided_tbs",
            "erased_tbs",
            "collided_rbgs",
            "granted_rbgs",
            "declined_rbgs",
            "padding_rbgs",
            "arrived_dpdus",
            "completed_dpdus",
            "dropped_dpdus",
            "departed_dpdus",
            "queue_sum",
            "queue_n",
            "follower_utility_sum",
            "follower_utility_n",
        ):
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
            "follower_utility": (
                self.follower_utility_sum / self.follower_utility_n if self.follower_utility_n else math.nan
            ),
            "delivered_dpdus": float(self.completed_dpdus),
            "arrived_dpdus": float(self.arrived_dpdus),
            "departed_dpdus": float(self.departed_dpdus),
        }
