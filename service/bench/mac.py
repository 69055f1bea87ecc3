"""``gnbsched bench --preset mac``: schedulers in the UDTS simulator (SPEC §3; Stackelberg paper
section V and appendix C; LLM4MAC Fig. 3).

Every policy runs in closed loop exactly as the service runs it: per cell a ``CellHistory``,
``apply_feedback`` with the previous TTI's delivered bits, ``service.pipeline.decide``,
``record_decision``, then the simulator plays the DCM. ``s-aloha`` is the no-scheduling baseline:
the same scenario with every UE a legacy S-ALOHA UE. All policies of one table row see the same
channels, arrivals and population (one seed ⇒ one exogenous trajectory).

Tables (each also in ``<out>/mac/results.csv`` / ``results.json``, figures as PNG):

* ``standard`` — the paper's standard setting: N cycling 2..10, M = 8, Bernoulli p_a 0.2/0.5/0.8;
* ``n-sweep`` — N = 2..10 fixed, at M = 4 (``N_SWEEP_NUM_RBG``: at M = 8 the default load never
  saturates the cell for N <= 10 and every work-conserving scheduler delivers everything);
* ``m-sweep`` — M = 3..8 at N = 10 (Fig. 8);
* ``traffic`` — Table III cases 1–7 (5 UEs, M = 4);
* ``omega`` — Table VIII stress test (5 full-buffer UEs, fixed heterogeneous channels): leader
  utility ``U_BS(ω) = ω·thr_scaled + (1−ω)·JFI`` for ω = 0..1 (the baselines do not depend on ω,
  so one run per policy gives the whole sweep);
* ``followers`` — Table VII agentic/legacy mixes and the Fig. 7 dictator ablation (policy pf);
* ``multicell`` — Table IV: 2/3/4 cells × Equal / Proportional / Random partitioning (policy pf);
* ``llm4mac`` — the single-channel preset, N = 2..5, throughput in dPDUs per TTI.

Columns: throughput per UE (Mbps, eq. 23), JFI of per-UE RBG usage, resource efficiency (dPDUs
per used RBG), packet success rate, latency avg / p95 (slots), queue avg / max (dPDUs), overflow
drops, valid action rate, leader utility (eq. 5), its ratio to the ``km`` and ``random`` runs,
and ``bits/km`` — the slot objective (scheduled bits) over the exact optimum on the same slots.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from service import kpi
from service.assign import linear_assignment
from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import decide
from service.policies.assignment import random_valid
from service.policies.registry import PolicySet
from service.policies.registry import names as policy_names
from service.rng import slot_rng
from service.sim.llm4mac import Llm4MacConfig, Llm4MacEnv
from service.sim.mac import MacEnv
from service.sim.mac_config import MAC_SCENARIOS
from service.sim.multicell import PARTITION_STRATEGIES, MultiCellConfig, MultiCellEnv
from service.sim.traffic import TRAFFIC_CASES
from service.types import slot_utility

DEFAULT_POLICIES: tuple[str, ...] = ("student", "pf", "max_weight", "rr", "random", "greedy", "km", "s-aloha")
#: pseudo-policy: every UE is a legacy S-ALOHA UE, nothing is scheduled
ALOHA = "s-aloha"
#: policy of the follower-mix and multi-cell tables (the first of --policies if pf is not in it)
FIXED_POLICY = "pf"
N_SWEEP = tuple(range(2, 11))
N_SWEEP_NUM_RBG = 4
M_SWEEP = tuple(range(3, 9))
M_SWEEP_NUM_UE = 10
CASES_NUM_RBG = 4
OMEGAS = tuple(round(0.1 * i, 1) for i in range(11))
MIXES = ("mix-5a", "mix-4a1l", "mix-3a2l", "mix-1a4l", "mix-5l", "dictator-5")
CELLS = (2, 3, 4)
LLM4MAC_N = (2, 3, 4, 5)


@dataclass(frozen=True)
class Plan:
    """How much to run: slots per single-/multi-cell run and episodes per LLM4MAC point."""

    standard_slots: int = 6000
    slots: int = 3000
    multicell_slots: int = 3000
    llm4mac_episodes: int = 60
    n_sweep: tuple[int, ...] = N_SWEEP
    m_sweep: tuple[int, ...] = M_SWEEP
    cases: tuple[str, ...] = ("case1", "case2", "case3", "case4", "case5", "case6", "case7")
    mixes: tuple[str, ...] = MIXES
    cells: tuple[int, ...] = CELLS
    llm4mac_n: tuple[int, ...] = LLM4MAC_N


DEFAULT_PLAN = Plan()
QUICK_PLAN = Plan(
    standard_slots=300,
    slots=200,
    multicell_slots=200,
    llm4mac_episodes=4,
    n_sweep=(2, 6, 10),
    m_sweep=(3, 8),
    cases=("case1", "case6"),
    mixes=("mix-5a", "mix-5l"),
    cells=(2,),
    llm4mac_n=(2, 5),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No mac-specific options; the shared ones are in ``service.bench.cli``."""


