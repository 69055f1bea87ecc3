"""``gnbsched bench student``: the target bookkeeping that decides PASS / FAIL per group
(training / held-out families), and the shipped models through the real bench at ``--quick``."""

import argparse
import json
import math

import pytest

from service.bench import student as bench
from service.policies.student_model import default_model_dir
from service.sim.worlds import HELD_OUT, MAC_FAMILIES, SPECTRUM_FAMILIES


def _mac(held_out: bool = False, **figures: float) -> dict:
    """A mac row that meets every target unless ``figures`` says otherwise."""
    return {
        "held_out": held_out,
        "utility_ratio": 1.02,
        "throughput_ratio": 1.0,
        "latency_ratio": 1.1,
        "jain_minus_pf": 0.0,
        "valid_before_repair": 1.0,
        **figures,
    }


def _spectrum(held_out: bool = False, **figures: float) -> dict:
    return {"held_out": held_out, "ratio_to_km_min": 0.995, "valid_before_repair": 1.0, **figures}


def _line(lines: list[str], prefix: str) -> str:
    (line,) = [x for x in lines if x.startswith(prefix)]
    return line


def test_every_target_is_judged_on_the_worst_row_of_its_group():
    rows = [
        _mac(),
        _mac(utility_ratio=1.0, throughput_ratio=0.991, latency_ratio=1.2, jain_minus_pf=-0.01),
        _mac(True),
        _mac(True),
    ]
    s = bench.summarize(rows, [_spectrum(), _spectrum(ratio_to_km_min=0.99), _spectrum(True)])
    assert s["met"] and set(s) == {"mac", "spectrum", "met"}
    assert set(s["mac"]) == set(s["spectrum"]) == {"training", "held-out"}
    train = s["mac"]["training"]
    assert train["met"] and train["rows"] == 2
    assert train["utility_ratio"]["worst"] == pytest.approx(1.0)
    assert train["throughput_ratio"]["worst"] == pytest.approx(0.991)
    assert train["latency_ratio"]["worst"] == pytest.approx(1.2)  # a "<=" target: the worst is the largest
    assert s["spectrum"]["training"]["ratio_to_km_min"]["worst"] == pytest.approx(0.99)
    # each figure just past its target fails that target alone
    for key, bad in (
        ("utility_ratio", 0.999),
        ("throughput_ratio", 0.987),
        ("latency_ratio", 1.21),
        ("jain_minus_pf", -0.011),
        ("valid_before_repair", 0.999),
    ):
        judged = bench.summarize([*rows, _mac(**{key: bad})])["mac"]["training"]
        assert not judged["met"] and not judged[key]["met"], key
        assert [k for k, v in judged.items() if isinstance(v, dict) and not v["met"]] == [key]
    lines = bench.verdict_lines(bench.summarize([*rows, _mac(throughput_ratio=0.987)]))
    assert (
        _line(lines, "mac throughput / pf (training)")
        == "mac throughput / pf (training): min 0.9870 (target >= 0.99) FAIL"
    )
    assert _line(lines, "mac throughput / pf (held-out)").endswith("PASS")
    assert _line(lines, "mac p95 latency / pf (training)").startswith("mac p95 latency / pf (training): max 1.2000")
    assert not bench.summarize(spectrum_rows=[_spectrum(), _spectrum(ratio_to_km_min=0.9899)])["met"]


def test_held_out_families_are_judged_apart_from_the_training_families():
    s = bench.summarize([_mac(), _mac(True, utility_ratio=0.8)], [_spectrum(True), _spectrum(ratio_to_km_min=0.5)])
    assert s["mac"]["training"]["met"] and not s["mac"]["held-out"]["met"]
    assert not s["spectrum"]["training"]["met"] and s["spectrum"]["held-out"]["met"]
    assert not s["met"]
    lines = bench.verdict_lines(s)
    assert _line(lines, "mac leader utility / best baseline (held-out)").endswith("min 0.8000 (target >= 1) FAIL")
    assert _line(lines, "mac leader utility / best baseline (training)").endswith("PASS")
    assert _line(lines, "spectrum utility / km (training)").endswith("FAIL")
    # a section or group without rows is left out
    assert set(bench.summarize([_mac()])) == {"mac", "met"}
    assert set(bench.summarize([_mac()])["mac"]) == {"training"}


