"""Assignment-problem policies (LSA baselines): km, exhaustive, grouped_km, greedy, random, de.

Each maximises the slot's utility (SPEC §1–§2): sum-rate in spectrum, scheduled bits in mac.
In a mac slot with pending HARQ retransmissions each serves them first (``assign.retx_first``)
and optimises over the other users and the RBGs left, so its decision satisfies the PAG rule
``retx_not_first`` by construction (``de`` repairs every candidate, which serves them too).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import differential_evolution

from service.assign import copies_per_user, greedy_fill, linear_assignment, retx_first
from service.batched import UTILITY, CellBatch, greedy_fill_many
from service.errors import ProblemTooLargeError
from service.pag.checks import check_dcm
from service.pag.repair import repair
from service.policies.base import Batched, Policy, PolicyContext, act_in_batch
from service.policies.registry import register
from service.types import SlotState, slot_utility


@register("km")
class KM(Policy):
    """Exact optimum: Hungarian / Jonker–Volgenant (``scipy.optimize.linear_sum_assignment``)
    on eligible users × available resources, users replicated up to their cap (SPEC §1)."""

    name = "km"

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        start, users = retx_first(state)
        if start is None:
            return linear_assignment(state, state.utility)
        rest = linear_assignment(state, state.utility, users=users, resources=np.flatnonzero(start == 0))
        return np.where(start > 0, start, rest)


@register("exhaustive")
class Exhaustive(Policy):
    """Brute force over every PAG-valid DCM; refuses instances with more than ``max_candidates``
    candidate vectors ((N+1)^R before pruning)."""

    name = "exhaustive"

    def __init__(self, max_candidates: int = 2_000_000) -> None:
        self.max_candidates = max_candidates

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        # candidate tokens per resource: 0 or an eligible user (busy resources: only 0); with
        # retransmissions pending, their RBGs are fixed and the others go to users without one
        start, others = retx_first(state)
        eligible = state.user_eligible.copy()
        if others is not None:
            eligible &= np.isin(np.arange(state.num_ue), others)
        users = np.flatnonzero(eligible) + 1
        choices = [np.r_[0, users] if a else np.array([0]) for a in state.resource_available]
        if start is not None:
            choices = [np.array([k]) if k else c for k, c in zip(start.tolist(), choices, strict=True)]
        total = int(np.prod([len(c) for c in choices], dtype=np.float64))
        if total > self.max_candidates:
            raise ProblemTooLargeError(
                f"exhaustive search over {total} candidates exceeds max_candidates={self.max_candidates}; "
                "use km for instances larger than a few users and resources"
            )
        cands = np.array(list(itertools.product(*choices)), np.int64).reshape(-1, state.num_res)  # [C, R]
        counts = np.zeros((cands.shape[0], state.num_ue + 1), np.int64)
        np.add.at(counts, (np.repeat(np.arange(cands.shape[0]), state.num_res), cands.ravel()), 1)
        ok = (counts[:, 1:] <= state.max_resources_per_user).all(axis=1)
        cands = cands[ok]
        # value of every candidate: per-user served bits (capped by buffer in mac)
        util = np.concatenate([np.zeros((1, state.num_res)), state.utility], axis=0)  # token 0 -> 0
        per_pair = util[cands, np.arange(state.num_res)]  # [C, R]
        per_user = np.zeros((cands.shape[0], state.num_ue + 1))
        np.add.at(per_user, (np.repeat(np.arange(cands.shape[0]), state.num_res), cands.ravel()), per_pair.ravel())
        per_user = per_user[:, 1:]
        if state.preset == "mac" and state.buffer_bits is not None:
            per_user = np.minimum(per_user, state.buffer_bits[None, :])
        value = per_user.sum(axis=1)
        return cands[int(np.argmax(value))].copy()  # first maximum: deterministic


@register("grouped_km")
class GroupedKM(Policy):
    """Grouped KM (LSA baseline): users and resources split, in slot order, into ``ceil(max(N, R)
    / group_size)`` blocks; KM solves each block independently."""

    name = "grouped_km"

    def __init__(self, group_size: int = 100) -> None:
        if group_size < 1:
            raise ValueError("group_size must be >= 1")
        self.group_size = group_size

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        blocks = max(1, -(-max(state.num_ue, state.num_res) // self.group_size))
        start, others = retx_first(state)
        owner = np.zeros(state.num_res, np.int64) if start is None else start.copy()
        for ub, rb in zip(
            np.array_split(np.arange(state.num_ue), blocks),
            np.array_split(np.arange(state.num_res), blocks),
            strict=True,
        ):
            if start is not None and others is not None:  # retransmissions first: the others on the RBGs left
                ub, rb = ub[np.isin(ub, others)], rb[start[rb] == 0]
            part = linear_assignment(state, state.utility, users=ub, resources=rb)
            owner[rb] = part[rb]
        return owner


@register("greedy")
class Greedy(Policy):
    """Global greedy: pairs by utility, highest first, under availability, caps and buffers."""

    name = "greedy"
    batches = True

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        return greedy_fill(state, state.utility, *retx_first(state))

    def act_many(self, states: Sequence[SlotState], ctxs: Sequence[PolicyContext]) -> list[Batched]:
        """The cells of a TTI: one compiled greedy fill (``service.batched``)."""

        def decide_all() -> list[np.ndarray]:
            batch = CellBatch.of(states)
            return greedy_fill_many(batch, UTILITY)

        return act_in_batch(states, decide_all)


def random_valid(state: SlotState, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn valid DCM: available resources in random order, each to a random
    eligible user below its cap (and with data left in mac), until users or resources run out.
    Pending HARQ retransmissions are served first (``assign.retx_first``), the draw covers the
    other users and the RBGs left. The reference ``a_rand`` of LSA eq. 13."""
    start, others = retx_first(state)
    owner = np.zeros(state.num_res, np.int64) if start is None else start
    slots = copies_per_user(state)  # how many resources each user may still take
    if others is not None:
        slots = np.where(np.isin(np.arange(state.num_ue), others), slots, 0)
    pool = np.repeat(np.arange(state.num_ue), slots)
    rng.shuffle(pool)
    res = np.flatnonzero(state.resource_available & (owner == 0))
    res = res[rng.permutation(res.size)]
    counts = np.zeros(state.num_ue, np.int64)
    i = 0
    for r in res.tolist():
        while i < pool.size and counts[pool[i]] >= slots[pool[i]]:
            i += 1
        if i >= pool.size:
            break
        owner[r] = pool[i] + 1
        counts[pool[i]] += 1
        i += 1
    return owner


