"""In-process per-cell state (the default): a dict guarded by a lock."""

from __future__ import annotations

import threading

from service.history import CellHistory
from service.state.base import StateStore


class MemoryStore(StateStore):
    kind = "memory"

    def __init__(self) -> None:
        self._cells: dict[str, CellHistory] = {}
        self._lock = threading.Lock()

    def load(self, cell_id: str) -> CellHistory:
        with self._lock:
            return self._cells.get(cell_id) or CellHistory.empty()

    def save(self, cell_id: str, history: CellHistory) -> None:
        with self._lock:
            self._cells[cell_id] = history

    def ping(self) -> bool:
        return True

    def cells(self) -> list[str]:
        with self._lock:
            return sorted(self._cells)
