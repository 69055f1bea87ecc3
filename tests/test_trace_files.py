"""The trace recorder keeps at most ``MAX_OPEN_FILES`` files open: the least recently written one
is closed (its rows reach the disk) and reopened in append mode when its cell writes again."""

from __future__ import annotations

import orjson
import pytest

from service import trace
from service.history import CellHistory
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.types import make_slot


def _slot(cell: str, slot: int):
    return make_slot(
        "mac", [1, 2], [0, 1, 2], spectral_efficiency=[1.0, 2.0], buffer_bits=[1e5, 1e5], slot=slot, cell_id=cell
    )


def _rows(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_the_least_recently_written_file_is_closed_and_reopened(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trace, "MAX_OPEN_FILES", 2)
    rec = trace.Recorder(tmp_path)
    policies = PolicySet()

    def write(cell: str, slot: int) -> None:
        state = _slot(cell, slot)
        rec.record(state, decide(state, CellHistory.empty(), "pf", policies=policies), policy="pf")

    write("a", 0)
    write("b", 0)
    handle_a, handle_b = rec._files["a"].fh, rec._files["b"].fh
    write("a", 1)  # a is now the most recently written
    write("c", 0)  # evicts b, the least recently written
    assert set(rec._files) == {"a", "c"}
    assert handle_b.closed and not handle_a.closed
    assert [r["request"]["slot"] for r in _rows(rec.path("b"))] == [0]  # closing flushed its row
    write("b", 1)  # reopened in append mode; evicts a
    assert set(rec._files) == {"b", "c"} and handle_a.closed
    rec.close()
    assert [r["request"]["slot"] for r in _rows(rec.path("b"))] == [0, 1]
    assert [r["request"]["slot"] for r in _rows(rec.path("a"))] == [0, 1]
    assert rec.rows == 5 and rec.errors == 0
