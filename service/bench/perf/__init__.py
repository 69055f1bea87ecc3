"""``gnbsched bench perf``: one run, one report with every performance figure.

The run measures, in process (``inprocess``): our spectrum policies against the exact Hungarian
solver at every scale, ``auction``'s anytime curve at Scale III, per-stage times of the core at
N = 100, R = 69, the cost of the run-time guard, and the student's batched inference per TTI
(one onnxruntime call for 1 to 1000 cells; on the CPU, and on CUDA where a device is present,
"no GPU" otherwise); then end to end (``e2e``) against the real
service (``gnbsched serve`` in a subprocess, REST + gRPC on free loopback ports): REST, gRPC
unary and gRPC stream latency at N ∈ {10, 100, 1000}, decisions/s under a bounded concurrent
load, batched TTIs (``tti``: C cells per call over ``StreamTtis``, ``ScheduleCells`` and
``POST /schedule/batch`` against C single-cell calls, per-core throughput, where the time goes),
the server's peak RSS; then the echo floor (``echo``: a bare server answering the same bytes)
under every batched and single-cell figure. The papers' published figures stand beside ours
(LSA: LLM 7.2–7.8 s per decision, 96.6 % of KM at (15,20,8), KM 15.5 ms there; Stackelberg:
Llama-3.2-1B 12.85 ms per decision).

Modules: ``plan`` (what a run measures: ``FULL`` / ``QUICK``; slot generators), ``inprocess``,
``e2e``, ``tti``, ``echo``, ``results`` (``Results``, targets, the papers' figures, JSON),
``report`` (the ``BENCHMARKS.md`` sections and the printed summary), ``figures`` (PNG, matplotlib
imported there only), ``command`` (``add_arguments`` / ``run``).

Outputs: the perf sections of ``<out>/BENCHMARKS.md`` (the other suites' sections are kept),
``<out>/docs/bench/perf.json`` with every raw figure and PNG figures beside it.
``gnbsched bench perf --out .`` from the repository root regenerates the committed report.
``--quick``: a small subset for smoke runs (seconds, not minutes).
"""

from __future__ import annotations

from service.bench.benchmarks_md import REPORT_NAME
from service.bench.perf.command import add_arguments, run
from service.bench.perf.e2e import E2ERow, LoadRow, run_e2e, run_load, run_scaling, worker_counts
from service.bench.perf.figures import plot
from service.bench.perf.inprocess import (
    AnytimeRow,
    GuardRow,
    InferenceRow,
    ScaleRow,
    StageRow,
    gpu_status,
    run_anytime,
    run_guard,
    run_inference,
    run_scale,
    run_stages,
    student_available,
)
from service.bench.perf.plan import E2E_POLICY, FULL, NUM_RBG, QUICK, TTI_POLICIES, TTI_RBG, Plan
from service.bench.perf.report import (
    anytime_target_lines,
    paper_lines,
    summary,
    target_lines,
    tti_target_lines,
    write_report,
)
from service.bench.perf.results import FIG_DIR, PAPER, RESULTS_FILE, TARGETS, Results
from service.bench.perf.tti import TtiRow, TtiRun, run_floors, run_tti

__all__ = [
    "E2E_POLICY",
    "FIG_DIR",
    "FULL",
    "NUM_RBG",
    "PAPER",
    "QUICK",
    "REPORT_NAME",
    "RESULTS_FILE",
    "TARGETS",
    "TTI_POLICIES",
    "TTI_RBG",
    "AnytimeRow",
    "E2ERow",
    "GuardRow",
    "InferenceRow",
    "LoadRow",
    "Plan",
    "Results",
    "ScaleRow",
    "StageRow",
    "TtiRow",
    "TtiRun",
    "add_arguments",
    "anytime_target_lines",
    "gpu_status",
    "paper_lines",
    "plot",
    "run",
    "run_anytime",
    "run_e2e",
    "run_floors",
    "run_guard",
    "run_inference",
    "run_load",
    "run_scale",
    "run_scaling",
    "run_stages",
    "run_tti",
    "student_available",
    "summary",
    "target_lines",
    "tti_target_lines",
    "worker_counts",
    "write_report",
]
