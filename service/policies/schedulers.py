"""Classical MAC schedulers (SPEC §3 baselines): round robin, proportional fair, max-weight.

They read the cell's history (``ctx.history``) — PF needs the users' average served rate, RR
when each user was last served — and return a DCM under caps and buffers. In a mac slot with
pending HARQ retransmissions each serves them first (``assign.retx_first``: larger ``retx_bits``
first, ``retx_rbgs`` RBGs each) and applies its own rule to the other users on the RBGs left, so
its decision satisfies the PAG rule ``retx_not_first`` by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.assign import greedy_fill, pf_priority, retx_first
from service.policies.base import Policy, PolicyContext
from service.policies.registry import register
from service.types import SlotState


@register("rr")
class RoundRobin(Policy):
    """Round robin: eligible users in order of last service (never served first, then oldest;
    ties — users last served in the same slot — by fewest resources received so far, then slot
    order, which keeps the cyclic order) take the available resources in turn, one per user per
    round (the lowest free resource on which the user's rate is above 0: a resource out of the
    user's range, CQI 0, carries nothing and goes to the next user), until the resources run out
    or no user can take more (cap, no usable resource, or no data left in mac)."""

    name = "rr"

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        hist = ctx.history
        order = np.lexsort((np.arange(state.num_ue), hist.cum_resources, hist.last_served_slot))
        order = order[state.user_eligible[order]]
        start, users = retx_first(state)
        owner = np.zeros(state.num_res, np.int64) if start is None else start
        if users is not None:  # the retransmissions are served: the others take turns on the rest
            order = order[np.isin(order, users)]
        free = np.flatnonzero(state.resource_available & (owner == 0)).tolist()
        if order.size == 0 or not free:
            return owner
        cap = state.max_resources_per_user
        left = None if state.preset != "mac" or state.buffer_bits is None else state.buffer_bits.copy()
        counts = np.zeros(state.num_ue, np.int64)
        util = state.utility
        while free:
            progressed = False
            for u in order.tolist():
                if not free:
                    break
                if counts[u] >= cap or (left is not None and left[u] <= 0):
                    continue
                i = next((i for i, r in enumerate(free) if util[u, r] > 0), None)
                if i is None:
                    continue  # no free resource carries anything for u (rate 0: out of range)
                r = free.pop(i)
                owner[r] = u + 1
                counts[u] += 1
                if left is not None:
                    left[u] -= state.utility[u, r]
                progressed = True
            if not progressed:
                break
        return owner


@register("pf")
class ProportionalFair(Policy):
    """Proportional fair: pairs ranked by ``utility[u, r] / avg_served[u]`` (instantaneous over
    average rate, EWMA over slots), assigned greedily under caps and buffers."""

    name = "pf"

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        return greedy_fill(state, pf_priority(state, ctx.history.avg_served), *retx_first(state))


@register("max_weight")
class MaxWeight(Policy):
    """Max-weight (backpressure): pairs ranked by ``queue[u] · utility[u, r]`` (queue × spectral
    efficiency); with full buffers it reduces to max-rate."""

    name = "max_weight"

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        q = np.ones(state.num_ue) if state.buffer_bits is None else state.buffer_bits
        return greedy_fill(state, state.utility * q[:, None], *retx_first(state))
