"""Exactly-once per-cell state with real processes: replicas sharing one Redis, hammered.

Four ``gnbsched serve`` replicas share a real Redis. Several clients send the slots of ONE cell
for ``HAMMER_S`` seconds to random replicas, retrying some requests on another replica and
re-sending older slots out of order (the same request bytes as the first time). Afterwards:

* no decision is lost: every slot answered 200 is in the cell's state, and the state holds
  nothing else (version = applied slots = history slots);
* none is applied twice: every answer for one slot carries the same decision (retries are
  ``replayed``, never decided again);
* the final state equals a single in-process core that applies the accepted slots in order,
  and so does every decision.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict

import httpx
import numpy as np
import orjson

from service.api.rest.codec import decode_schedule
from service.config import Settings
from service.core import ServiceCore
from service.state import MemoryStore
from service.state.redis_store import RedisStore

HAMMER_S = 30.0
REPLICAS = 4
CLIENTS = 6
CELL = "hammered"


def _doc(slot: int) -> dict:
    """The request of ``slot`` (the same bytes every time it is sent)."""
    rng = np.random.default_rng(5000 + slot)
    ids = rng.permutation(24)[:10] + 1
    return {
        "cell_id": CELL,
        "slot": slot,
        "preset": "mac",
        "policy": "pf",
        "users": [
            {
                "id": int(u),
                "spectral_efficiency": float(rng.choice([0.2344, 0.6016, 1.1758])),
                "buffer_bits": float(rng.integers(0, 12) * 256),
            }
            for u in ids
        ],
        "resources": [{"id": j, "bandwidth_hz": 1.44e6} for j in range(8)],
    }


def test_replicas_hammering_one_cell_lose_nothing_and_apply_nothing_twice(redis_url: str, serve_process) -> None:
    url = f"{redis_url}{'&' if '?' in redis_url else '?'}key_prefix=test:{uuid.uuid4().hex[:10]}:"
    procs = [serve_process("--grpc-port", "0", "--state-url", url, "--log-level", "warning") for _ in range(REPLICAS)]
    for p in procs:
        p.wait_ready()
    next_slot = [0]
    lock = threading.Lock()
    answers: dict[int, list[tuple[list, bool]]] = defaultdict(list)  # slot -> [(owner, replayed)]
    counts = {"ok": 0, "replayed": 0, "conflict": 0, "retry": 0}
    stop_at = time.monotonic() + HAMMER_S

    def client(seed: int) -> None:
        rng = random.Random(seed)
        sessions = [httpx.Client(base_url=p.url, timeout=30) for p in procs]
        try:
            while time.monotonic() < stop_at:
                with lock:
                    slot = next_slot[0]
                    next_slot[0] += 1
                sends = [slot]
                if rng.random() < 0.3:
                    sends.append(slot)  # a client retry, to another replica
                if slot > 3 and rng.random() < 0.2:
                    sends.append(slot - rng.randint(1, 3))  # an older slot again, out of order
                for s in sends:
                    body = orjson.dumps(_doc(s))
                    for _attempt in range(20):
                        r = rng.choice(sessions).post("/schedule", content=body)
                        if r.status_code != 503:  # 503: contended or store down, retryable as is
                            break
                        with lock:
                            counts["retry"] += 1
                    with lock:
                        if r.status_code == 200:
                            ans = r.json()
                            answers[s].append((ans["owner"], ans["replayed"]))
                            counts["replayed" if ans["replayed"] else "ok"] += 1
                        else:
                            assert r.status_code == 409 and r.json()["error"] == "slot_conflict", r.text
                            counts["conflict"] += 1
        finally:
            for c in sessions:
                c.close()

    errors: list[BaseException] = []

    def guarded(seed: int) -> None:
        try:
            client(seed)
        except BaseException as exc:  # reported below
            errors.append(exc)

    runners = [threading.Thread(target=guarded, args=(k,)) for k in range(CLIENTS)]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    assert errors == [], errors
    print(f"hammer: {counts}, slots generated {next_slot[0]}, applied {len(answers)}")

    record = RedisStore(url).load(CELL)
    applied = sorted(answers)
    assert counts["ok"] == len(applied) > 50, counts  # each applied slot decided exactly once
    assert record.version == len(applied) == record.history.slots  # nothing lost, nothing twice
    assert counts["replayed"] > 0 and counts["conflict"] > 0, counts  # both paths were exercised
    for slot, seen in answers.items():
        assert sum(not replayed for _, replayed in seen) == 1, (slot, seen)
        assert all(owner == seen[0][0] for owner, _ in seen), slot  # replays are the stored decision

    ref = ServiceCore(Settings(), store=MemoryStore())
    for slot in applied:  # a slot applies only when newer than every applied one: in slot order
        args = decode_schedule(_doc(slot))
        d = ref.schedule(args.state, policy="pf")
        want = [None if k == 0 else int(args.state.user_ids[k - 1]) for k in d.owner.tolist()]
        assert answers[slot][0][0] == want, slot
    assert record.history == ref.history(CELL)
    for p in procs:
        assert "Traceback" not in p.output()
