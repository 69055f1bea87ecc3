"""The per-cell state store interface. Stores keep ``CellHistory`` values by cell id."""

from __future__ import annotations

from abc import ABC, abstractmethod

from service.history import CellHistory


class StateStore(ABC):
    """Load and save one cell's history. Implementations raise ``StateStoreError`` on failure."""

    kind: str = ""

    @abstractmethod
    def load(self, cell_id: str) -> CellHistory:
        """The cell's history (empty if the cell is new)."""

    @abstractmethod
    def save(self, cell_id: str, history: CellHistory) -> None:
        """Persist the cell's history."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the store answers (readiness)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
