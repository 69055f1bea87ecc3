"""``gnbsched bench sionna``: the service's mac policies against Sionna's own PF scheduler in the
Sionna world, on the same drops and seeds, in one process.

``--drops`` independent drops (seeds ``--seed``, ``--seed + 1``, …; each ``--sites`` × 3 sectors,
``--ues-per-sector`` UTs, ``--scenario``), one channel each, and per drop and traffic model
(``--traffic``: ``full`` and/or ``ftp``) one run per policy of exactly ``--slots`` slots, each on
the same exogenous trajectory (channel, packet arrivals, ACK draws). The runs are spread over
``--jobs`` spawned worker processes (default: the machine's cores), each keeping one drop built:

* ``sionna-pf`` — Sionna's ``PFSchedulerSUMIMO`` in Sionna's loop (its averages start at 1 bit/s,
  its discount ``β = 1 − 1/ewma_slots`` as the service's PF), the world reserving the
  retransmissions' RBGs first (Sionna's scheduler knows no HARQ);
* ``sionna-pf-mean`` — the same scheduler with its averages started at each UT's mean
  achievable rate, as the service's PF starts them (a diagnostic: the two PF implementations on
  equal footing);
* ``pf``, ``max_weight``, ``rr``, ``km`` — the service's baselines, each slot of each cell decided
  by an in-process ``ServiceCore`` (PAG check, repair, per-cell state with the delivered-bits
  feedback, the HARQ retransmission fields when the contract has them);
* ``student`` — the default mac policy with the run-time guard off; ``student+guard`` — the same
  served as the service serves it by default (``guard_enabled``: ``service.guard`` swaps in the
  reference ``pf`` while the student falls behind it).

A 5th percentile over the 84 UTs of one drop moves by a few per cent from drop to drop, so the
table pools the UTs of every drop (5th percentile and mean of the pool) and averages the other
figures over the drops; a second table gives each drop's differences to ``sionna-pf``.

Printed and written per policy: cell throughput (bit/s per sector), 5th-percentile and mean user
throughput, Jain index of user throughput, first-transmission BLER (all, and at MCS OLLA can move
both ways) against the target, packet latency mean / p95 (slots and ms; FTP traffic), HARQ
retransmission share, decisions valid before repair, guard-engaged share, wall time. The targets
(``targets``): ``pf`` within 2 % of ``sionna-pf`` on cell and 5th-percentile throughput with full
buffers; the default policy (``student+guard``) at or above ``sionna-pf`` on both; BLER within 0.02
of the target.

Outputs under ``--out``: the sionna section of ``<out>/BENCHMARKS.md``, and in ``<out>/docs/bench/sionna/``: ``results.csv``, ``results.json`` (configuration,
rows, per-UT throughputs, targets), ``table.md``, and ``user_throughput_cdf.png`` (CDF of user
throughput per policy and traffic model; needs matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: policies of the comparison, in table order (student+guard: the student as the service serves it);
#: ``sionna-pf-mean`` (a diagnostic, below) runs when ``--policies`` names it
DEFAULT_POLICIES = ("sionna-pf", "pf", "max_weight", "rr", "km", "student", "student+guard")
SIONNA_POLICIES = ("sionna-pf", "sionna-pf-mean")
#: the default configuration: 3 drops of 7 sites x 3 sectors (wrap-around), 4 UTs per sector, 600 slots
#: of 0.5 ms of which the first 300 are a warm-up (PF averages start at different values in Sionna's
#: PF and the service's and need about 3 windows of 100 slots to forget them)
DEFAULTS: dict[str, Any] = {
    "drops": 3,
    "sites": 7,
    "ues_per_sector": 4,
    "scenario": "uma",
    "scs_khz": 30,
    "bandwidth_mhz": 20,
    "slots": 600,
    "warmup_slots": 300,
    "traffic": "full,ftp",
    "load_mbps": 4.0,
    "packet_bits": 40_000,
}
QUICK: dict[str, Any] = {"drops": 1, "sites": 1, "ues_per_sector": 2, "slots": 40, "warmup_slots": 10}
#: target tolerances (``targets``)
PF_TOLERANCE = 0.02
BLER_TOLERANCE = 0.02

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("cell_throughput_bps", "cell Mbit/s", "{:.2f}"),
    ("user_throughput_p5_bps", "5%-ile UT Mbit/s", "{:.3f}"),
    ("user_throughput_mean_bps", "mean UT Mbit/s", "{:.2f}"),
    ("jain_index", "Jain", "{:.3f}"),
    ("bler", "BLER", "{:.3f}"),
    ("bler_inner", "BLER (OLLA range)", "{:.3f}"),
    ("latency_avg_slots", "latency slots", "{:.1f}"),
    ("latency_p95_slots", "p95 slots", "{:.1f}"),
    ("latency_avg_s", "latency ms", "{:.2f}"),
    ("latency_p95_s", "p95 ms", "{:.2f}"),
    ("retx_share", "HARQ retx share", "{:.3f}"),
    ("valid_before_repair", "valid before repair", "{:.3f}"),
    ("guard_engaged", "guard engaged", "{:.3f}"),
    ("wall_s", "wall s", "{:.0f}"),
)
_SCALE = {"cell_throughput_bps": 1e-6, "user_throughput_p5_bps": 1e-6, "user_throughput_mean_bps": 1e-6,
          "latency_avg_s": 1e3, "latency_p95_s": 1e3}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gnbsched bench sionna`` flags (``--slots``, ``--seed``, ``--policies``, ``--out``, ``--quick``
    of ``gnbsched bench`` apply; ``--quick``: 1 site, 2 UTs per sector, 40 slots)."""
    g = parser.add_argument_group("sionna (gnbsched bench sionna; needs the [sionna] extra)")
    g.add_argument(
        "--drops", type=int, default=None, help="independent drops, seeds --seed, --seed + 1, ... (default 3)"
    )
    g.add_argument("--jobs", type=int, default=None, help="worker processes (default: the machine's cores)")
    g.add_argument("--sites", type=int, choices=[1, 7, 19], default=None, help="sites, 3 sectors each (default 7)")
    g.add_argument("--ues-per-sector", type=int, default=None, help="UTs dropped per sector (default 4)")
    g.add_argument("--scenario", choices=["uma", "umi"], default=None, help="TR 38.901 scenario (default uma)")
    g.add_argument("--scs-khz", type=int, choices=[15, 30], default=None, help="subcarrier spacing (default 30)")
    g.add_argument("--bandwidth-mhz", type=int, default=None, help="channel bandwidth (default 20)")
    g.add_argument("--traffic", default=None, help="traffic models, comma-separated: full, ftp (default both)")
    g.add_argument("--load-mbps", type=float, default=None, help="FTP offered load per UT (default 4)")
    g.add_argument("--packet-bits", type=int, default=None, help="FTP packet size (default 40000)")
    g.add_argument("--warmup-slots", type=int, default=None, help="slots left out of the KPIs (default 300)")