@dataclass(frozen=True)
class Job:
    """One closed-loop run: a table row (``label``) of one policy."""

    table: str
    label: str
    policy: str
    kind: str  # "single" | "multi" | "llm4mac"
    slots: int
    seed: int
    scenario: str = "standard"
    overrides: dict[str, Any] = field(default_factory=dict)
    x: float = math.nan  # the swept value (N, M, cells) for plots


# ------------------------------------------------------------------------------ runners


def _policy_for(job: Job) -> str:
    return "rr" if job.policy == ALOHA else job.policy  # nothing is eligible under s-aloha


def run_single(job: Job, policies: PolicySet | None = None) -> dict[str, float]:
    """Closed loop on one cell (``MacEnv``); returns the env KPIs plus the per-slot ratios of the
    scheduled bits to the exact optimum (km) and to a random valid DCM on the same states."""
    pset = policies or PolicySet()
    cfg = MAC_SCENARIOS[job.scenario]
    over = dict(job.overrides)
    if job.policy == ALOHA:
        over["followers"] = ("legacy",)
    env = MacEnv(replace(cfg, **over), seed=job.seed)
    name = _policy_for(job)
    state = env.reset(seed=job.seed)
    history = CellHistory.empty()
    feedback: dict[int, float] = {}
    bits = opt = rnd = 0.0
    time_us: list[float] = []
    for _ in range(job.slots):
        history = apply_feedback(history, feedback)
        d = decide(state, history, name, policies=pset, seed=job.seed)
        history = record_decision(history, state, d.owner)
        time_us.append(d.timings_us.get("total", math.nan))
        bits += d.utility
        opt += slot_utility(state, linear_assignment(state, state.utility))
        rnd += slot_utility(state, random_valid(state, slot_rng(job.seed + 7919, state.cell_id, state.slot)))
        res = env.step(d.owner, raw_valid=d.valid_before_repair)
        state, feedback = res.state, res.feedback
    out = env.kpis()
    out["bits_vs_km"] = kpi.ratio(bits, opt)
    out["bits_vs_random"] = kpi.ratio(bits, rnd)
    out["decision_us"] = float(np.mean(time_us)) if time_us else math.nan
    return out


def run_multi(job: Job, policies: PolicySet | None = None) -> dict[str, float]:
    """Closed loop on a multi-cell network: one history and one decision per data cell."""
    pset = policies or PolicySet()
    mc = MultiCellConfig(**job.overrides)
    if job.policy == ALOHA:
        mc = replace(mc, cell=replace(mc.cell, followers=("legacy",)))
    env = MultiCellEnv(mc, seed=job.seed)
    name = _policy_for(job)
    states = env.reset(seed=job.seed)
    hist = [CellHistory.empty() for _ in states]
    fbs: list[dict[int, float]] = [{} for _ in states]
    for _ in range(job.slots):
        owners, valid = [], []
        for c, st in enumerate(states):
            hist[c] = apply_feedback(hist[c], fbs[c])
            d = decide(st, hist[c], name, policies=pset, seed=job.seed)
            hist[c] = record_decision(hist[c], st, d.owner)
            owners.append(d.owner)
            valid.append(d.valid_before_repair)
        res = env.step(owners, raw_valid=valid)
        states = [r.state for r in res.cells]
        fbs = [r.feedback for r in res.cells]
    return env.kpis()


