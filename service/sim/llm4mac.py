"""LLM4MAC single-channel preset (SPEC §3 last item; ``seeds/llm4mac.txt`` section II, Table I).

``M = 1`` shared PUSCH channel, ``N ∈ {2..5}`` UEs (drawn per episode unless fixed), FIFO buffers
of 15 dPDUs, Bernoulli arrivals with ``p_a = 0.48``, episodes of 24 TTIs, TBLER 1e-3. Every TTI a
UE takes one action in ``{idle, transmit, delete}``: *transmit* sends its head-of-line (HOL) dPDU,
*delete* removes the HOL dPDU from its buffer. The channel state is idle / one UE (the BS
decodes that UE's dPDU unless an erasure hits) / collision (two or more transmit, nothing
decodable). Reward (LLM4MAC eq. 2): ``+ρ`` for every *new* dPDU the BS receives, ``−ρ`` for every
dPDU a UE deletes before the BS received it (``ρ = 1.5``).

How the UE actions follow from the BS decision (the DCM of the single channel): the BS's DCM
vocabulary has three words per UE (LLM4MAC Table I, D = 3) — *grant*, *ACK*, *nothing*. The
scheduling decision ``owner[0] = k`` grants the channel to UE ``k``; the ACK is not a scheduling
choice — the BS acknowledges every dPDU it decoded in the previous TTI. A DCM-following UE then
acts as follows:

* its HOL dPDU was ACKed → **delete** (it frees the buffer; the BS already has the dPDU, so no
  penalty). It cannot transmit in the same TTI, so the BS marks it *ineligible* for this TTI;
* granted and holding an unreceived dPDU → **transmit** the HOL dPDU;
* otherwise → **idle**.

A *legacy* UE ignores grants (S-ALOHA with ``p0, β, p_min`` as in the MAC preset) but still
deletes on ACK. With ``delete_when_full`` a UE whose buffer is full deletes its (unreceived) HOL
dPDU to admit a new arrival — the case the ``−ρ`` penalty exists for; by default the arrival is
dropped instead and counted as overflow.

The ``SlotState`` (preset ``mac``, one resource, cap 1) carries, per UE, the bits of its
*unreceived* dPDUs as the buffer (its buffer report minus an ACKed HOL) and a utility of one
dPDU per TTI on the channel.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import kpi
from service.sim.base import SlotEnv, StepResult
from service.sim.channel import UniformStream, stream
from service.types import SlotState, make_slot

_P_ARRIVAL, _P_ERASURE, _P_ALOHA, _P_EPISODE = 20, 21, 22, 23


@dataclass(frozen=True)
class Llm4MacConfig:
    """Parameters of the LLM4MAC environment (defaults: LLM4MAC Table I)."""

    #: fixed number of UEs; None = drawn uniformly from ``num_ue_choices`` at every reset
    num_ue: int | None = None
    num_ue_choices: tuple[int, ...] = (2, 3, 4, 5)
    #: FIFO capacity |B| (dPDUs)
    buffer_dpdu: int = 15
    #: Bernoulli arrival probability per TTI and UE
    p_arrival: float = 0.48
    #: episode length T (TTIs)
    episode_tti: int = 24
    tbler: float = 1e-3
    #: ρ of the reward (+ρ new dPDU received, −ρ unreceived dPDU deleted)
    reward_rho: float = 1.5
    dpdu_bits: int = 256
    tti_s: float = 0.0005
    #: follower kind per UE, cycled: ``dictator`` (follows the DCM; ``agentic`` acts the same
    #: here — one channel leaves no private choice) or ``legacy`` (S-ALOHA)
    followers: tuple[str, ...] = ("dictator",)
    #: a UE with a full buffer deletes its unreceived HOL dPDU to admit an arrival (−ρ)
    delete_when_full: bool = False
    aloha_p0: float = 0.5
    aloha_beta: float = 0.5
    aloha_p_min: float = 0.05
    cell_id: str = "cell-0"

    def __post_init__(self) -> None:
        if self.num_ue is not None and self.num_ue < 1:
            raise ValueError(f"num_ue must be >= 1, got {self.num_ue}")
        if not self.num_ue_choices or min(self.num_ue_choices) < 1:
            raise ValueError("num_ue_choices must hold UE counts >= 1")
        if self.buffer_dpdu < 1 or self.episode_tti < 1:
            raise ValueError("buffer_dpdu and episode_tti must be >= 1")
        bad = [k for k in self.followers if k not in ("agentic", "dictator", "legacy")]
        if not self.followers or bad:
            raise ValueError(f"unknown follower kinds {bad}")


class _Ue:
    __slots__ = ("acked", "aloha_p", "fifo", "kind", "u_aloha", "u_arrival", "u_erasure", "ue_id")

    def __init__(self, ue_id: int, kind: str, seed: int, p0: float) -> None:
        self.ue_id = ue_id
        self.kind = kind
        self.fifo: deque[int] = deque()  # generation TTIs
        self.acked = False  # the HOL dPDU was received by the BS (ACK pending delete)
        self.aloha_p = p0
        self.u_arrival = stream(seed, _P_ARRIVAL, ue_id)
        self.u_erasure = stream(seed, _P_ERASURE, ue_id)
        self.u_aloha = stream(seed, _P_ALOHA, ue_id)

    def unreceived(self) -> int:
        return len(self.fifo) - int(self.acked)


class Llm4MacEnv(SlotEnv):
    """The LLM4MAC UDTS environment as a ``SlotEnv`` whose BS decision is the single channel's DCM."""

    preset = "mac"

    def __init__(self, config: Llm4MacConfig | None = None, *, seed: int = 0) -> None:
        self.cfg = config or Llm4MacConfig()
        self.seed = seed
        self._episode = 0
        self._init(seed)

    def _init(self, seed: int) -> None:
        cfg = self.cfg
        self.seed = seed
        self.tti = 0
        if cfg.num_ue is not None:
            n = cfg.num_ue
        else:
            u: UniformStream = stream(seed, _P_EPISODE, self._episode)
            n = cfg.num_ue_choices[min(int(u.next() * len(cfg.num_ue_choices)), len(cfg.num_ue_choices) - 1)]
        # per-episode streams so consecutive episodes of one env differ
        ep_seed = (seed * 1_000_003 + self._episode) & 0xFFFFFFFF
        self.ues = [_Ue(i + 1, cfg.followers[i % len(cfg.followers)], ep_seed, cfg.aloha_p0) for i in range(n)]
        self._done = False
        self.episode_return = 0.0
        self.received = self.deleted_unreceived = self.collisions = self.idle_ttis = 0
        self.erasures = self.drops = self.transmissions = self.arrived = 0
        self.latencies: list[int] = []
        self.queue: list[int] = []
        self.valid: list[bool] = []

    def _observe(self) -> SlotState:
        cfg = self.cfg
        n = len(self.ues)
        unrec = np.array([u.unreceived() for u in self.ues], dtype=np.float64)
        elig = np.array([u.kind != "legacy" and not u.acked for u in self.ues]) & (unrec > 0)
        buf = np.where([u.kind != "legacy" for u in self.ues], unrec * cfg.dpdu_bits, 0.0)
        return make_slot(
            "mac",
            np.arange(1, n + 1),
            [0],
            utility=np.full((n, 1), float(cfg.dpdu_bits)),
            buffer_bits=buf,
            user_eligible=elig,
            max_resources_per_user=1,
            cell_id=cfg.cell_id,
            slot=self.tti,
            tti_s=cfg.tti_s,
        )

    def reset(self, seed: int | None = None) -> SlotState:
        """New episode. ``reset(seed=s)`` restarts episode 0 of seed ``s`` (same seed ⇒ same
        rollout); ``reset()`` moves on to the next episode of the current seed."""
        if seed is not None:
            self._episode = 0
        else:
            self._episode += 1
        self._init(self.seed if seed is None else seed)
        self._state = self._observe()
        return self._state

    def step(self, owner: np.ndarray, *, raw_valid: bool | None = None) -> StepResult:
        """Play one TTI under DCM ``owner`` [1] (token k grants the channel to UE k)."""
        cfg = self.cfg
        if self._done:
            raise RuntimeError("the episode is over; call reset()")
        owner = np.asarray(owner)
        if owner.shape != (1,) or not 0 <= int(owner[0]) <= len(self.ues):
            raise ValueError(f"owner must be one token in 0..{len(self.ues)}, got {owner!r}")
        if raw_valid is not None:
            self.valid.append(bool(raw_valid))
        granted = int(owner[0])
        reward = 0.0
        drops = 0
        # arrivals (Bernoulli p_a); a full buffer drops or, with delete_when_full, evicts the HOL
        for u in self.ues:
            if u.u_arrival.next() < cfg.p_arrival:
                self.arrived += 1
                if len(u.fifo) >= cfg.buffer_dpdu:
                    if cfg.delete_when_full and not u.acked:
                        u.fifo.popleft()
                        self.deleted_unreceived += 1
                        reward -= cfg.reward_rho
                    else:
                        drops += 1
                        continue
                u.fifo.append(self.tti)
        # UE actions from the DCM: delete on ACK, transmit on grant, else idle
        actions: list[str] = []
        erase_draw: list[float] = []
        for i, u in enumerate(self.ues):
            a_draw = u.u_aloha.next()
            erase_draw.append(u.u_erasure.next())  # one draw per TTI and UE: aligned streams
            if u.acked:
                actions.append("delete")
            elif u.unreceived() > 0 and (
                (u.kind != "legacy" and granted == i + 1) or (u.kind == "legacy" and a_draw < u.aloha_p)
            ):
                actions.append("transmit")
            else:
                actions.append("idle")
        tx = [i for i, a in enumerate(actions) if a == "transmit"]
        for i, u in enumerate(self.ues):
            if actions[i] == "delete":
                u.fifo.popleft()
                u.acked = False
        delivered = 0.0
        feedback = {u.ue_id: 0.0 for u in self.ues}
        if not tx:
            self.idle_ttis += 1
        elif len(tx) > 1:
            self.collisions += 1
            for i in tx:
                u = self.ues[i]
                if u.kind == "legacy":
                    u.aloha_p = max(cfg.aloha_beta * u.aloha_p, cfg.aloha_p_min)
        self.transmissions += len(tx)
        if len(tx) == 1:
            u = self.ues[tx[0]]
            if erase_draw[tx[0]] < cfg.tbler:
                self.erasures += 1
            else:
                u.acked = True
                self.received += 1
                reward += cfg.reward_rho
                self.latencies.append(self.tti - u.fifo[0])
                delivered = float(cfg.dpdu_bits)
                feedback[u.ue_id] = delivered
                if u.kind == "legacy":
                    u.aloha_p = cfg.aloha_p0
        self.drops += drops
        self.queue.extend(len(u.fifo) for u in self.ues)
        self.episode_return += reward
        self.tti += 1
        self._done = self.tti >= cfg.episode_tti
        self._state = self._observe()
        info: dict[str, Any] = {
            "actions": actions,
            "collision": len(tx) > 1,
            "idle": not tx,
            "drops": drops,
            "delivered_bits": delivered,
        }
        return StepResult(self._state, feedback, reward, self._done, info)

    def kpis(self) -> dict[str, float]:
        """KPIs of the episode since ``reset``: LLM4MAC throughput (eq. 12, dPDUs per TTI), return,
        and the MAC KPIs that apply to one channel."""
        lat_avg, lat_p95 = kpi.latency_stats(self.latencies)
        q_avg, q_max = kpi.queue_stats(self.queue)
        t = max(self.tti, 1)
        return {
            "ttis": float(self.tti),
            "num_ue": float(len(self.ues)),
            "throughput_dpdu_per_tti": self.received / t,
            "episode_return": self.episode_return,
            "received_dpdus": float(self.received),
            "deleted_unreceived": float(self.deleted_unreceived),
            "collision_rate": self.collisions / t,
            "idle_rate": self.idle_ttis / t,
            "packet_success_rate": kpi.packet_success_rate(self.received, self.transmissions),
            "latency_avg_slots": lat_avg,
            "latency_p95_slots": lat_p95,
            "queue_avg_dpdu": q_avg,
            "queue_max_dpdu": q_max,
            "overflow_drops": float(self.drops),
            "valid_action_rate": kpi.valid_action_rate(self.valid),
            "offered_dpdu_per_tti": self.arrived / t,
            "erasures": float(self.erasures),
            "delivered_ratio": self.received / self.arrived if self.arrived else math.nan,
        }
