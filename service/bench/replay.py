"""``gnbsched bench student --trace FILE``: replay recorded traffic through every policy.

A trace is JSON Lines: rows written by ``gnbsched serve --record DIR`` (``service.trace``:
``{"request": <POST /schedule body>, "decision": {...}}``) or plain ``POST /schedule`` bodies,
one per line, as a simulator would write them; both kinds may be mixed. ``FILE`` may also be a
directory (every ``*.jsonl`` in it, rotated ``.1.jsonl`` files included). Blank lines are
skipped; a line that is not JSON or not a valid request is reported with its line number,
counted and skipped. Each request is decoded by the REST decoder
(``service.api.rest.codec.decode_schedule``), so the replayed slot is the one the service saw.

Rows are grouped by cell and ordered by slot (file order among equal slots). Every policy
replays every cell from a fresh cell history through ``service.pipeline.decide`` as
``ServiceCore.schedule`` runs it: the row's ``feedback`` is applied first, the decision is
recorded in the history after; same ``seed`` (``GNBSCHED_SEED`` of the service),
``ewma_slots`` and fallback chain as the service's defaults. The row's own ``policy`` and
``deadline_ms`` are ignored (no deadline: the replay is deterministic) — the same trace and seed
give bit-identical decisions (``decision_hash``, sha256 of every owner vector in replay order).

**Open loop**: the recorded buffers and channels do not react to the replayed decisions (a
policy that serves a user less does not see that user's queue grow), and a recorded row's
``feedback`` is what the *served* decision delivered. The KPIs compare policies on the same
exogenous slots; they are not the closed-loop KPIs of ``gnbsched bench`` / ``simulate``. For the
policy that served the trace (same seed, cell history from the cell's first slot) the replay
reproduces the recorded decisions: ``recorded_match`` of ``recorded_compared``, counted over
the cells whose every row was recorded as decided by that policy (a cell where a fallback or the
run-time guard served another policy has a different history, so no match is expected there).

Per preset and policy: scheduled bits per slot (mac; sum over cells of a slot number, averaged
over slot numbers) or sum-rate per slot (spectrum, bit/s), its ratio to the best of
pf / max_weight / rr (mac) or to km (spectrum), Jain index of per-user scheduled bits (users
keyed by (cell, id) over the whole trace), valid-before-repair rate, fallbacks, the decision
hash and, where the trace has decisions of that policy, how many the replay reproduced.
Writes ``<out>/student/replay.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.api.contract import Limits, ScheduleArgs
from service.api.rest.codec import decode_schedule
from service.errors import InvalidSlotError
from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.types import Decision, SlotState, owner_ids, served_bits

DEFAULT_POLICIES: tuple[str, ...] = ("student", "pf", "max_weight", "rr", "greedy", "km")
#: the reference of the ratio column: best of these (mac), this one (spectrum)
MAC_REFERENCE: tuple[str, ...] = ("pf", "max_weight", "rr")
SPECTRUM_REFERENCE = "km"
#: bad lines kept (with their messages) in the report; all are counted
MAX_REPORTED_ERRORS = 100
_LIMITS = Limits(max_users=1 << 20, max_resources=1 << 20)


@dataclass(slots=True)
class TraceRow:
    """One replayable slot of a trace."""

    source: str
    line: int
    args: ScheduleArgs
    #: the recorded decision (``--record`` rows), None for a plain request body
    recorded: dict[str, Any] | None = None


@dataclass(slots=True)
class Trace:
    rows: list[TraceRow] = field(default_factory=list)
    #: bad lines: {"file", "line", "message"} (at most ``MAX_REPORTED_ERRORS`` kept)
    errors: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0
    blank_lines: int = 0

    def bad(self, source: str, line: int, message: str) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"file": source, "line": line, "message": message})

    def cells(self, preset: str | None = None) -> dict[str, list[TraceRow]]:
        """Rows per cell (sorted cell ids), each in slot order (file order among equal slots);
        only the rows of ``preset`` when given."""
        out: dict[str, list[TraceRow]] = {}
        for row in self.rows:
            if preset is None or row.args.state.preset == preset:
                out.setdefault(row.args.state.cell_id, []).append(row)
        return {c: sorted(out[c], key=lambda r: r.args.state.slot) for c in sorted(out)}


def trace_files(path: str | Path) -> list[Path]:
    """``path`` itself, or a directory's ``*.jsonl`` (each cell's rotated ``.1.jsonl`` first)."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted(
        p.glob("*.jsonl"),
        key=lambda f: (f.name.removesuffix(".jsonl").removesuffix(".1"), not f.name.endswith(".1.jsonl")),
    )


