"""``gnbsched bench student``: the shipped ONNX students judged on world families.

The students are judged on worlds drawn from the families of ``service.sim.worlds``
(``MAC_FAMILIES``, ``SPECTRUM_FAMILIES``) rather than on the project's own simulators alone.
Every table reports the training families and the held-out families (``HELD_OUT``, never drawn
in training) as separate groups, and every target is judged per group.

* **mac**: one row per (family, N) for N = 20, 50, 100 users on R = 17, 33, 69 RBGs (the RBG
  counts of 20 / 40 / 100 MHz-class carriers). Each seed draws one world with
  ``random_world`` (load, unit scale, numerology, channel and traffic parameters from the
  family's ranges) and runs it in closed loop through ``service.pipeline.decide`` with a cell
  history for ``student``, ``pf``, ``max_weight`` and ``rr`` on the same world and seed (the
  same exogenous channel, arrivals and block errors). The KPIs of ``WorldEnv.kpis`` are averaged
  over seeds; the targets per row are

  - leader utility (SPEC §3 eq. 5) / the best of pf, max_weight, rr: ≥ 1.00;
  - cell throughput / pf's: ≥ 0.99;
  - p95 packet latency / pf's: ≤ 1.2 (n/a where pf's is undefined, e.g. full-buffer traffic);
  - Jain index of the users' throughputs: ≥ pf's − 0.01;
  - valid before repair (the student's raw outputs): 100 %.

  The rows also carry the absolute figures (utility of each policy, throughput in Mbit/s, p95
  latency in slots, Jain index).
* **spectrum**: per family, N × R in (10, 10), (20, 40), (50, 50), (100, 100), (100, 30),
  (30, 100), ``instances`` slots of ``spectrum_instance`` each; the student's sum-rate over the
  exact optimum (KM: ``linear_assignment`` on the slot's utility), min and mean per row — target
  min ≥ 0.99 — and valid before repair: 100 %.
* **latency** at N = 100, R = 69 (one core): serialize and policy stage times (µs) per preset,
  and the policy's two parts timed alone (the onnxruntime run, the PAG decode).

Seeds derive arithmetically from ``--seed``: the same seed gives the same tables. ``--quick``
runs N = 20 only at a small budget; ``--slots`` sets the mac slots per run; ``--trace FILE``
replays a recorded trace instead (``service.bench.replay``).

Outputs ``<out>/docs/bench/student.json`` (rows, ``summary`` with a ``met`` flag per target and
group, latency) and ``<out>/docs/bench/student.md`` (the report in Markdown), and replaces the
student section of ``<out>/BENCHMARKS.md`` (``service.bench.benchmarks_md``: the section's header
names the command and configuration; the other suites' sections are kept); prints the tables
and a PASS / FAIL line per target and group, each with the measured worst value. The exit code is 0 whatever the verdicts
(the bench is a report).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from service.assign import linear_assignment
from service.bench import benchmarks_md
from service.bench.benchmarks_md import Producer
from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.policies.student import StudentPolicy
from service.policies.student_decode import decode, decode_capped
from service.sim import worlds
from service.sim.worlds import HELD_OUT, MAC_FAMILIES, SPECTRUM_FAMILIES, WorldEnv, random_world
from service.types import make_slot, slot_utility

BASELINES = ("pf", "max_weight", "rr")
MAC_POLICIES = ("student", *BASELINES)
#: mac (N, R): the RBG counts of 20 / 40 / 100 MHz-class carriers
MAC_SIZES: tuple[tuple[int, int], ...] = ((20, 17), (50, 33), (100, 69))
#: spectrum (N, R)
SPECTRUM_SIZES: tuple[tuple[int, int], ...] = ((10, 10), (20, 40), (50, 50), (100, 100), (100, 30), (30, 100))

#: (row key, label, comparison, target): judged on the worst row of a group
MAC_TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("utility_ratio", "mac leader utility / best baseline", ">=", 1.00),
    ("throughput_ratio", "mac throughput / pf", ">=", 0.99),
    ("latency_ratio", "mac p95 latency / pf", "<=", 1.2),
    ("jain_minus_pf", "mac Jain - pf's Jain", ">=", -0.01),
    ("valid_before_repair", "mac valid before repair", ">=", 1.0),
)
SPECTRUM_TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("ratio_to_km_min", "spectrum utility / km", ">=", 0.99),
    ("valid_before_repair", "spectrum valid before repair", ">=", 1.0),
)
#: (group name, held out?)
GROUPS: tuple[tuple[str, bool], ...] = (("training", False), ("held-out", True))


@dataclass(frozen=True)
class Budget:
    """How much each section runs: mac seeds (worlds) per row, slots per run and (N, R) sizes;
    spectrum instances per row, and the largest N or R."""

    mac_seeds: int
    mac_slots: int
    mac_sizes: tuple[tuple[int, int], ...]
    instances: int
    max_spectrum_side: int

    @property
    def spectrum_sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple((n, r) for n, r in SPECTRUM_SIZES if max(n, r) <= self.max_spectrum_side)


#: ``gnbsched bench student`` (about 4 min on 2 cores), ``--quick`` (seconds), ``evaluate_model``
#: (about 1.5 min per preset)
FULL = Budget(mac_seeds=3, mac_slots=1000, mac_sizes=MAC_SIZES, instances=16, max_spectrum_side=100)
QUICK = Budget(mac_seeds=1, mac_slots=60, mac_sizes=MAC_SIZES[:1], instances=2, max_spectrum_side=50)
EVALUATE = Budget(mac_seeds=2, mac_slots=500, mac_sizes=MAC_SIZES, instances=16, max_spectrum_side=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gnbsched bench`` apply (``--quick``, ``--seed``, ``--slots``, ``--out``)."""
    parser.add_argument(
        "--trace",
        default=None,
        metavar="FILE",
        help="student: replay a recorded trace (serve --record) or a file of POST /schedule "
        "bodies through every policy (--policies) instead (service.bench.replay)",
    )


