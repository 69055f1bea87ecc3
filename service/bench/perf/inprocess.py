"""The in-process measurements of ``gnbsched bench perf``: no server, the pipeline and the core
called directly.

1. **Scale** (``run_scale``) — the spectrum policies against the exact Hungarian solver (KM,
   scipy) on the LSA grid and the ultra-dense Scale I/II/III (plus Scale III with every user
   active): ratio of summed sum-rate to KM's on the same slots, and time per decision (pipeline:
   policy + PAG check + repair) as a ratio to KM's.
2. **Anytime** (``run_anytime``) — ``auction`` at Scale III under per-slot deadlines: the share
   of KM's optimum it returns, and from which stage.
3. **Stages** (``run_stages``) — per-stage times of ``ServiceCore.schedule`` (serialize, policy,
   check, repair, and the core's store / history work) at N = 100 users, R = 69 RBGs.
4. **Guard** (``run_guard``) — the student's decision time at N = 100, R = 69 (mac) with the
   run-time guard on (its reference ``pf`` decided on the same slot) against off.
5. **Inference per TTI** (``run_inference``) — the mac student's ``act_many`` on C cells of
   N = 100 users and R = 68 RBGs (one onnxruntime call for the C cells), and that call alone, on
   every execution provider present: the CPU always, CUDA where onnxruntime-gpu finds a device
   (``gnbsched[gpu]``); without one the section says "no GPU".
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.bench.perf.plan import (
    NUM_RBG,
    SCALE_POLICIES,
    STAGE_POLICIES,
    Plan,
    log,
    mac_states,
    pct,
    scenario_shape,
    slot_states,
    spectrum_env,
)
from service.config import Settings
from service.core import ServiceCore
from service.errors import GnbSchedError
from service.history import CellHistory, record_decision
from service.pipeline import STAGES, decide
from service.policies.registry import PolicySet, make
from service.state import open_store
from service.types import SlotState

# ----------------------------------------------------------------------------- 1. scale


@dataclass
class ScaleRow:
    """One (scenario, policy) line: quality and time against KM on the same slots."""

    scenario: str
    num_ue: int
    num_channels: int
    num_busy: int
    mean_active_users: float
    policy: str
    slots: int
    ratio_to_km: float
    time_p50_ms: float
    time_max_ms: float
    km_time_p50_ms: float
    speedup_vs_km: float
    certified_share: float | None = None
    cpu_p50_ms: float = math.nan  # CPU time of this process per decision: what a busy machine does not inflate


def _known_cell(state: SlotState) -> CellHistory:
    """A history that already knows the slot's users (as after earlier slots of the cell), so the
    timed decisions see the steady state, not a new cell's first request."""
    return record_decision(CellHistory.empty(), replace(state, slot=state.slot - 1), np.zeros(state.num_res, np.int64))


def _play(
    states: Sequence[SlotState], policy: str, pset: PolicySet, seed: int, deadline_s: float | None = None
) -> tuple[list[float], list[float], list[dict], list[float]]:
    """Decide every state in order with a steady cell history; (utilities, total ms, notes, CPU ms)."""
    history = _known_cell(states[0])
    util, ms, notes, cpu = [], [], [], []
    for state in states:
        c0 = time.process_time()
        d = decide(state, history, policy, policies=pset, seed=seed, deadline_s=deadline_s)
        cpu.append((time.process_time() - c0) * 1e3)
        history = record_decision(history, state, d.owner)
        util.append(d.utility)
        ms.append(d.timings_us["total"] / 1e3)
        notes.append(dict(d.notes))
    return util, ms, notes, cpu


def student_available(preset: str = "spectrum") -> bool:
    """True when an ONNX student model for ``preset`` is installed (``service.policies.student``)."""
    from service.policies.student import StudentPolicy

    try:
        policy = make("student")
        return isinstance(policy, StudentPolicy) and policy.model(preset) is not None
    except GnbSchedError:
        return False


