"""``gnbsched bench`` teacher suite: the LLM teacher's raw answers on the simulators.

Runs only when an endpoint is configured (``GNBSCHED_TEACHER_URL``, the other
``GNBSCHED_TEACHER_*`` settings as for serving). Per preset and scenario, a closed loop: every
slot is serialized and sent to the teacher, its raw answer is checked against the PAG (the
*valid-before-repair* rate of SPEC §3 / LSA, measured on raw outputs), repaired and played in the
simulator; a slot the teacher cannot serve (down, timeout, garbage) is played with ``greedy`` and
counted by its reason. Each scenario runs once per answer form (``--forms``, default all three):
``text`` (the JSON forms, ``answer_form`` auto / owner / allocation), ``code`` (a program
``schedule(state)`` written by the model, run in the sandbox and reused for the following slots of
the cell, LSA's code-driven paradigm) and ``code-reference`` (the same code path serving the
reference program ``service.serialize.code_form.REFERENCE_PROGRAM`` instead of the model's: the
per-slot cost of a program written once, whatever the model writes). Reported per (form, scenario): answered / failed slots, valid-before-repair
rate over answered slots, unparsable answers, mean and p95 latency per decision, mean prompt
tokens (and whether the endpoint's tokenizer counted them), the repaired decision's utility
relative to KM and to a random valid assignment of the same slots, and for the code form the
programs written and the slots each one decided. Outputs: ``<out>/teacher/results.csv``,
``results.json`` and the section of ``<out>/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.bench import benchmarks_md
from service.bench.benchmarks_md import Producer, load_average, machine, md_table
from service.config import Settings
from service.errors import GnbSchedError
from service.finetune.dataset import make_env
from service.finetune.rewards import RewardConfig, random_reference
from service.history import CellHistory, apply_feedback, record_decision
from service.pag.checks import UNPARSABLE, check
from service.pag.repair import repair
from service.policies.base import PolicyContext
from service.policies.registry import make
from service.policies.teacher import Teacher
from service.rng import slot_rng
from service.serialize.code_form import REFERENCE_PROGRAM, fenced
from service.types import slot_utility

#: scenarios per preset: default run, and --quick
SCENARIOS = {
    "spectrum": ("u5-c5-b1", "u10-c15-b3", "u15-c20-b4", "u15-c20-b8", "scale-I"),
    "mac": ("standard", "fixed-5", "mix-4a1l"),
}
QUICK_SCENARIOS = {"spectrum": ("u5-c5-b1", "u15-c20-b4"), "mac": ("fixed-5",)}
DEFAULT_SLOTS, QUICK_SLOTS = 20, 4


@dataclass
class TeacherRow:
    form: str
    preset: str
    scenario: str
    slots: int
    answered: int
    failed: int
    valid_before_repair_rate: float
    unparsable: int
    latency_ms_mean: float
    latency_ms_p95: float
    prompt_tokens_mean: float
    token_source: str
    ratio_to_km: float
    ratio_to_random: float
    programs_written: int
    slots_per_program: float
    failures: str


def configured() -> bool:
    """Is a teacher endpoint configured in the environment?"""
    return bool(Settings().teacher.url)


def run_scenario(teacher: Teacher, preset: str, scenario: str, slots: int, seed: int, form: str = "text") -> TeacherRow:
    """One closed-loop episode of ``slots`` slots with the teacher's repaired decisions."""
    env = make_env(preset, scenario, seed)
    state = env.reset(seed=seed)
    km, greedy = make("km"), make("greedy")
    history = CellHistory.empty()
    feedback: dict[int, float] = {}
    answered = valid = unparsable = 0
    failures: dict[str, int] = {}
    latency_ms: list[float] = []
    tokens: list[int] = []
    sources: set[str] = set()
    util = util_km = util_rand = 0.0
    written = 0
    ref_cfg = RewardConfig(seed=seed)
    for _ in range(slots):
        if feedback:
            history = apply_feedback(history, feedback)
        view = history.view(state)
        ctx = PolicyContext(view, slot_rng(seed, state.cell_id, state.slot))
        t0 = time.perf_counter()
        try:
            prompt = teacher.serialize(state, ctx)
            tokens.append(prompt.tokens)
            sources.add(prompt.token_source)
            raw = teacher.act(state, ctx, prompt)
        except GnbSchedError as exc:
            kind = exc.kind.fallback_reason
            failures[kind] = failures.get(kind, 0) + 1
            written += int(ctx.info.get("teacher_program") == "written")
            owner = np.asarray(greedy(state, ctx), np.int64)
        else:
            latency_ms.append((time.perf_counter() - t0) * 1e3)
            answered += 1
            written += int(ctx.info.get("teacher_program") == "written")
            result = check(state, raw)
            valid += int(result.valid)
            unparsable += int(any(v.kind == UNPARSABLE for v in result.violations))
            owner = repair(state, result)
        util += slot_utility(state, owner)
        util_km += slot_utility(state, np.asarray(km(state, ctx), np.int64))
        util_rand += random_reference(state, ref_cfg)
        history = record_decision(history, state, owner)
        res = env.step(owner)
        state, feedback = res.state, res.feedback
        if res.done:
            break
    lat = np.asarray(latency_ms) if latency_ms else np.zeros(1)
    return TeacherRow(
        form=form,
        preset=preset,
        scenario=scenario,
        slots=answered + sum(failures.values()),
        answered=answered,
        failed=sum(failures.values()),
        valid_before_repair_rate=valid / answered if answered else 0.0,
        unparsable=unparsable,
        latency_ms_mean=float(lat.mean()),
        latency_ms_p95=float(np.percentile(lat, 95)),
        prompt_tokens_mean=float(np.mean(tokens)) if tokens else 0.0,
        token_source="/".join(sorted(sources)),
        ratio_to_km=util / util_km if util_km > 0 else 0.0,
        ratio_to_random=util / util_rand if util_rand > 0 else 0.0,
        programs_written=written,
        slots_per_program=answered / written if written else 0.0,
        failures=", ".join(f"{k}: {v}" for k, v in sorted(failures.items())),
    )


