"""Helpers shared by test folders (imported as ``testkit``: ``tests/`` is on ``sys.path``).

Kept out of ``conftest.py`` on purpose: several folders have a ``conftest.py`` of their own,
so ``import conftest`` is ambiguous in a full run.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import numpy as np

from service.policies.base import Policy, PolicyContext
from service.types import SlotState


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a child process to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class AllToFirst(Policy):
    """Raw output that breaks the grammar: every resource to user 1 (busy-resource and cap violations)."""

    name = "all_to_first"

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        return np.ones(state.num_res, np.int64)


class Broken(Policy):
    """A policy that always fails (exercises the fallback chain)."""

    name = "broken"

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        raise RuntimeError("model exploded")
