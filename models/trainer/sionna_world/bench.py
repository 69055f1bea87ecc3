"""``gnbsched bench sionna``: the service's mac policies against Sionna's own PF scheduler in the
Sionna world, on the same drops and seeds, in one process.

One drop (``--sites`` × 3 sectors, ``--ues-per-sector`` UTs, ``--scenario``), one channel, and per
traffic model (``--traffic``: ``full`` and/or ``ftp``) one run per policy of exactly ``--slots``
slots, each on the same exogenous trajectory (channel, packet arrivals, ACK draws):

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

Printed and written per policy: cell throughput (bit/s per sector), 5th-percentile and mean user
throughput, Jain index of user throughput, first-transmission BLER (all, and at MCS OLLA can move
both ways) against the target, packet latency mean / p95 (slots and ms; FTP traffic), HARQ
retransmission share, decisions valid before repair, guard-engaged share, wall time. The targets
(``targets``): ``pf`` within 2 % of ``sionna-pf`` on cell and 5th-percentile throughput; the default
policy (``student+guard``) at or above ``sionna-pf`` on both; BLER within 0.02 of the target.

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

#: policies of the comparison, in table order (student+guard: the student as the service serves it)
DEFAULT_POLICIES = ("sionna-pf", "sionna-pf-mean", "pf", "max_weight", "rr", "km", "student", "student+guard")
SIONNA_POLICIES = ("sionna-pf", "sionna-pf-mean")
#: the default configuration: 7 sites x 3 sectors (wrap-around), 4 UTs per sector, 400 slots of 0.5 ms
DEFAULTS: dict[str, Any] = {
    "sites": 7,
    "ues_per_sector": 4,
    "scenario": "uma",
    "scs_khz": 30,
    "bandwidth_mhz": 20,
    "slots": 400,
    "warmup_slots": 100,
    "traffic": "full,ftp",
    "load_mbps": 4.0,
    "packet_bits": 40_000,
}
QUICK: dict[str, Any] = {"sites": 1, "ues_per_sector": 2, "slots": 40, "warmup_slots": 10}
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
    g.add_argument("--sites", type=int, choices=[1, 7, 19], default=None, help="sites, 3 sectors each (default 7)")
    g.add_argument("--ues-per-sector", type=int, default=None, help="UTs dropped per sector (default 4)")
    g.add_argument("--scenario", choices=["uma", "umi"], default=None, help="TR 38.901 scenario (default uma)")
    g.add_argument("--scs-khz", type=int, choices=[15, 30], default=None, help="subcarrier spacing (default 30)")
    g.add_argument("--bandwidth-mhz", type=int, default=None, help="channel bandwidth (default 20)")
    g.add_argument("--traffic", default=None, help="traffic models, comma-separated: full, ftp (default both)")
    g.add_argument("--load-mbps", type=float, default=None, help="FTP offered load per UT (default 4)")
    g.add_argument("--packet-bits", type=int, default=None, help="FTP packet size (default 40000)")
    g.add_argument("--warmup-slots", type=int, default=None, help="slots left out of the KPIs (default 100)")


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
    throughput), ``student+guard`` at or above ``sionna-pf`` on both, BLER within 0.02 of the
    target (every policy; ``bler`` over all first transmissions and ``bler_inner``)."""
    out: list[dict[str, Any]] = []
    for traffic in dict.fromkeys(r["traffic"] for r in rows):
        by = {r["policy"]: r for r in rows if r["traffic"] == traffic}
        ref = by.get("sionna-pf")
        for metric in ("cell_throughput_bps", "user_throughput_p5_bps"):
            if ref is None:
                break
            if "pf" in by:
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


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from service.config import Settings
    from trainer.sionna_world.channel import MAX_LINK_SAMPLES
    from trainer.sionna_world.topology import SECTORS_PER_SITE
    from trainer.sionna_world.traffic import TrafficSpec
    from trainer.sionna_world.world import Exogenous, SionnaWorld, WorldConfig

    t0 = time.perf_counter()
    sites, ues = int(_option(args, "sites")), int(_option(args, "ues_per_sector"))
    slots = int(args.slots if getattr(args, "slots", None) else _option(args, "slots"))
    kinds = [k.strip() for k in str(_option(args, "traffic")).split(",") if k.strip()]
    policies = [p.strip() for p in (args.policies or ",".join(DEFAULT_POLICIES)).split(",") if p.strip()]
    if not kinds or not policies:
        print("gnbsched bench sionna: --traffic and --policies need at least one name each", file=sys.stderr)
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
    base = Exogenous.build(cfg)
    build_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        traffic = TrafficSpec(kind=kind, packet_bits=int(_option(args, "packet_bits")),
                              load_bps=float(_option(args, "load_mbps")) * 1e6)  # fmt: skip
        kcfg = replace(cfg, traffic=traffic)
        exo = replace(base, arrivals=traffic.arrivals(base.drop.num_ut, slots + 1, kcfg.carrier.slot_s, cfg.seed))
        world = SionnaWorld(kcfg, exo)
        for policy in policies:
            kpis, user_bps = run_policy(world, policy, ewma_slots=ewma_slots)
            rows.append({"traffic": kind, "policy": policy, **kpis, "user_throughput_bps": user_bps.tolist()})
            print(f"gnbsched bench sionna: {kind:4s} {policy:15s} {kpis['wall_s']:6.1f} s", file=sys.stderr)
    header = (
        f"Sionna world: {cfg.describe().replace('full buffers', 'traffic ' + '/'.join(kinds))}"
        f" (FTP: {_option(args, 'packet_bits')}-bit packets, {_option(args, 'load_mbps'):g} Mbit/s per UT); "
        f"{len(world.cells)} cells, {base.drop.num_ut} UTs; PF averages over {ewma_slots:g} slots; "
        f"build {build_s:.0f} s, total {time.perf_counter() - t0:.0f} s"
    )
    table = markdown_table(header, rows)
    checks = targets(rows)
    print(table)
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
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    doc = {"configuration": header, "world": {**cfg.__dict__, "traffic": kinds}, "rows": clean, "targets": checks}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "table.md").write_text(table + "\n")
    fig = _plot(out / "user_throughput_cdf.png", rows)
    report = _report(args, table, checks)
    print(
        f"gnbsched bench sionna: wrote {out}/results.csv, results.json, table.md"
        + (f", {fig.name}" if fig else "")
        + f", {report}"
    )
    return 0


def _report(args: argparse.Namespace, table: str, checks: Sequence[dict[str, Any]]) -> Path:
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
        "Targets:",
        "",
        *[
            f"- {c['traffic']}: {c['target']} ({c['value']:+.4f}): **{'met' if c['met'] else 'not met'}**"
            for c in checks
        ],
    ]
    section = producer.section("The Sionna SYS world: our policies against Sionna's PF in Sionna's loop", body)
    return benchmarks_md.update(Path(args.out) / benchmarks_md.REPORT_NAME, "sionna", [section])
