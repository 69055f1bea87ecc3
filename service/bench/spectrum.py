"""``gnbsched bench --preset spectrum``: policies on the LSA scenario grid (SPEC §2, LSA Tables III–V).

Every policy plays the same slots (the simulator is exogenous: one seed ⇒ one slot sequence)
through ``service.pipeline.decide`` in a closed loop with its own cell history, as the service
would run it. Per scenario and policy the table reports the mean sum-rate (Mbps), the ratio to
the KM optimum and to a random valid assignment on the same slots, the valid-before-repair rate,
the mean / p95 time per decision, and the Jain fairness and resource utilisation of the run.
Outputs go to ``<out>/spectrum/``: ``results.csv``, ``results.json`` and PNG figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.errors import GnbSchedError, UnknownPolicyError
from service.history import CellHistory, apply_feedback, record_decision
from service.kpi import ratio
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.policies.registry import names as policy_names
from service.sim.spectrum import (
    PAPER_GRID,
    SCALE_GRID,
    SPECTRUM_SCENARIOS,
    SpectrumConfig,
    make_spectrum_env,
)

#: policies compared by default (LSA baselines + the classical schedulers)
DEFAULT_POLICIES: tuple[str, ...] = (
    "km",
    "auction",
    "student",
    "grouped_km",
    "greedy",
    "pf",
    "rr",
    "max_weight",
    "random",
    "de",
    "exhaustive",
)
#: always run: the ratios are taken against them
REFERENCES: tuple[str, ...] = ("km", "random")
#: (seeds, slots per seed) per scenario on a default run, and on --quick (small grid only). Every
#: policy plays the same slots; ``de`` (~0.05–0.8 s per small decision) bounds the small grid.
DEFAULT_PLAN: dict[str, tuple[int, int]] = {
    **{name: (3, 10) for name in PAPER_GRID},
    "scale-I": (1, 10),
    "scale-II": (1, 5),
    "scale-III": (1, 3),
}
QUICK_PLAN: dict[str, tuple[int, int]] = {name: (1, 3) for name in PAPER_GRID}
#: exhaustive search runs where its worst-case candidate count (N+1)^(R−busy) stays below this
EXHAUSTIVE_MAX_CANDIDATES = 20_000
#: policies that are hopeless on the ultra-dense grid (>= DENSE_NUM_UE users), and why
DENSE_SKIP = {
    "de": "differential evolution over 400..1600 integer genes needs ~10^5 repaired evaluations per slot",
    "exhaustive": "(N+1)^(R-busy) candidates",
}
DENSE_NUM_UE = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No spectrum-specific options; the shared ones are in ``service.bench.cli``."""


@dataclass
class Row:
    """One (scenario, policy) line of the table."""

    scenario: str
    num_ue: int
    num_channels: int
    num_busy: int
    policy: str
    decisions: int
    throughput_mbps: float
    ratio_to_km: float
    ratio_to_random: float
    valid_before_repair_rate: float
    time_mean_ms: float
    time_p95_ms: float
    jain_fairness: float
    resource_utilisation: float


@dataclass
class _Run:
    """Raw measurements of one policy on one scenario."""

    utility_bps: dict[tuple[int, int], float] = field(default_factory=dict)  # (seed, slot) -> sum-rate
    valid: list[bool] = field(default_factory=list)
    time_ms: list[float] = field(default_factory=list)
    jain: list[float] = field(default_factory=list)
    used: float = 0.0
    free: float = 0.0


def play(scenario: str, policy: str, *, seeds: Sequence[int], slots: int, policies: PolicySet) -> _Run:
    """Closed loop of ``policy`` on ``scenario`` for each seed: decide → record → step → feedback
    (the order ``ServiceCore.schedule`` uses)."""
    run = _Run()
    for seed in seeds:
        env = make_spectrum_env(scenario, seed=seed)
        state = env.reset()
        history = CellHistory.empty()
        for slot in range(slots):
            d = decide(state, history, policy, policies=policies, seed=seed)
            history = record_decision(history, state, d.owner)
            res = env.step(d.owner)
            history = apply_feedback(history, res.feedback)
            run.utility_bps[(seed, slot)] = res.reward
            run.valid.append(d.valid_before_repair)
            run.time_ms.append(d.timings_us["total"] / 1e3)
            state = res.state
        k = env.kpis()
        run.jain.append(k["jain_fairness"])
        run.used += k["resource_utilisation"] * slots
        run.free += slots
    return run


def skip_reason(policy: str, cfg: SpectrumConfig) -> str | None:
    """Why ``policy`` does not run on scenario ``cfg`` (None = it runs)."""
    n = cfg.num_ue or 0
    if n >= DENSE_NUM_UE and policy in DENSE_SKIP:
        return f"skipped on the ultra-dense grid (hopeless: {DENSE_SKIP[policy]})"
    if policy == "exhaustive":
        free = cfg.num_channels - (cfg.num_busy or 0)
        if float(n + 1) ** free > EXHAUSTIVE_MAX_CANDIDATES:
            return f"skipped where (N+1)^(R-busy) > {EXHAUSTIVE_MAX_CANDIDATES} candidates"
    return None