def _parse(doc: Any) -> tuple[ScheduleArgs, dict[str, Any] | None]:
    recorded = None
    if type(doc) is dict and type(doc.get("request")) is dict:  # a --record row
        dec = doc.get("decision")
        recorded = dec if type(dec) is dict else None
        doc = doc["request"]
    if type(doc) is not dict:
        raise InvalidSlotError("body", "expected a JSON object (a POST /schedule body or a recorded row)")
    return decode_schedule(doc, _LIMITS, None), recorded


def read_trace(path: str | Path) -> Trace:
    """Every replayable row of the trace at ``path``; bad lines are counted and reported."""
    trace = Trace()
    for f in trace_files(path):
        with f.open("rb") as fh:
            for i, raw in enumerate(fh, start=1):
                if not raw.strip():
                    trace.blank_lines += 1
                    continue
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    trace.bad(str(f), i, f"invalid JSON: {exc}")
                    continue
                try:
                    args, recorded = _parse(doc)
                except InvalidSlotError as exc:
                    trace.bad(str(f), i, f"{exc.field}: {exc.message}")
                    continue
                except (TypeError, ValueError, OverflowError, KeyError, IndexError) as exc:
                    trace.bad(str(f), i, f"invalid request: {exc!r}")
                    continue
                trace.rows.append(TraceRow(str(f), i, args, recorded))
    return trace


# ----------------------------------------------------------------------------- replay


def replay_cell(
    rows: Sequence[TraceRow],
    policy: str,
    *,
    policies: PolicySet,
    seed: int = 0,
    ewma_slots: float = 100.0,
    fallbacks: Sequence[str] = ("greedy",),
) -> Iterator[Decision]:
    """Decisions of ``policy`` on one cell's rows (in order) from a fresh history, as
    ``ServiceCore.schedule`` makes them (feedback applied first, the decision recorded after)."""
    history = CellHistory.empty()
    for row in rows:
        args = row.args
        if args.feedback:
            history = apply_feedback(history, args.feedback, ewma_slots=ewma_slots)
        d = decide(args.state, history, policy, policies=policies, fallbacks=fallbacks, seed=seed)
        history = record_decision(history, args.state, d.owner, ewma_slots=ewma_slots)
        yield d


def _jain(x: Iterable[float]) -> float:
    a = np.fromiter(x, np.float64)
    if a.size == 0 or not (a > 0).any():
        return float("nan")
    return float(a.sum() ** 2 / (a.size * (a**2).sum()))


def _usable(policies: PolicySet, name: str, preset: str) -> str | None:
    """None when ``name`` can replay ``preset``, else why not."""
    try:
        pol = policies.get(name)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"
    if preset not in pol.presets:
        return f"does not serve the {preset} preset"
    return None


