"""``gnbsched bench validate``: what validating one ``POST /schedule`` body costs.

The body is a mac slot of N users on R = 69 RBGs from the project's simulator (standard traffic,
the 20th slot of the run, so buffers are filled), as a gNB sends it and as ``gnbsched bench
perf`` sends it (``service.bench.perf.e2e.rest_body``: spectral efficiency and buffer per UE, the
service computes the TBS), encoded once with orjson. Three validators take the same bytes:

* ``column`` — the service's REST path: ``orjson.loads`` then
  ``service.api.rest.codec.decode_schedule``, which checks every field against the contract and
  builds the ``SlotState`` (numpy columns and the utility matrix);
* ``pydantic`` — ``service.api.rest.openapi.ScheduleRequest.model_validate_json``: validation
  only, into a tree of model objects, no slot built;
* ``pydantic-typeadapter`` — ``pydantic.TypeAdapter(ScheduleRequest).validate_json``.

Before timing, all three must accept the body with N users. The timed rounds call each validator
once, in an order that rotates every round, so other work on the machine weighs on all three
alike; warm-up rounds come first. The garbage collector runs, with the objects made before the
rounds frozen out of it, so its pauses are charged to what the validators allocate. Per N (100 and, in the full run, 1000): median and p99 in µs
and the ratio of each validator's median and p99 to ``column``'s. ``orjson.loads`` alone (the
first part of ``column``) is timed in the same rounds.

Outputs ``<out>/docs/bench/validate.json`` and the validate section of ``<out>/BENCHMARKS.md``
(``service.bench.benchmarks_md``); prints the table. ``--quick``: N = 100 only, a few hundred
rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.bench import benchmarks_md
from service.bench.benchmarks_md import Producer, load_average, machine, md_table

NUM_RBG = 69
RESULTS_FILE = Path("docs") / "bench" / "validate.json"
#: validator -> what it runs (the order of the table)
VALIDATORS = {
    "column": "`orjson.loads` + `service.api.rest.codec.decode_schedule` (builds the `SlotState`)",
    "pydantic": "`ScheduleRequest.model_validate_json` (validation only, no slot)",
    "pydantic-typeadapter": "`TypeAdapter(ScheduleRequest).validate_json` (validation only, no slot)",
}
#: parts of a validator timed alone in the same rounds
PARTS = {"orjson.loads": "column"}


@dataclass(frozen=True)
class Budget:
    sizes: tuple[int, ...]  # N; R = NUM_RBG
    rounds: int  # timed calls of each validator per N
    warmup: int


FULL = Budget(sizes=(100, 1000), rounds=5000, warmup=500)
QUICK = Budget(sizes=(100,), rounds=300, warmup=30)


@dataclass
class Row:
    num_ue: int
    num_res: int
    body_bytes: int
    validator: str  # a key of VALIDATORS, or of PARTS
    runs: int
    median_us: float
    p99_us: float
    median_ratio_to_column: float
    p99_ratio_to_column: float


def request_body(num_ue: int, seed: int) -> bytes:
    """The JSON body of the 20th mac slot of ``num_ue`` users on ``NUM_RBG`` RBGs."""
    from service.bench.perf.e2e import rest_body
    from service.bench.perf.plan import mac_states

    state = mac_states(num_ue, 20, seed)[-1]
    return orjson.dumps(rest_body(state, "pf"))


def validators() -> dict[str, Callable[[bytes], Any]]:
    """Validator (and part) name -> a call on the raw body."""
    from pydantic import TypeAdapter

    from service.api.rest.codec import decode_schedule
    from service.api.rest.openapi import ScheduleRequest

    adapter = TypeAdapter(ScheduleRequest)
    return {
        "column": lambda raw: decode_schedule(orjson.loads(raw)),
        "pydantic": ScheduleRequest.model_validate_json,
        "pydantic-typeadapter": adapter.validate_json,
        "orjson.loads": orjson.loads,
    }


def check(calls: dict[str, Callable[[bytes], Any]], raw: bytes, num_ue: int) -> None:
    """Every validator accepts ``raw`` and sees its ``num_ue`` users (else ValueError)."""
    seen = {
        "column": calls["column"](raw).state.num_ue,
        "pydantic": len(calls["pydantic"](raw).users),
        "pydantic-typeadapter": len(calls["pydantic-typeadapter"](raw).users),
    }
    if set(seen.values()) != {num_ue}:
        raise ValueError(f"the validators disagree on the body of N = {num_ue}: {seen}")


def time_rounds(
    calls: dict[str, Callable[[bytes], Any]], raw: bytes, rounds: int, warmup: int
) -> dict[str, np.ndarray]:
    """Per name, the µs of ``rounds`` calls on ``raw``, one call of each per round (the order
    rotating every round), after ``warmup`` untimed rounds. The garbage collector stays on, with
    the objects that exist before the rounds frozen out of it (``gc.freeze``): a collection then
    costs what the validators allocate, not the size of this process's heap."""
    names = list(calls)
    out = {k: np.empty(rounds) for k in names}
    gc.collect()
    gc.freeze()
    try:
        for i in range(warmup + rounds):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                fn = calls[name]
                t0 = time.perf_counter_ns()
                fn(raw)
                dt = time.perf_counter_ns() - t0
                if i >= warmup:
                    out[name][i - warmup] = dt / 1e3
    finally:
        gc.unfreeze()
    return out


