"""Fault injection against real processes: Redis killed and restarted mid-stream, a teacher
endpoint that hangs or answers garbage, corrupt or mismatched model files on reload, SIGTERM
during a gRPC stream, and slow or vanished stream clients."""

from __future__ import annotations

import itertools
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from testkit import RedisProcess, wait_until

from service.api.grpc.client import SchedulerClient, owner_tokens
from service.api.grpc.convert import slot_to_request
from service.config import Settings
from service.core import ServiceCore
from service.state import MemoryStore
from service.state.redis_store import RedisStore

from .conftest import TEACHER_ENV, reset_teacher
from .support import (
    assert_pag_valid,
    delivered,
    mac_body,
    metric_value,
    slot_of,
    spectrum_body,
    student_onnx_bytes,
    write_student,
)
from .support import (
    owner_tokens as rest_tokens,
)

SEED = 11


def _reference() -> ServiceCore:
    """An uninterrupted in-process core with the service's decision settings (memory state)."""
    return ServiceCore(Settings(grpc_port=0, seed=SEED, fallbacks=["greedy"]), store=MemoryStore())


# ----------------------------------------------------------------------------- Redis


def test_the_store_gauge_of_two_workers_is_the_latest_answer_after_an_outage(service, private_redis) -> None:
    """Two worker processes over Redis: while Redis is down every scrape says 0, and once it is
    back one scrape says 1, although the other worker last saw it down (the gauge is the latest
    answer of any live worker, not the minimum over workers, which stays 0 until each worker
    has pinged again)."""
    svc = service("--state-url", private_redis.url, "--workers", "2").wait_ready()
    private_redis.kill()
    for _ in range(20):  # a new connection each: both workers answer some and see the outage
        assert metric_value(httpx.get(svc.url + "/metrics", timeout=10).text, "gnbsched_state_store_up") == 0
    private_redis.start()
    with httpx.Client(base_url=svc.url, timeout=10) as http:
        wait_until(lambda: http.get("/readyz").status_code == 200, 30, "the service ready again")
        assert metric_value(http.get("/metrics").text, "gnbsched_state_store_up") == 1