def run_llm4mac(job: Job, policies: PolicySet | None = None) -> dict[str, float]:
    """``job.slots`` episodes of the LLM4MAC env; KPIs averaged over episodes."""
    pset = policies or PolicySet()
    cfg = Llm4MacConfig(**job.overrides)
    if job.policy == ALOHA:
        cfg = replace(cfg, followers=("legacy",))
    env = Llm4MacEnv(cfg, seed=job.seed)
    name = _policy_for(job)
    per_ep: list[dict[str, float]] = []
    for ep in range(job.slots):
        state = env.reset(seed=job.seed) if ep == 0 else env.reset()
        history = CellHistory.empty()
        feedback: dict[int, float] = {}
        done = False
        while not done:
            history = apply_feedback(history, feedback)
            d = decide(state, history, name, policies=pset, seed=job.seed + ep)
            history = record_decision(history, state, d.owner)
            res = env.step(d.owner, raw_valid=d.valid_before_repair)
            state, feedback, done = res.state, res.feedback, res.done
        per_ep.append(env.kpis())
    return {
        k: float(np.nanmean([e[k] for e in per_ep])) if any(np.isfinite(e[k]) for e in per_ep) else math.nan
        for k in per_ep[0]
    }


_RUNNERS: dict[str, Callable[[Job], dict[str, float]]] = {
    "single": run_single,
    "multi": run_multi,
    "llm4mac": run_llm4mac,
}


def _work(job: Job) -> tuple[Job, dict[str, float], float]:
    t0 = time.perf_counter()
    out = _RUNNERS[job.kind](job)
    return job, out, time.perf_counter() - t0


# ------------------------------------------------------------------------------ the grid


def build_jobs(policies: Sequence[str], plan: Plan, seed: int, slots: int | None) -> list[Job]:
    """Every (table, row, policy) run of the suite."""
    s_std = slots or plan.standard_slots
    s = slots or plan.slots
    s_mc = slots or plan.multicell_slots
    fixed = FIXED_POLICY if FIXED_POLICY in policies else next((p for p in policies if p != ALOHA), FIXED_POLICY)
    jobs: list[Job] = []
    for p in policies:
        jobs.append(Job("standard", "N 2..10, M=8", p, "single", s_std, seed, "standard"))
        for n in plan.n_sweep:
            jobs.append(
                Job(
                    "n-sweep",
                    f"N={n} M={N_SWEEP_NUM_RBG}",
                    p,
                    "single",
                    s,
                    seed,
                    "fixed-5",
                    {"num_ue": n, "num_rbg": N_SWEEP_NUM_RBG},
                    float(n),
                )
            )
        for m in plan.m_sweep:
            jobs.append(
                Job(
                    "m-sweep",
                    f"M={m} N={M_SWEEP_NUM_UE}",
                    p,
                    "single",
                    s,
                    seed,
                    "fixed-5",
                    {"num_ue": M_SWEEP_NUM_UE, "num_rbg": m},
                    float(m),
                )
            )
        for i, case in enumerate(plan.cases):
            jobs.append(Job("traffic", case, p, "single", s, seed, case, {"num_rbg": CASES_NUM_RBG}, float(i)))
        jobs.append(Job("omega", "stress 5 UE", p, "single", s, seed, "omega-stress"))
        for n in plan.llm4mac_n:
            jobs.append(
                Job("llm4mac", f"N={n}", p, "llm4mac", plan.llm4mac_episodes, seed, "", {"num_ue": n}, float(n))
            )
    for i, mix in enumerate(plan.mixes):
        jobs.append(Job("followers", mix, fixed, "single", s, seed, mix, {}, float(i)))
    for c in plan.cells:
        for strat in PARTITION_STRATEGIES:
            jobs.append(
                Job(
                    "multicell",
                    f"{c} cells/{strat}",
                    fixed,
                    "multi",
                    s_mc,
                    seed,
                    "",
                    {"num_cells": c, "partition": strat},
                    float(c),
                )
            )
    return jobs


