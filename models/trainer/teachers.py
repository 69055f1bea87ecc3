"""Teachers the student is distilled from.

* any registered policy by name (``km``: the exact optimum of the spectrum preset; ``pf``,
  ``max_weight``, ``rr``, …), its raw output checked and repaired so the target is PAG-valid;
* ``deficit`` (mac, the shipped student's teacher): the leader utility's fairness lever over time —
  users below the mean cumulative RBG count are served at once, the others wait for their best
  channel state (``DeficitTeacher``);
* ``stackelberg`` (mac): a one-TTI look-ahead leader that anticipates the agentic followers'
  best response (``service.sim.mac_ue.agentic_rbg_count``, Stackelberg eq. 2) and scores candidate
  DCMs by the leader utility (eq. 5) with the fairness term weighted for its persistence;
* a recorded JSONL dataset of (state, decision) rows or an LLM endpoint's recorded answers —
  see ``trainer.data.read_jsonl`` (those are samples, not a callable teacher).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.history import HistoryView
from service.pag.checks import check
from service.pag.repair import repair
from service.policies.base import PolicyContext
from service.policies.registry import make
from service.sim.mac_ue import agentic_rbg_count
from service.types import DPDU_BITS, SlotState


class Teacher(Protocol):
    """A callable teacher: the PAG-valid DCM int64 [R] it chooses for a slot."""

    name: str

    def __call__(self, state: SlotState, view: HistoryView, rng: np.random.Generator) -> np.ndarray: ...


class PolicyTeacher:
    """A registered policy as a teacher (its raw output checked and repaired, SPEC §4)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.policy = make(name)

    def __call__(self, state: SlotState, view: HistoryView, rng: np.random.Generator) -> np.ndarray:
        ctx = PolicyContext(view, rng)
        raw = self.policy(state, ctx)
        return repair(state, check(state, raw))


def jain(x: np.ndarray) -> float:
    """Jain index (Σx)² / (n·Σx²); 1 for an all-zero vector."""
    q = float(np.dot(x, x))
    return 1.0 if q == 0.0 else float(x.sum() ** 2 / (x.size * q))


def agentic_use(
    granted: int, tbs_bits: float, buffer_bits: float, num_rbg: int, c1: float = 1.0, c2: float = 1.0
) -> int:
    """How many of ``granted`` RBGs an agentic follower transmits on: its eq. 2 best response,
    predicted from the base station's view (reported channel and buffer)."""
    return agentic_rbg_count(granted, tbs_bits, buffer_bits, num_rbg=num_rbg, dpdu_bits=DPDU_BITS, c1=c1, c2=c2)


def fill_in_order(state: SlotState, order: np.ndarray, needs: np.ndarray) -> np.ndarray:
    """DCM int64 [R]: available resources, in slot order, to the users of ``order`` in turn, each
    taking ``needs[u]`` of them (eligible users only)."""
    owner = np.zeros(state.num_res, np.int64)
    free = np.flatnonzero(state.resource_available)
    i = 0
    for u in order.tolist():
        if i >= free.size:
            break
        k = int(min(needs[u], free.size - i)) if state.user_eligible[u] else 0
        owner[free[i : i + k]] = u + 1
        i += k
    return owner