def test_latency_is_na_where_pf_has_no_p95_and_a_failure_where_only_the_student_has_none():
    # full-buffer traffic: no packet latency at all, the latency target does not apply to that row
    s = bench.summarize([_mac(latency_ratio=math.nan), _mac(latency_ratio=1.15), _mac(True, latency_ratio=None)])
    assert s["met"]
    assert s["mac"]["training"]["latency_ratio"] == {
        **s["mac"]["training"]["latency_ratio"],
        "worst": 1.15,
        "n_applicable": 1,
        "met": True,
    }
    assert s["mac"]["held-out"]["latency_ratio"]["worst"] is None
    lines = bench.verdict_lines(s)
    assert (
        _line(lines, "mac p95 latency / pf (training)")
        == "mac p95 latency / pf (training): max 1.1500, n/a in 1 of 2 rows (target <= 1.2) PASS"
    )
    assert (
        _line(lines, "mac p95 latency / pf (held-out)")
        == "mac p95 latency / pf (held-out): n/a in all 1 rows (target <= 1.2) PASS"
    )
    # the row builder: pf's p95 NaN -> n/a; the student completing no packet where pf does -> inf (FAIL)
    kpis = {
        "slots": 10.0,
        "leader_utility": 0.5,
        "cell_throughput_bps": 2e6,
        "latency_p95_slots": math.nan,
        "jain_throughput": 0.8,
        "bler": 0.0,
        "dropped_share": 0.0,
        "valid_before_repair": 1.0,
    }
    per = {p: [dict(kpis)] for p in bench.MAC_POLICIES}
    per["rr"][0]["leader_utility"] = 0.4
    row = bench.mac_row("rayleigh-full_buffer", 20, 17, per)
    assert row["best_baseline"] == "pf" and row["utility_ratio"] == pytest.approx(1.0)
    assert not row["latency_target_applies"] and math.isnan(row["latency_ratio"])
    assert row["best_throughput_ratio"] == pytest.approx(1.0) and math.isnan(row["best_latency_ratio"])
    # the eq. 5 winner's own price: rr best on eq. 5 at half pf's throughput and 3x its p95
    per2 = {p: [dict(kpis, latency_p95_slots=4.0)] for p in bench.MAC_POLICIES}
    per2["rr"][0].update(leader_utility=0.9, cell_throughput_bps=1e6, latency_p95_slots=12.0)
    row2 = bench.mac_row("rayleigh-mixture", 20, 17, per2)
    assert row2["best_baseline"] == "rr" and row2["utility_ratio"] == pytest.approx(0.5 / 0.9)
    assert row2["best_throughput_ratio"] == pytest.approx(0.5) and row2["best_latency_ratio"] == pytest.approx(3.0)
    assert row["student_throughput_mbps"] == pytest.approx(2.0) and row["jain_minus_pf"] == 0.0
    per["pf"][0]["latency_p95_slots"] = 4.0
    row = bench.mac_row("rayleigh-bursty", 20, 17, per)
    assert row["held_out"] and row["latency_target_applies"] and row["latency_ratio"] == math.inf
    assert not bench.summarize([row])["mac"]["held-out"]["latency_ratio"]["met"]


def test_quick_run_of_the_shipped_models_reports_every_family(tmp_path, capsys):
    """Tiny budget (the figures are not the shipped ones): every family is in the tables, the rows
    are internally consistent, docs/bench/student.json carries the summary, docs/bench/student.md the report, and the exit code is 0."""
    args = argparse.Namespace(out=str(tmp_path), quick=True, seed=0, slots=None)
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "docs" / "bench" / "student.json").read_text())
    report = (tmp_path / "docs" / "bench" / "student.md").read_text()
    assert report.startswith("<!-- generated by: gnbsched bench student --quick --out ")
    assert "## The student on world families" in report and "held-out" in report
    assert "Produced by `gnbsched bench student --quick --out " in report and "(seed 0, quick subset)" in report
    figure = tmp_path / "docs" / "bench" / "student_targets.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](student_targets.png)" in report
    mac_table = out.split("student - mac")[1].split("student - spectrum")[0]
    spectrum_table = out.split("student - spectrum")[1]
    for fam in MAC_FAMILIES:
        group = "held-out" if fam in HELD_OUT["mac"] else "training"
        assert any(line.split()[:2] == [fam, group] for line in mac_table.splitlines()), fam
    for fam in SPECTRUM_FAMILIES:
        group = "held-out" if fam in HELD_OUT["spectrum"] else "training"
        assert any(line.split()[:2] == [fam, group] for line in spectrum_table.splitlines()), fam

    mac, spectrum = doc["mac"], doc["spectrum"]
    assert [r["family"] for r in mac] == sorted(MAC_FAMILIES, key=lambda f: f in HELD_OUT["mac"])  # training first
    for r in mac:
        assert (r["num_ue"], r["num_rbg"], r["held_out"]) == (20, 17, r["family"] in HELD_OUT["mac"])
        base = {p: r[f"{p}_utility"] for p in bench.BASELINES}
        assert r["best_baseline"] == max(base, key=base.get)
        assert r["utility_ratio"] == pytest.approx(r["student_utility"] / base[r["best_baseline"]])
        assert r["throughput_ratio"] == pytest.approx(r["student_throughput_mbps"] / r["pf_throughput_mbps"])
        assert r["valid_before_repair"] == 1.0
        assert (r["latency_ratio"] is None) == (
            not r["latency_target_applies"] or r["student_latency_p95_slots"] is None
        )
    fb = next(r for r in mac if r["family"] == "rayleigh-full_buffer")
    assert fb["pf_latency_p95_slots"] is None and not fb["latency_target_applies"]
    assert {(r["family"], r["num_ue"], r["num_res"]) for r in spectrum} == {
        (f, n, m) for f in SPECTRUM_FAMILIES for n, m in bench.QUICK.spectrum_sizes
    }
    for r in spectrum:
        assert 0.0 < r["ratio_to_km_min"] <= r["ratio_to_km_mean"] <= 1.0 + 1e-9  # KM is optimal
        assert r["valid_before_repair"] == 1.0 and r["instances"] == bench.QUICK.instances

    summary = doc["summary"]
    assert isinstance(summary["met"], bool)
    targets = {"mac": bench.MAC_TARGETS, "spectrum": bench.SPECTRUM_TARGETS}
    for section, tgts in targets.items():
        assert set(summary[section]) == {"training", "held-out"}
        for group, judged in summary[section].items():
            assert isinstance(judged["met"], bool)
            assert judged["met"] == all(judged[key]["met"] for key, *_ in tgts)
            for key, label, op, target in tgts:
                v = judged[key]
                assert (v["op"], v["target"], isinstance(v["met"], bool)) == (op, target, True)
                line = _line(out.splitlines(), f"{label} ({group})")
                assert line.endswith("PASS" if v["met"] else "FAIL")
    assert summary["mac"]["training"]["valid_before_repair"]["met"]
    for preset in ("spectrum", "mac"):
        lat = doc["latency_n100_r69"][preset]
        assert lat["onnx_run_us_median"] > 0 and lat["decode_us_median"] > 0
        assert lat["policy_us_median"] > 0 and lat["serialize_us_median"] > 0
    assert "onnxruntime" in out