@register("random")
class Random(Policy):
    """Random valid assignment (seeded per cell and slot)."""

    name = "random"

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        return random_valid(state, ctx.rng)


@register("de")
class DifferentialEvolution(Policy):
    """Differential evolution (``scipy.optimize.differential_evolution``) over integer DCM vectors
    in ``[0, N]^R``; each candidate is repaired (SPEC §4) before it is scored, so the search
    explores valid decisions only. Budget: ``maxiter`` generations of ``popsize·R`` members."""

    name = "de"

    def __init__(self, maxiter: int = 30, popsize: int = 8) -> None:
        self.maxiter, self.popsize = maxiter, popsize

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        r, n = state.num_res, state.num_ue

        def decode(x: np.ndarray) -> np.ndarray:
            return repair(state, check_dcm(state, np.clip(np.floor(x), 0, n).astype(np.int64)))

        def cost(x: np.ndarray) -> float:
            return -slot_utility(state, decode(x))

        seed = int(ctx.rng.integers(2**31))
        res = differential_evolution(
            cost,
            bounds=[(0, n + 1 - 1e-9)] * r,
            maxiter=self.maxiter,
            popsize=self.popsize,
            seed=seed,
            polish=False,
            tol=0.0,
            init="latinhypercube",
            updating="deferred",
        )
        return decode(res.x)