@dataclass
class StackelbergTeacher:
    """One-TTI look-ahead leader for the mac preset (SPEC §3).

    Candidates: fills of three priority orders — max-weight (queue × rate), fewest cumulative
    RBGs first (fairness) and proportional fair — with two budgets per user: what empties its
    buffer (``ceil(buffer / TBS)``), or, for users above the mean cumulative RBG count and served
    less than ``defer_tti`` TTIs ago, only the RBGs its data fills (``floor``: the rest waits and
    is sent later in fuller RBGs, so heavy users spend fewer RBGs per bit); each alone, with
    every remaining RBG granted as surplus to one user that would accept it, or (``full_grants``)
    with every available RBG granted to one user that would use more than its need (an agentic
    follower with one small dPDU keeps a whole-cell grant, eq. 2). Each candidate is scored by
    the predicted leader utility ``ω · min(1, bits / bits_max) + (1 − ω) · (1 + H) · JFI(x + used)``
    where ``used`` is the followers' predicted response and ``H`` (``fairness_horizon``) weights
    the fairness term for its persistence (a cumulative count changes every later TTI's JFI).
    ``x`` is the history's cumulative RBGs — what the base station knows.
    """

    omega: float = 0.5
    fairness_horizon: float = 8.0
    max_bits_per_rbg: float = 4 * 12 * 14 * 1.1758
    full_grants: bool = True
    defer_tti: int = 4
    name: str = "stackelberg"

    def __call__(self, state: SlotState, view: HistoryView, rng: np.random.Generator) -> np.ndarray:
        util = state.utility
        n, m = state.num_ue, state.num_res
        buf = state.buffer_bits if state.buffer_bits is not None else np.full(n, 1e12)
        x = view.cum_resources.astype(np.float64)
        avail = state.resource_available
        n_avail = int(avail.sum())
        max_bits = max(n_avail, 1) * self.max_bits_per_rbg
        tbs = np.maximum(util.max(axis=1), 1e-9)  # [N] bits per RBG at the reported channel
        elig = np.flatnonzero(state.user_eligible)
        if elig.size == 0 or n_avail == 0:
            return np.zeros(m, np.int64)
        ceil_need = np.ceil(buf / tbs - 1e-9).astype(np.int64)
        age = np.where(view.last_served_slot >= 0, state.slot - view.last_served_slot, 1 << 30)
        heavy = (x > x.mean()) & (age < self.defer_tti)
        eff_need = np.where(heavy, np.floor(buf / tbs + 1e-9).astype(np.int64), ceil_need)
        ar = np.arange(n)
        orders = (
            np.lexsort((ar, -(util.max(axis=1) * np.minimum(buf, 1e12)))),  # max-weight
            np.lexsort((ar, x)),  # fewest RBGs first
            np.lexsort((ar, -(tbs / np.maximum(view.avg_served, 1e-9)))),
        )  # proportional fair
        best_owner, best_value = np.zeros(m, np.int64), -np.inf

        def value(use: np.ndarray) -> float:
            bits = float(np.minimum(use * tbs, buf).sum())
            return self.omega * min(1.0, bits / max_bits) + (1 - self.omega) * (1 + self.fairness_horizon) * jain(
                x + use
            )

        seen: set[bytes] = set()
        for order in orders:
            for needs in (ceil_need, eff_need):
                owner = fill_in_order(state, order, needs)
                key = owner.tobytes()
                if key in seen:
                    continue
                seen.add(key)
                counts = np.bincount(owner, minlength=n + 1)[1:]
                free = np.flatnonzero(avail & (owner == 0))
                used = np.array([agentic_use(int(c), tbs[u], buf[u], m) if c else 0 for u, c in enumerate(counts)])
                cands: list[tuple[float, np.ndarray]] = [(value(used), owner)]
                if free.size:
                    for u in elig.tolist():
                        k = agentic_use(int(counts[u] + free.size), tbs[u], buf[u], m)
                        if k > counts[u]:
                            alt = used.copy()
                            alt[u] = k
                            surplus = owner.copy()
                            surplus[free] = u + 1
                            cands.append((value(alt), surplus))
                for v, cand in cands:
                    if v > best_value + 1e-12:
                        best_value, best_owner = v, cand
        if self.full_grants:
            for u in elig.tolist():  # every available RBG to one user (the others wait a TTI)
                k = agentic_use(n_avail, tbs[u], buf[u], m)
                if k > max(int(ceil_need[u]), 1):
                    use = np.zeros(n, np.int64)
                    use[u] = k
                    v = value(use)
                    if v > best_value + 1e-12:
                        best_value, best_owner = v, np.where(avail, u + 1, 0).astype(np.int64)
        return best_owner


@dataclass
class FairEfficientTeacher:
    """The mac leader's fairness lever, without look-ahead: users in order of fewest cumulative
    RBGs (the x of the leader's JFI, SPEC §3 eq. 5), each given what empties its buffer, except
    that a user above the mean x that was served less than ``defer_tti`` TTIs ago waits while its
    data fills less than one RBG (it is sent later in a fuller RBG, so heavy users spend fewer RBGs
    per bit). When the queued data needs
    more than ``overload_factor`` times the available RBGs (sustained overload) the decision is
    the ``StackelbergTeacher``'s, whose look-ahead trades throughput against fairness.
    """

    defer_tti: int = 4
    overload_factor: float = 3.0
    overload: StackelbergTeacher = field(default_factory=StackelbergTeacher)
    name: str = "fair_efficient"

    def __call__(self, state: SlotState, view: HistoryView, rng: np.random.Generator) -> np.ndarray:
        n = state.num_ue
        buf = state.buffer_bits if state.buffer_bits is not None else np.full(n, 1e12)
        tbs = np.maximum(state.utility.max(axis=1), 1e-9)
        ceil_need = np.where(state.user_eligible, np.ceil(buf / tbs - 1e-9), 0).astype(np.int64)
        if ceil_need.sum() > self.overload_factor * int(state.resource_available.sum()):
            return self.overload(state, view, rng)
        x = view.cum_resources
        age = np.where(view.last_served_slot >= 0, state.slot - view.last_served_slot, 1 << 30)
        heavy = (x > x.mean()) & (age < self.defer_tti)
        # a heavy user waits while its data fills less than one RBG; otherwise it is served in full
        # (all or nothing per user: what the student's capped decode expresses on flat RBGs)
        needs = np.where(heavy & (buf < tbs - 1e-9), 0, ceil_need)
        return fill_in_order(state, np.lexsort((np.arange(n), x)), needs)


