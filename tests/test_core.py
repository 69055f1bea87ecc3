"""``ServiceCore``: history through the state store, degraded mode when the store fails."""

from __future__ import annotations

import numpy as np
import pytest

from service.config import Settings
from service.core import ServiceCore
from service.errors import StateStoreError, StateStoreUnavailableError
from service.history import CellHistory
from service.pag import is_valid
from service.state import MemoryStore
from service.state.base import StateStore


def _settings(**kw) -> Settings:
    base = {"state_url": "memory://", "default_policy_spectrum": "km", "default_policy_mac": "pf",
            "fallbacks": ["greedy"], "deadline_ms": None, "seed": 0, "ewma_slots": 100.0, "preload_policies": []}
    base.update(kw)
    return Settings(**base)


def _mac(slot: int, cell: str = "c1"):
    from service.types import make_slot

    return make_slot("mac", [1, 2, 3], [0, 1, 2, 3], spectral_efficiency=[1.1758, 0.6016, 0.2344],
                     buffer_bits=[2000.0, 2000.0, 2000.0], cell_id=cell, slot=slot)


class FlakyStore(StateStore):
    """A MemoryStore that can be switched off: every call then raises StateStoreUnavailableError."""

    kind = "flaky"

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False
        self.calls: list[str] = []

    def _gate(self, op: str) -> None:
        self.calls.append(op)
        if self.down:
            raise StateStoreUnavailableError(f"{op}: store down")

    def load(self, cell_id):
        self._gate("load")
        return self.inner.load(cell_id)

    def save(self, cell_id, history):
        self._gate("save")
        self.inner.save(cell_id, history)

    def ping(self):
        self._gate("ping")
        return True


class Recorder:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, str]] = []
        self.store_errors: list[str] = []

    def decision(self, transport, state, requested, decision):
        self.decisions.append((transport, requested, decision.policy))

    def store_error(self, op):
        self.store_errors.append(op)


def test_schedule_advances_the_cell_history_in_the_store():
    store = MemoryStore()
    obs = Recorder()
    core = ServiceCore(_settings(), store=store, observer=obs)
    for slot in range(5):
        d = core.schedule(_mac(slot), transport="rest")
        assert is_valid(_mac(slot), d.owner) and d.policy == "pf"
    h = store.load("c1")
    assert (h.slots, h.last_slot) == (5, 4) and h.user_ids.tolist() == [1, 2, 3]
    assert core.history("c1") == h
    assert store.load("other") == CellHistory.empty()  # cells are separate
    assert obs.decisions == [("rest", "pf", "pf")] * 5
    assert not core.degraded and core.store_errors == 0 and obs.store_errors == []


def test_schedule_uses_the_requested_policy_and_default_per_preset():
    from service.types import make_slot

    core = ServiceCore(_settings(default_policy_spectrum="greedy"), store=MemoryStore())
    spec = make_slot("spectrum", [1, 2], [1, 2], rate_bps=[[1.0, 2.0], [3.0, 1.0]])
    assert core.schedule(spec).policy == "greedy"
    assert core.schedule(spec, policy="km").policy == "km"
    d = core.schedule(spec, policy="no-such-policy")
    assert d.policy == "greedy" and d.fallback_reason == "unknown_policy"


def test_feedback_corrects_the_previous_slot():
    plain, fed = ServiceCore(_settings(), store=MemoryStore()), ServiceCore(_settings(), store=MemoryStore())
    for core in (plain, fed):
        core.schedule(_mac(0))
    plain.schedule(_mac(1))
    fed.schedule(_mac(1), feedback={1: 0.0, 2: 0.0, 3: 0.0})  # slot 0 delivered nothing
    a, b = plain.history("c1"), fed.history("c1")
    # slot 0 delivered nothing: what was served so far is only what slot 1 scheduled
    assert b.cum_served.tolist() == pytest.approx(b.last_expected.tolist())
    assert a.cum_served.sum() > a.last_expected.sum()


def test_store_failure_degrades_but_decisions_continue():
    store = FlakyStore()
    obs = Recorder()
    core = ServiceCore(_settings(), store=store, observer=obs)
    core.schedule(_mac(0))
    store.down = True
    for slot in (1, 2, 3):
        d = core.schedule(_mac(slot))
        assert is_valid(_mac(slot), d.owner)
    assert core.degraded
    assert core.store_errors == 6 and obs.store_errors == ["load", "save"] * 3
    # decided from the local copy: the history kept advancing while the store was down
    local = core._local["c1"]
    assert (local.slots, local.last_slot) == (4, 3)
    assert core.history("c1") == local  # store down: the local copy
    ready, info = core.ready()
    assert not ready and info["store_ok"] is False and info["degraded"] is True


def test_newer_local_copy_wins_when_the_store_comes_back():
    store = FlakyStore()
    core = ServiceCore(_settings(), store=store)
    for slot in range(3):
        core.schedule(_mac(slot))
    stale = store.inner.load("c1")
    store.down = True
    for slot in range(3, 6):
        core.schedule(_mac(slot))
    store.down = False
    assert store.inner.load("c1") == stale  # nothing reached the store while it was down
    d = core.schedule(_mac(6))
    assert is_valid(_mac(6), d.owner)
    h = store.inner.load("c1")
    assert (h.slots, h.last_slot) == (7, 6)  # continued from the local copy, not from the stale one
    assert not core.degraded and core.ready()[0]


def test_a_newer_store_copy_wins_over_the_local_one():
    """Another replica advanced the cell in the shared store: this core continues from it."""
    store = MemoryStore()
    a, b = ServiceCore(_settings(), store=store), ServiceCore(_settings(), store=store)
    a.schedule(_mac(0))
    for slot in (1, 2, 3):
        b.schedule(_mac(slot))
    a.schedule(_mac(4))
    h = store.load("c1")
    assert (h.slots, h.last_slot) == (5, 4)


def test_store_errors_are_state_store_errors_only():
    class Broken(FlakyStore):
        def load(self, cell_id):
            raise RuntimeError("a bug, not an outage")

    core = ServiceCore(_settings(), store=Broken())
    with pytest.raises(RuntimeError):  # programming errors are not swallowed as outages
        core.schedule(_mac(0))
    assert issubclass(StateStoreUnavailableError, StateStoreError)


def test_preload_and_ready():
    core = ServiceCore(_settings(preload_policies=["km", "pf"]), store=MemoryStore())
    ready, info = core.ready()
    assert not ready and info["policies_missing"] == ["km", "pf"]
    core.preload()
    ready, info = core.ready()
    assert ready and info["policies_loaded"] == ["km", "pf"] and info["store"] == "memory"
    core.close()


def test_decisions_are_reproducible_across_cores():
    a = ServiceCore(_settings(default_policy_mac="random", seed=9), store=MemoryStore())
    b = ServiceCore(_settings(default_policy_mac="random", seed=9), store=MemoryStore())
    for slot in range(4):
        assert np.array_equal(a.schedule(_mac(slot)).owner, b.schedule(_mac(slot)).owner)
    assert a.history("c1") == b.history("c1")
