"""``gnbsched bench --preset mac``: tiny-budget end-to-end run of the real suite, and its pieces."""

import argparse
import csv
import json
import math

from service.bench import mac
from service.policies.registry import PolicySet


def test_quick_run_writes_tables_csv_json_and_plots(tmp_path, capsys):
    args = argparse.Namespace(out=str(tmp_path), quick=True, seed=3, policies="pf,s-aloha", slots=40)
    assert mac.run(args) == 0
    out = capsys.readouterr().out
    for title in (
        "standard setting",
        "N sweep",
        "M sweep",
        "Table III",
        "Table VIII",
        "Table VII",
        "Table IV",
        "LLM4MAC",
    ):
        assert title in out, title
    d = tmp_path / "mac"
    rows = list(csv.DictReader(open(d / "results.csv")))
    tables = {r["table"] for r in rows}
    assert tables == {"standard", "n-sweep", "m-sweep", "traffic", "omega", "followers", "multicell", "llm4mac"}
    # km and random are always run (the ratio columns need them); the ratio of km to itself is 1
    assert {r["policy"] for r in rows} == {"pf", "s-aloha", "km", "random"}
    km_std = next(r for r in rows if r["table"] == "standard" and r["policy"] == "km")
    assert float(km_std["utility_vs_km"]) == 1.0 and float(km_std["bits_vs_km"]) == 1.0
    meta = json.load(open(d / "results.json"))["meta"]
    assert meta["quick"] and meta["seed"] == 3
    pngs = sorted(p.name for p in d.glob("*.png"))
    assert "throughput_vs_num_ue.png" in pngs and "omega_sweep.png" in pngs and "multicell_throughput.png" in pngs


def test_unknown_policy_is_rejected(tmp_path, capsys):
    args = argparse.Namespace(out=str(tmp_path), quick=True, seed=0, policies="pf,nope", slots=5)
    assert mac.run(args) == 2
    assert "nope" in capsys.readouterr().err


def test_single_run_is_deterministic_and_aloha_schedules_nothing():
    job = mac.Job("t", "x", "pf", "single", 150, 1, "fixed-5", {"num_rbg": 3})
    a, b = mac.run_single(job, PolicySet()), mac.run_single(job, PolicySet())
    a.pop("decision_us"), b.pop("decision_us")  # wall-clock timing, the rest is seeded
    assert a == b
    assert 0 < a["bits_vs_km"] <= 1.0 + 1e-9
    aloha = mac.run_single(mac.Job("t", "x", "s-aloha", "single", 150, 1, "fixed-5", {}), PolicySet())
    assert math.isnan(aloha["bits_vs_km"]) and aloha["declined_rbgs_per_tti"] == 0


def test_omega_table_is_linear_in_omega():
    rec = {"policy": "p", "throughput_mbps": 1.0, "fairness_jfi": 0.5, "throughput_scaled": 0.8, "leader_jfi": 0.4}
    _, curves = mac.omega_table([rec])
    assert curves["p"][0] == 0.4 and abs(curves["p"][-1] - 0.8) < 1e-12
