"""``gnbsched simulate``: the closed loop against a real ``gnbsched serve`` process (REST and gRPC)
gives the KPIs of the same loop against an in-process ``ServiceCore``."""

from __future__ import annotations

import json
import math

import pytest
from testkit import ServeProcess

from service.api.simulate import simulate, simulate_cells
from service.cli import main

SLOTS = 120


@pytest.fixture(scope="module")
def service():
    """One real ``gnbsched serve`` (REST + gRPC, in-process state, default settings)."""
    with ServeProcess(grpc=True) as proc:
        try:
            proc.wait_ready()
            yield {"http": proc.url, "grpc": f"grpc://{proc.grpc_target}"}
        finally:
            out = proc.stop()
    assert "Traceback" not in out, out


def _same_kpis(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.parametrize(
    ("preset", "scenario", "policy"),
    [
        ("spectrum", "u10-c15-b3", None),  # the service default (km)
        ("spectrum", "u7-c10-b2", "random"),  # random draws are seeded by (seed, cell, slot)
        ("mac", "fixed-5", None),  # the service default (pf): per-cell history + feedback matter
        ("mac", "standard", "random"),
    ],
)
def test_remote_closed_loop_equals_inproc(service, preset: str, scenario: str, policy: str | None) -> None:
    cell = f"eq-{preset}-{scenario}-{policy}"
    runs = {}
    for name, target, stream in (
        ("grpc", service["grpc"], False),
        ("grpc-stream", service["grpc"], True),
        ("http", service["http"], False),
    ):
        cell_id = f"{cell}-{name}"  # a fresh cell per run: its history starts empty
        runs[name] = simulate(
            target,
            preset=preset,
            scenario=scenario,
            policy=policy,
            slots=SLOTS,
            seed=11,
            stream=stream,
            cell_id=cell_id,
        )
        inproc = simulate(
            "inproc", preset=preset, scenario=scenario, policy=policy, slots=SLOTS, seed=11, cell_id=cell_id
        )
        assert _same_kpis(runs[name], inproc), (name, runs[name], inproc)
    assert runs["grpc"]["slots" if preset == "spectrum" else "ttis"] == SLOTS
    if policy is None:  # deterministic policies do not depend on the cell id: all transports agree
        assert _same_kpis(runs["grpc"], runs["http"]) and _same_kpis(runs["grpc"], runs["grpc-stream"])


@pytest.mark.parametrize("preset", ["mac", "spectrum"])
def test_batched_cells_over_rest_and_grpc_equal_in_process(service, preset: str) -> None:
    """``--cells 3 --batch``: every TTI in one call (POST /schedule/batch, ScheduleCells, StreamTtis)
    gives the KPIs of the same cells decided one by one in process."""
    kw = {"cells": 3, "preset": preset, "slots": 40, "seed": 4}
    inproc = simulate_cells("inproc", cell_id="batch-inproc", **kw)
    for name, target, stream in (("http", service["http"], False), ("grpc", service["grpc"], False),
                                 ("grpc-stream", service["grpc"], True)):  # fmt: skip
        remote = simulate_cells(target, stream=stream, cell_id=f"batch-{preset}-{name}", **kw)
        assert _same_kpis(remote, inproc), (name, remote, inproc)


def test_cli_runs_batched_cells(service, capsys) -> None:
    argv = [
        "simulate",
        "--target",
        service["grpc"],
        "--preset",
        "mac",
        "--slots",
        "20",
        "--cells",
        "4",
        "--batch",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cells"] == 4 and out["batch"] is True and out["kpis"]["ttis"] == 20
    assert main(["simulate", "--cells", "2"]) == 2  # more than one cell needs --batch


def test_running_the_same_cell_again_restarts_it(service) -> None:
    """A second run with the same cell id sends a newer epoch: the service starts the cell afresh
    and the run's KPIs equal the first run's (without it the replayed slots would be refused)."""
    for target in (service["http"], service["grpc"]):
        first = simulate(target, preset="mac", scenario="fixed-5", slots=40, seed=5, cell_id="again")
        second = simulate(target, preset="mac", scenario="fixed-5", slots=40, seed=5, cell_id="again")
        assert _same_kpis(first, second), (target, first, second)


def test_cli_prints_kpis_and_json(capsys) -> None:
    argv = ["simulate", "--preset", "mac", "--scenario", "fixed-5", "--slots", "40", "--seed", "3", "--cell-id", "cli"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "target=inproc" in text and "scenario=fixed-5" in text
    assert any(line.split()[:1] == ["throughput_mbps"] for line in text.splitlines())
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = simulate("inproc", preset="mac", scenario="fixed-5", slots=40, seed=3, cell_id="cli")
    assert doc["kpis"] == {k: (v if math.isfinite(v) else None) for k, v in expected.items()}
    assert doc["cell_id"] == "cli" and doc["slots"] == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "ftp://127.0.0.1:1"], "--target must be"),
        (["--target", "http://127.0.0.1:1", "--stream"], "--stream needs a grpc://"),
        (["--target", "grpc://127.0.0.1:1", "--timeout-s", "0.3"], "no gRPC service at 127.0.0.1:1"),
        (["--target", "http://127.0.0.1:1", "--timeout-s", "0.3"], "slot 0: ConnectError"),
        (["--scenario", "no-such-scenario"], "unknown"),
        (["--slots", "0"], "--slots must be >= 1"),
    ],
)
def test_cli_reports_bad_targets_and_arguments(capsys, args: list[str], message: str) -> None:
    assert main(["simulate", "--slots", "3", *args]) == 2
    assert message in capsys.readouterr().err


def test_service_rejection_is_reported_with_the_slot(service, capsys) -> None:
    rc = main(["simulate", "--target", service["grpc"], "--policy", "no-such-policy", "--slots", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "slot 0: INVALID_ARGUMENT: policy:" in err
    rc = main(["simulate", "--target", service["http"], "--policy", "no-such-policy", "--slots", "2"])
    assert rc == 2
    assert "slot 0: HTTP 422" in capsys.readouterr().err
