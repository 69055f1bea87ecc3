"""Replicated and clustered Redis with real processes.

* Sentinel: a master, two replicas and a Sentinel; one cell is served by an in-process core and a
  ``gnbsched serve`` process alternately with ``min_replicas=1`` (a write counts once a replica
  holds it). The master is SIGKILLed mid-stream; the slots refused meanwhile are resent until
  Sentinel has promoted a replica, and the cell ends exactly as an uninterrupted in-process run:
  every decision and the final state. Two replicas, not one: after the failover the new master
  still has a replica to acknowledge its writes (with one, every slot stays refused until the
  lost node comes back as a replica). Then the other way round: a slot written on the master
  alone (the replicas cut off between its read and its write) is refused, the master dies, and
  the resent slot is decided afresh on the promoted replica, the same way.
* Durable acknowledgement on a lone master: the write is refused ("not yet replicated"), so is
  its retry, until a replica is attached; then the retry is answered from the stored decision.
* Cluster: three primaries; records of many cells spread over the nodes, ``cells()`` scans them
  all, and two cores sharing the cluster decide one cell as one in-process core.

Every Redis process is a private ``redis-server`` (``testkit``); no redis-server on PATH fails
the test, it never skips.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis
from cell_slots import feedback, mac_doc
from testkit import REDIS_FAST_SYNC, RedisClusterNodes, RedisProcess, SentinelProcess, ServeProcess

from service.api.rest.codec import decode_schedule
from service.config import Settings
from service.core import ServiceCore
from service.errors import StateStoreUnavailableError
from service.history import CellHistory, record_decision
from service.state import MemoryStore, open_store
from service.state.record import CellRecord
from service.state.redis_store import RedisStore
from service.types import make_slot

POLICY = "pf"
SLOTS = 40
KILL_AFTER = 15  # slots decided before the master is killed
FAILOVER_BOUND_S = 20.0  # a refused slot is resent for at most this long
RESEND_PAUSE_S = 0.02


def _prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


def _doc(cell: str, slot: int, owners: list[list]) -> dict:
    """Slot ``slot`` of ``cell`` with the feedback of the previous slot's decision."""
    doc = mac_doc(cell, slot)
    if slot > 0:
        doc["feedback"] = feedback(mac_doc(cell, slot - 1), owners[slot - 1])
    return doc


#: one target answers (owner, replayed) for a slot document, or raises StateStoreUnavailableError
Target = Callable[[dict], tuple[list, bool]]


def _core_target(core: ServiceCore) -> Target:
    def send(doc: dict) -> tuple[list, bool]:
        args = decode_schedule(doc)
        d = core.schedule(args.state, policy=args.policy, feedback=args.feedback)
        return [None if k == 0 else int(args.state.user_ids[k - 1]) for k in d.owner.tolist()], d.replayed

    return send


def _rest_target(client: httpx.Client) -> Target:
    def send(doc: dict) -> tuple[list, bool]:
        r = client.post("/schedule", content=orjson.dumps(doc))
        if r.status_code == 503:
            assert r.json()["error"] == "store_unavailable", r.text
            raise StateStoreUnavailableError(r.json().get("message", r.text))
        assert r.status_code == 200, r.text
        body = r.json()
        return body["owner"], body["replayed"]

    return send


def _resend(send: Target, doc: dict, bound_s: float) -> tuple[list, bool, int]:
    """(owner, replayed, refusals): ``send`` until it is not refused, for at most ``bound_s``."""
    end = time.monotonic() + bound_s
    refusals = 0
    while True:
        try:
            owner, replayed = send(doc)
            return owner, replayed, refusals
        except StateStoreUnavailableError as exc:
            refusals += 1
            if time.monotonic() > end:
                raise AssertionError(f"slot {doc['slot']} still refused after {bound_s:.0f} s: {exc}") from exc
            time.sleep(RESEND_PAUSE_S)


def _reference(cell: str, slots: int) -> tuple[list[list], CellHistory]:
    """Owners per slot and the final history of an uninterrupted in-process run."""
    core = ServiceCore(Settings(), store=MemoryStore())
    send = _core_target(core)
    owners: list[list] = []
    for t in range(slots):
        owners.append(send(_doc(cell, t, owners))[0])
    return owners, core.history(cell)


