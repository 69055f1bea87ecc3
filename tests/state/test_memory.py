"""In-process state store: per-cell histories, thread safety, ``open_store``."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.history import CellHistory, record_decision
from service.state import MemoryStore, open_store
from service.types import make_slot


def _history(slot: int, owner=(1, 2)) -> CellHistory:
    state = make_slot("spectrum", [1, 2], [1, 2], rate_bps=[[1.0, 2.0], [3.0, 4.0]], slot=slot)
    return record_decision(CellHistory.empty(), state, np.array(owner))


def test_unknown_cell_loads_an_empty_history():
    store = MemoryStore()
    assert store.load("nowhere") == CellHistory.empty()
    assert store.cells() == [] and store.ping() and store.kind == "memory"


def test_save_then_load_per_cell():
    store = MemoryStore()
    a, b = _history(3), _history(5, owner=(2, 1))
    store.save("a", a)
    store.save("b", b)
    assert store.load("a") == a and store.load("b") == b and store.load("a") != b
    store.save("a", b)  # overwrite
    assert store.load("a") == b
    assert store.cells() == ["a", "b"]
    store.close()


def test_concurrent_saves_and_loads():
    store = MemoryStore()
    histories = [_history(i) for i in range(8)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(200):
                store.save(f"cell-{k}", histories[i % 8])
                assert store.load(f"cell-{k}") in histories
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.cells() == [f"cell-{k}" for k in range(6)]


def test_open_store_by_url():
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store(""), MemoryStore)
    with pytest.raises(ValueError, match="unsupported scheme"):
        open_store("postgres://x")
