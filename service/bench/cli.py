"""``gnbsched bench``: quality tables per preset, or ``gnbsched bench perf`` for performance.

Each suite is a module with ``add_arguments(parser)`` and ``run(args)``:
``service.bench.spectrum``, ``service.bench.mac`` (quality, ``--preset``), ``service.bench.perf``.
"""

from __future__ import annotations

import argparse
import importlib

SUITES = {"spectrum": "service.bench.spectrum", "mac": "service.bench.mac", "perf": "service.bench.perf"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", nargs="?", choices=["quality", "perf"], default="quality",
                        help="quality (default): policy comparison tables; perf: latency/throughput report")
    parser.add_argument("--preset", choices=["spectrum", "mac", "all"], default="all",
                        help="which quality suite to run (default: both)")
    parser.add_argument("--out", default="bench-out", help="directory for CSV/JSON/PNG outputs")
    parser.add_argument("--quick", action="store_true", help="a small, fast subset (smoke runs, CI)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every simulator and policy")
    parser.add_argument("--policies", default=None,
                        help="comma-separated policy names (default: the suite's own list)")
    parser.add_argument("--slots", type=int, default=None, help="slots per run (default: the suite's own)")


def run(args: argparse.Namespace) -> int:
    if args.suite == "perf":
        return int(importlib.import_module(SUITES["perf"]).run(args) or 0)
    presets = ["spectrum", "mac"] if args.preset == "all" else [args.preset]
    rc = 0
    for preset in presets:
        rc |= int(importlib.import_module(SUITES[preset]).run(args) or 0)
    return rc