# ----------------------------------------------------------------------------- Sentinel


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[tuple[RedisProcess, list[RedisProcess], SentinelProcess]]:
    """(master, [replica, replica], sentinel), all started; the Sentinel knows both replicas."""
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(RedisProcess(dir=tmp_path, args=REDIS_FAST_SYNC, name="redis-master"))
        master.start()
        replicas = [stack.enter_context(RedisProcess.replica_of(master, dir=tmp_path)) for _ in range(2)]
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_in_sync()
        sentinel = stack.enter_context(SentinelProcess(master, tmp_path))
        sentinel.start().wait_replicas([r.port for r in replicas])
        assert sentinel.master_port() == master.port
        yield master, replicas, sentinel


def test_sentinel_failover_with_min_replicas_serves_one_cell_exactly_once(sentinel_group, serve_process) -> None:
    master, replicas, sentinel = sentinel_group
    cell = "failover"
    url = sentinel.url(min_replicas=1, key_prefix=_prefix())
    want, want_history = _reference(cell, SLOTS)

    serve: ServeProcess = serve_process("--grpc-port", "0", "--state-url", url)
    core = ServiceCore(Settings(), store=open_store(url))
    assert isinstance(core.store, RedisStore) and core.store.min_replicas == 1
    serve.wait_ready()
    client = httpx.Client(base_url=serve.url, timeout=10)
    targets = [_core_target(core), _rest_target(client)]  # two processes, one cell, in turn

    owners: list[list] = []
    refused: dict[int, int] = {}  # slot -> times refused
    why: Counter[str] = Counter()  # refusals by cause
    replayed: list[int] = []
    killed_at = recovered_at = None
    try:
        for t in range(SLOTS):
            if t == KILL_AFTER:
                master.kill()  # SIGKILL: no goodbye to the replicas, the clients or Sentinel
                killed_at = time.monotonic()
            doc = _doc(cell, t, owners)
            attempt = 0
            first_refused = None
            while True:
                try:  # a refused slot is resent to the other process, as a client would
                    owner, was_replayed = targets[(t + attempt) % 2](doc)
                    break
                except StateStoreUnavailableError as exc:
                    refused[t] = refused.get(t, 0) + 1
                    why["not replicated" if "not yet replicated" in str(exc) else "unreachable"] += 1
                    attempt += 1
                    first_refused = first_refused or time.monotonic()
                    since = time.monotonic() - first_refused
                    assert since < FAILOVER_BOUND_S, (
                        f"slot {t} still refused {since:.1f} s after its first refusal "
                        f"(Sentinel reports master port {sentinel.master_port()}): {exc}"
                    )
                    time.sleep(RESEND_PAUSE_S)
            if killed_at is not None and recovered_at is None:
                recovered_at = time.monotonic()
            owners.append(owner)
            if was_replayed:
                replayed.append(t)
    finally:
        client.close()
        core.close()

    assert killed_at is not None and recovered_at is not None
    new_port = sentinel.master_port()
    print(
        f"failover: slots answered again {recovered_at - killed_at:.2f} s after the SIGKILL; "
        f"{sum(refused.values())} refusals ({dict(why)}) over slots {sorted(refused)}; replayed slots "
        f"{replayed}; master :{master.port} -> :{new_port}"
    )
    assert sum(n for t, n in refused.items() if t >= KILL_AFTER) >= 1, "no slot refused after the SIGKILL"
    assert new_port in [r.port for r in replicas]
    assert owners == want  # every decision, refused and resent or not, is the uninterrupted run's
    store = RedisStore(url)
    record = store.load(cell)
    assert record.version == SLOTS == record.history.slots  # each slot applied once, none lost
    assert record.history == want_history
    # acknowledged means replicated: the replica left beside the new master holds the last write too
    other = next(r for r in replicas if r.port != new_port)
    assert int(other.client().hget(store.key(cell), "v") or 0) == SLOTS
    store.close()
    assert "Traceback" not in serve.output()


class _CutBeforeWrite(RedisStore):
    """A RedisStore that runs ``before_write`` (once) just before its next compare-and-set: the
    replicas can be cut off between a slot's confirmed read and its write."""

    before_write: Callable[[], None] | None = None

    def compare_and_set(self, cell_id: str, expected_version: int, record: CellRecord) -> bool:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
        return super().compare_and_set(cell_id, expected_version, record)


