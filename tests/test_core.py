"""``ServiceCore``: history through the state store, degraded mode when the store fails."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from service.config import Settings
from service.core import ServiceCore
from service.errors import InvalidSlotError, SlotConflictError, StateStoreError, StateStoreUnavailableError
from service.history import CellHistory
from service.pag import is_valid
from service.state import MemoryStore
from service.state.base import StateStore


def _settings(**kw) -> Settings:
    base = {
        "state_url": "memory://",
        "default_policy_spectrum": "km",
        "default_policy_mac": "pf",
        "fallbacks": ["greedy"],
        "deadline_ms": None,
        "seed": 0,
        "ewma_slots": 100.0,
        "preload_policies": [],
    }
    base.update(kw)
    return Settings(**base)


def _mac(slot: int, cell: str = "c1"):
    from service.types import make_slot

    return make_slot(
        "mac",
        [1, 2, 3],
        [0, 1, 2, 3],
        spectral_efficiency=[1.1758, 0.6016, 0.2344],
        buffer_bits=[2000.0, 2000.0, 2000.0],
        cell_id=cell,
        slot=slot,
    )


class FlakyStore(StateStore):
    """A MemoryStore that can be switched off: every call then raises StateStoreUnavailableError."""

    kind = "flaky"
    blocking_io = True  # like Redis: the core keeps a restore copy of the cells it wrote

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

    def compare_and_set(self, cell_id, expected_version, record):
        self._gate("write")
        return self.inner.compare_and_set(cell_id, expected_version, record)

    def restore(self, cell_id, record):
        self._gate("restore")
        return self.inner.restore(cell_id, record)

    def ping(self):
        self._gate("ping")
        return True


class Recorder:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, str]] = []
        self.store_errors: list[str] = []
        self.stages: list[tuple[str, str, str, float]] = []

    def decision(self, transport, state, requested, decision):
        self.decisions.append((transport, requested, decision.policy))

    def store_error(self, op):
        self.store_errors.append(op)

    def observe_stage(self, transport, preset, stage, seconds):
        self.stages.append((transport, preset, stage, seconds))


def test_schedule_advances_the_cell_history_in_the_store():
    store = MemoryStore()
    obs = Recorder()
    core = ServiceCore(_settings(), store=store, observer=obs)
    for slot in range(5):
        d = core.schedule(_mac(slot), transport="rest")
        assert is_valid(_mac(slot), d.owner) and d.policy == "pf" and not d.replayed
    record = store.load("c1")
    h = record.history
    assert (h.slots, h.last_slot, record.version, record.epoch) == (5, 4, 5, 0) and h.user_ids.tolist() == [1, 2, 3]
    assert core.history("c1") == h
    assert store.load("other").history == CellHistory.empty()  # cells are separate
    assert obs.decisions == [("rest", "pf", "pf")] * 5
    # the state stage of each decided slot: the core's time around the pipeline, never negative
    assert [(t, p, st) for t, p, st, _ in obs.stages] == [("rest", "mac", "state")] * 5
    assert all(0.0 <= sec < 1.0 for *_, sec in obs.stages)
    assert not core.degraded and core.store_errors == 0 and obs.store_errors == []


def test_schedule_uses_the_requested_policy_and_default_per_preset():
    from service.types import make_slot

    core = ServiceCore(_settings(default_policy_spectrum="greedy"), store=MemoryStore())

    def spec(slot: int):
        return make_slot("spectrum", [1, 2], [1, 2], rate_bps=[[1.0, 2.0], [3.0, 1.0]], slot=slot)

    assert core.schedule(spec(0)).policy == "greedy"
    assert core.schedule(spec(1), policy="km").policy == "km"
    d = core.schedule(spec(2), policy="no-such-policy")
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


def test_an_unreachable_store_refuses_the_slot_and_nothing_diverges():
    store = FlakyStore()
    obs = Recorder()
    core = ServiceCore(_settings(), store=store, observer=obs)
    core.schedule(_mac(0))
    before = store.inner.load("c1")
    store.down = True
    for slot in (1, 2, 3):
        with pytest.raises(StateStoreUnavailableError):
            core.schedule(_mac(slot))
    assert core.degraded and core.store_errors == 3 and obs.store_errors == ["load"] * 3
    ready, info = core.ready()
    assert not ready and info["store_ok"] is False and info["degraded"] is True
    store.down = False
    assert store.inner.load("c1") == before  # nothing was written around the store
    for slot in (1, 2, 3):  # the client retries: the slots apply once, in order
        core.schedule(_mac(slot))
    ref = ServiceCore(_settings(), store=MemoryStore())
    for slot in range(4):
        ref.schedule(_mac(slot))
    assert core.history("c1") == ref.history("c1") and not core.degraded and core.ready()[0]


def test_a_store_that_lost_a_cell_gets_this_process_copy_back():
    """A Redis restart without persistence: the next slot continues from the last state this
    process wrote, not from an empty history."""
    store = FlakyStore()
    core = ServiceCore(_settings(), store=store)
    for slot in range(3):
        core.schedule(_mac(slot))
    kept = store.inner.load("c1")
    store.inner = MemoryStore()  # the store came back empty
    core.schedule(_mac(3))
    ref = ServiceCore(_settings(), store=MemoryStore())
    for slot in range(4):
        ref.schedule(_mac(slot))
    after = store.inner.load("c1")
    assert after.version == kept.version + 1 and core.history("c1") == ref.history("c1")
    assert "restore" in store.calls


def test_a_newer_store_copy_wins_over_the_local_one():
    """Another replica advanced the cell in the shared store: this core continues from it."""
    store = MemoryStore()
    a, b = ServiceCore(_settings(), store=store), ServiceCore(_settings(), store=store)
    a.schedule(_mac(0))
    for slot in (1, 2, 3):
        b.schedule(_mac(slot))
    a.schedule(_mac(4))
    h = store.load("c1").history
    assert (h.slots, h.last_slot) == (5, 4)


def test_store_errors_are_state_store_errors_only():
    class Broken(FlakyStore):
        def load(self, cell_id):
            raise RuntimeError("a bug, not an outage")

    core = ServiceCore(_settings(), store=Broken())
    with pytest.raises(RuntimeError):  # programming errors are not swallowed as outages
        core.schedule(_mac(0))
    assert issubclass(StateStoreUnavailableError, StateStoreError)


def test_preload_and_ready(caplog):
    core = ServiceCore(_settings(preload_policies=["km", "pf"]), store=MemoryStore())
    ready, info = core.ready()
    assert not ready and info["policies_missing"] == ["km", "pf"]
    with caplog.at_level(logging.INFO, logger="gnbsched.core"):
        core.preload()
    ready, info = core.ready()
    assert ready and info["policies_loaded"] == ["km", "pf"] and info["store"] == "memory"
    # the operator is told what the (possibly long, first) start is doing, and how long it took
    said = [r.getMessage() for r in caplog.records if r.name == "gnbsched.core"]
    assert any(m.startswith("preparing: compiling the kernels and loading km, pf") for m in said), said
    assert any(re.fullmatch(r"prepared in \d+\.\d s", m) for m in said), said
    core.close()


def test_decisions_are_reproducible_across_cores():
    a = ServiceCore(_settings(default_policy_mac="random", seed=9), store=MemoryStore())
    b = ServiceCore(_settings(default_policy_mac="random", seed=9), store=MemoryStore())
    for slot in range(4):
        assert np.array_equal(a.schedule(_mac(slot)).owner, b.schedule(_mac(slot)).owner)
    assert a.history("c1") == b.history("c1")


def test_frozen_startup_objects_leave_later_garbage_to_the_collector():
    import gc
    import weakref

    from service.core import freeze_startup_objects

    class Node:
        pass

    try:
        frozen = freeze_startup_objects()
        assert frozen > 1000 and gc.get_freeze_count() > 1000  # (a frozen object freed since leaves the count)
        cycle = Node()
        cycle.self = cycle  # type: ignore[attr-defined]
        ref = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert ref() is None  # garbage made after the freeze is still collected
    finally:
        gc.unfreeze()


# ----------------------------------------------------------------------------- exactly once


def test_a_retried_slot_is_answered_from_its_stored_decision_without_touching_state():
    store = MemoryStore()
    core = ServiceCore(_settings(), store=store)
    first = [core.schedule(_mac(slot)) for slot in range(3)]
    record = store.load("c1")
    again = core.schedule(_mac(2))
    assert again.replayed and not first[2].replayed
    assert np.array_equal(again.owner, first[2].owner) and again.utility == first[2].utility
    assert again.timings_us == first[2].timings_us and again.policy_version == first[2].policy_version
    assert store.load("c1") == record  # untouched
    assert core.schedule(_mac(1)).replayed  # any of the recent slots
    nxt = core.schedule(_mac(3))
    ref = ServiceCore(_settings(), store=MemoryStore())
    want = [ref.schedule(_mac(slot)) for slot in range(4)]
    assert np.array_equal(nxt.owner, want[3].owner) and core.history("c1") == ref.history("c1")


def test_a_retry_of_a_slot_an_older_version_wrote_is_a_replay():
    """A shared store may hold records an older version wrote, with SHA-256 request digests: the
    core recognises the retry of such a slot (with its feedback and policy) by that digest."""
    from dataclasses import replace

    from service.state.record import legacy_request_digest

    store = MemoryStore()
    core = ServiceCore(_settings(), store=store)
    core.schedule(_mac(1))
    feedback = {1: 1500.0, 2: 800.0}
    first = core.schedule(_mac(2), policy="greedy", feedback=feedback)
    record = store.load("c1")
    old = replace(
        record,
        recent=tuple(
            replace(
                d,
                digest=legacy_request_digest(
                    _mac(d.slot), "greedy" if d.slot == 2 else "pf", feedback if d.slot == 2 else None
                ),
            )
            for d in record.recent
        ),
    )
    assert store.compare_and_set("c1", record.version, old)
    again = core.schedule(_mac(2), policy="greedy", feedback=feedback)
    assert again.replayed and np.array_equal(again.owner, first.owner) and store.load("c1") == old
    assert core.schedule(_mac(1)).replayed
    with pytest.raises(SlotConflictError):  # another request for slot 2 is still refused
        core.schedule(_mac(2), policy="greedy", feedback={1: 1.0})


def test_older_slots_reused_slots_and_older_epochs_are_refused():
    from service.errors import SlotConflictError
    from service.state.record import RECENT_DECISIONS

    core = ServiceCore(_settings(), store=MemoryStore())
    for slot in range(RECENT_DECISIONS + 3):
        core.schedule(_mac(slot))
    with pytest.raises(SlotConflictError) as old:
        core.schedule(_mac(0))  # older than every kept decision
    assert old.value.field == "slot" and "older" in old.value.message
    other = _mac(RECENT_DECISIONS + 2)
    other.buffer_bits[:] = 10.0  # the last slot again, with other content
    with pytest.raises(SlotConflictError, match="other content"):
        core.schedule(other)
    core.schedule(_mac(0), epoch=1)  # a new epoch: the cell starts afresh at slot 0
    with pytest.raises(SlotConflictError) as stale:
        core.schedule(_mac(5), epoch=0)
    assert stale.value.field == "epoch"
    fresh = ServiceCore(_settings(), store=MemoryStore())
    fresh.schedule(_mac(0))
    assert core.history("c1") == fresh.history("c1") and core.record("c1").epoch == 1


def test_feedback_must_name_users_of_the_cell():
    core = ServiceCore(_settings(), store=MemoryStore())
    core.schedule(_mac(0), feedback={99: 5.0})  # a new cell has nothing to correct: ignored
    core.schedule(_mac(1), feedback={1: 10.0})
    with pytest.raises(InvalidSlotError) as err:
        core.schedule(_mac(2), feedback={1: 10.0, 7: 1.0})
    assert err.value.field == "feedback.delivered_bits.7"
    assert core.history("c1").last_slot == 1  # refused: nothing applied


def test_concurrent_writers_of_one_cell_lose_nothing():
    """Threads of two cores share a store and race on one cell: every accepted slot is applied
    exactly once (the compare-and-set loser decides again on the new state)."""
    import threading

    from service.errors import SlotConflictError

    store = MemoryStore()
    cores = [ServiceCore(_settings(), store=store) for _ in range(2)]
    accepted: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for slot in range(k, 200, 4):
            try:
                cores[k % 2].schedule(_mac(slot))
            except SlotConflictError:  # a later slot got in first: this one is too old now
                continue
            with lock:
                accepted.append(slot)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = store.load("c1")
    assert record.version == len(accepted) == record.history.slots
    ref = ServiceCore(_settings(), store=MemoryStore())
    for slot in sorted(accepted):  # each accepted slot was newer than all before it was applied
        ref.schedule(_mac(slot))
    assert record.history == ref.history("c1")


def test_a_batch_cancelled_mid_tti_loses_no_state_and_applies_each_slot_once():
    """``decide_cells`` over a store that blocks on I/O runs the TTI in a worker thread; the
    caller gives up while the cells are being written. Every cell's slot is still applied exactly
    once: the same TTI sent again is answered from the stored decisions (``replayed``), the
    histories equal those of a core that decided the TTI undisturbed, and the next TTI decides."""
    import asyncio
    import threading
    import time

    from service.api.contract import ScheduleArgs

    class SlowStore(FlakyStore):
        def __init__(self) -> None:
            super().__init__()
            self.writes = threading.Semaphore(0)

        def compare_and_set(self, cell_id, expected_version, record):
            time.sleep(0.05)
            ok = super().compare_and_set(cell_id, expected_version, record)
            self.writes.release()
            return ok

    cells = [f"cancel-{k}" for k in range(5)]
    store = SlowStore()
    core, ref = ServiceCore(_settings(), store=store), ServiceCore(_settings())
    tti = [ScheduleArgs(_mac(7, c), None, None, None) for c in cells]

    async def give_up() -> None:
        task = asyncio.create_task(core.decide_cells(tti))
        await asyncio.sleep(0.12)  # two or three of the five writes done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(give_up())
    for _ in cells:  # the worker thread finishes the TTI after the caller left
        assert store.writes.acquire(timeout=10)
    again = asyncio.run(core.decide_cells(tti))
    want = ref.schedule_cells(tti)
    for c, d, w in zip(cells, again, want, strict=True):
        assert not isinstance(d, BaseException) and not isinstance(w, Exception)
        assert d.replayed and d.owner.tolist() == w.owner.tolist()
        record = store.inner.load(c)
        assert record.version == 1 and record.last_slot == 7
        assert record.history == ref.history(c)
    later = asyncio.run(core.decide_cells([ScheduleArgs(_mac(8, c), None, None, None) for c in cells]))
    assert all(not isinstance(d, BaseException) and not d.replayed for d in later)


def test_preload_compiles_the_kernels_before_the_first_decision() -> None:
    """A fresh process: no compiled kernel before ``preload``; after it, the greedy fill's and
    (loading the student) the feature kernels are compiled or loaded from numba's cache."""
    import subprocess
    import sys

    probe = (
        "from service.assign import _greedy_kernel\n"
        "from service.serialize import tensor_kernel\n"
        "from service.config import Settings\n"
        "from service.core import ServiceCore\n"
        "core = ServiceCore(Settings(state_url='memory://', preload_policies=['student', 'pf']))\n"
        "kernels = (_greedy_kernel, tensor_kernel.features, tensor_kernel.extremes)\n"
        "print([len(k.signatures) for k in kernels])\n"
        "core.preload()\n"
        "print([len(k.signatures) for k in kernels])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split("\n")[:2]
    assert before == "[0, 0, 0]" and after == "[1, 1, 1]", out.stdout


def test_a_kernel_numba_cannot_cache_is_compiled_per_process(caplog: pytest.LogCaptureFixture) -> None:
    """A function without a source file on disk gives numba no cache location: ``kernel`` still
    compiles it (no GIL, no cache) instead of failing at import, and says so."""
    from service.jit import kernel

    namespace: dict[str, object] = {}
    exec(compile("def add_one(x):\n    return x + 1\n", "<generated>", "exec"), namespace)
    with caplog.at_level("WARNING", logger="service.jit"):
        compiled = kernel(namespace["add_one"])
    assert compiled(41) == 42
    assert "NUMBA_CACHE_DIR" in caplog.text


class _HeldPolicy:
    """A policy that blocks on I/O (like the LLM teacher) and holds its slot until released."""

    name = "held"
    presets = ("spectrum", "mac")
    blocking_io = True
    batches = False
    version = "test"

    def __init__(self) -> None:
        import threading

        self.entered = threading.Event()
        self.release = threading.Event()

    def serialize(self, state, ctx):
        return None

    def act(self, state, ctx, obs):
        self.entered.set()
        assert self.release.wait(30), "the test never released the held slot"
        return np.zeros(state.num_res, np.int64)


def test_a_held_slot_of_one_cell_never_holds_another_cell() -> None:
    """One slot per cell at a time, and only per cell: while a slow slot (a teacher-like policy
    blocked in its I/O) holds one cell, slots of 300 other cells are decided, single and batched,
    and a second slot of the held cell waits for it. Distinct cells never share a lock."""
    import asyncio

    from service.api.contract import ScheduleArgs
    from service.policies.registry import PolicySet

    held = _HeldPolicy()
    core = ServiceCore(_settings(), store=MemoryStore(), policies=PolicySet(factories={"held": lambda: held}))

    async def run() -> None:
        slow = asyncio.create_task(core.decide(_mac(0, "slow"), policy="held"))
        assert await asyncio.to_thread(held.entered.wait, 10)
        again = asyncio.create_task(core.decide(_mac(1, "slow"), policy="pf"))
        others = [core.decide(_mac(0, f"other-{k}"), policy="pf") for k in range(200)]
        batch = core.decide_cells([ScheduleArgs(_mac(0, f"batched-{k}"), "pf", None, None) for k in range(100)])
        decided = await asyncio.wait_for(asyncio.gather(*others, batch), timeout=20)
        assert all(is_valid(_mac(0), d.owner) for d in decided[:-1])
        assert all(not isinstance(d, BaseException) for d in decided[-1])
        assert not again.done()  # the held cell's next slot waits for the held one
        locks = [core._cell_lock(f"cell-{k}") for k in range(1000)]
        assert len({id(lock) for lock in locks}) == 1000
        held.release.set()
        assert (await slow).policy == "held" and (await again).policy == "pf"

    try:
        asyncio.run(run())
    finally:
        held.release.set()
        core.close()