def _replay_preset(
    cells: dict[str, list[TraceRow]],
    names: Sequence[str],
    *,
    policies: PolicySet,
    seed: int,
    ewma_slots: float,
    fallbacks: Sequence[str],
    preset: str,
) -> dict[str, Any]:
    slots = {row.args.state.slot for rows in cells.values() for row in rows}
    n_rows = sum(len(rows) for rows in cells.values())
    out: dict[str, Any] = {
        "cells": len(cells),
        "rows": n_rows,
        "slots": len(slots),
        "unit": "bits/slot" if preset == "mac" else "bit/s (sum-rate) per slot",
        "policies": {},
        "skipped": {},
    }
    for name in names:
        why = _usable(policies, name, preset)
        if why is not None:
            out["skipped"][name] = why
            continue
        digest = hashlib.sha256()
        total = 0.0
        per_user: dict[tuple[str, int], float] = {}
        valid = fallback = compared = matched = 0
        policy_us: list[float] = []
        t0 = time.perf_counter()
        for cell, rows in cells.items():
            digest.update(cell.encode() + b"\0")
            # recorded decisions are compared in a cell this policy served throughout (else the
            # served history, hence the decisions, differ by construction)
            served = {r.recorded.get("policy") if r.recorded is not None else None for r in rows}
            compare = served == {name}
            for row, d in zip(
                rows,
                replay_cell(rows, name, policies=policies, seed=seed, ewma_slots=ewma_slots, fallbacks=fallbacks),
                strict=True,
            ):
                state = row.args.state
                digest.update(np.ascontiguousarray(d.owner, dtype="<i8").tobytes())
                bits = served_bits(state, d.owner)
                total += float(bits.sum())
                for uid, b in zip(state.user_ids.tolist(), bits.tolist(), strict=True):
                    per_user[(cell, uid)] = per_user.get((cell, uid), 0.0) + b
                valid += d.valid_before_repair
                fallback += d.fallback is not None
                policy_us.append(d.timings_us.get("serialize", 0.0) + d.timings_us.get("policy", 0.0))
                rec = row.recorded
                if compare and rec is not None:
                    compared += 1
                    matched += rec.get("owner") == owner_ids(state, d.owner)
        out["policies"][name] = {
            "utility_per_slot": total / max(len(slots), 1),
            "jain": _jain(per_user.values()),
            "valid_before_repair": valid / max(n_rows, 1),
            "fallbacks": fallback,
            "decisions": n_rows,
            "decision_hash": digest.hexdigest(),
            "recorded_compared": compared,
            "recorded_match": matched,
            "policy_us_median": float(np.median(policy_us)) if policy_us else float("nan"),
            "wall_s": round(time.perf_counter() - t0, 3),
        }
    done = out["policies"]
    if preset == "mac":
        refs = [p for p in MAC_REFERENCE if p in done]
        best = max(refs, key=lambda p: done[p]["utility_per_slot"]) if refs else None
        out["reference"] = f"best of {'/'.join(MAC_REFERENCE)}" + (f" ({best})" if best else " (none replayed)")
    else:
        best = SPECTRUM_REFERENCE if SPECTRUM_REFERENCE in done else None
        out["reference"] = SPECTRUM_REFERENCE if best else f"{SPECTRUM_REFERENCE} (not replayed)"
    ref = done[best]["utility_per_slot"] if best else float("nan")
    for v in done.values():
        v["ratio"] = v["utility_per_slot"] / ref if ref and ref > 0 else float("nan")
    return out


def run_trace(
    path: str | Path,
    policies: Sequence[str] = DEFAULT_POLICIES,
    seed: int = 0,
    *,
    ewma_slots: float = 100.0,
    fallbacks: Sequence[str] = ("greedy",),
    policy_set: PolicySet | None = None,
) -> dict[str, Any]:
    """Replay the trace at ``path`` through every policy of ``policies`` (the ratio's reference
    policies are added: pf / max_weight / rr for mac, km for spectrum). See the module docstring."""
    trace = read_trace(path)
    pset = policy_set or PolicySet()
    presets: dict[str, Any] = {}
    for preset in sorted({r.args.state.preset for r in trace.rows}):
        refs = MAC_REFERENCE if preset == "mac" else (SPECTRUM_REFERENCE,)
        names = list(dict.fromkeys([*policies, *refs]))
        presets[preset] = _replay_preset(
            trace.cells(preset),
            names,
            policies=pset,
            seed=seed,
            ewma_slots=ewma_slots,
            fallbacks=fallbacks,
            preset=preset,
        )
    return {
        "bench": "service.bench.replay",
        "trace": str(path),
        "seed": seed,
        "ewma_slots": ewma_slots,
        "fallbacks": list(fallbacks),
        "open_loop": True,
        "rows": len(trace.rows),
        "cells": len({r.args.state.cell_id for r in trace.rows}),
        "bad_lines": trace.bad_lines,
        "blank_lines": trace.blank_lines,
        "errors": trace.errors,
        "presets": presets,
    }