def _cost(job: Job) -> float:
    if job.kind == "llm4mac":
        return job.slots * 24 * 0.5
    if job.kind == "multi":
        return job.slots * float(job.overrides.get("num_cells", 3))
    return float(job.slots)


def run_jobs(
    jobs: Sequence[Job], *, workers: int, log: Callable[[str], None]
) -> list[tuple[Job, dict[str, float], float]]:
    """Run every job (in ``workers`` processes when > 1), longest first; results in job order."""
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))
    results: dict[int, tuple[Job, dict[str, float], float]] = {}
    done = 0

    def report(i: int, res: tuple[Job, dict[str, float], float]) -> None:
        nonlocal done
        done += 1
        results[i] = res
        j, _, dt = res
        unit = "episodes" if j.kind == "llm4mac" else "TTIs"
        log(f"[mac] {done}/{len(jobs)} {j.table}: {j.label} {j.policy} — {j.slots} {unit} in {dt:.1f} s")

    if workers <= 1:
        for i in order:
            report(i, _work(jobs[i]))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
            futs = {ex.submit(_work, jobs[i]): i for i in order}
            for f in as_completed(futs):
                report(futs[f], f.result())
    return [results[i] for i in range(len(jobs))]


# ------------------------------------------------------------------------------ tables


@dataclass
class Column:
    key: str
    head: str
    fmt: str


SINGLE_COLUMNS = [
    Column("throughput_mbps", "Mbps/UE", "{:.4f}"),
    Column("fairness_jfi", "JFI", "{:.3f}"),
    Column("resource_efficiency", "RE", "{:.3f}"),
    Column("packet_success_rate", "PSR", "{:.4f}"),
    Column("latency_avg_slots", "lat avg", "{:.2f}"),
    Column("latency_p95_slots", "lat p95", "{:.1f}"),
    Column("queue_avg_dpdu", "q avg", "{:.2f}"),
    Column("queue_max_dpdu", "q max", "{:.1f}"),
    Column("overflow_drops", "drops", "{:.0f}"),
    Column("valid_action_rate", "valid", "{:.2f}"),
    Column("leader_utility", "U_BS", "{:.4f}"),
    Column("utility_vs_km", "U/km", "{:.3f}"),
    Column("utility_vs_random", "U/rand", "{:.3f}"),
    Column("bits_vs_km", "bits/km", "{:.3f}"),
]
FOLLOWER_COLUMNS = [
    Column("throughput_mbps", "Mbps/UE", "{:.4f}"),
    Column("fairness_jfi", "JFI", "{:.3f}"),
    Column("resource_efficiency", "RE", "{:.3f}"),
    Column("packet_success_rate", "PSR", "{:.4f}"),
    Column("collision_rate", "coll", "{:.3f}"),
    Column("latency_avg_slots", "lat avg", "{:.2f}"),
    Column("latency_p95_slots", "lat p95", "{:.1f}"),
    Column("declined_rbgs_per_tti", "declined/TTI", "{:.3f}"),
    Column("padding_rbgs_per_tti", "padding/TTI", "{:.3f}"),
    Column("follower_utility", "U_UE", "{:.3f}"),
    Column("leader_utility", "U_BS", "{:.4f}"),
]
MULTI_COLUMNS = [
    Column("cell_throughput_mbps", "net Mbps", "{:.3f}"),
    Column("throughput_mbps", "Mbps/UE", "{:.4f}"),
    Column("offered_load_mbps", "offered", "{:.3f}"),
    Column("fairness_jfi", "JFI", "{:.3f}"),
    Column("latency_avg_slots", "lat avg", "{:.2f}"),
    Column("latency_p95_slots", "lat p95", "{:.1f}"),
    Column("queue_max_dpdu", "q max", "{:.1f}"),
    Column("overflow_drops", "drops", "{:.0f}"),
    Column("leader_utility", "U_BS", "{:.4f}"),
]
LLM4MAC_COLUMNS = [
    Column("throughput_dpdu_per_tti", "S dPDU/TTI", "{:.3f}"),
    Column("episode_return", "return", "{:.2f}"),
    Column("offered_dpdu_per_tti", "offered", "{:.3f}"),
    Column("latency_avg_slots", "lat avg", "{:.2f}"),
    Column("idle_rate", "idle", "{:.3f}"),
    Column("collision_rate", "coll", "{:.3f}"),
    Column("queue_avg_dpdu", "q avg", "{:.2f}"),
    Column("overflow_drops", "drops", "{:.1f}"),
]
TABLE_TITLES = {
    "standard": "MAC standard setting (N cycling 2..10, M = 8, Bernoulli p_a 0.2/0.5/0.8)",
    "n-sweep": f"N sweep (M = {N_SWEEP_NUM_RBG})",
    "m-sweep": f"M sweep (N = {M_SWEEP_NUM_UE})",
    "traffic": f"Table III traffic cases (5 UEs, M = {CASES_NUM_RBG}; B Bernoulli, P periodic, O ON-OFF)",
    "followers": f"Table VII follower mixes and the dictator ablation (5 UEs, M = 8, policy {FIXED_POLICY})",
    "multicell": f"Table IV multi-cell tier-0 partitioning (4 local + 1 edge UE per cell, policy {FIXED_POLICY})",
    "llm4mac": "LLM4MAC single channel (M = 1, buffer 15, p_a = 0.48, 24-TTI episodes)",
}