def run_scale(plan: Plan, seed: int, pset: PolicySet, notes: list[str]) -> tuple[list[ScaleRow], dict]:
    """Every policy and KM on the same slots of every scenario. Returns the rows and, for the
    anytime study, Scale III's states with their KM values."""
    policies = [p for p in SCALE_POLICIES if p != "student" or student_available()]
    if "student" not in policies:
        notes.append(
            "student: no ONNX student model is installed for the spectrum preset, so it is not in the scale table"
        )
    rows: list[ScaleRow] = []
    keep: dict[str, Any] = {}
    for i, (scenario, slots) in enumerate(plan.scale_slots.items()):
        t0 = time.perf_counter()
        env = spectrum_env(scenario, seed)
        states = [env.reset()]
        for _ in range(slots - 1):
            states.append(env.step(np.zeros(states[-1].num_res, np.int64)).state)
        pset.get("km")
        km_util, km_ms, _, km_cpu = _play(states, "km", pset, seed)
        if scenario == "scale-III":
            keep = {"states": states, "km_util": km_util}
        n, r, busy = scenario_shape(scenario)
        active = float(np.mean([s.user_eligible.sum() for s in states]))
        km_p50 = pct(km_ms, 50)
        rows.append(
            ScaleRow(
                scenario,
                n,
                r,
                busy,
                active,
                "km",
                slots,
                1.0,
                km_p50,
                max(km_ms),
                km_p50,
                1.0,
                cpu_p50_ms=pct(km_cpu, 50),
            )
        )
        for policy in policies:
            if policy == "grouped_km" and n < 100:
                continue  # blocks of 100: identical to km below 100 users
            try:
                pset.get(policy)  # build the instance (load a model) outside the timed decisions
                util, ms, pnotes, cpu = _play(states, policy, pset, seed)
            except GnbSchedError as exc:
                notes.append(f"scale {scenario}/{policy}: failed: {exc}")
                continue
            ratio = float(np.sum(util) / np.sum(km_util)) if np.sum(km_util) > 0 else math.nan
            cert = None
            if policy == "auction":
                cert = float(
                    np.mean([bool(x.get("certified_optimal")) or x.get("stage") == "dense_exact" for x in pnotes])
                )
            p50 = pct(ms, 50)
            rows.append(
                ScaleRow(
                    scenario,
                    n,
                    r,
                    busy,
                    active,
                    policy,
                    slots,
                    ratio,
                    p50,
                    max(ms),
                    km_p50,
                    km_p50 / p50 if p50 > 0 else math.nan,
                    cert,
                    pct(cpu, 50),
                )
            )
        log(
            f"scale {i + 1}/{len(plan.scale_slots)} {scenario}: {len(policies) + 1} policies × {slots} slots "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    return rows, keep


# ----------------------------------------------------------------------------- 2. anytime


@dataclass
class AnytimeRow:
    deadline_ms: float
    ratio_to_km: float
    time_p50_ms: float
    time_max_ms: float
    stages: dict[str, int]
    fell_back: int


def run_anytime(plan: Plan, kept: dict, seed: int) -> list[AnytimeRow]:
    """``auction`` at Scale III with a per-slot deadline (no fallback: the policy itself must answer)."""
    states = kept.get("states", [])[: plan.anytime_slots]
    if not states:
        return []
    km_util = kept["km_util"][: len(states)]
    rows = []
    pset = PolicySet()
    _play(states[:2], "auction", pset, seed)  # warm the instance's stage-cost estimates
    for dl in plan.anytime_deadlines_ms:
        util, ms, notes = [], [], []
        fell = 0
        history = _known_cell(states[0])
        for state in states:
            d = decide(state, history, "auction", policies=pset, fallbacks=("random",), seed=seed, deadline_s=dl / 1e3)
            history = record_decision(history, state, d.owner)
            fell += d.policy != "auction"
            util.append(d.utility)
            ms.append(d.timings_us["total"] / 1e3)
            notes.append(str(d.notes.get("stage", d.policy)))
        stages: dict[str, int] = {}
        for s in notes:
            stages[s] = stages.get(s, 0) + 1
        rows.append(AnytimeRow(dl, float(np.sum(util) / np.sum(km_util)), pct(ms, 50), max(ms), stages, fell))
        log(f"anytime {dl:g} ms: ratio {rows[-1].ratio_to_km:.4f}, stages {stages}")
    return rows


# ----------------------------------------------------------------------------- 3. stages


@dataclass
class StageRow:
    preset: str
    policy: str
    num_ue: int
    num_res: int
    stage_p50_us: dict[str, float]
    schedule_p50_us: float
    schedule_p99_us: float
    core_overhead_p50_us: float


def run_stages(plan: Plan, seed: int, notes: list[str]) -> list[StageRow]:
    """``ServiceCore.schedule`` in process (memory store), N = 100, R = 69: stage times from the
    decision, and what the core adds (store load / save, feedback, history update). No fallback
    chain, so every row measures the policy it names."""
    rows = []
    for preset, policies in STAGE_POLICIES.items():
        states = slot_states(preset, 100, plan.stage_slots, seed)
        for policy in [*policies, *(["student"] if student_available(preset) else [])]:
            core = ServiceCore(Settings(fallbacks=[]), store=open_store("memory://"))
            try:
                for s in states[:10]:
                    core.schedule(s, policy=policy)
            except GnbSchedError as exc:
                notes.append(f"stages {preset}/{policy}: failed: {exc}")
                continue
            stage: dict[str, list[float]] = {k: [] for k in STAGES}
            wall, over = [], []
            for s in states:
                t0 = time.perf_counter_ns()
                d = core.schedule(replace(s, cell_id="stages"), policy=policy)
                dt = (time.perf_counter_ns() - t0) / 1e3
                wall.append(dt)
                over.append(dt - d.timings_us["total"])
                for k in STAGES:
                    stage[k].append(d.timings_us.get(k, 0.0))
            rows.append(
                StageRow(
                    preset,
                    policy,
                    100,
                    NUM_RBG,
                    {k: round(pct(v, 50), 2) for k, v in stage.items()},
                    pct(wall, 50),
                    pct(wall, 99),
                    pct(over, 50),
                )
            )
            log(f"stages {preset}/{policy}: schedule p50 {rows[-1].schedule_p50_us:.0f} µs")
    return rows


# ----------------------------------------------------------------------------- 4. guard


@dataclass
class GuardRow:
    preset: str
    policy: str
    reference: str
    num_ue: int
    num_res: int
    slots: int
    off_p50_us: float  # ServiceCore.schedule wall time, guard off
    on_p50_us: float  # the same, guard on (the reference decided on every slot)
    ratio: float  # on / off
    guard_stage_p50_us: float  # the decision's own ``timings_us["guard"]``
    engaged_share: float  # slots the guard served the reference on (these states: no feedback)


def run_guard(plan: Plan, seed: int, notes: list[str]) -> list[GuardRow]:
    """The student at N = 100, R = 69 (mac) through ``ServiceCore.schedule`` with the guard on
    and off, alternating slot by slot on the same states (one cell per core), p50 wall time;
    "on" also clears ``guard_exempt`` (empty by default), so the figure is what guarding costs
    whatever a deployment exempts."""
    preset = "mac"
    if not student_available(preset):
        notes.append("guard: no mac student model, so the guard cost is not measured")
        return []
    states = slot_states(preset, 100, plan.stage_slots, seed)
    off = ServiceCore(Settings(fallbacks=[], guard_enabled=False), store=open_store("memory://"))
    on = ServiceCore(Settings(fallbacks=[], guard_enabled=True, guard_exempt=[]), store=open_store("memory://"))
    assert on.guard is not None
    reference = on.guard.reference_for("student", preset) or "none"
    for core in (off, on):
        for st in states[:10]:
            core.schedule(replace(st, cell_id="guard-warmup"), policy="student")
    wall: dict[str, list[float]] = {"off": [], "on": []}
    guard_us: list[float] = []
    engaged = 0
    for st in states:
        for key, core in (("off", off), ("on", on)):
            t0 = time.perf_counter_ns()
            d = core.schedule(replace(st, cell_id="guard"), policy="student")
            wall[key].append((time.perf_counter_ns() - t0) / 1e3)
            if key == "on":
                guard_us.append(d.timings_us.get("guard", 0.0))
                engaged += d.fallback_reason == "guard"
    for core in (off, on):
        core.close()
    row = GuardRow(
        preset,
        "student",
        reference,
        100,
        NUM_RBG,
        len(states),
        pct(wall["off"], 50),
        pct(wall["on"], 50),
        pct(wall["on"], 50) / pct(wall["off"], 50),
        pct(guard_us, 50),
        engaged / len(states),
    )
    log(f"guard {preset}/student: off {row.off_p50_us:.0f} µs, on {row.on_p50_us:.0f} µs ({row.ratio:.2f}×)")
    return [row]


# ----------------------------------------------------------------------------- 5. inference per TTI


@dataclass
class InferenceRow:
    """One (execution provider, cells per TTI): the student on C mac cells of N users, R RBGs."""

    provider: str  # onnxruntime's name, e.g. CPUExecutionProvider
    cells: int
    num_ue: int
    num_res: int
    ttis: int
    infer_p50_ms: float  # the one onnxruntime call of the TTI (padded batch in, logits out)
    infer_p99_ms: float
    act_p50_ms: float  # act_many: every cell serialized, the call, every cell decoded
    act_p99_ms: float

    @property
    def infer_per_cell_us(self) -> float:
        return self.infer_p50_ms * 1e3 / self.cells


def gpu_status() -> tuple[bool, str]:
    """(a CUDA execution provider is usable, the line the report prints about it)."""
    import onnxruntime as ort

    from service.policies.student_model import CUDA, cuda_device_count

    available = ort.get_available_providers()
    devices = cuda_device_count()
    if CUDA in available and devices > 0:
        return True, f"GPU: onnxruntime {ort.__version__} with {CUDA}, {devices} CUDA device(s)"
    why = "onnxruntime has no CUDA provider (install gnbsched[gpu])" if CUDA not in available else "no CUDA device"
    return False, f"no GPU: {why}; onnxruntime {ort.__version__} providers {', '.join(available)}"


def run_inference(plan: Plan, seed: int, notes: list[str]) -> tuple[list[InferenceRow], str]:
    """The mac student's batched inference per TTI for every ``plan.inference_cells`` C, on the
    CPU and, where present, CUDA. The C cells cycle over 20 distinct slots of N = 100 users (each
    with an empty history); p50 / p99 over ``plan.inference_ttis`` TTIs (fewer for large C)."""
    from service.policies.base import PolicyContext
    from service.policies.student import StudentPolicy
    from service.policies.student_model import CPU, CUDA, default_model_dir
    from service.serialize.tensors import StudentBatch, serialize

    has_gpu, line = gpu_status()
    if not student_available("mac"):
        notes.append("inference per TTI: no mac student model is installed")
        return [], line
    num_ue, num_res = 100, plan.tti_shapes[0][2]
    distinct = mac_states(num_ue, 20, seed, num_res)
    rows: list[InferenceRow] = []
    for providers in [[CPU]] + ([[CUDA, CPU]] if has_gpu else []):
        student = StudentPolicy(default_model_dir(), presets=("mac",), providers=providers)
        model = student.model("mac")
        assert model is not None
        used = model.session.get_providers()[0]
        for cells in plan.inference_cells:
            states = [distinct[k % len(distinct)] for k in range(cells)]
            ctxs = [PolicyContext(CellHistory.empty().view(st), np.random.default_rng(0)) for st in states]
            batch = StudentBatch.of([serialize(st) for st in states])
            ttis = max(3, min(plan.inference_ttis, int(plan.inference_ttis * 8 / cells)))
            infer, act = [], []
            for k in range(ttis + 2):  # two warm-up TTIs (first-call allocations, CUDA kernels)
                t0 = time.perf_counter_ns()
                model.logits_batch(batch)
                t1 = time.perf_counter_ns()
                out = student.act_many(states, ctxs)
                t2 = time.perf_counter_ns()
                if k >= 2:
                    infer.append((t1 - t0) / 1e6)
                    act.append((t2 - t1) / 1e6)
            bad = [raw for raw, _, _ in out if isinstance(raw, Exception)]
            if bad:
                notes.append(f"inference per TTI: {len(bad)} of {cells} cells failed on {used}: {bad[0]!r}")
            row = InferenceRow(
                used, cells, num_ue, num_res, ttis, pct(infer, 50), pct(infer, 99), pct(act, 50), pct(act, 99)
            )
            rows.append(row)
            log(
                f"inference {used} C={cells}: call p50 {row.infer_p50_ms:.3f} ms "
                f"({row.infer_per_cell_us:.1f} µs per cell), act_many p50 {row.act_p50_ms:.3f} ms"
            )
    log(line)
    return rows, line
