"""``gnbsched bench student``: the shipped ONNX students against their targets (issue 4).

Everything runs through ``service.pipeline.decide`` in closed loop with a cell history, as the
service runs it, and every policy of a row sees the same slots (one seed ⇒ one exogenous
trajectory).

* **spectrum** (fading on): sum-rate ratio of ``student`` to the exact optimum (KM on the same
  slots) on the LSA grid and on (30,30,6), (50,50,10), (100,100,20) — target ≥ 0.99 on every
  scenario up to (100,100,20); Scale I (500,500,100) is reported. The ``net-greedy`` column is
  the network alone with the plain PAG greedy decode (no exact assignment), for reference.
* **mac**: leader utility (SPEC §3 eq. 5) of ``student`` over the best of pf / max_weight / rr
  on the standard scenarios — target ≥ 1.03 with Jain fairness (``fairness_jfi``) ≥ 0.95 — and,
  with the same model, on N = 20 and N = 50 (outside its training range N ≤ 10) — target ≥ 1.
  The rows also carry what the fairness costs: mean packet latency (slots) and dPDUs per used
  RBG, of the student and of the best baseline.
* **valid-before-repair** of the student's raw outputs: target 100 %.
* **latency** at N = 100, R = 69 (one core): serialize and policy stage times (µs) per preset,
  and the policy's two parts timed alone (the onnxruntime run, the PAG decode).

Outputs ``<out>/student/results.json``; prints the tables and a PASS/FAIL line per target.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from service.assign import linear_assignment
from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import PolicySet, decide
from service.policies.student import StudentPolicy, decode, decode_capped
from service.sim.mac import MAC_SCENARIOS, MacConfig, MacEnv
from service.sim.spectrum import SPECTRUM_SCENARIOS, SpectrumConfig, SpectrumEnv
from service.types import make_slot, slot_utility

SPECTRUM_TARGET = 0.99
MAC_TARGET = 1.03
MAC_JAIN_TARGET = 0.95
BASELINES = ("pf", "max_weight", "rr")

#: spectrum scenarios: (label, config, counts toward the ≥ 99 % target)
SPECTRUM_GRID: list[tuple[str, SpectrumConfig, bool]] = [
    *((name, SPECTRUM_SCENARIOS[name], True) for name in list(SPECTRUM_SCENARIOS)[:8]),
    *((f"u{n}-c{r}-b{b}", SpectrumConfig(num_ue=n, num_channels=r, num_busy=b), True)
      for n, r, b in ((30, 30, 6), (50, 50, 10), (100, 100, 20))),
    ("scale-I", SPECTRUM_SCENARIOS["scale-I"], False),
]

#: mac scenarios: (label, config, group) — "standard" rows count toward the 1.03 target,
#: "generalisation" rows (N outside the training range) toward ≥ the best baseline
MAC_GRID: list[tuple[str, MacConfig, str]] = [
    ("standard", MAC_SCENARIOS["standard"], "standard"),
    ("n10-m4", replace(MAC_SCENARIOS["standard"], num_ue=10, num_rbg=4), "standard"),
    *((f"{c}-m4", replace(MAC_SCENARIOS[c], num_rbg=4), "standard") for c in ("case1", "case2", "case4", "case6", "case7")),
    ("n20", replace(MAC_SCENARIOS["standard"], num_ue=20), "generalisation"),
    ("n50", replace(MAC_SCENARIOS["standard"], num_ue=50), "generalisation"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gnbsched bench`` apply (``--quick``, ``--seed``, ``--slots``, ``--out``)."""
    parser.add_argument("--trace", default=None, metavar="FILE",
                        help="student: replay a recorded trace (serve --record) or a file of POST /schedule "
                             "bodies through every policy (--policies) instead (service.bench.replay)")


def _student_set(student: StudentPolicy) -> PolicySet:
    return PolicySet(factories={"student": lambda: student})


# ----------------------------------------------------------------------------- spectrum