def _ratio(run: _Run, ref: _Run | None) -> float:
    """Σ utility / Σ reference utility over the slots this run played."""
    if ref is None:
        return math.nan
    return ratio(sum(run.utility_bps.values()), sum(ref.utility_bps[k] for k in run.utility_bps))


def _row(scenario: str, cfg: SpectrumConfig, policy: str, run: _Run, km: _Run | None, rnd: _Run | None) -> Row:
    util = np.fromiter(run.utility_bps.values(), np.float64)
    t = np.asarray(run.time_ms)
    return Row(
        scenario=scenario,
        num_ue=int(cfg.num_ue or 0),
        num_channels=cfg.num_channels,
        num_busy=int(cfg.num_busy or 0),
        policy=policy,
        decisions=int(util.size),
        throughput_mbps=float(util.mean() / 1e6),
        ratio_to_km=_ratio(run, km),
        ratio_to_random=_ratio(run, rnd),
        valid_before_repair_rate=float(np.mean(run.valid)),
        time_mean_ms=float(t.mean()),
        time_p95_ms=float(np.percentile(t, 95)),
        jain_fairness=float(np.mean(run.jain)),
        resource_utilisation=run.used / run.free if run.free else math.nan,
    )


def run_grid(
    scenarios: Sequence[str],
    policies: Sequence[str],
    plan: dict[str, tuple[int, int]],
    *,
    seed: int,
    slots_override: int | None,
    log=None,
) -> tuple[list[Row], list[str]]:
    """Every policy on every scenario (all on the same slots). Returns the table rows and the
    notes (skipped or failed policies, one line per reason with its scenarios)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    pset = PolicySet()
    rows: list[Row] = []
    notes: dict[str, list[str]] = {}  # "policy: reason" -> scenarios
    for i, scenario in enumerate(scenarios):
        cfg = SPECTRUM_SCENARIOS[scenario]
        n_seeds, slots = plan[scenario]
        if slots_override is not None:
            slots = slots_override
        seeds = [seed + s for s in range(n_seeds)]
        t0 = time.perf_counter()
        runs: dict[str, _Run] = {}
        for policy in policies:
            why = skip_reason(policy, cfg)
            if why is not None:
                notes.setdefault(f"{policy}: {why}", []).append(scenario)
                continue
            try:
                pset.get(policy)  # build the instance outside the timed decisions
                runs[policy] = play(scenario, policy, seeds=seeds, slots=slots, policies=pset)
            except GnbSchedError as exc:
                notes.setdefault(f"{policy}: failed: {exc}", []).append(scenario)
        rows.extend(_row(scenario, cfg, p, r, runs.get("km"), runs.get("random")) for p, r in runs.items())
        log(
            f"[spectrum] {i + 1}/{len(scenarios)} {scenario}: {len(runs)} policies × {len(seeds)} seed(s) × "
            f"{slots} slots in {time.perf_counter() - t0:.1f} s"
        )
    return rows, [f"{why} — {', '.join(scen)}" for why, scen in notes.items()]


# ------------------------------------------------------------------------------ output

_COLUMNS = [
    ("scenario", "scenario", "{}"),
    ("policy", "policy", "{}"),
    ("decisions", "n", "{}"),
    ("throughput_mbps", "Mbps", "{:.2f}"),
    ("ratio_to_km", "/km", "{:.4f}"),
    ("ratio_to_random", "/random", "{:.3f}"),
    ("valid_before_repair_rate", "valid", "{:.2f}"),
    ("time_mean_ms", "ms mean", "{:.3f}"),
    ("time_p95_ms", "ms p95", "{:.3f}"),
    ("jain_fairness", "jain", "{:.3f}"),
    ("resource_utilisation", "util", "{:.3f}"),
]


def format_table(rows: Sequence[Row]) -> str:
    """Plain-text table, one block per scenario."""
    cells = [[h for _, h, _ in _COLUMNS]]
    for r in rows:
        d = asdict(r)
        cells.append(
            [fmt.format(d[k]) if not (isinstance(d[k], float) and math.isnan(d[k])) else "-" for k, _, fmt in _COLUMNS]
        )
    widths = [max(len(c[j]) for c in cells) for j in range(len(_COLUMNS))]

    def line(c: list[str]) -> str:
        return "  ".join(v.ljust(w) if j < 2 else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths, strict=True)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    prev = None
    for r, c in zip(rows, cells[1:], strict=True):
        if prev is not None and r.scenario != prev:
            out.append("")
        out.append(line(c))
        prev = r.scenario
    return "\n".join(out)


def write_outputs(out_dir: Path, rows: Sequence[Row], notes: Sequence[str], meta: dict) -> list[Path]:
    """results.csv, results.json and the PNG figures. Returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(Row.__dataclass_fields__)
    csv_path = out_dir / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    json_path = out_dir / "results.json"

    def clean(v: object) -> object:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    json_path.write_text(
        json.dumps(
            {**meta, "notes": list(notes), "rows": [{k: clean(v) for k, v in asdict(r).items()} for r in rows]},
            indent=2,
        )
    )
    return [csv_path, json_path, *plot(out_dir, rows)]