def measure(budget: Budget, seed: int) -> list[Row]:
    calls = validators()
    rows: list[Row] = []
    for n in budget.sizes:
        raw = request_body(n, seed)
        check(calls, raw, n)
        t0 = time.perf_counter()
        us = time_rounds(calls, raw, budget.rounds, budget.warmup)
        med = {k: float(np.median(v)) for k, v in us.items()}
        p99 = {k: float(np.percentile(v, 99)) for k, v in us.items()}
        for name in [*VALIDATORS, *PARTS]:
            rows.append(
                Row(
                    n,
                    NUM_RBG,
                    len(raw),
                    name,
                    budget.rounds,
                    med[name],
                    p99[name],
                    med[name] / med["column"],
                    p99[name] / p99["column"],
                )
            )
        print(f"[validate] N={n}: {budget.rounds} rounds in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return rows


#: the table's name of each validator and part
LABELS = {
    "column": "(a) column: orjson.loads + decode_schedule, builds the slot",
    "pydantic": "(b) pydantic: ScheduleRequest.model_validate_json",
    "pydantic-typeadapter": "(c) pydantic: TypeAdapter(ScheduleRequest).validate_json",
    "orjson.loads": "orjson.loads alone (the parsing part of (a))",
}
HEADER = ("N", "R", "body (KiB)", "validator", "median (µs)", "p99 (µs)", "median / (a)", "p99 / (a)")


def table_rows(rows: list[Row]) -> list[list[str]]:
    return [
        [
            str(r.num_ue),
            str(r.num_res),
            f"{r.body_bytes / 1024:.1f}",
            LABELS[r.validator],
            f"{r.median_us:.1f}",
            f"{r.p99_us:.1f}",
            f"{r.median_ratio_to_column:.2f}×",
            f"{r.p99_ratio_to_column:.2f}×",
        ]
        for r in rows
    ]


def print_table(rows: list[Row], budget: Budget) -> None:
    cells = [list(HEADER), *table_rows(rows)]
    width = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    print(
        f"\ngnbsched bench validate — POST /schedule body validation, mac, R = {NUM_RBG} "
        f"({budget.rounds} interleaved runs of each after {budget.warmup} warm-up rounds)"
    )
    for c in cells:
        print("  ".join(x.ljust(width[i]) if i == 3 else x.rjust(width[i]) for i, x in enumerate(c)))


def section(rows: list[Row], budget: Budget, by: Producer, meta: dict[str, Any]) -> str:
    """The validate section of ``BENCHMARKS.md``."""
    body = [
        f"The `POST /schedule` body of a mac slot from the simulator (N users, R = {NUM_RBG} RBGs, spectral "
        "efficiency and buffer per UE, as `gnbsched bench perf` sends it), validated by (a) the service's REST "
        "path: `orjson.loads` and `service.api.rest.codec.decode_schedule`, which checks every field against the "
        "contract and builds the `SlotState` (numpy columns, utility matrix); (b) "
        "`service.api.rest.openapi.ScheduleRequest.model_validate_json`, validation only, no slot built; (c) "
        "`pydantic.TypeAdapter(ScheduleRequest).validate_json`, the same. One call of each per round, the order "
        f"rotating, {budget.rounds} timed rounds after {budget.warmup} warm-up rounds in one process, the "
        "garbage collector on (the objects made before the rounds frozen out of it, `gc.freeze`, so its pauses "
        "come from what the validators allocate); *median / (a)* and *p99 / (a)* = the figure over (a)'s.",
        "",
        md_table(HEADER, table_rows(rows)),
    ]
    extra = (
        f" on {meta['date']} in {meta['wall_s']:.0f} s; pydantic {meta['pydantic']}, orjson {meta['orjson']}; "
        f"machine: {meta['machine']}, load average at start {meta['load_start']}. Raw figures in "
        f"`{RESULTS_FILE.as_posix()}`."
    )
    return by.section("Request validation: the column validator against pydantic", body, extra=extra)


def command_line(args: argparse.Namespace) -> str:
    seed = int(getattr(args, "seed", 0) or 0)
    return (
        "gnbsched bench validate"
        + (" --quick" if args.quick else "")
        + f" --out {args.out}"
        + (f" --seed {seed}" if seed else "")
    )


def run(args: argparse.Namespace) -> int:
    import pydantic

    wall0 = time.perf_counter()
    quick = bool(getattr(args, "quick", False))
    seed = int(getattr(args, "seed", 0) or 0)
    budget = QUICK if quick else FULL
    out = Path(getattr(args, "out", "bench-out"))
    load_start = load_average()
    rows = measure(budget, seed)
    meta: dict[str, Any] = {
        "command": command_line(args),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seed": seed,
        "quick": quick,
        "rounds": budget.rounds,
        "warmup": budget.warmup,
        "num_res": NUM_RBG,
        "pydantic": pydantic.VERSION,
        "orjson": orjson.__version__,
        "machine": machine(),
        "load_start": load_start,
        "wall_s": time.perf_counter() - wall0,
    }
    raw = out / RESULTS_FILE
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(
        json.dumps(
            {"meta": meta, "validators": VALIDATORS, "parts": PARTS, "rows": [asdict(r) for r in rows]}, indent=1
        )
        + "\n"
    )
    by = Producer("validate", meta["command"], seed, quick)
    report = benchmarks_md.update(out / benchmarks_md.REPORT_NAME, "validate", [section(rows, budget, by, meta)])
    print_table(rows, budget)
    print(f"\nwrote {raw} and the validate section of {report}")
    return 0
