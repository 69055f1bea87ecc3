"""One UE of the MAC (UDTS) simulator and the agentic follower's best response (SPEC §3).

``MacUe`` holds a UE's FIFO of dPDU generation TTIs, its channel, its traffic process
(eqs. 47–49: Bernoulli, periodic or batch arrivals per TTI) and its S-ALOHA state; ARQ
removes delivered bits from the FIFO head (dPDUs are segmented across TTIs; a dPDU's latency,
in TTIs, is counted when its last bit arrives). ``agentic_rbg_count`` is the agentic
follower's eq. 2 response to a grant.

Randomness: one ``SeedSequence(seed)`` with one child stream per (process, UE id)
(``service.sim.channel.stream``); the ``STREAM_*`` tags name the processes, so the exogenous
processes (channels, arrivals, population) are identical for every policy run with one seed.
"""

from __future__ import annotations

import math
from collections import deque

from service.sim.channel import UeChannel, stream
from service.sim.traffic import TrafficSpec

#: random-process tags of the per-UE streams (service.sim.channel.stream)
STREAM_CHANNEL, STREAM_TRAFFIC, STREAM_ERASURE, STREAM_ALOHA, STREAM_PHASE, STREAM_POPULATION = range(6)


def agentic_rbg_count(
    granted: int,
    tbs_per_rbg: float,
    buffer_bits: float,
    *,
    num_rbg: int,
    dpdu_bits: float,
    c1: float,
    c2: float,
    tbler: float = 0.0,
) -> int:
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


class MacUe:
    """One UE: FIFO of dPDU generation TTIs, channel, traffic and follower state."""

    __slots__ = (
        "aloha_p",
        "channel",
        "cum_rbgs",
        "delivered_bits",
        "fifo",
        "hol_sent_bits",
        "joined_tti",
        "kind",
        "phase",
        "present_ttis",
        "spec",
        "u_aloha",
        "u_erasure",
        "u_traffic",
        "ue_id",
    )

    def __init__(
        self,
        ue_id: int,
        kind: str,
        spec: TrafficSpec,
        channel: UeChannel,
        *,
        seed: int,
        joined_tti: int,
        initial_dpdu: int = 0,
    ) -> None:
        self.ue_id = ue_id
        self.kind = kind
        self.spec = spec
        self.channel = channel
        self.u_traffic = stream(seed, STREAM_TRAFFIC, ue_id)
        self.u_erasure = stream(seed, STREAM_ERASURE, ue_id)
        self.u_aloha = stream(seed, STREAM_ALOHA, ue_id)
        self.phase = int(stream(seed, STREAM_PHASE, ue_id).next() * spec.cycle)
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