def _option(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    if value is not None:
        return value
    if getattr(args, "quick", False) and name in QUICK:
        return QUICK[name]
    return DEFAULTS[name]


def run_policy(world: Any, policy: str, *, ewma_slots: float) -> tuple[dict[str, float], np.ndarray]:
    """One run of ``policy`` on ``world`` (reset first): KPIs and per-UT throughput (bit/s)."""
    from service.config import Settings
    from service.core import ServiceCore
    from service.state import MemoryStore
    from trainer.sionna_world.world import SionnaPF

    start = time.perf_counter()
    if policy in SIONNA_POLICIES:
        world.reset(retx="world")
        pf = SionnaPF(
            world, beta=1.0 - 1.0 / ewma_slots, initial="mean_rate" if policy == "sionna-pf-mean" else "sionna"
        )
        while not world.done:
            pf.feedback(world.step(pf.decide()))
    else:
        world.reset()
        name = policy.removesuffix("+guard")
        core = ServiceCore(
            Settings(guard_enabled=policy.endswith("+guard"), ewma_slots=ewma_slots), store=MemoryStore()
        )
        feedback: dict[str, dict[int, float]] = {}
        try:
            while not world.done:
                owners, valid, guard = {}, {}, {}
                for state in world.states:
                    d = core.schedule(state, policy=name, feedback=feedback.get(state.cell_id, {}))
                    owners[state.cell_id] = d.owner
                    valid[state.cell_id] = d.valid_before_repair
                    guard[state.cell_id] = d.fallback_reason == "guard"
                feedback = world.step(owners, valid, guard if policy.endswith("+guard") else None)
        finally:
            core.close()
    kpis = world.kpis()
    kpis["wall_s"] = time.perf_counter() - start
    return kpis, world.user_throughput_bps()


def _relative(value: float, reference: float) -> float:
    """value / reference − 1; 0 when both are 0, ±inf when only the reference is."""
    if reference > 0.0:
        return value / reference - 1.0
    return 0.0 if value == reference else math.copysign(math.inf, value - reference)


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, per traffic model: ``pf`` within 2 % of ``sionna-pf`` (cell and 5th-percentile
    throughput) with full buffers, ``student+guard`` at or above ``sionna-pf`` on both, BLER within
    0.02 of the target (every policy; ``bler`` over all first transmissions and ``bler_inner``).

    The PF agreement is a check of the loop, so it is asked where the two PF schedulers are the
    same rule: with full buffers. Sionna's ``PFSchedulerSUMIMO`` does not see the queues (a UT
    with a few bits left keeps every RBG its metric wins), the service's PF does; with FTP
    traffic the difference measures that."""
    out: list[dict[str, Any]] = []
    for traffic in dict.fromkeys(r["traffic"] for r in rows):
        by = {r["policy"]: r for r in rows if r["traffic"] == traffic}
        ref = by.get("sionna-pf")
        for metric in ("cell_throughput_bps", "user_throughput_p5_bps"):
            if ref is None:
                break
            if "pf" in by and traffic == "full":
                rel = _relative(by["pf"][metric], ref[metric])
                out.append({"traffic": traffic, "target": f"pf within 2% of sionna-pf: {metric}",
                            "value": rel, "met": abs(rel) <= PF_TOLERANCE})  # fmt: skip
            if "student+guard" in by:
                rel = _relative(by["student+guard"][metric], ref[metric])
                out.append({"traffic": traffic, "target": f"student+guard >= sionna-pf: {metric}",
                            "value": rel, "met": rel >= 0.0})  # fmt: skip
        for policy, r in by.items():
            for key in ("bler", "bler_inner"):
                dev = r[key] - r["bler_target"]
                out.append({"traffic": traffic, "target": f"{key} within 0.02 of target: {policy}",
                            "value": dev, "met": abs(dev) <= BLER_TOLERANCE})  # fmt: skip
    return out


def _fmt(value: float, key: str, fmt: str) -> str:
    if not math.isfinite(value):
        return "–"
    return fmt.format(value * _SCALE.get(key, 1.0))


def markdown_table(header: str, rows: Sequence[dict[str, Any]]) -> str:
    """The results as a markdown table under a line stating the configuration."""
    head = ["traffic", "policy", *[c[1] for c in COLUMNS]]
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["traffic"], r["policy"], *[_fmt(float(r[k]), k, f) for k, _, f in COLUMNS]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(path: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    try:
        from service.bench.plotting import save_figure, stacked_axes
    except ModuleNotFoundError:
        print("gnbsched bench sionna: matplotlib is missing (the [bench] extra): no figure", file=sys.stderr)
        return None
    kinds = list(dict.fromkeys(r["traffic"] for r in rows))
    fig, axes = stacked_axes(len(kinds), (7.0, 4.0 * len(kinds)))
    for ax, kind in zip(axes, kinds, strict=True):
        for r in rows:
            if r["traffic"] != kind:
                continue
            x = np.sort(np.asarray(r["user_throughput_bps"])) / 1e6
            ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=r["policy"], linewidth=1.2)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("user throughput (Mbit/s)")
        ax.set_ylabel("CDF")
        ax.set_title(f"traffic: {kind}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    return save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("sionna", "torch"):
            raise
        print(f"gnbsched bench sionna: needs {exc.name!r}; install the [sionna] extra: pip install -e '.[sionna]'",
              file=sys.stderr)  # fmt: skip
        return 2


#: per worker process: the drop being run (its seed and exogenous draws) and its worlds per traffic
_DROP: dict[str, Any] = {}


def _drop_world(cfg: Any, traffic: Any) -> Any:
    """The world of drop ``cfg.seed`` with ``traffic``, built once per process and reused by every
    policy of that drop (a new seed replaces the cached drop: one drop in memory per process)."""
    from dataclasses import replace

    from trainer.sionna_world.world import Exogenous, SionnaWorld

    if _DROP.get("seed") != cfg.seed:
        _DROP.clear()
        _DROP.update(seed=cfg.seed, exo=Exogenous.build(cfg), worlds={})
    worlds = _DROP["worlds"]
    if traffic not in worlds:
        base = _DROP["exo"]
        kcfg = replace(cfg, traffic=traffic)
        exo = replace(base, arrivals=traffic.arrivals(base.drop.num_ut, cfg.slots + 1, kcfg.carrier.slot_s, cfg.seed))
        worlds[traffic] = SionnaWorld(kcfg, exo)
    return worlds[traffic]


def run_unit(cfg: Any, traffic: Any, policy: str, ewma_slots: float) -> dict[str, Any]:
    """One run: ``policy`` on drop ``cfg.seed`` with ``traffic`` (in a worker process or in process);
    the KPIs, the per-UT throughputs (bit/s) and the seconds spent building the drop."""
    t0 = time.perf_counter()
    world = _drop_world(cfg, traffic)
    build_s = time.perf_counter() - t0
    kpis, user_bps = run_policy(world, policy, ewma_slots=ewma_slots)
    return {"drop_seed": cfg.seed, "traffic": traffic.kind, "policy": policy, **kpis, "build_s": build_s,
            "cells": len(world.cells), "num_ut": int(world.num_ut),
            "user_throughput_bps": user_bps.tolist()}  # fmt: skip


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def aggregate(per_drop: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (traffic, policy) over the drops: user throughputs pooled over the drops' UTs
    (5th percentile and mean of the pool), the other KPIs averaged over the drops, wall time
    summed."""
    out: list[dict[str, Any]] = []
    for key in dict.fromkeys((r["traffic"], r["policy"]) for r in per_drop):
        rs = [r for r in per_drop if (r["traffic"], r["policy"]) == key]
        users = np.concatenate([np.asarray(r["user_throughput_bps"], np.float64) for r in rs])
        row: dict[str, Any] = {"traffic": key[0], "policy": key[1], "drops": len(rs)}
        for k, v in rs[0].items():
            if k not in row and k not in ("drop_seed", "user_throughput_bps") and isinstance(v, int | float):
                row[k] = _mean([float(r[k]) for r in rs])
        row["user_throughput_p5_bps"] = float(np.percentile(users, 5))
        row["user_throughput_mean_bps"] = float(users.mean())
        row["wall_s"] = float(sum(r["wall_s"] for r in rs))
        row["user_throughput_bps"] = users.tolist()
        out.append(row)
    return out


