"""Per-cell state in Redis, written by compare-and-set: exactly once across replicas and retries.

One hash per cell, ``<key_prefix>{<cell id>}``, holds ``v`` (the record's version) and ``b``
(``CellRecord.to_bytes``). A write is a Lua script that sets both only if ``v`` is still the
version the writer read, so of two replicas deciding the same slot of a cell one wins and the
other retries on the new state; nothing is lost or applied twice. The ``{cell id}`` hash tag
keeps every key of a cell in one Redis Cluster hash slot, so the scripts stay atomic there.

Calls are short and fail fast (a small socket timeout, one immediate reconnect); every failure
is a ``StateStoreError`` (``StateStoreUnavailableError`` when Redis cannot be reached), never a
redis-py exception.

URLs:
  * ``redis://[user:password@]host:port/db`` (``rediss://`` TLS, ``unix://`` sockets);
  * ``redis+sentinel://[:password@]host:port[,host:port...]/<master name>[/db]``: Redis Sentinel,
    the master is looked up on every reconnect (a failover is followed);
  * ``redis+cluster://[:password@]host:port[,host:port...]``: Redis Cluster.
Besides redis-py's own query options each takes ``key_prefix=`` and ``ttl_s=`` (a cell not
written for that long expires; default 24 h).

Durable acknowledgement (``redis://`` and ``redis+sentinel://``; refused on ``redis+cluster://``,
where ``WAIT`` has no key to route by):
  * ``min_replicas=K`` (default 0: off): a write (compare-and-set or restore) counts only once K
    replicas hold it. The write script and ``WAIT K wait_ms`` go in one pipeline, on the
    connection that wrote; fewer than K acknowledgements raise ``StateStoreUnavailableError``
    ("written but not yet replicated"): the slot is refused as retryable, and its retry is
    answered from the stored decision when the write survived, or decided afresh when a
    failover lost it. A read is confirmed the same way (``HMGET``, a ``PUBLISH`` on
    ``<key_prefix>wait`` that moves the connection's replication offset past what it read, then
    ``WAIT``): a stored decision is never answered while a failover could still lose it. So
    with fewer than K replicas in reach every slot is refused (give a master at least K + 1
    replicas to ride out the loss of one node);
  * ``wait_ms=`` (default 100): how long ``WAIT`` waits for the acknowledgements (the server
    checks it every 1/hz s, 100 ms by default). The socket timeout grows by it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.errors import StateCorruptError, StateStoreError, StateStoreUnavailableError
from service.state.base import StateStore
from service.state.record import CellRecord

DEFAULT_KEY_PREFIX = "gnbsched:rec:"
DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_WAIT_MS = 100
#: the query options this store reads itself (the rest go to redis-py)
STORE_OPTIONS = ("key_prefix", "ttl_s", "min_replicas", "wait_ms")
#: added to the socket timeout with min_replicas: a WAIT may overrun its timeout by the server's 1/hz
WAIT_SLACK_S = 0.2

#: KEYS[1] the cell's hash; ARGV: expected version ("0": absent), new version, blob, ttl ms
_CAS = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v == false and ARGV[1] == '0') or v == ARGV[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'b', ARGV[3])
  if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
  return 1
end
return 0
"""
#: KEYS[1] the cell's hash; ARGV: version, blob, ttl ms — written only when the hash is absent
_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'b', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def _split_options(url: str) -> tuple[str, dict[str, str]]:
    """Remove this store's own query options (``STORE_OPTIONS``) from a redis URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in STORE_OPTIONS}
    rest = [(k, v) for k, v in query if k not in ours]
    return urlunsplit(parts._replace(query=urlencode(rest))), ours


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _hosts(netloc: str) -> tuple[list[tuple[str, int]], str | None]:
    """([(host, port), ...], password) of ``[:password@]h1:p1,h2:p2``."""
    auth, _, hosts = netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) if auth else None
    out = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out, password or None


def connect(url: str, *, socket_timeout_s: float, connect_timeout_s: float, retries: int) -> Any:
    """A redis-py client for ``url`` (plain, Sentinel master, or Cluster)."""
    common: dict[str, Any] = dict(
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), retries),
        retry_on_timeout=False,
    )
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        from redis.sentinel import Sentinel

        hosts, password = _hosts(parts.netloc)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel:// needs the master name: redis+sentinel://host:port/<name>[/db]")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s)
        return sentinel.master_for(path[0], db=db, password=password, **common)
    if parts.scheme == "redis+cluster":
        from redis.cluster import ClusterNode, RedisCluster

        hosts, password = _hosts(parts.netloc)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in hosts],
            password=password,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
        )
    return redis.Redis.from_url(url, health_check_interval=0, **common)


class RedisStore(StateStore):
    """``StateStore`` over redis-py (synchronous; the core calls it off the event loop).

    key_prefix: keys are ``key_prefix + "{" + cell_id + "}"``. ttl_s: expire a cell's record
    after this many seconds without a write (0 = never). min_replicas / wait_ms: durable
    acknowledgement (see the module doc). Each defaults to the URL's query option of that name.
    socket_timeout_s / connect_timeout_s bound each call; retries: immediate reconnect attempts
    on a connection error.
    """

    kind = "redis"
    #: calls block on the network: the core runs them off the event loop
    blocking_io = True

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str | None = None,
        ttl_s: float | None = None,
        min_replicas: int | None = None,
        wait_ms: int | None = None,
        socket_timeout_s: float = 0.25,
        connect_timeout_s: float = 0.25,
        retries: int = 1,
    ) -> None:
        clean_url, opts = _split_options(url)
        self.url = _redacted(clean_url)
        self.key_prefix = key_prefix if key_prefix is not None else opts.get("key_prefix", DEFAULT_KEY_PREFIX)
        try:
            ttl = ttl_s if ttl_s is not None else float(opts.get("ttl_s", DEFAULT_TTL_S))
            self.min_replicas = min_replicas if min_replicas is not None else int(opts.get("min_replicas", 0))
            self.wait_ms = wait_ms if wait_ms is not None else int(opts.get("wait_ms", DEFAULT_WAIT_MS))
        except ValueError as exc:
            raise ValueError(f"state_url: {exc} (ttl_s: seconds; min_replicas, wait_ms: integers)") from None
        self.ttl_ms = max(0, round(ttl * 1e3))
        if self.min_replicas < 0:
            raise ValueError(f"state_url: min_replicas must be >= 0, got {self.min_replicas}")
        if self.wait_ms <= 0:  # WAIT 0 would block until the replicas answer, however long
            raise ValueError(f"state_url: wait_ms must be > 0, got {self.wait_ms}")
        if self.min_replicas and urlsplit(clean_url).scheme == "redis+cluster":
            raise ValueError(
                "state_url: min_replicas is not supported with redis+cluster:// (WAIT names no key, "
                "so a cluster client cannot send it on the connection of the write); use "
                "redis+sentinel:// or redis:// for acknowledged replication, or drop min_replicas"
            )
        if self.min_replicas:
            socket_timeout_s += self.wait_ms / 1e3 + WAIT_SLACK_S
        try:
            self._client = connect(
                clean_url, socket_timeout_s=socket_timeout_s, connect_timeout_s=connect_timeout_s, retries=retries
            )
        except ValueError as exc:
            raise ValueError(f"state_url: {exc}") from None
        self._cas = self._client.register_script(_CAS)
        self._restore = self._client.register_script(_RESTORE)

    def key(self, cell_id: str) -> str:
        return f"{self.key_prefix}{{{cell_id}}}"

    def _call(self, op: str, cell_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise StateStoreUnavailableError(f"redis {op} {cell_id!r} at {self.url}: {exc}") from exc
        except redis.RedisError as exc:  # incl. a Sentinel with no master yet (MasterNotFoundError)
            if "master" in str(exc).lower() or "cluster" in type(exc).__name__.lower():
                raise StateStoreUnavailableError(f"redis {op} {cell_id!r} at {self.url}: {exc}") from exc
            raise StateStoreError(f"redis {op} {cell_id!r} at {self.url}: {exc}") from exc

    def load(self, cell_id: str) -> CellRecord:
        """The cell's record. A record that cannot be read (corrupt, forged, another key type) is
        renamed to ``<key>:corrupt`` for inspection and ``StateCorruptError`` raised: the next
        write starts the cell again (from the core's copy when it has one)."""
        key = self.key(cell_id)
        try:
            if self.min_replicas:
                version, blob = self._load_replicated(cell_id)
            else:
                version, blob = self._call("load", cell_id, self._client.hmget, key, ["v", "b"])
        except StateStoreError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            self._quarantine(cell_id, f"not a cell record ({exc})")
        if blob is None:
            return CellRecord.empty()
        try:
            record = CellRecord.from_bytes(blob)
            if version is None or int(version) != record.version:
                raise ValueError(f"version field {version!r} does not match the record's {record.version}")
        except (ValueError, KeyError, TypeError) as exc:
            self._quarantine(cell_id, str(exc))
        return record

    def _load_replicated(self, cell_id: str) -> list[Any]:
        """[v, b] of the cell, once ``min_replicas`` replicas hold them: the PUBLISH (propagated to
        replicas, it changes nothing) moves this connection's replication offset past the read,
        so the WAIT covers the writes that made the record, whoever made them."""

        def run() -> list[Any]:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.hmget(self.key(cell_id), ["v", "b"])
                pipe.publish(self.key_prefix + "wait", "")
                pipe.wait(self.min_replicas, self.wait_ms)
                return list(pipe.execute())

        fields, _, acked = self._call("load", cell_id, run)
        if fields[1] is not None and int(acked) < self.min_replicas:
            raise StateStoreUnavailableError(
                f"redis load {cell_id!r} at {self.url}: the record is not yet replicated to {self.min_replicas} "
                f"replica(s) ({acked} acknowledged within {self.wait_ms} ms); retry the slot"
            )
        return list(fields)

    def _write(self, op: str, cell_id: str, script: Any, args: list[Any]) -> bool:
        """Run a write script on the cell; with ``min_replicas``, followed by WAIT on the same
        connection (one pipeline), and refused when too few replicas acknowledged the write."""
        keys = [self.key(cell_id)]
        if not self.min_replicas:
            return bool(self._call(op, cell_id, script, keys=keys, args=args))

        def run() -> list[Any]:
            # EVALSHA queued by hand: a Script called on a pipeline costs a SCRIPT EXISTS round trip per call
            for attempt in (1, 2):
                with self._client.pipeline(transaction=False) as pipe:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                    pipe.wait(self.min_replicas, self.wait_ms)
                    try:
                        return list(pipe.execute())
                    except redis.exceptions.NoScriptError:  # a new master (failover) or a flushed cache
                        if attempt == 2:
                            raise
                script.sha = self._client.script_load(script.script)
            raise AssertionError("unreachable")

        ok, acked = self._call(op, cell_id, run)
        if ok and int(acked) < self.min_replicas:
            raise StateStoreUnavailableError(
                f"redis {op} {cell_id!r} at {self.url}: written but not yet replicated to {self.min_replicas} "
                f"replica(s) ({acked} acknowledged within {self.wait_ms} ms); retry the slot"
            )
        return bool(ok)

    def _quarantine(self, cell_id: str, why: str) -> NoReturn:
        key = self.key(cell_id)
        self._call("quarantine", cell_id, self._client.rename, key, key + ":corrupt")
        raise StateCorruptError(f"redis load {cell_id!r}: corrupt cell record set aside as {key}:corrupt ({why})")

    def compare_and_set(self, cell_id: str, expected_version: int, record: CellRecord) -> bool:
        return self._write(
            "write", cell_id, self._cas, [str(expected_version), str(record.version), record.to_bytes(), self.ttl_ms]
        )

    def restore(self, cell_id: str, record: CellRecord) -> bool:
        return self._write("restore", cell_id, self._restore, [str(record.version), record.to_bytes(), self.ttl_ms])

    def delete(self, cell_id: str) -> None:
        """Forget a cell's record."""
        self._call("delete", cell_id, self._client.delete, self.key(cell_id))

    def cells(self) -> list[str]:
        """Cell ids with a stored record (SCAN over the key prefix; on a cluster every primary is
        scanned). Records set aside as ``<key>:corrupt`` are not cells."""
        pattern = _glob_escape(self.key_prefix) + "{*}"
        keys = self._call("scan", "*", lambda: list(self._client.scan_iter(match=pattern, count=500)))
        n = len(self.key_prefix)
        return sorted({(k.decode() if isinstance(k, bytes) else k)[n + 1 : -1] for k in keys})

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
