"""Per-cell state across slots: the ``StateStore`` interface, in-process and Redis stores."""

from __future__ import annotations

from service.state.base import StateStore
from service.state.memory import MemoryStore

__all__ = ["MemoryStore", "StateStore", "open_store"]


def open_store(url: str) -> StateStore:
    """Store for ``url``: ``memory://`` (in process) or ``redis://…`` / ``rediss://…``."""
    if url.startswith("memory://") or url in ("", "memory"):
        from service.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.state.redis_store import RedisStore

        return RedisStore(url)
    raise ValueError(f"state_url: unsupported scheme in {url!r}; use memory:// or redis://host:port/db")