def bench_spectrum(student: StudentPolicy, *, seeds: int, slots: int, seed: int, quick: bool) -> list[dict[str, Any]]:
    pset = _student_set(student)
    model = student.model("spectrum")
    assert model is not None
    rows = []
    for label, cfg, target in SPECTRUM_GRID:
        if quick and (cfg.num_ue or 0) > 100:
            continue
        tot = np.zeros(3)
        valid: list[bool] = []
        t_policy: list[float] = []
        for s in range(seeds):
            env = SpectrumEnv(cfg, seed=seed + s)
            state = env.reset()
            history = CellHistory.empty()
            for _ in range(slots if (cfg.num_ue or 0) <= 100 else max(1, slots // 10)):
                d = decide(state, history, "student", policies=pset, seed=seed)
                valid.append(d.valid_before_repair)
                t_policy.append(d.timings_us["serialize"] + d.timings_us["policy"])
                logits = model.logits(student.serialize(state, _ctx(history, state)))
                greedy = decode_capped(state, logits, surplus_margin=float(model.decode_spec.get("surplus_margin", 4.0)))
                tot += [slot_utility(state, linear_assignment(state, state.utility)), d.utility, slot_utility(state, greedy)]
                history = record_decision(history, state, d.owner)
                res = env.step(d.owner)
                history = apply_feedback(history, res.feedback)
                state = res.state
        rows.append({"scenario": label, "num_ue": cfg.num_ue, "num_channels": cfg.num_channels, "num_busy": cfg.num_busy,
                     "target": target, "decisions": len(valid), "ratio_to_km": tot[1] / tot[0],
                     "net_greedy_ratio_to_km": tot[2] / tot[0], "valid_before_repair": float(np.mean(valid)),
                     "time_us_median": float(np.median(t_policy))})
    return rows


def _ctx(history: CellHistory, state):
    from service.policies.base import PolicyContext

    return PolicyContext(history.view(state), np.random.default_rng(0))


# ----------------------------------------------------------------------------- mac


def _mac_run(cfg: MacConfig, policy: str, pset: PolicySet, *, seed: int, ttis: int) -> dict[str, float]:
    env = MacEnv(cfg, seed=seed)
    state = env.reset()
    history = CellHistory.empty()
    for _ in range(ttis):
        d = decide(state, history, policy, policies=pset, seed=seed)
        history = record_decision(history, state, d.owner)
        res = env.step(d.owner, raw_valid=d.valid_before_repair)
        history = apply_feedback(history, res.feedback)
        state = res.state
    return env.kpis()


def bench_mac(student: StudentPolicy, *, seeds: int, ttis: int, seed: int) -> list[dict[str, Any]]:
    pset = _student_set(student)
    rows = []
    for label, cfg, group in MAC_GRID:
        per: dict[str, list[dict[str, float]]] = {p: [] for p in ("student", *BASELINES)}
        for s in range(seeds):
            for p in per:
                per[p].append(_mac_run(cfg, p, pset, seed=seed + s, ttis=ttis))

        def mean(p: str, key: str, per: dict[str, list[dict[str, float]]] = per) -> float:
            return float(np.mean([k[key] for k in per[p]]))

        best = max(BASELINES, key=lambda p: mean(p, "leader_utility"))
        rows.append({"scenario": label, "group": group, "num_rbg": cfg.num_rbg, "num_ue": cfg.num_ue or "2..10",
                     "ttis": ttis * seeds, "student_utility": mean("student", "leader_utility"),
                     "best_baseline": best, "baseline_utility": mean(best, "leader_utility"),
                     "ratio": mean("student", "leader_utility") / mean(best, "leader_utility"),
                     "student_jain": mean("student", "fairness_jfi"), "baseline_jain": mean(best, "fairness_jfi"),
                     "student_latency_slots": mean("student", "latency_avg_slots"),
                     "baseline_latency_slots": mean(best, "latency_avg_slots"),
                     "student_dpdu_per_rbg": mean("student", "resource_efficiency"),
                     "baseline_dpdu_per_rbg": mean(best, "resource_efficiency"),
                     "student_throughput_mbps": mean("student", "throughput_mbps"),
                     "baseline_throughput_mbps": mean(best, "throughput_mbps"),
                     "valid_before_repair": mean("student", "valid_action_rate"),
                     **{f"{p}_utility": mean(p, "leader_utility") for p in BASELINES}})
    return rows


# ----------------------------------------------------------------------------- latency


def bench_latency(student: StudentPolicy, *, repeats: int = 2000) -> dict[str, dict[str, float]]:
    """Stage times at N = 100 users, R = 69 resources (a 100 MHz carrier in 4-RB RBGs)."""
    pset = _student_set(student)
    rng = np.random.default_rng(0)
    n, r = 100, 69
    out: dict[str, dict[str, float]] = {}
    for preset in ("spectrum", "mac"):
        if student.model(preset) is None:
            continue
        if preset == "spectrum":
            state = make_slot("spectrum", np.arange(n), np.arange(r), rate_bps=rng.exponential(5e6, (n, r)),
                              user_eligible=rng.random(n) < 0.7)
        else:
            state = make_slot("mac", np.arange(n), np.arange(r), spectral_efficiency=rng.choice([0.2344, 0.6016, 1.1758], n),
                              buffer_bits=rng.integers(0, 20, n) * 256.0)
        history = CellHistory.empty()
        ser, pol = [], []
        for _ in range(repeats):
            d = decide(state, history, "student", policies=pset)
            ser.append(d.timings_us["serialize"])
            pol.append(d.timings_us["policy"])
        # the policy stage in its two parts, each alone: the onnxruntime run and the PAG decode
        model = student.model(preset)
        assert model is not None
        logits = model.logits(student.serialize(state, _ctx(history, state)))
        binding, _ = model.bind(student.serialize(state, _ctx(history, state)))
        onnx_us = _median_us(partial(model.session.run_with_iobinding, binding), repeats)
        decode_us = _median_us(partial(decode, state, logits, model.decode_spec), repeats)
        out[preset] = {"serialize_us_median": float(np.median(ser)), "policy_us_median": float(np.median(pol)),
                       "policy_us_p95": float(np.percentile(pol, 95)),
                       "onnx_run_us_median": onnx_us, "decode_us_median": decode_us,
                       "serialize_plus_policy_us_median": float(np.median(np.add(ser, pol)))}
    return out


def _median_us(fn: Any, repeats: int) -> float:
    """Median wall time of ``fn()`` in µs over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return float(np.median(times) * 1e6)


# ----------------------------------------------------------------------------- entry points


def evaluate_model(preset: str, version_dir: str | Path, *, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The KPIs of one exported model (what ``gnbsched train all`` writes into its model card)."""
    version_dir = Path(version_dir)
    student = StudentPolicy(version_dir.parents[1], presets=(preset,), versions={preset: version_dir.name})
    if preset == "spectrum":
        rows = bench_spectrum(student, seeds=1 if quick else 3, slots=3 if quick else 20, seed=seed, quick=quick)
        tgt = [r["ratio_to_km"] for r in rows if r["target"]]
        summary = {"min_ratio_to_km_up_to_100": float(min(tgt)), "target": SPECTRUM_TARGET,
                   "met": bool(min(tgt) >= SPECTRUM_TARGET)}
    else:
        rows = bench_mac(student, seeds=1 if quick else 2, ttis=200 if quick else 2000, seed=seed)
        summary = _mac_summary(rows)
    summary["valid_before_repair"] = float(min(r["valid_before_repair"] for r in rows))
    return {"bench": "service.bench.student", "seed": seed, "quick": quick, "summary": summary, "rows": rows,
            "latency_n100_r69": bench_latency(student, repeats=200 if quick else 2000).get(preset, {})}


def _mac_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    std = [r for r in rows if r["group"] == "standard"]
    gen = [r for r in rows if r["group"] == "generalisation"]
    s_min = min(r["ratio"] for r in std)
    j_min = min(r["student_jain"] for r in std)
    g_min = min(r["ratio"] for r in gen) if gen else math.nan
    return {"min_ratio_standard": s_min, "min_jain_standard": j_min, "min_ratio_generalisation": g_min,
            "targets": {"ratio": MAC_TARGET, "jain": MAC_JAIN_TARGET, "generalisation": 1.0},
            "met": bool(s_min >= MAC_TARGET and j_min >= MAC_JAIN_TARGET and g_min >= 1.0)}


def _jsonable(v: Any) -> Any:
    """numpy scalars -> Python (the JSON encoder's fallback)."""
    return v.item() if isinstance(v, np.generic) else str(v)


def _fmt_rows(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    cells = [[h for _, h, _ in cols]] + [[f.format(r[k]) if isinstance(r[k], float) else str(r[k]) for k, _, f in cols]
                                         for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c[i].rjust(w[i]) if i else c[i].ljust(w[i]) for i in range(len(cols))) for c in cells)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "trace", None):
        from service.bench import replay

        return replay.run(args)
    student = StudentPolicy()
    quick = bool(getattr(args, "quick", False))
    seed = int(getattr(args, "seed", 0) or 0)
    slots = getattr(args, "slots", None)
    out: dict[str, Any] = {"models": student.metadata()["models"], "seed": seed, "quick": quick}
    t0 = time.perf_counter()
    ok = True
    if student.model("spectrum") is not None:
        rows = bench_spectrum(student, seeds=1 if quick else 3, slots=slots or (3 if quick else 20), seed=seed, quick=quick)
        out["spectrum"] = rows
        print("\nstudent — spectrum (ratio of sum-rate to the KM optimum, same slots)")
        print(_fmt_rows(rows, [("scenario", "scenario", "{}"), ("decisions", "n", "{}"), ("ratio_to_km", "student/km", "{:.4f}"),
                               ("net_greedy_ratio_to_km", "net-greedy/km", "{:.4f}"),
                               ("valid_before_repair", "valid", "{:.3f}"), ("time_us_median", "µs", "{:.0f}")]))
        tgt = min(r["ratio_to_km"] for r in rows if r["target"])
        met = tgt >= SPECTRUM_TARGET
        ok &= met
        print(f"{'PASS' if met else 'FAIL'} spectrum: min student/km up to (100,100,20) = {tgt:.4f} (target ≥ {SPECTRUM_TARGET})")
    if student.model("mac") is not None:
        rows = bench_mac(student, seeds=1 if quick else 2, ttis=slots or (200 if quick else 2000), seed=seed)
        out["mac"] = rows
        print("\nstudent — mac (leader utility, SPEC §3 eq. 5; best of pf / max_weight / rr on the same seeds)")
        print(_fmt_rows(rows, [("scenario", "scenario", "{}"), ("group", "group", "{}"), ("student_utility", "student", "{:.4f}"),
                               ("best_baseline", "best", "{}"), ("baseline_utility", "baseline", "{:.4f}"),
                               ("ratio", "ratio", "{:.4f}"), ("student_jain", "jain", "{:.3f}"),
                               ("baseline_jain", "jain(base)", "{:.3f}"),
                               ("student_latency_slots", "lat", "{:.1f}"), ("baseline_latency_slots", "lat(base)", "{:.1f}"),
                               ("valid_before_repair", "valid", "{:.3f}")]))
        summ = _mac_summary(rows)
        ok &= summ["met"]
        print(f"{'PASS' if summ['met'] else 'FAIL'} mac: min ratio (standard) = {summ['min_ratio_standard']:.4f} "
              f"(target ≥ {MAC_TARGET}), min Jain = {summ['min_jain_standard']:.3f} (≥ {MAC_JAIN_TARGET}), "
              f"min ratio N=20/50 = {summ['min_ratio_generalisation']:.4f} (≥ 1)")
    valid = min([r["valid_before_repair"] for key in ("spectrum", "mac") for r in out.get(key, [])] or [math.nan])
    print(f"{'PASS' if valid == 1.0 else 'FAIL'} valid-before-repair: {valid:.4f} (target 1.0)")
    ok &= valid == 1.0
    out["latency_n100_r69"] = lat = bench_latency(student, repeats=300 if quick else 2000)
    for preset, v in lat.items():
        print(f"latency {preset} N=100 R=69: serialize {v['serialize_us_median']:.0f} µs + policy "
              f"{v['policy_us_median']:.0f} µs (p95 {v['policy_us_p95']:.0f} µs), median; policy parts alone: "
              f"onnxruntime {v['onnx_run_us_median']:.0f} µs, decode {v['decode_us_median']:.0f} µs")
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    path = Path(getattr(args, "out", "bench-out")) / "student"
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(out, indent=1, default=_jsonable) + "\n")
    print(f"wrote {path / 'results.json'}", file=sys.stderr)
    return 0 if ok else 1