def _fmt(v: Any, fmt: str) -> str:
    if isinstance(v, float | np.floating) and not math.isfinite(float(v)):
        return "-"
    return fmt.format(v)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 2, group: bool = True) -> str:
    """Fixed-width text table; the first ``left`` columns are left-aligned; with ``group`` a blank
    line separates runs of rows with different first cells."""
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if j < left else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths, strict=True)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    prev = None
    for r in rows:
        if group and prev is not None and r[0] != prev:
            out.append("")
        out.append(line(r))
        prev = r[0]
    return "\n".join(out)


def _table(records: Sequence[dict[str, Any]], cols: Sequence[Column], first: str = "label") -> str:
    header = [first, "policy", *[c.head for c in cols]]
    rows = [[str(r[first]), str(r["policy"]), *[_fmt(r.get(c.key, math.nan), c.fmt) for c in cols]] for r in records]
    return format_table(header, rows, group=len({r[0] for r in rows}) < len(rows))


def omega_table(records: Sequence[dict[str, Any]]) -> tuple[str, dict[str, list[float]]]:
    """Table VIII: per policy throughput, JFI and ``U_BS(ω)`` for ω in ``OMEGAS``."""
    curves: dict[str, list[float]] = {}
    header = ["policy", "Mbps/UE", "JFI", *[f"ω={w:g}" for w in OMEGAS]]
    rows = []
    for r in records:
        u = [w * r["throughput_scaled"] + (1 - w) * r["leader_jfi"] for w in OMEGAS]
        curves[r["policy"]] = u
        rows.append(
            [
                r["policy"],
                _fmt(r["throughput_mbps"], "{:.4f}"),
                _fmt(r["fairness_jfi"], "{:.3f}"),
                *[_fmt(v, "{:.3f}") for v in u],
            ]
        )
    if rows:
        best = ["best", "", ""]
        for i in range(len(OMEGAS)):
            vals = {p: c[i] for p, c in curves.items() if math.isfinite(c[i])}
            best.append(max(vals, key=lambda p: vals[p]) if vals else "-")
        rows.append(best)
    return format_table(header, rows, left=1, group=False), curves


# ------------------------------------------------------------------------------ entry point


def _records(results: Sequence[tuple[Job, dict[str, float], float]]) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    for job, k, dt in results:
        recs.append(
            {
                "table": job.table,
                "label": job.label,
                "policy": job.policy,
                "x": job.x,
                "slots": job.slots,
                "seed": job.seed,
                "wall_s": dt,
                **{key: float(v) for key, v in k.items()},
            }
        )
    # leader-utility ratios to the km and random runs of the same row
    by_row: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in recs:
        by_row.setdefault((r["table"], r["label"]), {})[r["policy"]] = r
    for row in by_row.values():
        for r in row.values():
            for ref, key in (("km", "utility_vs_km"), ("random", "utility_vs_random")):
                if "leader_utility" in r and ref in row:
                    r[key] = kpi.ratio(r["leader_utility"], row[ref].get("leader_utility", math.nan))
    return recs


