"""Run-time guard of learned and LLM policies: a cheap reference decided on the same slot.

When the served policy is guarded (``settings.guard_policies``, default ``student`` and
``teacher``), the core also decides the slot with the preset's reference policy
(``settings.guard_reference``: ``pf`` in mac, ``greedy`` in spectrum) and keeps, per (cell,
preset, policy), a rolling window of both slot utilities (``service.types.slot_utility``) over
the cell's last ``guard_window_slots`` slots. The guarded policy's decision is replaced by the
reference's for the slot (``fallback_reason = "guard"``) when

* the window ratio sum(guarded) / sum(reference) is below ``guard_ratio``, once the window holds
  at least ``guard_min_slots`` slots (a few slots are too noisy to judge: two good policies'
  utilities on single slots differ by several percent either way), or
* the slot's own ratio is below ``guard_floor`` (judged from the first slot).

Both utilities are computed every slot, the guarded policy's *would-have-been* utility included
while the reference serves, so the guard releases by itself once the window ratio is back. A
slot whose reference utility is 0 has ratio 1 (no evidence against the guarded policy).

Exemptions (``settings.guard_exempt``, entries ``policy/preset``; default none): a policy that
schedules fewer bits per slot than the reference by design (e.g. one that times grants to the
users' best channel states) would be replaced on most slots and can be exempted. The shipped
students are anchored to the references' own rules (``service.policies.student``: exact
assignment on the utility in spectrum, PF priority in mac, each with a bounded learned
weight), so on traffic like their training worlds the window ratio stays near 1 and the guard
stays quiet; on worlds unlike them it serves the reference where the student falls behind.

Where the state lives: in process, in the core (``Guard``), an LRU of at most ``max_cells``
(default 10 000) (cell, preset, policy) windows of two float64 arrays each (about 1.1 kB per
window at 50 slots: ~11 MB at the bound), not in the cell's history: the history is the state
store's format shared by replicas (Redis), and the guard is a per-process safety net. With
several replicas or workers serving one cell, each keeps the window of the slots it served; a
cell evicted from the LRU starts a new window (and its warm-up) on its next slot.

``guard_verdict`` is the pure kernel; ``CellWindow`` one window; ``Guard`` the stateful part
the core calls (``Guard.decide``, ``Guard.decide_many`` for the cells of a TTI: each slot judged
as alone), once for every transport.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from cachetools import LRUCache

from service.config import Settings
from service.history import CellHistory
from service.pipeline import decide, decide_many
from service.policies.registry import PolicySet
from service.types import Decision, SlotState

#: the bounded label of a guard fallback (``Decision.fallback_reason``, metrics)
REASON = "guard"
#: default bound on the windows kept in process
DEFAULT_MAX_CELLS = 10_000


def utility_ratio(served: float, reference: float) -> float:
    """served / reference; 1 when the reference gets nothing (no evidence either way)."""
    return served / reference if reference > 0.0 else 1.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard decided for one slot."""

    engaged: bool
    window_ratio: float
    slot_ratio: float
    slots: int  # slots in the window, this one included
    why: str | None = None  # "window" | "floor" when engaged


def guard_verdict(
    window_served: float,
    window_reference: float,
    slot_served: float,
    slot_reference: float,
    slots: int,
    *,
    ratio: float,
    floor: float,
    min_slots: int,
) -> Verdict:
    """The guard's rule on one slot, given the window sums (this slot included) and its size."""
    w = utility_ratio(window_served, window_reference)
    s = utility_ratio(slot_served, slot_reference)
    if s < floor:
        return Verdict(True, w, s, slots, "floor")
    if slots >= min_slots and w < ratio:
        return Verdict(True, w, s, slots, "window")
    return Verdict(False, w, s, slots)