# ----------------------------------------------------------------------------- CLI


def format_table(result: dict[str, Any]) -> str:
    """The replay as fixed-width tables, one per preset."""
    lines: list[str] = []
    head = ("policy", "per slot", "ratio", "jain", "valid", "fallbacks", "match", "hash")
    for preset, p in result["presets"].items():
        lines.append(
            f"\nreplay — {preset}: {p['rows']} rows, {p['cells']} cells, {p['slots']} slot numbers "
            f"(open loop; per slot = {p['unit']}; ratio to {p['reference']})"
        )
        cells = [list(head)]
        for name, v in p["policies"].items():
            match = f"{v['recorded_match']}/{v['recorded_compared']}" if v["recorded_compared"] else "-"
            cells.append(
                [
                    name,
                    f"{v['utility_per_slot']:.6g}",
                    f"{v['ratio']:.4f}",
                    f"{v['jain']:.3f}",
                    f"{v['valid_before_repair']:.3f}",
                    str(v["fallbacks"]),
                    match,
                    v["decision_hash"][:12],
                ]
            )
        w = [max(len(c[i]) for c in cells) for i in range(len(head))]
        lines += [
            "  ".join(c[i].ljust(w[i]) if i in (0, 7) else c[i].rjust(w[i]) for i in range(len(head))).rstrip()
            for c in cells
        ]
        for name, why in p["skipped"].items():
            lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else str(v)


def run(args: argparse.Namespace) -> int:
    """``gnbsched bench student --trace FILE`` (``--policies``, ``--seed``, ``--out`` apply)."""
    path = Path(args.trace)
    if not path.exists():
        print(f"gnbsched bench student: trace {path} not found", file=sys.stderr)
        return 2
    names = [p.strip() for p in (getattr(args, "policies", None) or "").split(",") if p.strip()] or DEFAULT_POLICIES
    result = run_trace(path, names, int(getattr(args, "seed", 0) or 0))
    for err in result["errors"]:
        print(f"{err['file']}:{err['line']}: skipped: {err['message']}", file=sys.stderr)
    if result["bad_lines"] > len(result["errors"]):
        print(f"... {result['bad_lines'] - len(result['errors'])} more bad lines", file=sys.stderr)
    print(
        f"replay {path}: {result['rows']} rows, {result['cells']} cells, {result['bad_lines']} bad lines skipped, "
        f"seed {result['seed']}"
    )
    print(format_table(result))
    out = Path(getattr(args, "out", "bench-out")) / "student"
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
    print(f"wrote {out / 'replay.json'}", file=sys.stderr)
    return 0 if result["rows"] else 1


def replayed_owner_ids(
    path: str | Path, policy: str, *, seed: int = 0, policy_set: PolicySet | None = None
) -> dict[tuple[str, int, int], list[int | None]]:
    """{(file, line, slot): owner ids} of ``policy``'s replay — to compare with recorded decisions."""
    trace = read_trace(path)
    pset = policy_set or PolicySet()
    out: dict[tuple[str, int, int], list[int | None]] = {}
    for preset in sorted({r.args.state.preset for r in trace.rows}):
        for rows in trace.cells(preset).values():
            for row, d in zip(rows, replay_cell(rows, policy, policies=pset, seed=seed), strict=True):
                state: SlotState = row.args.state
                out[(row.source, row.line, state.slot)] = owner_ids(state, d.owner)
    return out