def test_redis_killed_and_restarted_mid_stream(service, private_redis) -> None:
    """Redis SIGKILLed at slot 12 and restarted empty (no persistence) a few refused attempts
    later, over REST and one long gRPC StreamSlots call. While it is down every slot is refused
    as retryable (REST 503 + Retry-After, a stream answer with UNAVAILABLE in place, the stream
    stays open) and readiness says degraded; the client retries the refused slot. Every slot
    that is decided equals the uninterrupted in-process core's decision for it, from the first
    slot after recovery on (reconverged after 0 slots: the service gives the empty Redis its own
    copy back). A newer record written by another replica wins; corrupt records are set aside."""
    svc = service(
        "--state-url", private_redis.url, "--policy-mac", "pf", "--seed", str(SEED), "--fallbacks", "greedy", grpc=True
    ).wait_ready()
    ref = _reference()
    kill_at, refused_before_restart, end = 12, 4, 30
    rest_cell, grpc_cell = "redis-rest", "redis-grpc"
    fb_rest: dict[int, float] = {}
    fb_grpc: dict[int, float] = {}
    refused = {"rest": 0, "grpc": 0}
    with httpx.Client(base_url=svc.url, timeout=10) as http, SchedulerClient(svc.grpc_target) as grpc_client:
        grpc_client.wait_ready()
        with grpc_client.stream(timeout_s=120) as stream:

            def refusal(transport: str) -> None:
                refused[transport] += 1
                if sum(refused.values()) == 2:
                    ready = http.get("/readyz")
                    assert ready.status_code == 503
                    assert ready.json()["degraded"] is True and ready.json()["store_ok"] is False
                    assert metric_value(http.get("/metrics").text, "gnbsched_state_store_up") == 0
                if sum(refused.values()) == refused_before_restart:
                    private_redis.start()  # empty: the service restores its copy of each cell

            for slot in range(end):
                if slot == kill_at:
                    private_redis.kill()
                # gRPC stream (the same call throughout; a refused slot is answered in place, retried)
                gbody = mac_body(grpc_cell, slot, seed=2)
                gstate = slot_of(gbody)
                request = slot_to_request(gstate, feedback=fb_grpc or None, policy="pf")
                msg = stream.send(request)
                while msg.HasField("error"):
                    assert msg.error.code == "UNAVAILABLE" and msg.error.field == "slot", msg.error
                    refusal("grpc")
                    msg = stream.send(request)
                gexpected = ref.schedule(gstate, policy="pf", feedback=fb_grpc or None)
                assert np.array_equal(owner_tokens(gstate, msg), gexpected.owner), slot
                fb_grpc = delivered(gbody, {"owner": [None if o < 0 else int(o) for o in msg.owner]})
                # REST: retry a refused slot until it is decided
                body = mac_body(rest_cell, slot, seed=1, feedback=fb_rest)
                r = http.post("/schedule", content=orjson.dumps(body))
                while r.status_code == 503:
                    assert r.headers["retry-after"] and r.json()["error"] == "store_unavailable", r.text
                    refusal("rest")
                    r = http.post("/schedule", content=orjson.dumps(body))
                assert r.status_code == 200, (slot, r.text)
                answer = r.json()
                state = slot_of(body)
                expected = ref.schedule(state, policy="pf", feedback=fb_rest or None)
                assert np.array_equal(rest_tokens(state, answer["owner"]), expected.owner), slot
                fb_rest = delivered(body, answer)
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["degraded"] is False, ready.text

        metrics = http.get("/metrics").text
        assert refused["grpc"] >= 1 and sum(refused.values()) >= refused_before_restart, refused
        assert (
            metric_value(metrics, "gnbsched_state_store_errors_total", op="load") == refused["rest"] + refused["grpc"]
        )
        assert metric_value(metrics, "gnbsched_state_store_up") == 1
        assert metric_value(metrics, "gnbsched_state_events_total", event="restored") == 2

        # reconverged: Redis holds exactly the uninterrupted history of both cells
        store = RedisStore(private_redis.url)
        for cell in (rest_cell, grpc_cell):
            stored = store.load(cell)
            assert stored.history.last_slot == end - 1 and stored.history == ref.history(cell), cell
            assert stored.version == ref.record(cell).version == end, cell

        # another replica served slots end..end+4 of the REST cell meanwhile: its record is newer
        for slot in range(end, end + 5):
            body = mac_body(rest_cell, slot, seed=1, feedback=fb_rest)
            decision = ref.schedule(slot_of(body), policy="pf", feedback=fb_rest or None)
            fb_rest = delivered(body, {"owner": [None if t == 0 else 1 + int(t) - 1 for t in decision.owner]})
        assert store.compare_and_set(rest_cell, store.load(rest_cell).version, ref.record(rest_cell))
        body = mac_body(rest_cell, end + 5, seed=1)
        r = http.post("/schedule", content=orjson.dumps(body))
        expected = ref.schedule(slot_of(body), policy="pf")
        assert np.array_equal(rest_tokens(slot_of(body), r.json()["owner"]), expected.owner)

        # a corrupt record in Redis (truncated, forged header, pickle bytes, another key type) is
        # set aside as <key>:corrupt and counted, never a crash: the cell starts afresh
        client = private_redis.client()
        blobs = [
            b'{"format": 1, "last_slot": 3',
            b'GNBREC1\n{"format": 1, "epoch": 0}\n',
            b"\x80\x04\x95cos\nsystem\n.",
        ]
        for k, blob in enumerate(blobs):
            client.hset(store.key(f"corrupt-{k}"), mapping={"v": "1", "b": blob})
        client.set(store.key("corrupt-3"), b"a string, not a hash")
        for k in range(4):
            body = mac_body(f"corrupt-{k}", 0)
            r = http.post("/schedule", content=orjson.dumps(body))
            assert r.status_code == 200, r.text
            assert_pag_valid(body, r.json())
            assert client.exists(store.key(f"corrupt-{k}") + ":corrupt") == 1
            assert store.load(f"corrupt-{k}").version == 1
        metrics = http.get("/metrics").text
        assert (
            metric_value(metrics, "gnbsched_state_store_errors_total", op="load")
            == refused["rest"] + refused["grpc"] + 4
        )
        client.close()
    assert "Traceback" not in svc.output()


