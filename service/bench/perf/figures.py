"""The PNG figures of ``gnbsched bench perf`` (``docs/bench/``): quality and time against KM per
scale, the anytime curve at Scale III, end-to-end latency per N, batched TTIs against the echo
floor. matplotlib (the ``bench`` extra) is imported here only, when the figures are drawn;
without it the run has no figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from service.bench.perf.plan import E2E_POLICY
from service.bench.perf.results import TARGETS, Results


def plot(fig_dir: Path, res: Results) -> list[Path]:
    """Every figure the results allow; the written paths (none without matplotlib, with a note)."""
    try:
        from service.bench.plotting import save_bar_plot, save_line_plot
    except ImportError:
        res.notes.append("figures: matplotlib is not installed (`pip install gnbsched[bench]`), so there are none")
        return []
    paths: list[Path] = []
    if res.scale:
        scen = list(dict.fromkeys(r.scenario for r in res.scale))
        pols = [p for p in dict.fromkeys(r.policy for r in res.scale) if p != "km"]
        by = {(r.scenario, r.policy): r for r in res.scale}
        labels = [f"{s}\n({by[(s, 'km')].num_ue},{by[(s, 'km')].num_channels},{by[(s, 'km')].num_busy})" for s in scen]
        paths.append(
            save_bar_plot(
                fig_dir / "scale_ratio_to_km.png",
                labels,
                {p: [by[(s, p)].ratio_to_km if (s, p) in by else math.nan for s in scen] for p in pols},
                xlabel="scenario (users, channels, busy)",
                ylabel="sum-rate / KM optimum",
                hline=1.0,
                ylim=(0.0, 1.05),
                title="Quality against the exact Hungarian solver",
            )
        )
        size = [
            float(by[(s, "km")].mean_active_users * (by[(s, "km")].num_channels - by[(s, "km")].num_busy)) for s in scen
        ]
        order = np.argsort(size)
        xs = [size[i] for i in order]
        series = {
            p: [by[(scen[i], p)].time_p50_ms if (scen[i], p) in by else math.nan for i in order] for p in ["km", *pols]
        }
        series["LSA paper: LLM (7.2–7.8 s)"] = [7500.0] * len(xs)
        paths.append(
            save_line_plot(
                fig_dir / "scale_time_per_decision.png",
                xs,
                series,
                xlabel="active users × free channels",
                ylabel="time per decision p50 (ms)",
                logx=True,
                logy=True,
                hline=TARGETS["scale_p50_ms"],
                title="Time per decision vs scale (dashed: 50 ms target)",
            )
        )
    if res.anytime:
        deadlines = [r.deadline_ms for r in res.anytime]
        at10 = f"target at 10 ms (≥ {TARGETS['anytime_10ms_ratio']:g})"
        paths.append(
            save_line_plot(
                fig_dir / "anytime_scale_iii.png",
                deadlines,
                {
                    "auction": [r.ratio_to_km for r in res.anytime],
                    at10: [TARGETS["anytime_10ms_ratio"] if d == 10.0 else math.nan for d in deadlines],
                },
                xlabel="deadline (ms)",
                ylabel="sum-rate / KM optimum",
                hline=TARGETS["scale_ratio"],
                logx=True,
                x_at_points=True,
                title="Anytime at Scale III (dashed: the 99.5 % target of a full solve)",
            )
        )
    if res.e2e:
        sizes = sorted({r.num_ue for r in res.e2e})
        lines = {}
        for preset in E2E_POLICY:
            for tr in ("rest", "grpc-unary", "grpc-stream"):
                rows = [res.e2e_row(preset, n, tr) for n in sizes]
                for q in ("p50", "p99"):
                    lines[f"{preset} {tr} {q}"] = [math.nan if r is None else getattr(r, f"{q}_ms") for r in rows]
        paths.append(
            save_line_plot(
                fig_dir / "e2e_latency.png",
                sizes,
                lines,
                xlabel="users N (R = 69)",
                ylabel="end-to-end latency (ms)",
                logx=True,
                logy=True,
                hline=1.0,
                title="End-to-end latency on loopback (dashed: 1 ms)",
                figsize=(8.0, 5.0),
            )
        )
    if res.tti:
        tti_rows = [r for r in res.tti if r.floor_p99_ms is not None]
        if tti_rows:
            paths.append(
                save_bar_plot(
                    fig_dir / "tti_latency.png",
                    [
                        f"{r.shape} {r.policy}\n{r.transport}" + (f" ×{r.calls_per_tti}" if r.calls_per_tti > 1 else "")
                        for r in tti_rows
                    ],
                    {
                        "service p50": [r.p50_ms for r in tti_rows],
                        "service p99": [r.p99_ms for r in tti_rows],
                        "echo floor p99": [math.nan if r.floor_p99_ms is None else r.floor_p99_ms for r in tti_rows],
                    },
                    xlabel="cells × users × RBGs per TTI, policy, transport",
                    ylabel="latency per TTI (ms)",
                    logy=True,
                    hline=TARGETS["tti_8x32_student_p99_ms"],
                    title="Batched TTIs and single cells against the echo floor (dashed: 0.5 ms)",
                    figsize=(14.0, 5.5),
                )
            )
    return paths