@dataclass
class DeficitTeacher:
    """The leader's fairness lever over time (SPEC §3 eq. 5), the teacher of the shipped mac student.

    Eq. 5 scores the Jain index of the RBGs ``x_u`` each user has used, and below saturation every
    scheduler ends up delivering what arrives, so what a leader controls is *when* a user is
    served and therefore how many RBGs its bits take. Users are compared by their RBG rate
    ``x_u / present_u`` (RBGs per slot since they joined; with a fixed population this is ``x_u``
    up to a common factor). Each TTI, among users with data:

    * a user at or above the mean rate waits, unless its reported channel is the best state
      (``TBS_u ≥ 0.99 · best_tbs_bits``: its bits then take the fewest RBGs), its buffer holds at
      least ``urgent_fill`` of ``buffer_bits_max`` (no overflow), or it was last served
      ``max_wait_tti`` or more TTIs ago (bounded latency);
    * a user below the mean rate is served, ``ceil(buffer / TBS_u)`` RBGs (capped) — except that
      (``poor_wait_tti > 0``; 0 turns it off) one whose buffer is below ``hold_bits`` waits up to that many
      TTIs for its poorest channel state (``TBS_u ≤ 1.01 · poor_tbs_bits``), where its bits take
      the most RBGs. This raises eq. 5's index in an under-loaded cell at the price of spectral
      efficiency on RBGs nobody else needed, and of latency.

    Served users take the available RBGs, in slot order, by decreasing priority
    ``(mean rate − rate_u) / mean rate + channel_weight · TBS_u / best_tbs_bits``: the fairness
    deficit first, tipped towards better channels (eq. 5's throughput term decides under
    overload). All or nothing per user, which is what the student's capped decode expresses on
    frequency-flat RBGs. ``x`` is the history's cumulative RBGs: what the base station knows.
    """

    max_wait_tti: int = 20
    urgent_fill: float = 0.5
    channel_weight: float = 0.5
    poor_wait_tti: int = 30
    hold_bits: float = 8 * DPDU_BITS
    best_tbs_bits: float = 4 * 12 * 14 * 1.1758
    poor_tbs_bits: float = 4 * 12 * 14 * 0.2344
    buffer_bits_max: float = 64 * DPDU_BITS
    name: str = "deficit"

    def __call__(self, state: SlotState, view: HistoryView, rng: np.random.Generator) -> np.ndarray:
        n = state.num_ue
        buf = state.buffer_bits if state.buffer_bits is not None else np.full(n, 1e12)
        tbs = np.maximum(state.utility.max(axis=1), 1e-9)  # [N] bits per RBG at the reported channel
        elig = state.user_eligible & (buf > 0)
        if not elig.any():
            return np.zeros(state.num_res, np.int64)
        present = view.present_slots(state.slot)
        rate = view.cum_resources / (present if present is not None else 1.0)
        mean_rate = float(rate[state.user_eligible].mean())
        age = np.where(view.last_served_slot >= 0, state.slot - view.last_served_slot, 1 << 30)
        over = rate >= mean_rate
        waits = (
            over
            & (tbs < 0.99 * self.best_tbs_bits)
            & (buf < self.urgent_fill * self.buffer_bits_max)
            & (age < self.max_wait_tti)
        )
        if self.poor_wait_tti > 0:
            waits |= ~over & (tbs > 1.01 * self.poor_tbs_bits) & (buf < self.hold_bits) & (age < self.poor_wait_tti)
        needs = np.where(elig & ~waits, np.minimum(np.ceil(buf / tbs - 1e-9), state.max_resources_per_user), 0)
        priority = (mean_rate - rate) / max(mean_rate, 1e-9) + self.channel_weight * tbs / self.best_tbs_bits
        return fill_in_order(state, np.lexsort((np.arange(n), -priority)), needs.astype(np.int64))


def make_teacher(name: str, **kwargs: float) -> Teacher:
    """``deficit``, ``stackelberg``, ``fair_efficient`` or any registered policy name."""
    if name == "deficit":
        return DeficitTeacher(**kwargs)  # type: ignore[arg-type]
    if name == "stackelberg":
        return StackelbergTeacher(**kwargs)  # type: ignore[arg-type]
    if name == "fair_efficient":
        return FairEfficientTeacher(**kwargs)  # type: ignore[arg-type]
    return PolicyTeacher(name)