def drop_table(per_drop: Sequence[dict[str, Any]]) -> str:
    """Per drop and traffic: ``pf`` and ``student+guard`` against ``sionna-pf`` (relative difference of
    cell and 5th-percentile throughput): the spread behind the pooled targets."""
    others = ("pf", "student+guard")
    lines = ["| drop seed | traffic | " + " | ".join(f"{p} cell / 5%-ile" for p in others) + " |",
             "|---|---|" + "---|" * len(others)]  # fmt: skip
    for seed, kind in dict.fromkeys((r["drop_seed"], r["traffic"]) for r in per_drop):
        by = {r["policy"]: r for r in per_drop if (r["drop_seed"], r["traffic"]) == (seed, kind)}
        if "sionna-pf" not in by:
            continue
        ref = by["sionna-pf"]
        cells = []
        for p in others:
            if p not in by:
                cells.append("–")
                continue
            rel = [_relative(by[p][m], ref[m]) for m in ("cell_throughput_bps", "user_throughput_p5_bps")]
            cells.append(" / ".join(f"{100 * v:+.1f} %" for v in rel))
        lines.append(f"| {seed} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _run(args: argparse.Namespace) -> int:
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from dataclasses import replace
    from multiprocessing import get_context

    from service.config import Settings
    from trainer.sionna_world.channel import MAX_LINK_SAMPLES
    from trainer.sionna_world.topology import SECTORS_PER_SITE
    from trainer.sionna_world.traffic import TrafficSpec
    from trainer.sionna_world.world import WorldConfig

    t0 = time.perf_counter()
    sites, ues = int(_option(args, "sites")), int(_option(args, "ues_per_sector"))
    slots = int(args.slots if getattr(args, "slots", None) else _option(args, "slots"))
    drops = int(_option(args, "drops"))
    jobs = int(getattr(args, "jobs", None) or os.cpu_count() or 1)
    kinds = [k.strip() for k in str(_option(args, "traffic")).split(",") if k.strip()]
    policies = [p.strip() for p in (args.policies or ",".join(DEFAULT_POLICIES)).split(",") if p.strip()]
    if not kinds or not policies or drops < 1 or jobs < 1:
        print("gnbsched bench sionna: --traffic and --policies need a name each, --drops and --jobs at least 1",
              file=sys.stderr)  # fmt: skip
        return 2
    links = sites * SECTORS_PER_SITE * ues * sites * SECTORS_PER_SITE
    cfg = WorldConfig(
        scenario=_option(args, "scenario"),
        sites=sites,
        ues_per_sector=ues,
        scs_khz=int(_option(args, "scs_khz")),
        bandwidth_mhz=int(_option(args, "bandwidth_mhz")),
        slots=slots,
        seed=int(args.seed),
        warmup_slots=min(int(_option(args, "warmup_slots")), slots - 1),
        channel_update_slots=max(1, math.ceil(slots * links / MAX_LINK_SAMPLES)),
    )
    ewma_slots = float(Settings().ewma_slots)
    traffics = {kind: TrafficSpec(kind=kind, packet_bits=int(_option(args, "packet_bits")),
                                  load_bps=float(_option(args, "load_mbps")) * 1e6) for kind in kinds}  # fmt: skip
    seeds = [cfg.seed + d for d in range(drops)]
    units = [(seed, kind, policy) for seed in seeds for kind in kinds for policy in policies]
    jobs = min(jobs, len(units))
    results: list[dict[str, Any] | None] = [None] * len(units)

    def done(i: int, r: dict[str, Any]) -> None:
        results[i] = r
        n = sum(x is not None for x in results)
        print(f"gnbsched bench sionna: [{n}/{len(units)}] drop {r['drop_seed']} {r['traffic']:4s} {r['policy']:15s} "
              f"{r['wall_s']:6.1f} s", file=sys.stderr, flush=True)  # fmt: skip

    if jobs == 1:
        for i, (seed, kind, policy) in enumerate(units):
            done(i, run_unit(replace(cfg, seed=seed), traffics[kind], policy, ewma_slots))
    else:  # spawned workers: a fresh interpreter each (torch and fork do not mix), one drop cached each
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(run_unit, replace(cfg, seed=seed), traffics[kind], policy, ewma_slots): i
                for i, (seed, kind, policy) in enumerate(units)
            }
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    per_drop = [r for r in results if r is not None]
    rows = aggregate(per_drop)
    first = per_drop[0]
    world_text = cfg.describe().replace("full buffers", "traffic " + "/".join(kinds))
    world_text = world_text.rsplit(", seed ", 1)[0]
    header = (
        f"Sionna world: {world_text}; {drops} drop(s), seeds {seeds[0]}–{seeds[-1]}"
        f" (FTP: {_option(args, 'packet_bits')}-bit packets, {_option(args, 'load_mbps'):g} Mbit/s per UT); "
        f"{first['cells']} cells, {first['num_ut']} UTs per drop; PF averages over {ewma_slots:g} slots; "
        f"user throughputs pooled over the drops' UTs, other figures the mean over drops, wall s summed; "
        f"{jobs} worker process(es), total {time.perf_counter() - t0:.0f} s"
    )
    table = markdown_table(header, rows)
    spread = drop_table(per_drop)
    checks = targets(rows)
    print(table)
    if spread:
        print()
        print(spread)
    print()
    for c in checks:
        print(f"  [{'met' if c['met'] else 'NOT met'}] {c['traffic']}: {c['target']} ({c['value']:+.4f})")
    out = Path(args.out) / "docs" / "bench" / "sionna"
    out.mkdir(parents=True, exist_ok=True)
    keys = ["traffic", "policy", *[k for k in rows[0] if k not in ("traffic", "policy", "user_throughput_bps")]]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def clean(rs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rs]

    doc = {"configuration": header, "world": {**cfg.__dict__, "traffic": kinds, "drop_seeds": seeds},
           "rows": clean(rows), "per_drop": clean(per_drop), "targets": checks}  # fmt: skip
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "table.md").write_text(table + ("\n\n" + spread if spread else "") + "\n")
    fig = _plot(out / "user_throughput_cdf.png", rows)
    report = _report(args, table, spread, checks)
    print(
        f"gnbsched bench sionna: wrote {out}/results.csv, results.json, table.md"
        + (f", {fig.name}" if fig else "")
        + f", {report}"
    )
    return 0


