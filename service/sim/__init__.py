"""Seeded, deterministic simulators (Gymnasium-style ``reset(seed=)`` / ``step()``).

Every simulator implements ``SlotEnv``: ``reset`` returns the first slot's ``SlotState`` as the
base station sees it; ``step(owner)`` applies a DCM, plays the slot, and returns the next
slot's state with the feedback the base station receives (delivered bits per user id). The
same seed gives the same rollout.
"""

from service.sim.base import SlotEnv, StepResult, run_episode

__all__ = ["SlotEnv", "StepResult", "run_episode"]
