"""The per-cell state store interface: a ``CellRecord`` per cell, written by compare-and-set."""

from __future__ import annotations

from abc import ABC, abstractmethod

from service.state.record import CellRecord


class StateStore(ABC):
    """Load a cell's record; write it only if nobody wrote it since it was read.

    Implementations raise ``StateStoreError`` on failure (``StateStoreUnavailableError`` when
    the store cannot be reached). ``blocking_io``: calls block on the network (the core runs
    them off the event loop).
    """

    kind: str = ""
    blocking_io: bool = False

    @abstractmethod
    def load(self, cell_id: str) -> CellRecord:
        """The cell's record (``CellRecord.empty()``, version 0, if the cell is new)."""

    @abstractmethod
    def compare_and_set(self, cell_id: str, expected_version: int, record: CellRecord) -> bool:
        """Write ``record`` if the stored version is ``expected_version`` (0: no record);
        False (nothing written) when another writer got there first."""

    @abstractmethod
    def restore(self, cell_id: str, record: CellRecord) -> bool:
        """Write ``record`` only if the store holds no record of the cell (it lost its data:
        a restart without persistence); False when it has one."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the store answers (readiness)."""

    def cell_count(self) -> tuple[int, int]:
        """(live cells, cells evicted so far); (-1, -1) where the store does not count them."""
        return -1, -1

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
