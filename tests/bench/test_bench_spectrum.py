"""``gnbsched bench --preset spectrum``: the quick grid end to end, outputs and their contents."""

from __future__ import annotations

import csv
import json

import matplotlib.image as mpimg
import pytest

from service.bench import spectrum as bench
from service.bench.plotting import save_bar_plot, save_line_plot
from service.cli import main
from service.sim.spectrum import PAPER_GRID, SPECTRUM_SCENARIOS


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    import io
    from contextlib import redirect_stderr, redirect_stdout

    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        rc = main(["bench", "--preset", "spectrum", "--quick", "--out", str(out), "--seed", "3"])
    return rc, out / "spectrum", stdout.getvalue(), stderr.getvalue()


def test_quick_run_prints_table_and_progress(quick_run):
    rc, _, stdout, stderr = quick_run
    assert rc == 0
    assert "scenario" in stdout and "/km" in stdout and "ms p95" in stdout
    for name in PAPER_GRID:
        assert name in stdout
        assert f" {name}:" in stderr  # one progress line per scenario
    assert "exhaustive: skipped where" in stdout  # explicit note for skipped policies


def test_quick_run_csv_contents(quick_run):
    _, out, _, _ = quick_run
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    by = {(r["scenario"], r["policy"]): r for r in rows}
    assert {r["scenario"] for r in rows} == set(PAPER_GRID)
    for name in PAPER_GRID:
        km, rnd = by[(name, "km")], by[(name, "random")]
        assert float(km["ratio_to_km"]) == pytest.approx(1.0)
        assert float(rnd["ratio_to_random"]) == pytest.approx(1.0)
        assert float(rnd["ratio_to_km"]) < 1.0
        assert float(km["ratio_to_random"]) > 1.0
        for p in ("greedy", "grouped_km", "pf", "rr", "max_weight", "de"):
            r = by[(name, p)]
            assert 0.0 < float(r["ratio_to_km"]) <= 1.0 + 1e-9  # km is the optimum
            assert float(r["valid_before_repair_rate"]) == 1.0
            assert int(r["decisions"]) == int(km["decisions"])  # every policy plays the same slots
        assert float(km["throughput_mbps"]) > 0 and float(km["time_p95_ms"]) >= 0
    # exhaustive only where it is tractable, and there it matches km
    exh = [s for s in PAPER_GRID if (s, "exhaustive") in by]
    assert exh == ["u5-c5-b1", "u5-c5-b2"]
    for s in exh:
        assert float(by[(s, "exhaustive")]["ratio_to_km"]) == pytest.approx(1.0)


def test_quick_run_json_and_pngs(quick_run):
    _, out, _, _ = quick_run
    doc = json.loads((out / "results.json").read_text())
    assert doc["preset"] == "spectrum" and doc["quick"] is True and doc["seed"] == 3
    assert len(doc["rows"]) == len(list(csv.DictReader((out / "results.csv").open())))
    assert doc["scenarios"]["u5-c5-b1"]["num_busy"] == 1
    assert any("exhaustive" in n for n in doc["notes"])
    for name in ("ratio_to_km.png", "throughput_small.png", "time_per_decision.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img.std() > 0.01  # not blank


def test_policy_subset_slots_and_unknown_policy(tmp_path, capsys):
    rc = main(
        ["bench", "--preset", "spectrum", "--quick", "--out", str(tmp_path), "--policies", "greedy", "--slots", "2"]
    )
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "spectrum" / "results.csv").open()))
    assert {r["policy"] for r in rows} == {"km", "random", "greedy"}  # references always run
    assert all(r["decisions"] == "2" for r in rows)
    assert main(["bench", "--preset", "spectrum", "--out", str(tmp_path), "--policies", "nosuch"]) == 2
    assert "unknown policy 'nosuch'" in capsys.readouterr().err


def test_skip_rules():
    assert bench.skip_reason("de", SPECTRUM_SCENARIOS["scale-I"]) is not None
    assert bench.skip_reason("exhaustive", SPECTRUM_SCENARIOS["scale-III"]) is not None
    assert bench.skip_reason("exhaustive", SPECTRUM_SCENARIOS["u7-c10-b2"]) is not None
    assert bench.skip_reason("exhaustive", SPECTRUM_SCENARIOS["u5-c5-b1"]) is None
    assert bench.skip_reason("km", SPECTRUM_SCENARIOS["scale-III"]) is None


def test_plot_helpers(tmp_path):
    p = save_line_plot(
        tmp_path / "a" / "line.png",
        [1, 10, 100],
        {"x": [1.0, 2.0, float("nan")], "y": [3, 2, 1]},
        xlabel="n",
        ylabel="ms",
        logx=True,
        logy=True,
    )
    b = save_bar_plot(
        tmp_path / "bar.png",
        ["s1", "s2"],
        {"p": [0.5, 1.0], "q": [float("nan"), 0.9]},
        xlabel="scenario",
        ylabel="ratio",
        hline=1.0,
    )
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b.stat().st_size > 1000
    with pytest.raises(ValueError, match="series 'p'"):
        save_bar_plot(tmp_path / "bad.png", ["s1"], {"p": [1.0, 2.0]}, xlabel="", ylabel="")