def _write(out_dir: Path, recs: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in recs:
        keys.extend(k for k in r if k not in keys)
    with open(out_dir / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in recs:
            w.writerow({k: r.get(k, "") for k in keys})

    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    with open(out_dir / "results.json", "w") as fh:
        json.dump({"meta": meta, "results": [{k: clean(v) for k, v in r.items()} for r in recs]}, fh, indent=1)


def _plots(out_dir: Path, recs: list[dict[str, Any]], omega_curves: dict[str, list[float]]) -> list[Path]:
    """Figures in the style of the paper's: metric vs swept value, one line / bar per policy."""
    try:
        from service.bench.plotting import save_bar_plot, save_line_plot
    except ImportError:  # pragma: no cover - plotting helper absent
        return []
    paths: list[Path] = []

    def series(table: str, key: str) -> tuple[list[float], dict[str, list[float]]]:
        rows = [r for r in recs if r["table"] == table]
        xs = sorted({r["x"] for r in rows})
        out: dict[str, list[float]] = {}
        for r in rows:
            out.setdefault(r["policy"], [math.nan] * len(xs))[xs.index(r["x"])] = r.get(key, math.nan)
        return xs, out

    for table, xl, what, noun in (
        ("n-sweep", f"number of UEs N (M = {N_SWEEP_NUM_RBG})", "num_ue", "UEs"),
        ("m-sweep", f"number of RBGs M (N = {M_SWEEP_NUM_UE})", "num_rbg", "RBGs"),
    ):
        for key, yl, name, logy in (
            ("throughput_mbps", "throughput per UE (Mbps)", "throughput", False),
            ("fairness_jfi", "Jain fairness (RBG usage)", "fairness", False),
            ("latency_p95_slots", "95% latency (slots)", "latency_p95", True),
        ):
            xs, ser = series(table, key)
            if xs:
                paths.append(
                    save_line_plot(
                        out_dir / f"{name}_vs_{what}.png",
                        xs,
                        ser,
                        xlabel=xl,
                        ylabel=yl,
                        title=f"MAC: {yl} vs number of {noun}",
                        logy=logy,
                    )
                )
    cases = sorted({(r["x"], r["label"]) for r in recs if r["table"] == "traffic"})
    if cases:
        labels = [c[1] for c in cases]
        ticks = [f"{c} ({TRAFFIC_CASES.get(c, '?')})" for c in labels]
        for key, yl, name in (
            ("latency_p95_slots", "95% latency (slots)", "traffic_latency_p95"),
            ("queue_avg_dpdu", "average queue (dPDUs)", "traffic_queue_avg"),
        ):
            bars: dict[str, list[float]] = {}
            for r in recs:
                if r["table"] == "traffic":
                    bars.setdefault(r["policy"], [math.nan] * len(labels))[labels.index(r["label"])] = r.get(
                        key, math.nan
                    )
            paths.append(
                save_bar_plot(
                    out_dir / f"{name}.png",
                    ticks,
                    bars,
                    xlabel="Table III traffic case",
                    ylabel=yl,
                    title=f"MAC traffic cases: {yl} (log scale)",
                    logy=True,
                )
            )
    if omega_curves:
        paths.append(
            save_line_plot(
                out_dir / "omega_sweep.png",
                list(OMEGAS),
                omega_curves,
                xlabel="ω (eq. 5)",
                ylabel="leader utility U_BS",
                title="Table VIII stress test: U_BS vs ω",
            )
        )
    mixes = [r for r in recs if r["table"] == "followers"]
    if mixes:
        labels = [r["label"] for r in mixes]
        paths.append(
            save_bar_plot(
                out_dir / "followers_mix.png",
                labels,
                {
                    "throughput (Mbps/UE)": [r["throughput_mbps"] for r in mixes],
                    "JFI": [r["fairness_jfi"] for r in mixes],
                    "resource efficiency / 2": [r["resource_efficiency"] / 2 for r in mixes],
                },
                xlabel="followers (a: agentic, l: legacy)",
                ylabel="value",
                title=f"Table VII mixes (policy {FIXED_POLICY})",
            )
        )
    multi = [r for r in recs if r["table"] == "multicell"]
    if multi:
        cells = sorted({int(r["x"]) for r in multi})
        labels = [f"{c} cells" for c in cells]
        for key, yl, name in (
            ("cell_throughput_mbps", "network throughput (Mbps)", "multicell_throughput"),
            ("latency_p95_slots", "95% latency (slots)", "multicell_latency_p95"),
        ):
            by_strategy = {s: [math.nan] * len(cells) for s in PARTITION_STRATEGIES}
            for r in multi:
                by_strategy[r["label"].split("/")[1]][cells.index(int(r["x"]))] = r.get(key, math.nan)
            paths.append(
                save_bar_plot(
                    out_dir / f"{name}.png",
                    labels,
                    by_strategy,
                    xlabel="data cells",
                    ylabel=yl,
                    title=f"Table IV tier-0 partitioning: {yl}",
                )
            )
    xs, ser = series("llm4mac", "throughput_dpdu_per_tti")
    if xs:
        paths.append(
            save_line_plot(
                out_dir / "llm4mac_throughput.png",
                xs,
                ser,
                xlabel="number of UEs N",
                ylabel="throughput (dPDUs per TTI)",
                title="LLM4MAC single channel",
            )
        )
    return paths


def run(args: argparse.Namespace) -> int:
    """Run the suite, print the tables, write ``<out>/mac/``. Returns the exit code."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    requested = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(DEFAULT_POLICIES)
    known = set(policy_names()) | {ALOHA}
    unknown = [p for p in requested if p not in known]
    if unknown:
        print(f"bench mac: unknown policies {unknown}; registered: {sorted(known)}", file=sys.stderr)
        return 2
    # the ratio columns need the km and random runs
    policies = list(dict.fromkeys([*requested, *[p for p in ("km", "random") if p not in requested]]))
    jobs = build_jobs(policies, plan, args.seed, args.slots)
    workers = max(1, min(os.cpu_count() or 1, len(jobs)))
    log(f"[mac] {len(jobs)} runs on {workers} worker(s) ({'quick' if args.quick else 'default'} plan)")
    results = run_jobs(jobs, workers=workers, log=log)
    rank = {p: i for i, p in enumerate(policies)}
    recs = sorted(
        _records(results),
        key=lambda r: (r["x"] if math.isfinite(r["x"]) else -1.0, r["label"], rank.get(r["policy"], len(rank))),
    )

    out_dir = Path(args.out) / "mac"
    print()
    for table in ("standard", "n-sweep", "m-sweep", "traffic"):
        rows = [r for r in recs if r["table"] == table]
        if rows:
            print(f"== {TABLE_TITLES[table]}")
            print(_table(rows, SINGLE_COLUMNS))
            print()
    omega_rows = [r for r in recs if r["table"] == "omega"]
    omega_text, curves = omega_table(omega_rows)
    if omega_rows:
        print("== Table VIII ω sweep: 5 full-buffer UEs, fixed channels (poor, poor, medium, good, good), M = 8")
        print(omega_text)
        print()
    for table, cols in (("followers", FOLLOWER_COLUMNS), ("multicell", MULTI_COLUMNS), ("llm4mac", LLM4MAC_COLUMNS)):
        rows = [r for r in recs if r["table"] == table]
        if rows:
            print(f"== {TABLE_TITLES[table]}")
            print(_table(rows, cols))
            print()
    wall = time.perf_counter() - t0
    meta = {
        "suite": "mac",
        "quick": bool(args.quick),
        "seed": args.seed,
        "policies": policies,
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(plan).items()},
        "slots_override": args.slots,
        "workers": workers,
        "wall_s": wall,
    }
    _write(out_dir, recs, meta)
    pngs = _plots(out_dir, recs, curves)
    print(
        f"mac: {len(jobs)} runs in {wall:.1f} s on {workers} worker(s); wrote {out_dir}/results.csv, "
        f"results.json and {len(pngs)} PNG figures"
    )
    return 0
