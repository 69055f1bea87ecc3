"""In-process state store: per-cell records by compare-and-set, LRU and TTL bounds, ``open_store``."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.history import CellHistory, record_decision
from service.state import MemoryStore, open_store
from service.state.record import CellRecord
from service.types import make_slot


def _record(slot: int, owner=(1, 2), version: int = 1) -> CellRecord:
    state = make_slot("spectrum", [1, 2], [1, 2], rate_bps=[[1.0, 2.0], [3.0, 4.0]], slot=slot)
    return CellRecord(record_decision(CellHistory.empty(), state, np.array(owner)), version=version)


def test_unknown_cell_loads_an_empty_record():
    store = MemoryStore()
    assert store.load("nowhere") == CellRecord.empty()
    assert store.cells() == [] and store.ping() and store.kind == "memory"
    assert store.cell_count() == (0, 0)


def test_compare_and_set_per_cell():
    store = MemoryStore()
    a, b = _record(3), _record(5, owner=(2, 1))
    assert store.compare_and_set("a", 0, a) and store.compare_and_set("b", 0, b)
    assert store.load("a") == a and store.load("b") == b and store.load("a") != b
    assert not store.compare_and_set("a", 0, b)  # a was written since "absent" was read
    assert store.compare_and_set("a", 1, _record(6, version=2)) and store.load("a").version == 2
    assert not store.restore("a", b) and store.restore("c", b) and store.load("c") == b
    assert store.cells() == ["a", "b", "c"]
    store.close()


def test_concurrent_writers_never_overwrite_each_other():
    store = MemoryStore()
    wins: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(300):
            current = store.load("cell")
            if store.compare_and_set("cell", current.version, _record(current.version, version=current.version + 1)):
                with lock:
                    wins.append(current.version + 1)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == list(range(1, len(wins) + 1))  # every version written exactly once
    assert store.load("cell").version == len(wins)


def test_the_lru_bound_and_the_ttl_evict_cells():
    store = MemoryStore(max_cells=3, ttl_s=3600)
    for k in range(5):
        store.compare_and_set(f"c{k}", 0, _record(k))
    assert store.cells() == ["c2", "c3", "c4"] and store.cell_count() == (3, 2)
    assert store.load("c0") == CellRecord.empty()  # evicted: the cell starts afresh
    short = MemoryStore(max_cells=10, ttl_s=0.05)
    short.compare_and_set("c", 0, _record(0))
    assert short.load("c").version == 1
    threading.Event().wait(0.1)
    assert short.load("c") == CellRecord.empty() and short.cell_count() == (0, 1)


def test_open_store_by_url():
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store(""), MemoryStore)
    assert open_store("memory://", max_cells=7)._cells.maxsize == 7
    with pytest.raises(ValueError, match="unsupported scheme"):
        open_store("postgres://x")
