"""In-process per-cell state (the default): an LRU with a TTL, guarded by a lock.

At most ``max_cells`` cells are kept; a cell not written for ``ttl_s`` seconds expires, and the
least recently used one is evicted beyond the bound. Evicted cells start afresh when they come
back (their next slot is applied to an empty history).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cachetools import TTLCache

from service.state.base import StateStore
from service.state.record import CellRecord


class _CountingTTLCache(TTLCache):
    """A ``TTLCache`` that counts what it drops (LRU evictions and expiries)."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=time.monotonic)
        self.evicted = 0

    def popitem(self) -> Any:
        item = super().popitem()
        self.evicted += 1
        return item

    def expire(self, time: float | None = None) -> Any:
        expired = super().expire(time)
        self.evicted += len(expired or ())
        return expired


class MemoryStore(StateStore):
    kind = "memory"

    def __init__(self, max_cells: int = 100_000, ttl_s: float = 24 * 3600.0) -> None:
        self._cells = _CountingTTLCache(max_cells, ttl_s)
        self._lock = threading.Lock()

    def load(self, cell_id: str) -> CellRecord:
        with self._lock:
            return self._cells.get(cell_id) or CellRecord.empty()

    def compare_and_set(self, cell_id: str, expected_version: int, record: CellRecord) -> bool:
        with self._lock:
            current = self._cells.get(cell_id)
            if (current.version if current is not None else 0) != expected_version:
                return False
            self._cells[cell_id] = record
            return True

    def restore(self, cell_id: str, record: CellRecord) -> bool:
        with self._lock:
            if cell_id in self._cells:
                return False
            self._cells[cell_id] = record
            return True

    def ping(self) -> bool:
        return True

    def cells(self) -> list[str]:
        with self._lock:
            self._cells.expire()
            return sorted(self._cells)

    def cell_count(self) -> tuple[int, int]:
        with self._lock:
            self._cells.expire()
            return len(self._cells), self._cells.evicted
