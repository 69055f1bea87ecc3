"""The policy contract: ``Policy`` (``serialize`` then ``act``) and its ``PolicyContext``.

A policy maps one slot (plus the cell's history, passed in explicitly) to a *raw* output —
any form ``service.pag.check`` accepts, usually a DCM token vector int64 [R]. It does no I/O
except where that is its nature (the student reads a model file once, the teacher calls an
endpoint). The pipeline checks and repairs whatever it returns.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from service.history import HistoryView
from service.pag.checks import RawAction
from service.types import SlotState


@dataclass(slots=True)
class PolicyContext:
    """What a policy may use besides the slot.

    history: the cell's history aligned with the slot's users (read-only arrays, shared with the
        run-time guard's reference and the cell's history update: copy before changing one).
    rng_source: the seeded generator for this (cell, slot) — the only randomness a policy may
        use — or a zero-argument function that builds it; ``rng`` builds it on first use only
        (most policies draw nothing, and seeding a generator costs more than their decision).
    deadline: absolute ``time.perf_counter()`` by which an anytime policy must answer, or None.
    """

    history: HistoryView
    rng_source: np.random.Generator | Callable[[], np.random.Generator]
    deadline: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # a policy may report notes (e.g. "anytime: cut")

    @property
    def rng(self) -> np.random.Generator:
        src = self.rng_source
        if not isinstance(src, np.random.Generator):
            src = self.rng_source = src()
        return src

    def time_left_s(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()


class Policy(ABC):
    """Base class: ``serialize`` (optional) then ``act``.

    ``serialize`` turns the slot into the policy's own input (tensors for the student, a prompt
    for the teacher); the pipeline times it as its own stage. Baselines need none.
    """

    name: ClassVar[str] = ""
    #: presets the policy is meant for
    presets: ClassVar[tuple[str, ...]] = ("spectrum", "mac")
    #: the version reported in metrics and the metadata endpoint (a model's version for learned ones)
    version: str = "1"
    #: the policy has ``act_many(states, ctxs)``, deciding the cells of one TTI together (the
    #: student: one onnxruntime call): per slot, in order, (raw output or that slot's exception,
    #: serialize µs, policy µs), each raw output bit for bit what ``act`` gives the slot alone.
    #: ``service.pipeline.decide_many`` uses it for a batch of cells
    batches: ClassVar[bool] = False

    def serialize(self, state: SlotState, ctx: PolicyContext) -> Any:
        return None

    @abstractmethod
    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> RawAction:
        """Raw output for ``state`` (checked and repaired by the caller)."""

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "presets": list(self.presets)}

    def __call__(self, state: SlotState, ctx: PolicyContext) -> RawAction:
        return self.act(state, ctx, self.serialize(state, ctx))


#: one slot's entry of ``act_many``: (raw output or the slot's exception, serialize µs, policy µs)
Batched = tuple[RawAction | Exception, float, float]


def act_in_batch(states: Sequence[SlotState], decide_all: Callable[[], Sequence[np.ndarray]]) -> list[Batched]:
    """``act_many``'s answer for a policy that decides a batch in one call (``decide_all``: one
    DCM per slot, in order): per slot (DCM, serialize µs 0, policy µs: an equal share of the
    call)."""
    t0 = time.perf_counter_ns()
    owners = decide_all()
    share_us = (time.perf_counter_ns() - t0) / 1e3 / max(len(states), 1)
    return [(owner, 0.0, share_us) for owner in owners]