def test_two_replicas_through_a_redis_kill_with_persistence(service, tmp_path: Path) -> None:
    """Two replicas serve one cell alternately (REST) and a second cell over a gRPC stream; Redis
    runs with an append-only file fsynced on every write (a durable store, as production Redis
    with AOF or min_replicas behind Sentinel is) and is SIGKILLed mid-stream, then restarted from
    its file. Slots are refused while it is down and retried by the client, alternating replicas
    as before; the decisions from the first slot after recovery equal the no-outage run's and the
    two replicas never diverge: the test prints after how many slots they reconverged (0)."""
    redis = RedisProcess(dir=tmp_path, args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        args = ("--state-url", redis.url, "--policy-mac", "pf", "--seed", str(SEED), "--fallbacks", "greedy")
        replicas = [service(*args, grpc=True), service(*args)]
        for r in replicas:
            r.wait_ready()
        ref = _reference()
        kill_at, refused_before_restart, end = 10, 6, 24
        fb_rest: dict[int, float] = {}
        fb_grpc: dict[int, float] = {}
        refused = 0
        first_equal_after_recovery: int | None = None
        clients = [httpx.Client(base_url=r.url, timeout=10) for r in replicas]
        with SchedulerClient(replicas[0].grpc_target) as grpc_client:
            grpc_client.wait_ready()
            with grpc_client.stream(timeout_s=120, cell_id="durable-grpc") as stream:
                for slot in range(end):
                    if slot == kill_at:
                        redis.kill()
                    body = mac_body("durable-rest", slot, seed=3, feedback=fb_rest)
                    attempt = 0
                    while True:
                        r = clients[(slot + attempt) % 2].post("/schedule", content=orjson.dumps(body))
                        if r.status_code != 503:
                            break
                        refused += 1
                        attempt += 1
                        if refused == refused_before_restart:
                            redis.start()  # from its append-only file
                    assert r.status_code == 200, (slot, r.text)
                    state = slot_of(body)
                    expected = ref.schedule(state, policy="pf", feedback=fb_rest or None)
                    same = np.array_equal(rest_tokens(state, r.json()["owner"]), expected.owner)
                    if slot >= kill_at and first_equal_after_recovery is None and same:
                        first_equal_after_recovery = slot - kill_at
                    assert same, slot
                    fb_rest = delivered(body, r.json())
                    gbody = mac_body("durable-grpc", slot, seed=4)
                    gstate = slot_of(gbody)
                    request = slot_to_request(gstate, feedback=fb_grpc or None, policy="pf")
                    msg = stream.send(request)
                    while msg.HasField("error"):
                        assert msg.error.code == "UNAVAILABLE", msg.error
                        refused += 1
                        if refused == refused_before_restart:
                            redis.start()
                        msg = stream.send(request)
                    gexpected = ref.schedule(gstate, policy="pf", feedback=fb_grpc or None)
                    assert np.array_equal(owner_tokens(gstate, msg), gexpected.owner), slot
                    fb_grpc = delivered(gbody, {"owner": [None if o < 0 else int(o) for o in msg.owner]})
        for c in clients:
            c.close()
        print(
            f"two replicas through a Redis kill: {refused} refused attempts, reconverged after "
            f"{first_equal_after_recovery} slots"
        )
        assert refused >= refused_before_restart and first_equal_after_recovery == 0
        store = RedisStore(redis.url)
        for cell in ("durable-rest", "durable-grpc"):
            assert store.load(cell).history == ref.history(cell), cell
        for r in replicas:
            assert "Traceback" not in r.output()
    finally:
        redis.close()


# ----------------------------------------------------------------------------- teacher


def _ask_teacher(c: httpx.Client, cell: str, slot: int, deadline_ms: float | None) -> tuple[dict[str, Any], float]:
    extra = {"policy": "teacher"} | ({"deadline_ms": deadline_ms} if deadline_ms else {})
    body = spectrum_body(cell, slot, n=5, r=6, **extra)
    t0 = time.monotonic()
    r = c.post("/schedule", content=orjson.dumps(body))
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert_pag_valid(body, r.json())
    return r.json(), elapsed


def test_hanging_teacher_falls_back_inside_the_deadline(teacher_stack) -> None:
    """The endpoint accepts and never answers: each slot is served by the fallback once its
    deadline passes (the 30 s teacher timeout never comes into play), concurrent slots beyond the
    teacher's concurrency limit fall back too, and other policies keep being served meanwhile."""
    fake_teacher, svc = teacher_stack
    reset_teacher(fake_teacher, mode="hang")
    deadline_ms = 400.0
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        answer, elapsed = _ask_teacher(c, "hang-1", 0, deadline_ms)
        assert answer["policy"] == "greedy" and answer["fallback_reason"] == "deadline", answer
        assert elapsed < deadline_ms / 1e3 + 5.0  # bounded by the deadline, not by the 30 s timeout
        with ThreadPoolExecutor(6) as pool, httpx.Client(base_url=svc.url, timeout=30) as c2:
            futures = [pool.submit(_ask_teacher, c2, f"hang-{i}", 0, 3000.0) for i in range(2, 7)]
            time.sleep(0.2)
            # a baseline on another cell is answered while the teacher slots are still waiting
            km = c.post("/schedule", content=orjson.dumps(spectrum_body("hang-km", 0, policy="km")))
            assert km.status_code == 200 and km.json()["policy"] == "km"
            # the slots holding the teacher's concurrency (2) still wait for their deadline; those beyond
            # it may already have fallen back ("at once", as the docstring says)
            assert sum(not f.done() for f in futures) >= 2, [f.done() for f in futures]
            results = [f.result() for f in futures]
        for answer, elapsed in results:
            assert answer["policy"] == "greedy" and answer["fallback_reason"] in ("deadline", "unavailable"), answer
            assert elapsed < 3.0 + 5.0
    fake_teacher.release.set()  # let the hanging handler threads of the fake end
    fake_teacher.release = threading.Event()
    assert "Traceback" not in svc.output()


@pytest.mark.parametrize(
    ("mode", "setting", "reason"),
    [
        ("raw", b"<html>502 Bad Gateway</html>", "error"),
        ("raw", b'{"choices": []}', "error"),
        ("raw", b'{"choices": [{"message": {"content": 42}}]}', "error"),
        ("text", "Sure! User 101 should get channel 3 because it is the best.", "error"),
        ("text", "\x00\xff\ufffd" * 300, "error"),
        ("status", 500, "unavailable"),
        ("status", 429, "unavailable"),
        ("reset", None, "unavailable"),
    ],
)
def test_garbage_teacher_answers_fall_back(teacher_stack, mode: str, setting: Any, reason: str) -> None:
    fake_teacher, svc = teacher_stack
    reset_teacher(
        fake_teacher,
        mode=mode,
        **(
            {"raw": setting}
            if mode == "raw"
            else {"text": setting}
            if mode == "text"
            else {"status": setting}
            if mode == "status"
            else {}
        ),
    )
    before = fake_teacher.requests
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        for slot in range(3):
            # one cell per case: a slot of a cell is decided once (a repeat would be a replay)
            answer, _ = _ask_teacher(c, f"garbage-{mode}-{zlib.crc32(repr(setting).encode())}", slot, 5000.0)
            assert answer["policy"] == "greedy" and answer["fallback_reason"] == reason, answer
    assert fake_teacher.requests >= before + 3


def test_teacher_json_with_wrong_ids_is_repaired_not_trusted(teacher_stack) -> None:
    """Parsable but wrong: unknown users, busy channels, duplicates → the teacher's decision,
    repaired to PAG-valid, with its violations reported."""
    fake_teacher, svc = teacher_stack
    reset_teacher(fake_teacher, text='{"owner": [100, 100, 999, "x", 101, 102, 103, 104]}')
    with httpx.Client(base_url=svc.url, timeout=30) as c:
        answer, _ = _ask_teacher(c, "wrong-ids", 0, 5000.0)
    assert answer["policy"] == "teacher" and answer["valid_before_repair"] is False
    kinds = {v["kind"] for v in answer["violations"]}
    assert kinds & {"wrong_length", "out_of_domain", "cap_exceeded", "busy_resource"}, kinds


# ----------------------------------------------------------------------------- model reload


def test_corrupt_or_mismatched_model_is_refused_and_the_old_one_keeps_serving(service, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_student(models, "mac", "v1")
    # the synthetic models here are untrained: the run-time guard would (rightly) serve pf instead,
    # and what is tested is the reload itself
    svc = service(
        "--grpc-port",
        "0",
        "--admin",
        "--preload",
        "student",
        "--policy-mac",
        "student",
        env={"GNBSCHED_MODEL_DIR": str(models), "GNBSCHED_GUARD_ENABLED": "false"},
    ).wait_ready()
    good = student_onnx_bytes(scale=-1.0)
    # broken candidates, each refused
    write_student(models, "mac", "v2-corrupt", onnx_bytes=good, sha256="0" * 64)  # checksum mismatch
    write_student(models, "mac", "v3-features", card={"feature_version": "tensors-v0"})
    write_student(models, "mac", "v4-preset", card={"preset": "spectrum"})
    write_student(models, "mac", "v5-signature", onnx_bytes=student_onnx_bytes(user_width=3))
    write_student(models, "mac", "v6-truncated", onnx_bytes=good[: len(good) // 2])
    write_student(models, "mac", "v7-garbage", onnx_bytes=b"\x08\x01garbage" * 40)
    (models / "student-mac" / "v8-nocard").mkdir()
    (models / "student-mac" / "v8-nocard" / "model.onnx").write_bytes(good)
    write_student(models, "mac", "v9", onnx_bytes=good)

    stop = threading.Event()
    seen: list[tuple[int, str, str | None, str | None]] = []

    def traffic() -> None:
        """Scheduling continues while models are reloaded: every answer is 200 and PAG-valid."""
        with httpx.Client(base_url=svc.url, timeout=10) as c:
            slot = 0
            while not stop.is_set() and slot < 5000:
                body = mac_body("reload-bg", slot, n=6, r=5)
                r = c.post("/schedule", content=orjson.dumps(body))
                ans = r.json()
                seen.append(
                    (r.status_code, ans.get("policy"), ans.get("notes", {}).get("model_version"), ans.get("fallback"))
                )
                if r.status_code == 200:
                    assert_pag_valid(body, ans)
                slot += 1

    def served_version(c: httpx.Client, slot: int) -> str:
        body = mac_body("reload-fg", slot, n=6, r=5)
        ans = c.post("/schedule", content=orjson.dumps(body)).json()
        assert ans["policy"] == "student" and ans["fallback"] is None, ans
        return ans["notes"]["model_version"]

    bg = threading.Thread(target=traffic, daemon=True)
    bg.start()
    try:
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            assert served_version(c, 0) == "v1"
            for k, version in enumerate(
                (
                    "v2-corrupt",
                    "v3-features",
                    "v4-preset",
                    "v5-signature",
                    "v6-truncated",
                    "v7-garbage",
                    "v8-nocard",
                    "v-missing",
                ),
                start=1,
            ):
                r = c.post("/admin/reload", json={"policy": "student", "preset": "mac", "version": version})
                assert r.status_code == 422, (version, r.text)
                assert r.json()["error"] == "model_invalid" and r.json()["field"] == "version", r.text
                assert served_version(c, k) == "v1", version
            # "latest" naming a corrupt version: the refresh is refused as a whole
            (models / "student-mac" / "latest").write_text("v2-corrupt\n")
            r = c.post("/admin/reload", json={"policy": "student"})
            assert r.status_code == 422 and "mac" in r.json()["message"], r.text
            assert served_version(c, 20) == "v1"
            # a valid model is swapped in and serves from the next slot
            (models / "student-mac" / "latest").write_text("v9\n")
            r = c.post("/admin/reload", json={"policy": "student"})
            assert r.status_code == 200 and r.json()["reloaded"] == {"mac": "v9"}, r.text
            assert served_version(c, 21) == "v9"
            meta = c.get("/v1/policies").json()
            student = next(p for p in meta["policies"] if p["name"] == "student")
            assert student["models"]["mac"]["version"] == "v9"
    finally:
        stop.set()
        bg.join(30)
    assert seen and all(status == 200 for status, *_ in seen)
    assert {(pol, fb) for _, pol, _, fb in seen} == {("student", None)}
    assert {ver for _, _, ver, _ in seen} <= {"v1", "v9"}
    assert "Traceback" not in svc.output()


def test_every_worker_follows_a_new_latest_with_the_model_watch(service, tmp_path: Path) -> None:
    """``serve --workers 2 --model-watch-s``: pointing ``latest`` at a new version swaps it in
    every worker (``POST /admin/reload`` reaches one); a corrupt ``latest`` is refused by every
    worker, which keeps serving the model it had."""
    models = tmp_path / "models"
    write_student(models, "mac", "v1")
    (models / "student-mac" / "latest").write_text("v1\n")
    svc = service(
        "--grpc-port",
        "0",
        "--workers",
        "2",
        "--state-url",
        "memory://",
        "--preload",
        "student",
        "--policy-mac",
        "student",
        "--model-watch-s",
        "0.2",  # untrained models: guard off, as above
        env={"GNBSCHED_MODEL_DIR": str(models), "GNBSCHED_GUARD_ENABLED": "false"},
    ).wait_ready()

    cells = itertools.count()

    def versions(k: int) -> set[str]:
        """The model version of ``k`` decisions, each on a new connection (spread over the workers)
        and a new cell (a slot sent again would be answered from its stored decision)."""
        out = set()
        for _ in range(k):
            with httpx.Client(base_url=svc.url, timeout=10) as c:
                cell = f"watch-{next(cells)}"
                ans = c.post("/schedule", content=orjson.dumps(mac_body(cell, 0, n=6, r=5))).json()
                assert ans["policy"] == "student" and ans["fallback"] is None, ans
                out.add(ans["notes"]["model_version"])
        return out

    pids = set()
    for _ in range(40):  # both workers answer (the kernel spreads new connections over them)
        with httpx.Client(base_url=svc.url, timeout=10) as c:
            pids.add(c.get("/healthz").json()["pid"])
    assert len(pids) == 2, pids
    assert versions(10) == {"v1"}
    write_student(models, "mac", "v2-corrupt", onnx_bytes=student_onnx_bytes(scale=-1.0), sha256="0" * 64)
    (models / "student-mac" / "latest").write_text("v2-corrupt\n")
    time.sleep(1.0)
    assert versions(10) == {"v1"}
    write_student(models, "mac", "v3", onnx_bytes=student_onnx_bytes(scale=-1.0))
    (models / "student-mac" / "latest").write_text("v3\n")
    wait_until(lambda: versions(10) == {"v3"}, 20, "every worker serving v3")
    assert versions(30) == {"v3"}
    assert "model watch" in svc.output() and "Traceback" not in svc.output()


# ----------------------------------------------------------------------------- gRPC streams


class _StreamDriver(threading.Thread):
    """A lock-step StreamSlots client in a thread: sends mac slots until the call ends (or
    ``max_s``); records every answer and the final status."""

    def __init__(
        self, target: str, cell: str, *, policy: str = "pf", max_s: float = 60.0, pause_s: float = 0.0
    ) -> None:
        super().__init__(daemon=True)
        self.target, self.cell, self.policy, self.max_s, self.pause_s = target, cell, policy, max_s, pause_s
        self.answers = 0
        self.invalid: list[str] = []
        self.code: Any = None
        self.details = ""
        self.stop_flag = threading.Event()

    def run(self) -> None:
        import grpc

        end = time.monotonic() + self.max_s
        with SchedulerClient(self.target, timeout_s=None) as client:
            stream = client.stream(timeout_s=self.max_s + 30)
            slot = 0
            try:
                while time.monotonic() < end and not self.stop_flag.is_set():
                    body = mac_body(self.cell, slot, n=6, r=5)
                    state = slot_of(body)
                    msg = stream.decide(state, policy=self.policy)
                    if not check_owner(state, owner_tokens(state, msg)):
                        self.invalid.append(f"slot {slot}")
                    self.answers += 1
                    slot += 1
                    if self.pause_s:
                        time.sleep(self.pause_s)
                stream.close()
            except grpc.RpcError as exc:
                self.code, self.details = exc.code(), exc.details() or ""


def check_owner(state, tokens) -> bool:
    from service.pag.checks import check

    return check(state, tokens).valid


def test_sigterm_during_grpc_streams_answers_in_flight_slots_then_exits_0(service, fake_teacher) -> None:
    """SIGTERM while busy streams run and one slot waits on a slow teacher: the slot in hand of
    every stream is answered, each stream then ends with UNAVAILABLE ("shutting down"), the unary
    call in flight is answered, and the process exits with status 0."""
    import grpc

    fake_teacher.mode = "text"
    # each teacher request is held until the test releases it after SIGTERM (at most 20 s): both
    # are in flight when the signal arrives, however long the busy machine takes to send them
    fake_teacher.delay_s = 20.0
    # the fake teacher's answers are not meant to be good: the run-time guard would serve greedy
    # instead, and what is tested is the shutdown
    svc = service(
        "--fallbacks",
        "greedy",
        grpc=True,
        env={**TEACHER_ENV, "GNBSCHED_TEACHER_URL": fake_teacher.url, "GNBSCHED_GUARD_ENABLED": "false"},
    ).wait_ready()
    busy = [_StreamDriver(svc.grpc_target, f"term-{i}") for i in range(3)]
    for d in busy:
        d.start()
    deadline = time.monotonic() + 30
    while min(d.answers for d in busy) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert min(d.answers for d in busy) >= 20
    slow_body = spectrum_body("term-teacher", 0, n=3, r=4, policy="teacher")
    slow_body["users"] = [dict(u, id=100 + i) for i, u in enumerate(slow_body["users"])]
    fake_teacher.text = '{"owner": [100, 101, null, 102]}'
    slow_state = slot_of(slow_body)
    results: dict[str, Any] = {}

    def teacher_stream() -> None:
        with SchedulerClient(svc.grpc_target, timeout_s=None) as client:
            stream = client.stream(timeout_s=60)
            results["stream_answer"] = stream.decide(slow_state, policy="teacher")
            try:
                stream.decide(slot_of(spectrum_body("term-teacher", 1, n=3, r=4)), policy="km")
                results["after"] = "answered"
            except grpc.RpcError as exc:
                results["after"] = (exc.code(), exc.details())

    def teacher_unary() -> None:  # another cell: slots of one cell are decided one at a time
        unary_state = slot_of({**slow_body, "cell_id": "term-teacher-unary"})
        with SchedulerClient(svc.grpc_target, timeout_s=60) as client:
            results["unary_answer"] = client.schedule(unary_state, policy="teacher")

    side = [threading.Thread(target=teacher_stream, daemon=True), threading.Thread(target=teacher_unary, daemon=True)]
    for t in side:
        t.start()
    # both teacher slots are in flight (the fake holds them) while the streams are busy
    deadline = time.monotonic() + 20
    while fake_teacher.requests < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_teacher.requests >= 2 and "stream_answer" not in results
    svc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the stop has begun with both slots in hand
    fake_teacher.release.set()
    for t in [*side, *busy]:
        t.join(40)
    assert svc.proc.wait(40) == 0, svc.output()[-3000:]

    msg = results["stream_answer"]
    assert msg.policy == "teacher" and not msg.HasField("fallback") and not msg.HasField("error")
    assert check_owner(slow_state, owner_tokens(slow_state, msg))
    assert results["unary_answer"].policy == "teacher"
    code, details = results["after"]
    assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details, results["after"]
    for d in busy:
        assert d.invalid == [] and d.answers >= 20
        assert d.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in d.details, (d.code, d.details)
    assert "Traceback" not in svc.output()


_CLIENT = r"""
import sys, time
sys.path.insert(0, {repo!r})
from service.api.grpc.client import SchedulerClient
from service.types import make_slot
import numpy as np
with SchedulerClient({target!r}, timeout_s=None) as c:
    stream = c.stream(timeout_s=None)
    slot = 0
    while True:
        state = make_slot("mac", [1, 2, 3], [0, 1, 2, 3], spectral_efficiency=[1.0, 2.0, 3.0],
                          buffer_bits=[5e3, 1e4, 2e4], cell_id={cell!r}, slot=slot)
        stream.decide(state, policy="pf")
        if slot == 3:
            print("streaming", flush=True)
        slot += 1
        time.sleep(0.005)
"""


def _spawn_client(target: str, cell: str) -> subprocess.Popen:
    import sys

    from .support import REPO

    proc = subprocess.Popen(
        [sys.executable, "-c", _CLIENT.format(repo=str(REPO), target=target, cell=cell)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.strip() == "streaming", line + (proc.stdout.read() if proc.stdout else "")
    return proc


def test_slow_and_vanished_stream_clients(service) -> None:
    """Clients that vanish (SIGKILL), freeze (SIGSTOP: the connection stays open, nothing
    answers) or stop reading: a healthy stream is served throughout, the server drops the dead
    connections (keepalive), cancels the stalled stream, and its file descriptors and
    connections return to where they were — nothing leaks."""
    import grpc

    from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb

    from .support import open_fds, rss_kib, tcp_connections_to

    svc = service(
        "--fallbacks",
        "greedy",
        grpc=True,
        env={
            "GNBSCHED_GRPC_KEEPALIVE_S": "1",
            "GNBSCHED_GRPC_KEEPALIVE_TIMEOUT_S": "1",
            "GNBSCHED_GRPC_STREAM_STALL_S": "2",
        },
    ).wait_ready()
    healthy = _StreamDriver(svc.grpc_target, "healthy", max_s=120, pause_s=0.002)
    healthy.start()
    wait_until_answers = time.monotonic() + 20
    while healthy.answers < 50 and time.monotonic() < wait_until_answers:
        time.sleep(0.05)
    time.sleep(0.5)
    base_fds, base_conns, base_rss = open_fds(svc.pid), tcp_connections_to(svc.grpc_port), rss_kib(svc.pid)
    assert base_conns == 1

    def settle(what: str, timeout_s: float = 15.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if tcp_connections_to(svc.grpc_port) == base_conns and open_fds(svc.pid) <= base_fds:
                return
            time.sleep(0.1)
        raise AssertionError(
            f"after {what}: {tcp_connections_to(svc.grpc_port)} connections, "
            f"{open_fds(svc.pid)} fds (baseline {base_conns}, {base_fds})"
        )

    # vanished: killed mid-stream, three rounds
    for round_ in range(3):
        clients = [_spawn_client(svc.grpc_target, f"killed-{round_}-{i}") for i in range(3)]
        for proc in clients:
            proc.kill()
            proc.wait(10)
        settle(f"killed clients round {round_}")

    # frozen: the kernel keeps the TCP connection, the client answers no keepalive ping
    frozen = _spawn_client(svc.grpc_target, "frozen")
    before = healthy.answers
    frozen.send_signal(signal.SIGSTOP)
    try:
        settle("a frozen client (keepalive)")
    finally:
        frozen.kill()
        frozen.wait(10)
    assert healthy.answers > before

    # slow reader: sends large slots and never reads; flow control fills, the write stalls
    n_res = 2048
    req = pb.SlotRequest(
        cell_id="slow",
        preset="spectrum",
        user_ids=[1, 2, 3, 4],
        rx_power_dbm=[-70, -80, -90, -75],
        resource_ids=list(range(n_res)),
        policy="greedy",
        max_resources_per_user=n_res,
    )

    def flood() -> Iterator[Any]:
        for slot in range(3000):
            req.slot = slot
            yield req

    channel = grpc.insecure_channel(svc.grpc_target)
    stub_call = channel.stream_stream(
        "/gnbsched.v1.Scheduler/StreamSlots",
        request_serializer=pb.SlotRequest.SerializeToString,
        response_deserializer=pb.SlotDecision.FromString,
    )
    call = stub_call(flood(), timeout=120)
    before = healthy.answers
    end = time.monotonic() + 30
    while "has not read an answer" not in svc.output() and time.monotonic() < end:
        time.sleep(0.1)
    assert "has not read an answer" in svc.output()
    assert healthy.answers > before  # served while the slow stream stalled
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    channel.close()
    settle("a slow reader")

    healthy.stop_flag.set()
    healthy.join(30)
    assert healthy.code is None and healthy.invalid == [], (healthy.code, healthy.details)
    assert rss_kib(svc.pid) < base_rss + 64 * 1024  # bounded: nothing kept per dead stream
    assert "Traceback" not in svc.output()