def test_sentinel_failover_losing_an_unreplicated_write_decides_the_slot_afresh(sentinel_group) -> None:
    """The replicas are cut off (frozen, their links dropped), a slot is written on the master alone
    and refused; its resend is refused as well (the stored decision is on one node only). The
    master dies, a replica without that write is promoted: the resent slot is decided afresh, as
    the uninterrupted run decided it, and the cell goes on as if nothing had happened."""
    master, replicas, sentinel = sentinel_group
    cell = "lost-write"
    cut = 10  # the slot written to the master alone
    url = sentinel.url(min_replicas=1, key_prefix=_prefix())
    want, want_history = _reference(cell, 20)

    def cut_replicas() -> None:
        for r in replicas:
            os.kill(r.pid, signal.SIGSTOP)
        master.client().client_kill_filter(_type="replica")  # no replica receives what comes next

    store = _CutBeforeWrite(url)
    core = ServiceCore(Settings(), store=store)
    send = _core_target(core)
    owners: list[list] = []
    try:
        for t in range(cut):
            owners.append(send(_doc(cell, t, owners))[0])
        try:
            store.before_write = cut_replicas  # the read of slot `cut` is confirmed, its write is not
            with pytest.raises(StateStoreUnavailableError, match="written but not yet replicated"):
                send(_doc(cell, cut, owners))
            assert int(master.client().hget(store.key(cell), "v") or 0) == cut + 1  # on the master alone
            with pytest.raises(StateStoreUnavailableError, match="not yet replicated"):
                send(_doc(cell, cut, owners))  # a stored decision a failover can lose is not answered
            master.kill()
            killed_at = time.monotonic()
        finally:
            for r in replicas:
                os.kill(r.pid, signal.SIGCONT)
        owner, was_replayed, refusals = _resend(send, _doc(cell, cut, owners), bound_s=FAILOVER_BOUND_S)
        print(
            f"lost write: slot {cut} decided afresh {time.monotonic() - killed_at:.2f} s after the SIGKILL, "
            f"{refusals} refusals; master :{master.port} -> :{sentinel.master_port()}"
        )
        assert not was_replayed and owner == want[cut]  # the write was lost: decided again, the same way
        owners.append(owner)
        for t in range(cut + 1, 20):
            owners.append(_resend(send, _doc(cell, t, owners), bound_s=FAILOVER_BOUND_S)[0])
        assert owners == want
        record = store.load(cell)
        assert record.version == 20 == record.history.slots and record.history == want_history
    finally:
        core.close()  # and its store


def test_min_replicas_refuses_until_a_replica_holds_the_write(tmp_path: Path) -> None:
    """A lone master: the write happens but is refused; the retry too (a decision that a failover
    could still lose is never answered); with a replica attached the retry is replayed."""
    cell = "lone"
    want, _ = _reference(cell, 3)
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(RedisProcess(dir=tmp_path, args=REDIS_FAST_SYNC, name="redis-master"))
        master.start()
        store = RedisStore(f"{master.url}?min_replicas=1&wait_ms=50&key_prefix={_prefix()}")
        assert store.min_replicas == 1 and store.wait_ms == 50
        send = _core_target(ServiceCore(Settings(), store=store))
        owners: list[list] = []

        t0 = time.monotonic()
        with pytest.raises(StateStoreUnavailableError, match="written but not yet replicated to 1 replica"):
            send(_doc(cell, 0, owners))
        assert time.monotonic() - t0 < 2.0  # bounded by wait_ms (plus the server's 1/hz)
        raw = master.client()
        assert raw.hget(store.key(cell), "v") == b"1"  # the write itself happened
        with pytest.raises(StateStoreUnavailableError, match="not yet replicated"):
            send(_doc(cell, 0, owners))  # the retry finds the decision, but no replica holds it yet

        replica = stack.enter_context(RedisProcess.replica_of(master, dir=tmp_path))
        replica.start().wait_in_sync()
        # resent as a client would: the master counts a new replica once it acknowledged (within ~1 s)
        owner, was_replayed, refusals = _resend(send, _doc(cell, 0, owners), bound_s=5.0)
        print(f"lone master: slot 0 answered {refusals} resends after the replica synced")
        assert was_replayed and owner == want[0]  # answered from the stored decision, not decided again
        owners.append(owner)
        owner, was_replayed = send(_doc(cell, 1, owners))
        assert not was_replayed and owner == want[1]
        owners.append(owner)
        assert replica.client().hget(store.key(cell), "v") == b"2"

        replica.kill()  # the only replica gone: refused again, whatever WAIT counted last time
        with pytest.raises(StateStoreUnavailableError, match="not yet replicated"):
            send(_doc(cell, 2, owners))
        store.close()


