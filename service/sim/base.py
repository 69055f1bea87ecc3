"""The simulator contract and a closed-loop runner shared by bench, simulate and the trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.types import SlotState


@dataclass(slots=True)
class StepResult:
    """What one played slot returns.

    state: the next slot as the base station sees it.
    feedback: {user_id: delivered bits (mac) or served rate in bit/s (spectrum)} of the slot just
        played — what a RAN sends back with the next request.
    reward: the slot's objective (spectrum: sum-rate bit/s; mac: leader utility, SPEC §3 eq. 5).
    done: the episode is over (``state`` is then the would-be next slot, still valid).
    info: per-slot details (collisions, drops, ...).
    """

    state: SlotState
    feedback: dict[int, float]
    reward: float
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class SlotEnv(ABC):
    """One cell over slots. Subclasses document their parameters as dataclass fields."""

    preset: str = ""

    @abstractmethod
    def reset(self, seed: int | None = None) -> SlotState:
        """Start an episode; the same seed gives the same rollout."""

    @abstractmethod
    def step(self, owner: np.ndarray) -> StepResult:
        """Apply DCM ``owner`` int64 [R] (tokens of the current state) and play the slot."""

    @abstractmethod
    def kpis(self) -> dict[str, float]:
        """KPIs accumulated since ``reset`` (SPEC §2–§3)."""


DecideFn = Callable[[SlotState, Mapping[int, float]], np.ndarray]


def run_episode(env: SlotEnv, decide_fn: DecideFn, *, slots: int, seed: int) -> dict[str, float]:
    """Closed loop: ``decide_fn(state, feedback_of_previous_slot) -> owner`` for ``slots`` slots.

    Returns ``env.kpis()`` at the end. Used identically in process and against a remote service,
    so both give the same KPIs for the same seed.
    """
    state = env.reset(seed=seed)
    feedback: Mapping[int, float] = {}
    for _ in range(slots):
        owner = decide_fn(state, feedback)
        res = env.step(owner)
        state, feedback = res.state, res.feedback
        if res.done:
            break
    return env.kpis()