def scenario_label(name: str) -> str:
    """Tick label in the paper's notation: ``(users,channels,busy)``, ``Scale I`` on the dense grid."""
    cfg = SPECTRUM_SCENARIOS[name]
    tup = f"({cfg.num_ue},{cfg.num_channels},{cfg.num_busy})"
    return f"{name.replace('scale-', 'Scale ')}\n{tup}" if name in SCALE_GRID else tup


def plot(out_dir: Path, rows: Sequence[Row]) -> list[Path]:
    """Figures in the style of the LSA paper: ratio to KM per scenario, throughput per scenario
    (Tables III and V as bars), and time per decision against problem size on log axes (Table IV).
    One color per policy across the figures; none without matplotlib (the ``bench`` extra)."""
    try:
        from service.bench.plotting import save_bar_plot, save_line_plot
    except ImportError:
        return []
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    colors = {p: f"C{i % 10}" for i, p in enumerate(policies)}
    by = {(r.scenario, r.policy): r for r in rows}

    def series(attr: str, scen: Sequence[str], skip: Sequence[str] = ()) -> dict[str, list[float]]:
        return {
            p: [getattr(by[(s, p)], attr) if (s, p) in by else math.nan for s in scen]
            for p in policies
            if p not in skip
        }

    xlabel = "scenario (users, channels, busy channels)"
    paths = [
        save_bar_plot(
            out_dir / "ratio_to_km.png",
            [scenario_label(s) for s in scenarios],
            series("ratio_to_km", scenarios, skip=("km",)),
            xlabel=xlabel,
            ylabel="sum-rate / KM optimum",
            hline=1.0,
            ylim=(0.0, 1.05),
            colors=colors,
            title="Spectrum access: throughput relative to the KM optimum (same slots)",
        )
    ]
    small = [s for s in scenarios if s in PAPER_GRID]
    dense = [s for s in scenarios if s not in PAPER_GRID]
    for tag, scen, table in (("small", small, "LSA Table III grid"), ("dense", dense, "LSA Table V grid")):
        if scen:
            paths.append(
                save_bar_plot(
                    out_dir / f"throughput_{tag}.png",
                    [scenario_label(s) for s in scen],
                    series("throughput_mbps", scen),
                    xlabel=xlabel,
                    ylabel="mean sum-rate (Mbps)",
                    title=f"Aggregate throughput per slot ({table})",
                    colors=colors,
                )
            )
    # time per decision vs problem size N·R (scenarios of one size averaged)
    size = {s: SPECTRUM_SCENARIOS[s].num_channels * (SPECTRUM_SCENARIOS[s].num_ue or 0) for s in scenarios}
    sizes = sorted(set(size.values()))
    times: dict[str, list[float]] = {}
    for p in policies:
        ys = []
        for z in sizes:
            v = [by[(s, p)].time_mean_ms for s in scenarios if (s, p) in by and size[s] == z]
            ys.append(float(np.mean(v)) if v else math.nan)
        times[p] = ys
    paths.append(
        save_line_plot(
            out_dir / "time_per_decision.png",
            sizes,
            times,
            xlabel="problem size N·R (users × channels)",
            ylabel="mean time per decision (ms)",
            title="Decision time vs scale (pipeline: policy + check + repair)",
            logx=True,
            logy=True,
            colors=colors,
        )
    )
    return paths


def run(args: argparse.Namespace) -> int:
    wall0 = time.perf_counter()
    requested = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(DEFAULT_POLICIES)
    known = policy_names()
    unknown = [p for p in requested if p not in known]
    if unknown:
        print(f"bench spectrum: {UnknownPolicyError(unknown[0], known)}", file=sys.stderr)
        return 2
    policies = list(dict.fromkeys([*REFERENCES, *requested]))  # km and random first: the references
    scenarios = list(PAPER_GRID) if args.quick else [*PAPER_GRID, *SCALE_GRID]
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    rows, notes = run_grid(scenarios, policies, plan, seed=args.seed, slots_override=args.slots)
    wall_s = time.perf_counter() - wall0
    print(
        f"\nSpectrum access (SPEC §2), seed {args.seed}, Rayleigh fading, bursty users; "
        f"ratios are Σ sum-rate / Σ reference sum-rate on the same slots; times per decision include check + repair"
    )
    print(format_table(rows))
    if notes:
        print("\nNotes:")
        for n in notes:
            print(f"  - {n}")
    meta = {
        "preset": "spectrum",
        "seed": args.seed,
        "quick": bool(args.quick),
        "slots_override": args.slots,
        "policies": policies,
        "wall_s": round(wall_s, 2),
        "scenarios": {
            s: {**asdict(SPECTRUM_SCENARIOS[s]), "seeds": plan[s][0], "slots": args.slots or plan[s][1]}
            for s in scenarios
        },
    }
    paths = write_outputs(Path(args.out) / "spectrum", rows, notes, meta)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    print(f"wall time {time.perf_counter() - wall0:.1f} s (policies {wall_s:.1f} s)")
    return 0