class CellWindow:
    """The last ``size`` slots of one (cell, preset, policy): guarded and reference utilities."""

    __slots__ = ("count", "pos", "reference", "served")

    def __init__(self, size: int) -> None:
        self.served = np.zeros(size)
        self.reference = np.zeros(size)
        self.count = 0  # slots recorded, at most size
        self.pos = 0  # next position to write

    def push(self, served: float, reference: float) -> tuple[float, float, int]:
        """Record one slot; returns (sum guarded, sum reference, slots) over the window."""
        self.served[self.pos] = served
        self.reference[self.pos] = reference
        self.pos = (self.pos + 1) % self.served.size
        self.count = min(self.count + 1, self.served.size)
        return float(self.served.sum()), float(self.reference.sum()), self.count


class Guard:
    """Per-(cell, preset, policy) windows (LRU-bounded) and the guarded decision of one slot."""

    def __init__(self, settings: Settings, *, max_cells: int = DEFAULT_MAX_CELLS) -> None:
        self.policies = frozenset(settings.guard_policies)
        self.reference = {p: r for p, r in settings.guard_reference.items() if r}
        self.exempt = frozenset(settings.guard_exempt)
        self.ratio = float(settings.guard_ratio)
        self.floor = float(settings.guard_floor)
        self.window_slots = max(1, int(settings.guard_window_slots))
        self.min_slots = max(1, min(int(settings.guard_min_slots), self.window_slots))
        self.max_cells = max(1, int(max_cells))
        self._windows: LRUCache[tuple[str, str, str], CellWindow] = LRUCache(maxsize=self.max_cells)
        self._lock = threading.Lock()

    # -- which slots are guarded ----------------------------------------------------------
    def reference_for(self, policy: str, preset: str) -> str | None:
        """The reference policy that guards ``policy`` in ``preset``, or None when unguarded."""
        if policy not in self.policies or f"{policy}/{preset}" in self.exempt:
            return None
        ref = self.reference.get(preset)
        return ref if ref and ref != policy else None

    def window(self, cell_id: str, preset: str, policy: str) -> CellWindow:
        key = (cell_id, preset, policy)
        with self._lock:
            win = self._windows.get(key)  # a hit counts as a use
            if win is None:  # a new window evicts the least recently used one beyond max_cells
                win = self._windows[key] = CellWindow(self.window_slots)
            return win

    def __len__(self) -> int:
        return len(self._windows)

    # -- one slot -------------------------------------------------------------------------
    def decide(
        self,
        state: SlotState,
        history: CellHistory,
        policy: str,
        *,
        policies: PolicySet,
        fallbacks: Sequence[str] = (),
        deadline_s: float | None = None,
        seed: int = 0,
    ) -> Decision:
        """``pipeline.decide`` of ``policy``, guarded by the preset's reference (module doc).

        Unguarded policies, and slots the guarded policy did not serve itself (it failed and a
        fallback served), are returned as ``decide`` returns them. Otherwise the reference is
        decided on the same slot and history (no deadline: it is cheap; a failing reference
        leaves the slot unguarded), both utilities enter the window, and the decision carries
        ``notes["guard"]`` (reference, engaged, window and slot ratios, window size, both
        utilities; when engaged also ``why`` and the guarded policy's own notes) and
        ``timings_us["guard"]`` (the reference and the bookkeeping, also added to ``total``).
        """
        served = decide(
            state, history, policy, policies=policies, fallbacks=fallbacks, deadline_s=deadline_s, seed=seed
        )
        return self.judge(state, history, policy, served, policies=policies, seed=seed)

    def decide_many(
        self,
        states: Sequence[SlotState],
        histories: Sequence[CellHistory],
        policy: str,
        *,
        policies: PolicySet,
        fallbacks: Sequence[str] = (),
        deadline_s: float | None = None,
        seed: int = 0,
    ) -> list[Decision | Exception]:
        """``pipeline.decide_many`` of ``policy`` over distinct cells, each slot then guarded as
        ``decide`` guards it alone; the references of the guarded slots are decided together too
        (``pipeline.decide_many`` of each reference policy: one compiled call for pf or greedy),
        each slot's ``guard`` time holding an equal share of its reference's batch."""
        served = decide_many(
            states, histories, policy, policies=policies, fallbacks=fallbacks, deadline_s=deadline_s, seed=seed
        )
        by_reference: dict[str, list[int]] = {}
        for i, (state, d) in enumerate(zip(states, served, strict=True)):
            ref_name = self.reference_for(policy, state.preset)
            if ref_name is not None and not isinstance(d, Exception) and d.policy == policy:
                by_reference.setdefault(ref_name, []).append(i)
        references: dict[int, tuple[Decision | Exception, float]] = {}
        for ref_name, idx in by_reference.items():
            t0 = time.perf_counter_ns()
            refs = decide_many(
                [states[i] for i in idx], [histories[i] for i in idx], ref_name, policies=policies, seed=seed
            )
            share_us = (time.perf_counter_ns() - t0) / 1e3 / len(idx)
            for i, ref in zip(idx, refs, strict=True):
                references[i] = (ref, share_us)
        return [
            d
            if isinstance(d, Exception)
            else self.judge(s, h, policy, d, policies=policies, seed=seed, reference=references.get(i))
            for i, (s, h, d) in enumerate(zip(states, histories, served, strict=True))
        ]

    def judge(
        self,
        state: SlotState,
        history: CellHistory,
        policy: str,
        served: Decision,
        *,
        policies: PolicySet,
        seed: int = 0,
        reference: tuple[Decision | Exception, float] | None = None,
    ) -> Decision:
        """The guard's answer for a slot ``policy`` was asked to decide and ``served`` decided.
        ``reference``: the reference's decision of the slot (or its failure) already made in a
        batch, with the µs of its share of that batch."""
        ref_name = self.reference_for(policy, state.preset)
        if ref_name is None or served.policy != policy:
            return served
        t0 = time.perf_counter_ns()
        if reference is None:
            try:
                ref = decide(state, history, ref_name, policies=policies, seed=seed)
            except Exception:  # the reference is a safety net, never a reason to fail the slot
                return served
        else:
            made, made_us = reference
            if isinstance(made, Exception):
                return served
            ref = made
            t0 -= round(made_us * 1e3)
        sums = self.window(state.cell_id, state.preset, policy).push(served.utility, ref.utility)
        v = guard_verdict(
            sums[0],
            sums[1],
            served.utility,
            ref.utility,
            sums[2],
            ratio=self.ratio,
            floor=self.floor,
            min_slots=self.min_slots,
        )
        info: dict[str, Any] = {
            "reference": ref_name,
            "engaged": v.engaged,
            "window_ratio": round(v.window_ratio, 6),
            "slot_ratio": round(v.slot_ratio, 6),
            "window_slots": v.slots,
            "utility": served.utility,
            "reference_utility": ref.utility,
        }
        guard_us = (time.perf_counter_ns() - t0) / 1e3
        if not v.engaged:
            timings = {**served.timings_us, "guard": guard_us}
            timings["total"] = timings.get("total", 0.0) + guard_us
            return replace(served, timings_us=timings, notes={**served.notes, "guard": info})
        if v.why == "floor":
            text = f"slot utility ratio {v.slot_ratio:.3f} < floor {self.floor:g}"
        else:
            text = f"window utility ratio {v.window_ratio:.3f} < {self.ratio:g} over {v.slots} slots"
        info["why"] = v.why
        info["policy_notes"] = dict(served.notes)  # the guarded policy's own notes (e.g. model version)
        timings = {**served.timings_us, "guard": guard_us}
        timings["total"] = timings.get("total", 0.0) + guard_us
        return replace(
            ref,
            fallback=f"{policy}: {REASON}: {text}; {ref_name} served",
            fallback_reason=REASON,
            timings_us=timings,
            notes={**ref.notes, "guard": info},
        )