def _student_set(student: StudentPolicy) -> PolicySet:
    return PolicySet(factories={"student": lambda: student})


def _world_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from ``seed`` and small non-negative ints (the same in every process)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, *parts]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


# ----------------------------------------------------------------------------- mac


def _mac_run(env: WorldEnv, policy: str, pset: PolicySet, *, seed: int, slots: int) -> dict[str, float]:
    """``slots`` closed-loop slots of ``policy`` on ``env`` (reset first): its KPIs and the share of
    raw outputs valid before repair."""
    state = env.reset()
    history = CellHistory.empty()
    valid = 0
    for _ in range(slots):
        d = decide(state, history, policy, policies=pset, seed=seed)
        valid += d.valid_before_repair
        history = record_decision(history, state, d.owner)
        res = env.step(d.owner)
        history = apply_feedback(history, res.feedback)
        state = res.state
    return {**env.kpis(), "valid_before_repair": valid / max(slots, 1)}


def mac_row(family: str, num_ue: int, num_rbg: int, per: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """One mac row from the KPIs of each policy over the seeds (``per[policy]``, one dict per seed)."""

    def mean(p: str, key: str) -> float:
        return _nanmean(k[key] for k in per[p])

    util = {p: mean(p, "leader_utility") for p in MAC_POLICIES}
    best = max(BASELINES, key=lambda p: util[p])
    tput = {p: mean(p, "cell_throughput_bps") for p in ("student", "pf", best)}
    p95 = {p: mean(p, "latency_p95_slots") for p in ("student", "pf", best)}
    jain = {p: mean(p, "jain_throughput") for p in ("student", "pf")}
    applies = not math.isnan(p95["pf"])
    # the student completing no packet where pf does is the worst latency there is
    lat_ratio = (p95["student"] / p95["pf"] if not math.isnan(p95["student"]) else math.inf) if applies else math.nan
    return {
        "family": family,
        "held_out": family in HELD_OUT["mac"],
        "num_ue": num_ue,
        "num_rbg": num_rbg,
        "seeds": len(per["student"]),
        "slots": int(sum(k["slots"] for k in per["student"])),
        **{f"{p}_utility": util[p] for p in MAC_POLICIES},
        "best_baseline": best,
        "utility_ratio": util["student"] / util[best] if util[best] > 0 else math.nan,
        # what the eq. 5 winner pays for it: its throughput and p95 latency against pf's
        "best_throughput_ratio": tput[best] / tput["pf"] if tput["pf"] > 0 else math.nan,
        "best_latency_ratio": p95[best] / p95["pf"] if applies and not math.isnan(p95[best]) else math.nan,
        "student_throughput_mbps": tput["student"] / 1e6,
        "pf_throughput_mbps": tput["pf"] / 1e6,
        "throughput_ratio": tput["student"] / tput["pf"] if tput["pf"] > 0 else math.nan,
        "student_latency_p95_slots": p95["student"],
        "pf_latency_p95_slots": p95["pf"],
        "latency_target_applies": applies,
        "latency_ratio": lat_ratio,
        "student_jain": jain["student"],
        "pf_jain": jain["pf"],
        "jain_minus_pf": jain["student"] - jain["pf"],
        "student_bler": mean("student", "bler"),
        "student_dropped_share": mean("student", "dropped_share"),
        "valid_before_repair": mean("student", "valid_before_repair"),
    }


def bench_mac(student: StudentPolicy, budget: Budget, *, seed: int, slots: int | None = None) -> list[dict[str, Any]]:
    """A row per (family, N): training families first, then the held-out ones."""
    pset = _student_set(student)
    slots = slots or budget.mac_slots
    fams = list(MAC_FAMILIES)
    rows = []
    for family in sorted(fams, key=lambda f: f in HELD_OUT["mac"]):
        fi = fams.index(family)
        for n, r in budget.mac_sizes:
            t0 = time.perf_counter()
            per: dict[str, list[dict[str, float]]] = {p: [] for p in MAC_POLICIES}
            for s in range(budget.mac_seeds):
                ws = _world_seed(seed, 1, fi, n, s)
                cfg = random_world(family, np.random.default_rng(ws), num_ue=n, num_rbg=r, episode_slots=None)
                env = WorldEnv(cfg, seed=ws)
                for p in MAC_POLICIES:
                    per[p].append(_mac_run(env, p, pset, seed=seed, slots=slots))
            rows.append(mac_row(family, n, r, per))
            print(f"  mac {family} N={n}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- spectrum


def bench_spectrum(student: StudentPolicy, budget: Budget, *, seed: int) -> list[dict[str, Any]]:
    """A row per (family, N, R): the student's sum-rate over the KM optimum on the same slots, and
    (``net_alone``) the network's own margins through the plain PAG greedy decode, which shows
    what the network contributes beside the served decode (``anchored``: exact assignment)."""
    pset = _student_set(student)
    model = student.model("spectrum")
    fams = list(SPECTRUM_FAMILIES)
    rows = []
    for family in sorted(fams, key=lambda f: f in HELD_OUT["spectrum"]):
        fi = fams.index(family)
        for si, (n, r) in enumerate(budget.spectrum_sizes):
            rng = np.random.default_rng(_world_seed(seed, 2, fi, si))
            ratios, alone, valid, t_us = [], [], [], []
            for i in range(budget.instances):
                state = worlds.spectrum_instance(family, n, r, rng, cell_id=f"{family}-{n}x{r}-{i}")
                d = decide(state, CellHistory.empty(), "student", policies=pset)
                km = slot_utility(state, linear_assignment(state, state.utility))
                ratios.append(d.utility / km if km > 0 else 1.0)
                if model is not None:
                    logits = model.logits(student.serialize(state, _ctx(CellHistory.empty(), state)))
                    greedy = decode_capped(state, logits, surplus_margin=model.surplus_margin)
                    alone.append(slot_utility(state, greedy) / km if km > 0 else 1.0)
                valid.append(d.valid_before_repair)
                t_us.append(d.timings_us["serialize"] + d.timings_us["policy"])
            rows.append(
                {
                    "family": family,
                    "held_out": family in HELD_OUT["spectrum"],
                    "num_ue": n,
                    "num_res": r,
                    "instances": len(ratios),
                    "ratio_to_km_min": float(min(ratios)),
                    "ratio_to_km_mean": float(np.mean(ratios)),
                    "net_alone_ratio_mean": float(np.mean(alone)) if alone else math.nan,
                    "valid_before_repair": float(np.mean(valid)),
                    "time_us_median": float(np.median(t_us)),
                }
            )
    return rows


def _ctx(history: CellHistory, state):
    from service.policies.base import PolicyContext

    return PolicyContext(history.view(state), np.random.default_rng(0))


# ----------------------------------------------------------------------------- targets


def _finite_or_inf(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _judge(rows: Sequence[dict[str, Any]], targets: Sequence[tuple[str, str, str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": len(rows)}
    for key, label, op, target in targets:
        vals = [float(r[key]) for r in rows if _finite_or_inf(r.get(key))]
        worst = (min(vals) if op == ">=" else max(vals)) if vals else None
        met = worst is None or (worst >= target if op == ">=" else worst <= target)
        out[key] = {
            "label": label,
            "op": op,
            "target": target,
            "worst": worst,
            "met": bool(met),
            "n_applicable": len(vals),
        }
    out["met"] = all(v["met"] for k, v in out.items() if isinstance(v, dict))
    return out


def summarize(mac_rows: Sequence[dict[str, Any]] = (), spectrum_rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Every target judged on the worst row of each group (training / held-out families).

    A row whose figure is undefined (NaN / None: pf's p95 latency under full-buffer traffic) is
    n/a for that target; a group with no applicable row meets it. Sections and groups without
    rows are left out.
    """
    summary: dict[str, Any] = {}
    for section, rows, targets in (("mac", mac_rows, MAC_TARGETS), ("spectrum", spectrum_rows, SPECTRUM_TARGETS)):
        groups = {
            g: _judge(sel, targets) for g, held in GROUPS if (sel := [r for r in rows if bool(r["held_out"]) == held])
        }
        if groups:
            summary[section] = groups
    summary["met"] = all(g["met"] for sec in summary.values() for g in sec.values())
    return summary


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """``<label> (<group>): <min|max> <worst> (target <op> <target>) PASS|FAIL`` per target and group."""
    lines = []
    for section in ("mac", "spectrum"):
        for group, judged in summary.get(section, {}).items():
            for v in judged.values():
                if not isinstance(v, dict):
                    continue
                word = "min" if v["op"] == ">=" else "max"
                tgt = f"(target {v['op']} {v['target']:g})"
                skipped = judged["rows"] - v["n_applicable"]
                if v["worst"] is None:
                    lines.append(f"{v['label']} ({group}): n/a in all {judged['rows']} rows {tgt} PASS")
                    continue
                note = f", n/a in {skipped} of {judged['rows']} rows" if skipped else ""
                lines.append(
                    f"{v['label']} ({group}): {word} {v['worst']:.4f}{note} {tgt} {'PASS' if v['met'] else 'FAIL'}"
                )
    return lines


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
            state = make_slot(
                "spectrum",
                np.arange(n),
                np.arange(r),
                rate_bps=rng.exponential(5e6, (n, r)),
                user_eligible=rng.random(n) < 0.7,
            )
        else:
            state = make_slot(
                "mac",
                np.arange(n),
                np.arange(r),
                spectral_efficiency=rng.choice([0.2344, 0.6016, 1.1758], n),
                buffer_bits=rng.integers(0, 20, n) * 256.0,
            )
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
        out[preset] = {
            "serialize_us_median": float(np.median(ser)),
            "policy_us_median": float(np.median(pol)),
            "policy_us_p95": float(np.percentile(pol, 95)),
            "onnx_run_us_median": onnx_us,
            "decode_us_median": decode_us,
            "serialize_plus_policy_us_median": float(np.median(np.add(ser, pol))),
        }
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


# ----------------------------------------------------------------------------- output


def _jsonable(v: Any) -> Any:
    """numpy scalars -> Python (the JSON encoder's fallback)."""
    return v.item() if isinstance(v, np.generic) else str(v)


def _strict(v: Any) -> Any:
    """``v`` with every non-finite float (an undefined or unbounded figure) as None: strict JSON."""
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_strict(x) for x in v]
    if isinstance(v, float | np.floating) and not math.isfinite(v):
        return None
    return v


def _cell(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v) if isinstance(v, float) else str(v)


def _fmt_rows(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    cells = [[h for _, h, _ in cols]] + [[_cell(r[k], f) for k, _, f in cols] for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c[i].rjust(w[i]) if i else c[i].ljust(w[i]) for i in range(len(cols))) for c in cells)


def _group(row: dict[str, Any]) -> str:
    return "held-out" if row["held_out"] else "training"


MAC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("family", "family", "{}"),
    ("group", "group", "{}"),
    ("num_ue", "N", "{}"),
    ("num_rbg", "R", "{}"),
    ("student_utility", "U student", "{:.4f}"),
    ("pf_utility", "U pf", "{:.4f}"),
    ("max_weight_utility", "U mw", "{:.4f}"),
    ("rr_utility", "U rr", "{:.4f}"),
    ("utility_ratio", "U/best", "{:.3f}"),
    ("best_baseline", "best", "{}"),
    ("best_throughput_ratio", "best tput/pf", "{:.3f}"),
    ("best_latency_ratio", "best p95/pf", "{:.3f}"),
    ("student_throughput_mbps", "Mbit/s", "{:.2f}"),
    ("pf_throughput_mbps", "pf Mbit/s", "{:.2f}"),
    ("throughput_ratio", "tput/pf", "{:.3f}"),
    ("student_latency_p95_slots", "p95", "{:.1f}"),
    ("pf_latency_p95_slots", "pf p95", "{:.1f}"),
    ("latency_ratio", "p95/pf", "{:.3f}"),
    ("student_jain", "Jain", "{:.3f}"),
    ("pf_jain", "pf Jain", "{:.3f}"),
    ("valid_before_repair", "valid", "{:.3f}"),
)
SPECTRUM_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("family", "family", "{}"),
    ("group", "group", "{}"),
    ("num_ue", "N", "{}"),
    ("num_res", "R", "{}"),
    ("instances", "n", "{}"),
    ("ratio_to_km_min", "min student/km", "{:.4f}"),
    ("ratio_to_km_mean", "mean student/km", "{:.4f}"),
    ("net_alone_ratio_mean", "net alone/km", "{:.4f}"),
    ("valid_before_repair", "valid", "{:.3f}"),
    ("time_us_median", "µs", "{:.0f}"),
)


#: the student report and its raw rows, relative to ``--out``
REPORT_FILE = Path("docs") / "bench" / "student.md"
RESULTS_FILE = Path("docs") / "bench" / "student.json"


def _md_table(rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str, str]]) -> list[str]:
    out = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(r[k], f) for k, _, f in cols) + " |" for r in rows]
    return out


#: the figure of the report, relative to ``--out``
FIGURE_FILE = Path("docs") / "bench" / "student_targets.png"

#: (row key, panel title, target, op) of the figure's mac panels
_FIGURE_PANELS: tuple[tuple[str, str, float, str], ...] = (
    ("throughput_ratio", "cell throughput / pf", 0.99, ">="),
    ("latency_ratio", "p95 packet latency / pf", 1.2, "<="),
    ("utility_ratio", "eq. 5 / best of pf, max_weight, rr", 1.0, ">="),
)


def plot_targets(out: dict[str, Any], path: Path) -> Path | None:
    """One PNG: the student's ratios per (family, N) against their targets — three mac panels
    and the spectrum ratio to the optimum — with the held-out rows shaded. None without rows or
    without matplotlib."""
    mac, spec = out.get("mac") or [], out.get("spectrum") or []
    if not mac and not spec:
        return None
    try:
        from service.bench.plotting import save_figure, stacked_axes
    except ImportError:  # matplotlib (the bench extra) is not installed
        return None
    panels = [(p, "mac") for p in _FIGURE_PANELS if mac] + (
        [(("ratio_to_km_min", "spectrum sum-rate / km (min)", 0.99, ">="), "spectrum")] if spec else []
    )
    fig, axes = stacked_axes(len(panels), figsize=(11, 2.6 * len(panels)))
    for ax, ((key, title, target, op), preset) in zip(axes, panels, strict=True):
        rows = mac if preset == "mac" else spec
        size = "num_rbg" if preset == "mac" else "num_res"
        labels = [f"{r['family']} {r['num_ue']}×{r[size]}" for r in rows]
        vals = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        ok = vals >= target if op == ">=" else vals <= target
        x = np.arange(len(rows))
        for i, r in enumerate(rows):
            if r["held_out"]:
                ax.axvspan(i - 0.5, i + 0.5, color="0.9", zorder=0)
        ax.bar(x, np.nan_to_num(vals, nan=0.0), color=np.where(ok, "tab:green", "tab:red"), zorder=2)
        ax.axhline(target, color="k", ls="--", lw=1, zorder=3)
        finite = vals[np.isfinite(vals)]
        if finite.size:
            lo, hi = min(finite.min(), target), max(finite.max(), target)
            pad = max(0.02, 0.15 * (hi - lo))
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{title} (target {op} {target:g}; grey: held-out families; n/a rows empty)", fontsize=9)
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    return save_figure(fig, path, dpi=110)


def markdown_report(out: dict[str, Any], command: str, figure: str | None = None) -> str:
    """The student report in Markdown (``docs/bench/student.md`` and the section of
    ``BENCHMARKS.md``): its header (``command``, seed, quick), both tables, the verdicts and the
    latency."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loaded = out.get("models", {})
    models = ", ".join(
        f"{m.get('preset')} {m.get('version')} ({m.get('decode', {}).get('kind')} decode)"
        for m in (loaded.values() if isinstance(loaded, dict) else loaded)
        if isinstance(m, dict)
    )
    by = Producer("student", command, int(out["seed"]), bool(out["quick"]))
    extra = (
        f" on {when} in {out.get('wall_time_s', 0):.0f} s; models: {models}. Families and the held-out ones: "
        "`service/sim/worlds.py`; raw rows in `docs/bench/student.json`."
    )
    lines: list[str] = []
    if out.get("mac"):
        lines += [
            "**mac** (means over seeds; U = leader utility, SPEC eq. 5; best = the best of pf / max_weight / rr "
            "on eq. 5 on the same worlds and seeds, with its own throughput and p95 latency against pf's; p95 = "
            "packet latency in slots; Jain of the users' throughputs)",
            "",
        ]
        lines += [*_md_table([{**r, "group": _group(r)} for r in out["mac"]], MAC_COLUMNS), ""]
    if out.get("spectrum"):
        lines += [
            "**spectrum** (sum-rate / the KM optimum on the same slots; *net alone* = the network's "
            "margins through the plain PAG greedy decode, without the served anchored decode)",
            "",
        ]
        lines += [*_md_table([{**r, "group": _group(r)} for r in out["spectrum"]], SPECTRUM_COLUMNS), ""]
    if figure:
        lines += [f"![the student's ratios per family against the targets]({figure})", ""]
    lines += ["**Targets**", "", *[f"- {v}" for v in verdict_lines(out["summary"])], ""]
    for preset, v in out.get("latency_n100_r69", {}).items():
        lines.append(
            f"- latency {preset} N = 100, R = 69 (one core, medians): serialize "
            f"{v['serialize_us_median']:.0f} µs + policy {v['policy_us_median']:.0f} µs (onnxruntime alone "
            f"{v['onnx_run_us_median']:.0f} µs, decode alone {v['decode_us_median']:.0f} µs)"
        )
    return by.section("The student on world families", lines, extra=extra)


def write_report(out_dir: Path, out: dict[str, Any], command: str) -> Path:
    """``<out>/docs/bench/student.md`` with its figure, and the student section of
    ``<out>/BENCHMARKS.md`` (created when missing; the other suites' sections are kept); each
    links the figure relative to itself. ``command``: ``gnbsched bench student ...`` as run."""
    figure = plot_targets(out, out_dir / FIGURE_FILE)
    path = out_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_report(out, command, FIGURE_FILE.name if figure else None))
    text = markdown_report(out, command, FIGURE_FILE.as_posix() if figure else None)
    benchmarks_md.update(out_dir / benchmarks_md.REPORT_NAME, "student", [text])
    return path


def print_tables(mac_rows: Sequence[dict[str, Any]], spectrum_rows: Sequence[dict[str, Any]]) -> None:
    if mac_rows:
        print(
            "\nstudent - mac on world families (KPI means over seeds; U = leader utility, SPEC §3 eq. 5; "
            "best of pf / max_weight / rr on the same worlds and seeds)"
        )
        print(_fmt_rows([{**r, "group": _group(r)} for r in mac_rows], MAC_COLUMNS))
    if spectrum_rows:
        print("\nstudent - spectrum on world families (sum-rate / the KM optimum on the same slots)")
        print(_fmt_rows([{**r, "group": _group(r)} for r in spectrum_rows], SPECTRUM_COLUMNS))


# ----------------------------------------------------------------------------- entry points


def evaluate_model(preset: str, version_dir: str | Path, *, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The KPIs of one exported model (what ``gnbsched train all`` writes into its model card):
    the rows of its preset's section and their summary."""
    version_dir = Path(version_dir)
    student = StudentPolicy(version_dir.parents[1], presets=(preset,), versions={preset: version_dir.name})
    budget = QUICK if quick else EVALUATE
    if preset == "spectrum":
        rows = bench_spectrum(student, budget, seed=seed)
        summary = summarize(spectrum_rows=rows)
    else:
        rows = bench_mac(student, budget, seed=seed)
        summary = summarize(mac_rows=rows)
    return _strict(
        {
            "bench": "service.bench.student",
            "seed": seed,
            "quick": quick,
            "summary": summary,
            "rows": rows,
            "latency_n100_r69": bench_latency(student, repeats=200 if quick else 2000).get(preset, {}),
        }
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "trace", None):
        from service.bench import replay

        return replay.run(args)
    student = StudentPolicy()
    quick = bool(getattr(args, "quick", False))
    seed = int(getattr(args, "seed", 0) or 0)
    budget = QUICK if quick else FULL
    out: dict[str, Any] = {"models": student.metadata()["models"], "seed": seed, "quick": quick}
    t0 = time.perf_counter()
    mac_rows = bench_mac(student, budget, seed=seed, slots=getattr(args, "slots", None)) if student.model("mac") else []
    spectrum_rows = bench_spectrum(student, budget, seed=seed) if student.model("spectrum") else []
    out["mac"], out["spectrum"] = mac_rows, spectrum_rows
    out["summary"] = summary = summarize(mac_rows, spectrum_rows)
    print_tables(mac_rows, spectrum_rows)
    print()
    for line in verdict_lines(summary):
        print(line)
    out["latency_n100_r69"] = lat = bench_latency(student, repeats=300 if quick else 2000)
    for preset, v in lat.items():
        print(
            f"latency {preset} N=100 R=69: serialize {v['serialize_us_median']:.0f} µs + policy "
            f"{v['policy_us_median']:.0f} µs (p95 {v['policy_us_p95']:.0f} µs), median; policy parts alone: "
            f"onnxruntime {v['onnx_run_us_median']:.0f} µs, decode {v['decode_us_median']:.0f} µs"
        )
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    out_dir = Path(getattr(args, "out", "bench-out"))
    raw = out_dir / RESULTS_FILE
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(_strict(out), indent=1, default=_jsonable, allow_nan=False) + "\n")
    command = "gnbsched bench student" + (" --quick" if quick else "") + (f" --seed {seed}" if seed else "")
    report = write_report(out_dir, _strict(out), f"{command} --out {out_dir}")
    print(f"wrote {raw} and {report}", file=sys.stderr)
    return 0
