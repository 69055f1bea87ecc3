"""Per-cell state across slots: records (``record``), the store interface, in-process and Redis stores."""

from __future__ import annotations

from service.state.base import StateStore
from service.state.memory import MemoryStore
from service.state.record import CellRecord

__all__ = ["CellRecord", "MemoryStore", "StateStore", "open_store"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


def open_store(url: str, *, max_cells: int = 100_000, ttl_s: float = 24 * 3600.0) -> StateStore:
    """Store for ``url``: ``memory://`` (in process: an LRU of ``max_cells`` with a TTL) or Redis
    (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://``; keys
    expire after ``ttl_s`` unless the URL sets ``ttl_s=``)."""
    if url.startswith("memory://") or url in ("", "memory"):
        return MemoryStore(max_cells=max_cells, ttl_s=ttl_s)
    if url.startswith(REDIS_SCHEMES):
        from service.state.redis_store import RedisStore

        return RedisStore(url, ttl_s=None if "ttl_s=" in url else ttl_s)
    raise ValueError(f"state_url: unsupported scheme in {url!r}; use memory:// or one of {', '.join(REDIS_SCHEMES)}")
