"""``gnbsched bench perf``: the quick plan end to end (real server subprocess), and the report's logic."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import matplotlib.image as mpimg
import pytest

from service.bench import perf
from service.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        rc = main(["bench", "perf", "--quick", "--out", str(out), "--seed", "2"])
    return rc, out, stdout.getvalue(), stderr.getvalue()


def test_quick_run_writes_report_json_and_figures(quick_run):
    rc, out, stdout, stderr = quick_run
    assert rc == 0, stderr
    report = (out / perf.REPORT_NAME).read_text()
    for section in ("## Targets", "## Our policies against the exact Hungarian solver", "## Per-stage times",
                    "## End to end through the real service", "## Decisions per second",
                    "## Peak memory", "## The papers' figures beside ours", "## Figures"):
        assert section in report, section
    assert "7.2–7.8 s" in report and "96.6%" in report and "12.85 ms" in report and "15.5 ms" in report
    figs = sorted((out / perf.FIG_DIR).glob("*.png"))
    assert {p.name for p in figs} >= {"scale_ratio_to_km.png", "scale_time_per_decision.png", "e2e_latency.png"}
    for p in figs:
        assert f"]({(perf.FIG_DIR / p.name).as_posix()})" in report  # linked relative to the report
        assert mpimg.imread(p).shape[0] > 100
    assert "[perf] scale 1/" in stderr and "[perf] server up" in stderr  # progress on stderr
    assert "summary (ratios to exact KM" in stdout and "[perf]" not in stdout


def test_quick_run_figures_are_consistent(quick_run):
    _, out, _, _ = quick_run
    doc = json.loads((out / perf.FIG_DIR / "perf.json").read_text())
    assert doc["paper"]["lsa_km_ms"] == 15.5 and doc["targets"]["scale_ratio"] == 0.995
    scale = {(r["scenario"], r["policy"]): r for r in doc["scale"]}
    assert set(perf.QUICK.scale_slots) == {s for s, _ in scale}
    for scenario in perf.QUICK.scale_slots:
        assert scale[(scenario, "km")]["ratio_to_km"] == pytest.approx(1.0)
        assert scale[(scenario, "auction")]["ratio_to_km"] == pytest.approx(1.0, abs=1e-9)  # exact, certified
        assert scale[(scenario, "auction")]["certified_share"] == 1.0
        assert scale[(scenario, "random")]["ratio_to_km"] < 1.0
    assert scale[("scale-I", "grouped_km")]["ratio_to_km"] < 1.0
    # every transport at every size, both presets, with sane latencies
    e2e = {(r["preset"], r["num_ue"], r["transport"]): r for r in doc["e2e"]}
    for preset in perf.E2E_POLICY:
        for n in perf.QUICK.e2e_sizes:
            for tr in ("rest", "grpc-unary", "grpc-stream"):
                row = e2e[(preset, n, tr)]
                assert 0 < row["p50_ms"] <= row["p99_ms"] and row["requests"] == perf.QUICK.e2e_requests[n]
    assert {r["transport"] for r in doc["load"]} == {"grpc-stream", "rest"}
    assert all(r["decisions"] > 0 for r in doc["load"])
    stages = {(r["preset"], r["policy"]) for r in doc["stages"]}
    assert ("mac", "pf") in stages and ("spectrum", "auction") in stages
    assert doc["rss_mib"]["gnbsched serve (server process)"] > 10


def _scale_row(ratio: float, p50: float) -> perf.ScaleRow:
    return perf.ScaleRow("scale-III", 2000, 2000, 400, 1420.0, "auction", 3, ratio, p50, p50, 600.0, 600.0 / p50, 1.0)


def _e2e_rows(stream_p99: float, rest_p50: float) -> list[perf.E2ERow]:
    return [perf.E2ERow("mac", "pf", 100, 69, "grpc-stream", 10, stream_p99 / 2, stream_p99),
            perf.E2ERow("mac", "pf", 100, 69, "rest", 10, rest_p50, 2 * rest_p50, 0.1)]


@pytest.mark.parametrize(("ratio", "p50", "stream_p99", "rest_p50", "met"), [
    (0.9999, 20.0, 0.8, 0.7, [True, True, True]),
    (0.990, 20.0, 0.8, 0.7, [False, True, True]),  # quality below 99.5 %
    (0.9999, 80.0, 1.5, 1.2, [False, False, False]),  # too slow everywhere
])
def test_target_lines_say_met_or_missed_from_the_figures(ratio, p50, stream_p99, rest_p50, met):
    res = perf.Results(meta={}, scale=[_scale_row(ratio, p50)], e2e=_e2e_rows(stream_p99, rest_p50))
    lines = perf.target_lines(res)
    assert len(lines) == 3
    for line, ok in zip(lines, met, strict=True):
        assert ("**met**" in line) == ok and ("**missed**" in line) == (not ok)
    assert f"{ratio:.4%}" in lines[0] and f"p50 {p50:.1f} ms" in lines[0]


def test_paper_table_puts_their_figures_beside_ours():
    res = perf.Results(meta={}, scale=[_scale_row(0.9999, 25.0)], e2e=_e2e_rows(0.8, 0.7))
    table = "\n".join(perf.paper_lines(res))
    assert "7.2–7.8 s" in table and "25.0 ms p50" in table and "288× faster" in table  # 7.2 s / 25 ms
    assert "12.85 ms" in table and "32× faster" in table  # 12.85 ms / 0.4 ms stream p50
