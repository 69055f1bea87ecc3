"""Per-cell state in Redis: one key per cell holding ``service.history.to_bytes`` of its history.

Several service processes (uvicorn workers, replicas) that share one Redis see one history per
cell, so they can serve a cell alternately and decide exactly as one process would. Calls are
short and fail fast — a small socket timeout and one immediate reconnect — because the core
decides from its in-process copy while the store is down (``ServiceCore`` degraded mode);
every failure is a ``StateStoreError`` (``StateStoreUnavailableError`` when Redis cannot be
reached), never a redis-py exception.

URL: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS, ``unix://`` sockets);
besides redis-py's own query options it takes ``key_prefix=`` and ``ttl_s=``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.errors import StateStoreError, StateStoreUnavailableError
from service.history import CellHistory, from_bytes, to_bytes
from service.state.base import StateStore

DEFAULT_KEY_PREFIX = "gnbsched:cell:"


def _split_options(url: str) -> tuple[str, dict[str, str]]:
    """Remove this store's own query options (key_prefix, ttl_s) from a redis URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("key_prefix", "ttl_s")}
    rest = [(k, v) for k, v in query if k not in ours]
    return urlunsplit(parts._replace(query=urlencode(rest))), ours


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class RedisStore(StateStore):
    """``StateStore`` over redis-py (synchronous; the REST transport calls it off the event loop).

    key_prefix: keys are ``key_prefix + cell_id``. ttl_s: expire a cell's history after this
    many seconds without a save (None = never). socket_timeout_s / connect_timeout_s bound each
    call; retries: immediate reconnect attempts on a connection error (a restarted Redis).
    """

    kind = "redis"
    #: calls block on the network: transports run them off the event loop
    blocking_io = True

    def __init__(self, url: str, *, key_prefix: str | None = None, ttl_s: float | None = None,
                 socket_timeout_s: float = 0.25, connect_timeout_s: float = 0.25, retries: int = 1) -> None:
        clean_url, opts = _split_options(url)
        self.url = _redacted(clean_url)
        self.key_prefix = key_prefix if key_prefix is not None else opts.get("key_prefix", DEFAULT_KEY_PREFIX)
        ttl = ttl_s if ttl_s is not None else (float(opts["ttl_s"]) if "ttl_s" in opts else None)
        self.ttl_ms = None if ttl is None else max(1, round(ttl * 1e3))
        try:
            self._client = redis.Redis.from_url(
                clean_url, socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), retries), retry_on_timeout=False, health_check_interval=0)
        except ValueError as exc:
            raise ValueError(f"state_url: {exc}") from None

    def key(self, cell_id: str) -> str:
        return self.key_prefix + cell_id

    def _call(self, op: str, cell_id: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise StateStoreUnavailableError(f"redis {op} {cell_id!r} at {self.url}: {exc}") from exc
        except redis.RedisError as exc:
            raise StateStoreError(f"redis {op} {cell_id!r} at {self.url}: {exc}") from exc

    def load(self, cell_id: str) -> CellHistory:
        blob = self._call("load", cell_id, self._client.get, self.key(cell_id))
        if blob is None:
            return CellHistory.empty()
        try:
            return from_bytes(blob)
        except (ValueError, KeyError, TypeError) as exc:
            raise StateStoreError(f"redis load {cell_id!r}: corrupt history ({exc})") from exc

    def save(self, cell_id: str, history: CellHistory) -> None:
        self._call("save", cell_id, self._client.set, self.key(cell_id), to_bytes(history), px=self.ttl_ms)

    def delete(self, cell_id: str) -> None:
        """Forget a cell's history."""
        self._call("delete", cell_id, self._client.delete, self.key(cell_id))

    def cells(self) -> list[str]:
        """Cell ids with a stored history (SCAN over the key prefix)."""
        keys = self._call("scan", "*", lambda: list(self._client.scan_iter(match=self.key_prefix + "*", count=500)))
        n = len(self.key_prefix)
        return sorted(k.decode()[n:] if isinstance(k, bytes) else k[n:] for k in keys)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        try:
            self._client.close()
        except (redis.RedisError, OSError):
            pass