def test_min_replicas_url_options(redis_url: str) -> None:
    sep = "&" if "?" in redis_url else "?"
    store = RedisStore(f"{redis_url}{sep}min_replicas=2&wait_ms=30&key_prefix={_prefix()}")
    assert (store.min_replicas, store.wait_ms) == (2, 30) and "min_replicas" not in store.url
    plain = RedisStore(redis_url)
    assert (plain.min_replicas, plain.wait_ms) == (0, 100)
    assert plain.compare_and_set(f"c-{uuid.uuid4().hex}", 0, CellRecord(CellHistory.empty(), version=1))
    with pytest.raises(ValueError, match="min_replicas is not supported with redis\\+cluster"):
        RedisStore("redis+cluster://127.0.0.1:7000?min_replicas=1")
    for bad, why in (
        ("min_replicas=-1", "min_replicas must be >= 0"),
        ("wait_ms=0", "wait_ms must be > 0"),
        ("min_replicas=x", "integers"),
    ):
        with pytest.raises(ValueError, match=why):
            RedisStore(f"{redis_url}{sep}{bad}")


# ----------------------------------------------------------------------------- Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes.start()


def _history(slots: int, seed: int) -> CellHistory:
    rng = np.random.default_rng(seed)
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


def test_cluster_round_trip_spreads_cells_over_the_nodes(cluster: RedisClusterNodes) -> None:
    prefix = _prefix()
    store = RedisStore(f"{cluster.url}?key_prefix={prefix}")
    assert store.ping()
    names = [f"cell-{k:02d}" for k in range(24)]
    records = {c: CellRecord(_history(1 + k % 3, k), version=1) for k, c in enumerate(names)}
    for c in names[:12]:
        assert store.compare_and_set(c, 0, records[c])
    for c in names[12:]:
        assert store.restore(c, records[c])
    for c in names:
        assert store.load(c) == records[c]
        assert not store.restore(c, records[c])  # held: nothing restored
        assert not store.compare_and_set(c, 0, records[c])  # not the version read
    second = CellRecord(_history(2, 99), version=2)
    assert store.compare_and_set(names[0], 1, second) and store.load(names[0]) == second

    per_node: dict[int, int] = {}
    for node in cluster.nodes:  # each node on its own (no cluster client): what it holds itself
        client = node.client()
        keys = list(client.scan_iter(match=prefix + "*"))
        per_node[node.port] = len(keys)
        for key in keys:  # held where its hash slot is served: CLUSTER COUNTKEYSINSLOT there counts it
            assert client.cluster("countkeysinslot", client.cluster("keyslot", key)) >= 1
        client.close()
    print(f"cluster: keys per node {per_node}")
    assert sum(per_node.values()) == len(names)  # every cell once, on one node
    assert sum(1 for n in per_node.values() if n > 0) >= 2, per_node  # hash tags spread cells over nodes

    store.delete(names[-1])
    assert store.cells() == names[:-1]  # SCAN over every primary, not one node
    assert store.load(names[-1]) == CellRecord.empty()
    store.close()


def test_two_cores_sharing_a_cluster_decide_as_one(cluster: RedisClusterNodes) -> None:
    url = f"{cluster.url}?key_prefix={_prefix()}"
    cell = "cluster-shared"
    want, want_history = _reference(cell, SLOTS)
    cores = [ServiceCore(Settings(), store=open_store(url)) for _ in range(2)]
    targets = [_core_target(c) for c in cores]
    owners: list[list] = []
    replayed = []
    for t in range(SLOTS):
        owner, was_replayed = targets[t % 2](_doc(cell, t, owners))
        owners.append(owner)
        replayed.append(was_replayed)
    assert owners == want and not any(replayed)
    record = RedisStore(url).load(cell)
    assert record.version == SLOTS and record.history == want_history
    # a retry of the last slot through the other core is answered from the stored decision
    owner, was_replayed = targets[SLOTS % 2](_doc(cell, SLOTS - 1, owners))
    assert was_replayed and owner == want[-1]
    for c in cores:
        c.close()


def test_cells_on_a_cluster_skip_quarantined_records(cluster: RedisClusterNodes) -> None:
    prefix = _prefix()
    store = RedisStore(f"{cluster.url}?key_prefix={prefix}")
    rec = CellRecord(_history(1, 3), version=1)
    for c in ("a", "b", "c"):
        store.compare_and_set(c, 0, rec)
    raw = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    raw.hset(store.key("b"), mapping={"v": "1", "b": b"not a record"})
    with pytest.raises(Exception, match="corrupt"):
        store.load("b")
    assert raw.exists(store.key("b") + ":corrupt") == 1
    assert store.cells() == ["a", "c"]
    raw.close()
    store.close()