def _report(args: argparse.Namespace, table: str, spread: str, checks: Sequence[dict[str, Any]]) -> Path:
    """Write the sionna section of ``<out>/BENCHMARKS.md``: the table and the targets."""
    from service.bench import benchmarks_md
    from service.bench.benchmarks_md import Producer, load_average, machine

    quick = bool(getattr(args, "quick", False))
    command = f"gnbsched bench sionna --out {args.out}" + (" --quick" if quick else "")
    producer = Producer("sionna", command, int(args.seed), quick)
    body = [
        f"Machine: {machine()}; load average {load_average()}. Every policy runs on the same drop, channel "
        "realisations, traffic and block-error draws. Figures (CDF of user throughput per policy) and raw rows in "
        "`docs/bench/sionna/`.",
        "",
        table,
        "",
        *(["Per drop, against `sionna-pf` (cell / 5th-percentile throughput):", "", spread, ""] if spread else []),
        "Targets (on the pooled rows):",
        "",
        *[
            f"- {c['traffic']}: {c['target']} ({c['value']:+.4f}): **{'met' if c['met'] else 'not met'}**"
            for c in checks
        ],
    ]
    section = producer.section("The Sionna SYS world: our policies against Sionna's PF in Sionna's loop", body)
    return benchmarks_md.update(Path(args.out) / benchmarks_md.REPORT_NAME, "sionna", [section])
