"""Classical MAC schedulers (SPEC §3 baselines): round robin, proportional fair, max-weight, and two
variants of proportional fair: with a resource-share tilt (``pf_fair``) and with the idle RBGs of
a slot spread over the users below the mean resource share (``pf_spread``, the anchor of the
shipped mac student's decode).

They read the cell's history (``ctx.history``) — PF needs the users' average served rate, RR
when each user was last served — and return a DCM under caps and buffers. In a mac slot with
pending HARQ retransmissions each serves them first (``assign.retx_first``: larger ``retx_bits``
first, ``retx_rbgs`` RBGs each) and applies its own rule to the other users on the RBGs left, so
its decision satisfies the PAG rule ``retx_not_first`` by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.assign import (
    ShareTilt,
    greedy_fill,
    pf_priority,
    retx_first,
    round_robin,
    share_tilted_fill,
    spread_idle,
)
from service.batched import MAX_WEIGHT, PF, CellBatch, greedy_fill_many, round_robin_many
from service.policies.base import Batched, Policy, PolicyContext, act_in_batch
from service.policies.registry import register
from service.types import SlotState


@register("rr")
class RoundRobin(Policy):
    """Round robin: eligible users in order of last service (never served first, then oldest;
    ties — users last served in the same slot — by fewest resources received so far, then slot
    order, which keeps the cyclic order) take the available resources in turn, one per user per
    round (the lowest free resource on which the user's rate is above 0: a resource out of the
    user's range, CQI 0, carries nothing and goes to the next user), until the resources run out
    or no user can take more (cap, no usable resource, or no data left in mac)
    (``assign.round_robin``). The cells of a TTI: one compiled call (``batched.round_robin_many``)."""

    name = "rr"
    batches = True

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        return round_robin(state, ctx.history)

    def act_many(self, states: Sequence[SlotState], ctxs: Sequence[PolicyContext]) -> list[Batched]:
        return act_in_batch(states, lambda: round_robin_many(CellBatch.of(states), [c.history for c in ctxs]))


@register("pf")
class ProportionalFair(Policy):
    """Proportional fair: pairs ranked by ``utility[u, r] / avg_served[u]`` (instantaneous over
    average rate, EWMA over slots), assigned greedily under caps and buffers."""

    name = "pf"
    batches = True

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        return greedy_fill(state, pf_priority(state, ctx.history.avg_served), *retx_first(state))

    def act_many(self, states: Sequence[SlotState], ctxs: Sequence[PolicyContext]) -> list[Batched]:
        """The cells of a TTI: the priorities flat, one compiled greedy fill (``service.batched``)."""

        def decide_all() -> list[np.ndarray]:
            batch = CellBatch.of(states)
            return greedy_fill_many(batch, PF, batch.per_user([c.history.avg_served for c in ctxs]))

        return act_in_batch(states, decide_all)


@register("pf_spread")
class ProportionalFairSpread(Policy):
    """Proportional fair, then the RBGs its decision leaves idle spread over the users below the
    mean resource share (``assign.spread_idle``): such a user is served its covered buffer on
    more, weaker RBGs, every one of them needed to carry it.

    Every user gets pf's bits in every slot (to within the greedy fill's tolerance: throughput,
    packet latency, PF averages and
    the Jain index of throughput are pf's); only slots that leave RBGs idle change, and there the
    RBG counts of the users below the mean share rise: the JFI term of SPEC §3 eq. 5. Where the
    cell is loaded (no RBG idle) it is pf.
    """

    name = "pf_spread"
    batches = True

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        h = ctx.history
        owner = greedy_fill(state, pf_priority(state, h.avg_served), *retx_first(state))
        return spread_idle(state, owner, h)

    def act_many(self, states: Sequence[SlotState], ctxs: Sequence[PolicyContext]) -> list[Batched]:
        """pf's batch (one compiled greedy fill), then each cell's spread."""

        def decide_all() -> list[np.ndarray]:
            batch = CellBatch.of(states)
            views = [c.history for c in ctxs]
            owners = greedy_fill_many(batch, PF, batch.per_user([v.avg_served for v in views]))
            return [spread_idle(s, o, v) for s, o, v in zip(states, owners, views, strict=True)]

        return act_in_batch(states, decide_all)


@register("pf_fair")
class ProportionalFairShare(Policy):
    """Proportional fair with a resource-share tilt: PF's priority ``utility[u, r] / avg_served[u]``
    times each user's weight ``((x̄ + ε) / (x_u + ε))^β`` (``assign.share_weight``: x_u the
    resources per slot the user has held; users served above the mean never boosted),
    clipped to [1/(1+c), 1+c] with the strongest bound c whose decision keeps at least
    ``min_bits_ratio`` of PF's scheduled bits in the slot (``assign.share_tilted_fill``;
    ``assign.ShareTilt`` defaults: β = 2, c in 1, 0.5, 0.25, 0.1, ratio 1).

    It raises the JFI term of SPEC §3 eq. 5 (equal resource counts) only where that costs none of
    PF's scheduled bits in the slot, so throughput, packet latency and the Jain index of
    throughput stay PF's while the leader utility rises. Work-conserving, HARQ first, like pf.
    """

    name = "pf_fair"

    def __init__(self, tilt: ShareTilt | None = None) -> None:
        self.tilt = tilt or ShareTilt()

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        h = ctx.history
        weight = self.tilt.weight(h, state)
        return share_tilted_fill(state, pf_priority(state, h.avg_served), weight, self.tilt, *retx_first(state))


@register("max_weight")
class MaxWeight(Policy):
    """Max-weight (backpressure): pairs ranked by ``queue[u] · utility[u, r]`` (queue × spectral
    efficiency); with full buffers it reduces to max-rate."""

    name = "max_weight"
    batches = True

    @staticmethod
    def queues(state: SlotState) -> np.ndarray:
        """float64 [N]: the users' queues (``buffer_bits``; 1 each without buffers: max-rate)."""
        return np.ones(state.num_ue) if state.buffer_bits is None else state.buffer_bits

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        return greedy_fill(state, state.utility * self.queues(state)[:, None], *retx_first(state))

    def act_many(self, states: Sequence[SlotState], ctxs: Sequence[PolicyContext]) -> list[Batched]:
        """The cells of a TTI: the weights flat, one compiled greedy fill (``service.batched``)."""

        def decide_all() -> list[np.ndarray]:
            batch = CellBatch.of(states)
            return greedy_fill_many(batch, MAX_WEIGHT, batch.per_user([self.queues(s) for s in states]))

        return act_in_batch(states, decide_all)