def test_evaluate_model_returns_the_rows_and_summary_of_its_preset():
    """What ``gnbsched train all`` writes into a model card's ``evaluation``."""
    models = default_model_dir() / "student-mac"
    ev = bench.evaluate_model("mac", models / (models / "latest").read_text().strip(), quick=True)
    assert set(ev["summary"]) == {"mac", "met"} and isinstance(ev["summary"]["met"], bool)
    assert {r["family"] for r in ev["rows"]} == set(MAC_FAMILIES)
    assert ev["latency_n100_r69"]["policy_us_median"] > 0
    json.dumps(ev, allow_nan=False)  # strict JSON: undefined figures are None


def test_benchmarks_md_gets_one_student_section_and_bench_perf_keeps_it(tmp_path):
    """``write_report`` replaces the student section (a second run does not duplicate it), states
    its command and configuration, and links the figure relative to each file; ``bench perf``'s
    report keeps the section."""
    from pathlib import Path

    from service.bench import perf
    from service.bench.benchmarks_md import TITLE, split_sections

    def row(figures: dict) -> dict:  # every column of the tables, then the figures judged
        columns = {k: 1.0 for k, _, _ in (*bench.MAC_COLUMNS, *bench.SPECTRUM_COLUMNS)}
        return {**columns, "family": "fam", "num_ue": 20, "num_rbg": 17, "num_res": 17, "instances": 2, **figures}

    out = {
        "models": {},
        "seed": 3,
        "quick": True,
        "wall_time_s": 1.0,
        "mac": [row(_mac()), row(_mac(True))],
        "spectrum": [row(_spectrum())],
    }
    out["summary"] = bench.summarize(out["mac"], out["spectrum"])
    command = "gnbsched bench student --quick --seed 3 --out ."
    for _ in range(2):
        bench.write_report(tmp_path, out, command)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert text.startswith(TITLE)
    _, sections = split_sections(text)
    assert [owner for owner, _ in sections] == ["student"]
    assert sections[0][1].startswith(
        f"<!-- generated by: {command} (seed 3, quick=True) -->\n"
        "## The student on world families\n\n"
        f"Produced by `{command}` (seed 3, quick subset) on "
    )
    assert "](docs/bench/student_targets.png)" in text  # relative to BENCHMARKS.md
    assert "](student_targets.png)" in (tmp_path / bench.REPORT_FILE).read_text()  # relative to student.md
    with pytest.raises(ValueError, match="gnbsched bench student"):
        bench.write_report(tmp_path, out, "cmd")
    meta = {
        "command": "gnbsched bench perf --out .",
        "date": "today",
        "quick": True,
        "seed": 0,
        "wall_s": 1.0,
        "machine": "test",
        "load_start": "0",
        "load_end": "0",
    }
    report = perf.write_report(tmp_path, perf.Results(meta=meta), [])
    _, after = split_sections(Path(report).read_text())
    assert [owner for owner, _ in after] == ["perf", "perf", "student"]  # targets, the papers' table; student kept
    assert after[-1][1] == sections[0][1]
