"""``gnbsched bench [SUITE]``: policy quality and service performance, printed as tables.

Suites (each a module with ``add_arguments(parser)`` and ``run(args)``):

* ``quality`` (default): ``service.bench.spectrum`` and ``service.bench.mac`` (``--preset``),
  then the LLM teacher's valid-before-repair rate when ``GNBSCHED_TEACHER_URL`` is set;
* ``student``: the shipped ONNX students on the world families, training and held-out, against
  their targets; writes ``docs/bench/student.md`` and its section of ``BENCHMARKS.md``
  (``service.bench.student``);
* ``teacher``: the LLM teacher alone (``service.bench.teacher``);
* ``perf``: latency / throughput report, writes its sections of ``BENCHMARKS.md``
  (``service.bench.perf``);
* ``validate``: the cost of validating a ``POST /schedule`` body, the service's column validator
  against pydantic; writes ``docs/bench/validate.json`` and its section of ``BENCHMARKS.md``
  (``service.bench.validate``);
* ``soak``: bounded load on loopback with RSS tracking (``service.bench.soak``);
* ``sionna``: the mac policies against Sionna's own PF scheduler in the TR 38.901 link-layer
  world on Sionna SYS (``trainer.sionna_world.bench``, loaded by import string; needs the
  ``sionna`` extra).
"""

from __future__ import annotations

import argparse
import importlib

SUITES = {
    "spectrum": "service.bench.spectrum",
    "mac": "service.bench.mac",
    "student": "service.bench.student",
    "teacher": "service.bench.teacher",
    "perf": "service.bench.perf.command",
    "validate": "service.bench.validate",
    "soak": "service.bench.soak",
    "sionna": "trainer.sionna_world.bench",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "suite",
        nargs="?",
        choices=["quality", "student", "teacher", "perf", "validate", "soak", "sionna"],
        default="quality",
        help="which benchmark (default: quality)",
    )
    parser.add_argument(
        "--preset", choices=["spectrum", "mac", "all"], default="all", help="which quality suite to run (default: both)"
    )
    parser.add_argument("--out", default="bench-out", help="directory for CSV/JSON/PNG outputs")
    parser.add_argument("--quick", action="store_true", help="a small, fast subset (smoke runs, CI)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every simulator and policy")
    parser.add_argument("--policies", default=None, help="comma-separated policy names (default: the suite's own list)")
    parser.add_argument("--slots", type=int, default=None, help="slots per run (default: the suite's own)")
    for suite in ("student", "teacher", "perf", "soak", "sionna"):  # suite-specific options, if any
        extra = getattr(importlib.import_module(SUITES[suite]), "add_arguments", None)
        if extra is not None:
            extra(parser)


def run(args: argparse.Namespace) -> int:
    if args.suite != "quality":
        return int(importlib.import_module(SUITES[args.suite]).run(args) or 0)
    presets = ["spectrum", "mac"] if args.preset == "all" else [args.preset]
    rc = 0
    for preset in presets:
        rc |= int(importlib.import_module(SUITES[preset]).run(args) or 0)
    rc |= int(importlib.import_module(SUITES["teacher"]).run(args) or 0)
    return rc
