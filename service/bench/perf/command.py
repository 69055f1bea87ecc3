"""``gnbsched bench perf``: the command. It runs the plan (``FULL``, or ``QUICK`` with
``--quick``) — the in-process measurements, then the end-to-end ones against a ``gnbsched serve``
subprocess (single slots, load, batched TTIs), then the echo floor (``service.bench.perf.echo``) —
draws the figures, writes ``<out>/docs/bench/perf.json`` and the perf sections of
``<out>/BENCHMARKS.md``, and prints the summary (progress goes to stderr)."""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from service.bench.benchmarks_md import load_average, machine
from service.bench.perf.e2e import run_e2e, run_load, run_scaling
from service.bench.perf.figures import plot
from service.bench.perf.inprocess import (
    run_anytime,
    run_guard,
    run_inference,
    run_scale,
    run_stages,
    student_available,
)
from service.bench.perf.plan import FULL, QUICK, TTI_POLICIES, log
from service.bench.perf.report import summary, write_report
from service.bench.perf.results import FIG_DIR, RESULTS_FILE, Results
from service.bench.perf.tti import TtiRun, run_floors, run_tti
from service.bench.server import ServeProcess
from service.policies.registry import PolicySet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """perf has no options of its own: ``--out``, ``--quick`` and ``--seed`` of ``gnbsched bench`` apply."""
    del parser


def command_line(args: argparse.Namespace) -> str:
    """The command as the report states it (``gnbsched bench perf --out .``)."""
    seed = int(args.seed)
    return (
        "gnbsched bench perf"
        + (" --quick" if args.quick else "")
        + f" --out {args.out}"
        + (f" --seed {seed}" if seed else "")
    )


def run(args: argparse.Namespace) -> int:
    wall0 = time.perf_counter()
    plan = QUICK if args.quick else FULL
    seed = int(args.seed)
    out = Path(args.out)
    fig_dir = out / FIG_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    res = Results(
        meta={
            "command": command_line(args),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "quick": bool(args.quick),
            "seed": seed,
            "machine": machine(),
            "load_start": load_average(),
        }
    )
    if args.policies or args.slots or args.preset not in (None, "all"):
        res.notes.append("--policies / --slots / --preset are options of the quality suites; perf runs its own plan")
    log(f"start ({'quick' if args.quick else 'full'} plan), load average {res.meta['load_start']}")
    res.scale, kept = run_scale(plan, seed, PolicySet(), res.notes)
    res.anytime = run_anytime(plan, kept, seed)
    res.stages = run_stages(plan, seed, res.notes)
    res.guard = run_guard(plan, seed, res.notes)
    res.inference, res.gpu = run_inference(plan, seed, res.notes)
    tti_policies = [p for p in TTI_POLICIES if p != "student" or student_available("mac")]
    if len(tti_policies) < len(TTI_POLICIES):
        res.notes.append("batched TTIs: no mac student model is installed, so only " + ", ".join(tti_policies))
    tti = TtiRun()
    try:
        with ServeProcess() as server:
            log(f"server up: REST :{server.rest_port}, gRPC :{server.grpc_port}")
            res.e2e = run_e2e(server, plan, seed)
            res.load = run_load(server, plan, seed)
            tti = run_tti(server, plan, seed, res.notes, tti_policies)
            res.tti = tti.rows
            res.rss_mib["gnbsched serve (server process)"] = server.peak_rss_mib()
    except (RuntimeError, TimeoutError, OSError) as exc:
        res.notes.append(f"end-to-end measurements failed: {exc}")
        log(f"end-to-end measurements failed: {exc}")
    res.load += run_scaling(plan, seed, res.notes, quick=bool(args.quick))
    if tti.rows:  # the transport's floor under every batched / single-cell figure, same bytes, same clients
        run_floors(tti, res.notes)
    res.rss_mib["bench process (in-process measurements)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res.meta["load_end"] = load_average()
    res.meta["wall_s"] = time.perf_counter() - wall0
    figures = plot(fig_dir, res)
    raw = out / RESULTS_FILE
    raw.write_text(json.dumps(res.as_dict(), indent=2))
    report = write_report(out, res, figures)
    print(summary(res))
    print(f"\nwrote {report}, {raw} and {len(figures)} figures in {fig_dir}")
    log(f"done in {res.meta['wall_s']:.1f} s")
    return 0