def table(rows: list[TeacherRow]) -> str:
    head = (
        "form",
        "preset",
        "scenario",
        "slots",
        "answered",
        "valid_raw",
        "unparsable",
        "lat_ms",
        "p95_ms",
        "tokens",
        "vs_km",
        "vs_rand",
        "programs",
        "slots/program",
        "failures",
    )
    cells = [head] + [
        (
            r.form,
            r.preset,
            r.scenario,
            str(r.slots),
            str(r.answered),
            f"{r.valid_before_repair_rate:.2f}",
            str(r.unparsable),
            f"{r.latency_ms_mean:.0f}",
            f"{r.latency_ms_p95:.0f}",
            f"{r.prompt_tokens_mean:.0f} {r.token_source}",
            f"{r.ratio_to_km:.3f}",
            f"{r.ratio_to_random:.2f}",
            str(r.programs_written) if r.form.startswith("code") else "-",
            f"{r.slots_per_program:.1f}" if r.form.startswith("code") else "-",
            r.failures or "-",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


FORMS = ("text", "code", "code-reference")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The answer forms compared; the endpoint comes from ``GNBSCHED_TEACHER_*``."""
    parser.add_argument(
        "--forms",
        default=",".join(FORMS),
        help="comma-separated answer forms to compare: text (the JSON forms), code (the model's programs in the "
        "sandbox), code-reference (the code path serving the reference program instead of the model's: the cost "
        "of a program written once and reused)",
    )


def _reference_endpoint(request: httpx.Request) -> httpx.Response:
    """A chat endpoint that answers every request with the reference program (``code-reference``)."""
    answer = fenced(REFERENCE_PROGRAM)
    return httpx.Response(200, json={"choices": [{"message": {"content": answer}, "finish_reason": "stop"}]})


def teacher_for(cfg: Any, form: str) -> Teacher:
    """The teacher of ``cfg`` answering in ``form`` (text: ``cfg``'s JSON form, ``auto`` if it is code;
    code-reference: the code path with the reference program for an answer, no model)."""
    if form == "code":
        return Teacher(cfg, answer_form="code")
    if form == "code-reference":
        return Teacher(cfg, answer_form="code", transport=httpx.MockTransport(_reference_endpoint))
    return Teacher(cfg, answer_form="auto" if cfg.answer_form == "code" else cfg.answer_form)


def run(args: argparse.Namespace) -> int:
    cfg = Settings().teacher
    if not cfg.url:
        print("bench teacher: no endpoint configured (set GNBSCHED_TEACHER_URL); skipped")
        return 0
    forms = [f.strip() for f in str(getattr(args, "forms", ",".join(FORMS))).split(",") if f.strip()]
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        print(f"bench teacher: unknown form(s) {unknown}; choose from {list(FORMS)}")
        return 2
    presets = ["spectrum", "mac"] if getattr(args, "preset", "all") == "all" else [args.preset]
    quick = bool(getattr(args, "quick", False))
    slots = getattr(args, "slots", None) or (QUICK_SLOTS if quick else DEFAULT_SLOTS)
    seed = int(getattr(args, "seed", 0))
    rows: list[TeacherRow] = []
    for form in forms:
        teacher = teacher_for(cfg, form)  # SandboxUnavailable for code where no sandbox can be set up
        try:
            for preset in presets:
                for scenario in (QUICK_SCENARIOS if quick else SCENARIOS)[preset]:
                    rows.append(run_scenario(teacher, preset, scenario, slots, seed, form))
                    print(f"bench teacher: {form} {preset}/{scenario} done", flush=True)
        finally:
            teacher.close()
    out_dir = Path(getattr(args, "out", "bench-out")) / "teacher"
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])) if rows else ["preset"])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    meta: dict[str, Any] = {
        "endpoint": cfg.url,
        "model": cfg.model,
        "dialect": cfg.dialect,
        "budget_tokens": cfg.budget_tokens,
        "slots": slots,
        "seed": seed,
    }
    (out_dir / "results.json").write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"LLM teacher {cfg.model} at {cfg.url} (dialect {cfg.dialect}): raw answers, valid before repair")
    print(table(rows))
    out = Path(getattr(args, "out", "bench-out"))
    command = f"gnbsched bench teacher --out {out}" + (" --quick" if quick else "") + f" --slots {slots}"
    report = benchmarks_md.update(
        out / benchmarks_md.REPORT_NAME,
        "teacher",
        [markdown_section(rows, meta, Producer("teacher", command, seed, quick))],
    )
    print(f"written: {out_dir / 'results.csv'}, {out_dir / 'results.json'}, {report}")
    return 0


def markdown_section(rows: list[TeacherRow], meta: dict[str, Any], producer: Producer) -> str:
    """The BENCHMARKS.md section of a run: the two answer forms side by side."""
    body = [
        f"Model `{meta['model']}` at an OpenAI-compatible endpoint (dialect `{meta['dialect']}`), "
        f"{meta['slots']} slots per scenario in a closed loop; machine: {machine()}, load average "
        f"{load_average()}. *text*: the JSON answer forms under the PAG constraint; *code*: a program "
        "`schedule(state)` written once per cell and run in the sandbox for the following slots; "
        "*code-reference*: the same code path serving the project's reference program instead of the model's "
        "(no model: what a program written once costs per slot). "
        "Valid before repair over answered slots; utility of the repaired decisions over KM's; latency per "
        "decision (code: the slot that writes the program includes the LLM call, the others only the "
        "sandboxed call); a slot the teacher cannot serve is played with `greedy` and counted by reason.",
        "",
        md_table(
            (
                "form",
                "preset / scenario",
                "slots",
                "answered",
                "valid before repair",
                "utility / KM",
                "latency mean / p95 (ms)",
                "programs",
                "slots per program",
                "failures",
            ),
            [
                (
                    r.form,
                    f"{r.preset} / {r.scenario}",
                    r.slots,
                    r.answered,
                    f"{r.valid_before_repair_rate:.2f}",
                    f"{r.ratio_to_km:.3f}",
                    f"{r.latency_ms_mean:.1f} / {r.latency_ms_p95:.1f}",
                    r.programs_written if r.form.startswith("code") else "–",
                    f"{r.slots_per_program:.1f}" if r.form.startswith("code") and r.programs_written else "–",
                    r.failures or "–",
                )
                for r in rows
            ],
        ),
    ]
    return producer.section("The LLM teacher: text and code answer forms", body)
