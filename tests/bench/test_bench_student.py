"""``gnbsched bench student``: the shipped models through the real bench at a tiny budget, and the
target bookkeeping that decides PASS / FAIL."""

import argparse
import json

import pytest

from service.bench import student as bench


def _row(ratio: float, jain: float, group: str = "standard") -> dict:
    return {"group": group, "ratio": ratio, "student_jain": jain}


def test_mac_targets_need_every_standard_row_and_the_generalisation_rows():
    ok = [_row(1.05, 0.96), _row(1.031, 0.951), _row(1.0, 0.5, "generalisation")]
    assert bench._mac_summary(ok)["met"]
    assert bench._mac_summary(ok)["min_ratio_standard"] == pytest.approx(1.031)
    assert not bench._mac_summary([*ok, _row(1.029, 0.99)])["met"]  # one standard row under 1.03
    assert not bench._mac_summary([*ok, _row(1.2, 0.949)])["met"]  # Jain under 0.95
    assert not bench._mac_summary([*ok, _row(0.99, 0.2, "generalisation")])["met"]  # N = 20 / 50 below the baseline
    # generalisation rows carry no Jain target
    assert bench._mac_summary([*ok, _row(1.01, 0.1, "generalisation")])["met"]


def test_quick_run_of_the_shipped_models_is_consistent(tmp_path, capsys):
    """Tiny budget (the figures are not the shipped ones): every row is internally consistent,
    valid before repair is 100 %, and the latency parts are measured for both presets."""
    args = argparse.Namespace(out=str(tmp_path), quick=True, seed=0, slots=4)
    code = bench.run(args)
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "student" / "results.json").read_text())
    assert code in (0, 1) and ("FAIL" in out) == (code == 1)
    assert {r["scenario"] for r in doc["spectrum"]} >= {"u5-c5-b1", "u100-c100-b20"}
    for r in doc["spectrum"]:
        assert 0.0 < r["ratio_to_km"] <= 1.0 + 1e-9 and 0.0 < r["net_greedy_ratio_to_km"] <= 1.0 + 1e-9  # KM is optimal
        assert r["valid_before_repair"] == 1.0
    for r in doc["mac"]:
        base = {p: r[f"{p}_utility"] for p in bench.BASELINES}
        assert r["best_baseline"] == max(base, key=base.get)
        assert r["ratio"] == pytest.approx(r["student_utility"] / base[r["best_baseline"]])
        assert r["valid_before_repair"] == 1.0
    assert {r["group"] for r in doc["mac"]} == {"standard", "generalisation"}
    for preset in ("spectrum", "mac"):
        lat = doc["latency_n100_r69"][preset]
        assert lat["onnx_run_us_median"] > 0 and lat["decode_us_median"] > 0
        assert lat["policy_us_median"] > 0 and lat["serialize_us_median"] > 0
    assert "onnxruntime" in out and "PASS valid-before-repair" in out
