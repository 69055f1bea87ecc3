"""Record and replay: ``gnbsched serve --record DIR`` (``service.trace``) and
``gnbsched bench student --trace FILE`` (``service.bench.replay``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from service.api.contract import Limits
from service.api.grpc.client import SchedulerClient
from service.api.rest.app import create_app
from service.api.rest.codec import decode_schedule
from service.api.simulate import make_env, rest_body
from service.bench import replay
from service.bench import student as bench_student
from service.config import Settings
from service.core import ServiceCore
from service.state.memory import MemoryStore
from service.trace import FORMAT, Recorder, file_stem, rest_request
from service.types import SlotState, make_slot

SLOTS = 16  # per cell; even slots over REST, odd ones over gRPC


def _same_slot(a: SlotState, b: SlotState) -> bool:
    same = all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("user_ids", "resource_ids", "utility", "resource_available", "user_eligible", "bandwidth_hz")
    )
    for f in ("buffer_bits", "rx_power_dbm", "spectral_efficiency"):
        x, y = getattr(a, f), getattr(b, f)
        same &= (x is None) == (y is None) and (x is None or np.array_equal(x, y))
    return bool(
        same
        and a.max_resources_per_user == b.max_resources_per_user
        and a.tti_s == b.tti_s
        and a.cell_id == b.cell_id
        and a.slot == b.slot
        and a.preset == b.preset
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drive(
    cell: str, preset: str, scenario: str, policy: str, http: httpx.Client, grpc_client: SchedulerClient, seed: int
) -> list[tuple[SlotState, list[int | None]]]:
    """Closed loop of one cell against the served service, alternating REST and gRPC."""
    env = make_env(preset, scenario, seed)
    state = replace(env.reset(seed=seed), cell_id=cell)
    feedback: dict[int, float] = {}
    sent = []
    for t in range(SLOTS):
        if t % 2 == 0:
            resp = http.post("/schedule", content=orjson.dumps(rest_body(state, feedback, policy=policy)))
            assert resp.status_code == 200, resp.text
            served = resp.json()["owner"]
        else:
            msg = grpc_client.schedule(state, feedback=feedback, policy=policy)
            served = [None if u < 0 else int(u) for u in msg.owner]
        sent.append((state, served))
        tokens = np.array([0 if u is None else int(np.flatnonzero(state.user_ids == u)[0]) + 1 for u in served])
        res = env.step(tokens)
        state, feedback = replace(res.state, cell_id=cell), dict(res.feedback)
    return sent


def test_served_rest_and_grpc_slots_are_recorded_once_and_replay_to_the_served_decisions(
    serve_process, uvicorn_server, tmp_path
) -> None:
    record = tmp_path / "rec"
    proc = serve_process("--record", str(record), grpc=True).wait_ready()
    cells = {"mac/cell.1": ("mac", "standard", "pf"), "spec-cell": ("spectrum", "u7-c10-b2", "km")}
    sent = {}
    with httpx.Client(base_url=proc.url, timeout=30) as http, SchedulerClient(proc.grpc_target) as grpc_client:
        grpc_client.wait_ready(30)
        for i, (cell, (preset, scenario, policy)) in enumerate(cells.items()):
            sent[cell] = _drive(cell, preset, scenario, policy, http, grpc_client, seed=3 + i)
    out = proc.stop(signal.SIGTERM)  # the recorder is flushed and closed on the way out
    assert proc.proc.returncode == 0, out
    assert '"record_dir": "' + str(record) in out  # the settings printed at start name it

    files = sorted(p.name for p in record.iterdir())
    assert files == sorted(f"{file_stem(c)}.jsonl" for c in cells)  # "mac/cell.1" -> no "/" or "." in the name
    for cell, (_, _, policy) in cells.items():
        path = record / f"{file_stem(cell)}.jsonl"
        rows = _rows(path)
        assert len(rows) == SLOTS  # once per slot, whichever transport
        assert [r["transport"] for r in rows] == ["rest", "grpc"] * (SLOTS // 2)
        for row, (state, served) in zip(rows, sent[cell], strict=True):
            assert row["format"] == FORMAT
            assert row["decision"]["owner"] == served and row["decision"]["policy"] == policy
            assert row["decision"]["fallback_reason"] is None
            # the request is a POST /schedule body that decodes to the very slot the client sent
            again = decode_schedule(row["request"], Limits(), None)
            assert _same_slot(again.state, state) and again.policy == policy

        # the replay of the served policy reproduces every served decision, twice identically
        first = replay.run_trace(path, policies=(policy, "rr"), seed=0)
        second = replay.run_trace(path, policies=(policy, "rr"), seed=0)
        preset = cells[cell][0]
        got = first["presets"][preset]["policies"][policy]
        assert first["rows"] == SLOTS and first["bad_lines"] == 0
        assert got["recorded_compared"] == got["recorded_match"] == SLOTS
        for name, v in first["presets"][preset]["policies"].items():
            assert v["decision_hash"] == second["presets"][preset]["policies"][name]["decision_hash"]
        owners = replay.replayed_owner_ids(path, policy)
        assert [owners[k] for k in sorted(owners, key=lambda k: k[1])] == [s for _, s in sent[cell]]

    # a recorded row re-sent to a (fresh) service is accepted and, from the same empty history,
    # decided the same way
    row = _rows(record / f"{file_stem('mac/cell.1')}.jsonl")[0]
    srv = uvicorn_server(create_app(ServiceCore(Settings(), store=MemoryStore())))
    resp = httpx.post(f"{srv.url}/schedule", content=orjson.dumps(row["request"]), timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["owner"] == row["decision"]["owner"]

    # the directory replays as one trace (both cells, both presets)
    both = replay.run_trace(record, policies=("pf",), seed=0)
    assert both["rows"] == 2 * SLOTS and set(both["presets"]) == {"mac", "spectrum"}


def _mac_state(slot: int, cell: str = "rot") -> SlotState:
    rng = np.random.default_rng(slot)
    return make_slot(
        "mac",
        np.arange(1, 9),
        np.arange(12),
        spectral_efficiency=rng.choice([0.2344, 0.6016, 1.1758], 8),
        buffer_bits=rng.integers(0, 20, 8) * 256.0,
        cell_id=cell,
        slot=slot,
    )


def test_rotation_keeps_one_old_file_within_the_bound(tmp_path) -> None:
    core = ServiceCore(Settings(record_dir=str(tmp_path), record_max_bytes=4096), store=MemoryStore())
    for slot in range(40):
        core.schedule(_mac_state(slot), policy="pf")
    core.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rot.1.jsonl", "rot.jsonl"]  # one old file kept, nothing older
    sizes = [p.stat().st_size for p in tmp_path.iterdir()]
    assert all(0 < s <= 4096 for s in sizes)
    kept = _rows(tmp_path / "rot.1.jsonl") + _rows(tmp_path / "rot.jsonl")
    slots = [r["request"]["slot"] for r in kept]
    assert slots == list(range(40 - len(kept), 40))  # the newest rows, in order, none lost inside the window
    assert core.recorder is not None and core.recorder.rotations >= 2 and core.recorder.errors == 0
    # a row larger than the whole bound is dropped and counted, the slot is still decided
    small = ServiceCore(Settings(record_dir=str(tmp_path / "small"), record_max_bytes=100), store=MemoryStore())
    assert small.schedule(_mac_state(0, "tiny"), policy="pf").owner.shape == (12,)
    small.close()
    assert small.recorder is not None and small.recorder.dropped == 1 and small.recorder.rows == 0


def test_record_dir_from_the_environment_and_off_by_default(monkeypatch, tmp_path) -> None:
    assert Settings().record_dir is None and Settings().record_max_bytes == 64 * 1024 * 1024
    assert ServiceCore(Settings(), store=MemoryStore()).recorder is None
    monkeypatch.setenv("GNBSCHED_RECORD_DIR", str(tmp_path))
    monkeypatch.setenv("GNBSCHED_RECORD_MAX_BYTES", "1000000")
    s = Settings()
    assert s.record_dir == str(tmp_path) and s.record_max_bytes == 1_000_000
    assert Recorder.from_settings(s.model_copy(update={"workers": 2})).directory.name.startswith("worker-")


def test_a_failing_write_never_fails_a_slot_and_is_logged_once(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    core = ServiceCore(Settings(record_dir=str(blocker / "sub")), store=MemoryStore())
    with caplog.at_level(logging.WARNING, logger="gnbsched.trace"):
        for slot in range(3):
            assert core.schedule(_mac_state(slot), policy="pf").owner.shape == (12,)
    core.close()
    assert core.recorder is not None and core.recorder.errors == 3 and core.recorder.rows == 0
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1


def test_request_format_is_exact_and_compact_when_the_physical_fields_reproduce_the_utility() -> None:
    rng = np.random.default_rng(0)
    mac = make_slot(
        "mac",
        np.arange(5),
        np.arange(7),
        spectral_efficiency=rng.random(5) * 5,
        buffer_bits=rng.random(5) * 1e4,
        rb_per_rbg=8,
    )
    flat = make_slot("spectrum", np.arange(5), np.arange(7), rx_power_dbm=rng.uniform(-100, -60, 5))
    faded = make_slot(
        "spectrum",
        np.arange(5),
        np.arange(7),
        rx_power_dbm=rng.uniform(-100, -60, 5),
        fading_gain=rng.exponential(1.0, (5, 7)),
    )
    matrix = make_slot("mac", np.arange(5), np.arange(7), utility=rng.exponential(300, (5, 7)))
    for state, matrix_key in ((mac, None), (flat, None), (faded, "rate_bps"), (matrix, "utility")):
        body = rest_request(state, {1: 2.5}, policy="pf", compact=True)
        assert ("rate_bps" in body or "utility" in body) == (matrix_key is not None)
        if matrix_key:
            assert matrix_key in body
        back = decode_schedule(orjson.loads(orjson.dumps(body)), Limits(), None)
        assert _same_slot(back.state, state) and back.feedback == {1: 2.5}
        assert _same_slot(decode_schedule(rest_request(state), Limits(), None).state, state)  # full form too
    assert rest_request(mac, compact=True)["rb_per_rbg"] == 8
    # file names: safe characters kept, anything else (and long ids) hashed: never a collision
    assert file_stem("cell-7_a") == "cell-7_a"
    names = {file_stem(c) for c in ("a/b", "a_b", "a.b", "a.1", "x" * 300, "x" * 301)}
    assert len(names) == 6 and all("." not in n and "/" not in n and len(n) < 120 for n in names)


def test_plain_request_bodies_replay_and_broken_lines_are_reported_and_skipped(tmp_path, capsys) -> None:
    """A file a simulator writes (one POST /schedule body per line) replays; a broken line is
    reported with its line number and skipped; ``gnbsched bench student --trace`` prints the
    table and writes replay.json."""
    env = make_env("mac", "fixed-5", 1)
    state = replace(env.reset(seed=1), cell_id="sim-mac")
    lines: list[bytes] = []
    feedback: dict[int, float] = {}
    for _ in range(12):
        lines.append(orjson.dumps(rest_body(state, feedback)))
        res = env.step(np.zeros(state.num_res, np.int64))  # what the simulator played does not matter here
        state, feedback = replace(res.state, cell_id="sim-mac"), dict(res.feedback)
    bad = orjson.loads(lines[3])
    bad["users"][0]["buffer_bits"] = -1
    lines[3] = orjson.dumps(bad)  # line 4: invalid request
    lines.insert(6, b"")  # line 7: blank
    lines.insert(8, b'{"cell_id": "sim-mac", "slot": ')  # line 9: not JSON
    path = tmp_path / "sim.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = replay.run_trace(path, policies=("pf", "max_weight", "rr", "greedy"), seed=0)
    assert result["rows"] == 11 and result["bad_lines"] == 2 and result["blank_lines"] == 1
    assert [(e["line"], e["message"].split(":")[0]) for e in result["errors"]] == [
        (4, "users[0].buffer_bits"),
        (9, "invalid JSON"),
    ]
    mac = result["presets"]["mac"]
    assert mac["rows"] == 11 and mac["slots"] == 11 and mac["reference"].endswith(")")
    best = max(("pf", "max_weight", "rr"), key=lambda p: mac["policies"][p]["utility_per_slot"])
    assert mac["policies"][best]["ratio"] == pytest.approx(1.0)
    for v in mac["policies"].values():
        assert v["decisions"] == 11 and v["valid_before_repair"] == 1.0 and v["fallbacks"] == 0
        assert v["recorded_compared"] == 0 and 0 < v["jain"] <= 1 and len(v["decision_hash"]) == 64
    assert (
        replay.run_trace(path, policies=("pf",), seed=0)["presets"]["mac"]["policies"]["pf"]["decision_hash"]
        == mac["policies"]["pf"]["decision_hash"]
    )

    args = argparse.Namespace(
        trace=str(path), out=str(tmp_path / "out"), seed=0, quick=False, slots=None, policies="student,pf"
    )
    assert bench_student.run(args) == 0
    captured = capsys.readouterr()
    assert f"{path}:4: skipped: users[0].buffer_bits" in captured.err and f"{path}:9: skipped" in captured.err
    assert "replay — mac" in captured.out and "student" in captured.out and "max_weight" in captured.out
    doc = json.loads((tmp_path / "out" / "student" / "replay.json").read_text())
    assert doc["open_loop"] is True and doc["bad_lines"] == 2
    assert set(doc["presets"]["mac"]["policies"]) == {"student", "pf", "max_weight", "rr"}  # references added
    assert doc["presets"]["mac"]["policies"]["pf"]["decision_hash"] == mac["policies"]["pf"]["decision_hash"]


def test_replay_of_a_missing_or_empty_trace_fails_cleanly(tmp_path, capsys) -> None:
    args = argparse.Namespace(trace=str(tmp_path / "none.jsonl"), out=str(tmp_path), seed=0, policies=None)
    assert replay.run(args) == 2
    (tmp_path / "empty.jsonl").write_text("\n\nnot json\n")
    args.trace = str(tmp_path / "empty.jsonl")
    assert replay.run(args) == 1
    assert "empty.jsonl:3: skipped: invalid JSON" in capsys.readouterr().err
