"""RedisStore against a real redis-server: round trip, key prefix and TTL, failures mapped to
the store errors, and several service processes sharing one Redis deciding as one process."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import orjson
import pytest
import redis
from cell_slots import feedback, mac_doc
from testkit import RedisProcess, free_port

from service.api.rest.codec import decode_schedule
from service.config import Settings
from service.core import ServiceCore
from service.errors import StateStoreError, StateStoreUnavailableError
from service.history import CellHistory, record_decision
from service.state import MemoryStore, open_store
from service.state.record import CellRecord
from service.state.redis_store import RedisStore
from service.types import make_slot


def _prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


def _history(slots: int = 5) -> CellHistory:
    rng = np.random.default_rng(4)
    h = CellHistory.empty()
    for t in range(slots):
        ids = rng.permutation(20)[:6] + 1
        st = make_slot(
            "mac",
            ids,
            np.arange(4),
            spectral_efficiency=rng.choice([0.2344, 1.1758], 6),
            buffer_bits=rng.integers(0, 9, 6) * 256.0,
            slot=t,
        )
        h = record_decision(h, st, rng.integers(0, 7, 4))
    return h


def _record(slots: int = 5) -> CellRecord:
    return CellRecord(_history(slots), epoch=0, version=slots)


def test_round_trip_prefix_cells_and_delete(redis_url: str) -> None:
    store = RedisStore(redis_url, key_prefix=_prefix())
    assert store.kind == "redis" and store.ping()
    assert store.load("never-seen") == CellRecord.empty()
    rec = _record()
    assert store.compare_and_set("cell-a", 0, rec)
    assert store.compare_and_set("cell-b", 0, _record(2))
    assert store.load("cell-a") == rec and store.load("cell-a").history.slots == 5
    assert store.cells() == ["cell-a", "cell-b"]
    store.delete("cell-a")
    assert store.cells() == ["cell-b"]
    other = RedisStore(redis_url, key_prefix=_prefix())  # another prefix sees nothing
    assert other.load("cell-b") == CellRecord.empty()
    store.close()


def test_compare_and_set_writes_only_over_the_version_it_read(redis_url: str) -> None:
    store = RedisStore(redis_url, key_prefix=_prefix())
    first, second = _record(1), CellRecord(_history(2), version=2)
    assert store.compare_and_set("c", 0, first)
    assert not store.compare_and_set("c", 0, second)  # someone wrote since "absent" was read
    assert not store.compare_and_set("c", 7, second)
    assert store.load("c") == first
    assert store.compare_and_set("c", 1, second) and store.load("c") == second
    assert not store.restore("c", first)  # the store has the cell: nothing restored
    assert store.restore("gone", first) and store.load("gone") == first


def test_url_options_and_ttl(redis_url: str) -> None:
    prefix = _prefix()
    sep = "&" if "?" in redis_url else "?"
    store = open_store(f"{redis_url}{sep}key_prefix={prefix}&ttl_s=30")
    assert isinstance(store, RedisStore)
    assert store.key_prefix == prefix and store.ttl_ms == 30_000
    store.compare_and_set("c", 0, _record(1))
    raw = redis.Redis.from_url(redis_url)
    ttl_ms = raw.pttl(store.key("c"))
    assert 0 < ttl_ms <= 30_000
    assert RedisStore(redis_url).key("c") == "gnbsched:rec:{c}"  # a hash tag: one Cluster slot per cell
    default = open_store(f"{redis_url}{sep}key_prefix={prefix}d", ttl_s=5)
    assert isinstance(default, RedisStore) and default.ttl_ms == 5_000  # Settings.cell_ttl_s by default


def test_corrupt_record_is_a_store_error(redis_url: str) -> None:
    store = RedisStore(redis_url, key_prefix=_prefix())
    redis.Redis.from_url(redis_url).hset(store.key("bad"), mapping={"v": "1", "b": b'{"format": 99}\nxx'})
    with pytest.raises(StateStoreError, match="corrupt") as info:
        store.load("bad")
    assert not isinstance(info.value, StateStoreUnavailableError)


def test_unreachable_redis_is_unavailable_not_a_redis_exception() -> None:
    port = free_port()  # nobody listens there
    store = RedisStore(f"redis://:secret@127.0.0.1:{port}/0")
    assert "secret" not in store.url
    assert store.ping() is False
    with pytest.raises(StateStoreUnavailableError):
        store.load("c")
    with pytest.raises(StateStoreUnavailableError):
        store.compare_and_set("c", 0, _record(1))


def _owners(core_or_client, cell: str, policy: str, slots: int, with_feedback: bool = True) -> list[list]:
    """Owners per slot, serving ``cell`` with feedback; ``core_or_client`` is a ServiceCore or a
    list of httpx clients used in turn."""
    owners: list[list] = []
    for t in range(slots):
        doc = mac_doc(cell, t, policy)
        if owners and with_feedback:
            doc["feedback"] = feedback(mac_doc(cell, t - 1, policy), owners[-1])
        if isinstance(core_or_client, list):
            c = core_or_client[t % len(core_or_client)]
            resp = c.post("/schedule", content=orjson.dumps(doc))
            assert resp.status_code == 200, resp.text
            owners.append(resp.json()["owner"])
        else:
            cores = core_or_client if isinstance(core_or_client, tuple) else (core_or_client,)
            args = decode_schedule(doc)
            d = cores[t % len(cores)].schedule(args.state, policy=args.policy, feedback=args.feedback)
            owners.append([None if k == 0 else int(args.state.user_ids[k - 1]) for k in d.owner.tolist()])
    return owners


SLOTS = 40


def test_two_cores_sharing_redis_decide_as_one(redis_url: str) -> None:
    url = f"{redis_url}{'&' if '?' in redis_url else '?'}key_prefix={_prefix()}"
    one = _owners(ServiceCore(Settings(), store=MemoryStore()), "shared", "pf", SLOTS)
    pair = (ServiceCore(Settings(), store=RedisStore(url)), ServiceCore(Settings(), store=RedisStore(url)))
    assert _owners(pair, "shared", "pf", SLOTS) == one
    # the comparison is sensitive: two processes that do not share state decide differently (without
    # feedback: a process refuses feedback about users its copy of the cell has never seen)
    alone = _owners(ServiceCore(Settings(), store=MemoryStore()), "shared", "pf", SLOTS, with_feedback=False)
    split = (ServiceCore(Settings(), store=MemoryStore()), ServiceCore(Settings(), store=MemoryStore()))
    assert _owners(split, "shared", "pf", SLOTS, with_feedback=False) != alone


def test_two_serve_processes_sharing_redis_serve_one_cell_alternately_as_one_process(
    redis_url: str, serve_process
) -> None:
    """Real ``gnbsched serve`` processes on their own ports, one Redis, one cell, alternating."""
    url = f"{redis_url}{'&' if '?' in redis_url else '?'}key_prefix={_prefix()}"
    procs = [serve_process("--grpc-port", "0", "--state-url", url) for _ in range(2)]
    for p in procs:
        p.wait_ready()
    clients = [httpx.Client(base_url=p.url, timeout=10) for p in procs]
    try:
        for c in clients:
            ready = c.get("/readyz").json()
            assert ready["ready"] is True and ready["store"] == "redis"
        for policy in ("pf", "rr"):
            cell = f"alternating-{policy}"
            want = _owners(ServiceCore(Settings(), store=MemoryStore()), cell, policy, SLOTS)
            assert _owners(clients, cell, policy, SLOTS) == want
        stored = RedisStore(url)
        assert stored.load("alternating-pf").history.slots == SLOTS == stored.load("alternating-pf").version
        assert set(stored.cells()) == {"alternating-pf", "alternating-rr"}
    finally:
        for c in clients:
            c.close()


def test_store_reconnects_after_redis_restarts(tmp_path) -> None:
    """A restarted Redis is used again at once (the pooled connection is stale, one retry)."""
    with RedisProcess(dir=tmp_path) as server:
        store = RedisStore(server.start().url)
        store.compare_and_set("c", 0, _record(3))
        server.stop(timeout_s=10)
        with pytest.raises(StateStoreUnavailableError):
            store.load("c")
        assert store.ping() is False
        server.start()  # the same port
        assert store.load("c") == CellRecord.empty()  # no persistence: the new server is empty
        assert store.compare_and_set("c", 0, _record(2))
        assert store.load("c").history.slots == 2
