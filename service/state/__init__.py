"""Per-cell state across slots: the ``StateStore`` interface, in-process and Redis stores."""

from service.state.base import StateStore, open_store
from service.state.memory import MemoryStore

__all__ = ["MemoryStore", "StateStore", "open_store"]
