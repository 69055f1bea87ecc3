"""The figures of one ``gnbsched bench perf`` run (``Results``), what they are judged against
(``TARGETS``) and compared with (``PAPER``), and their JSON form (``docs/bench/perf.json``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from service.bench.perf.e2e import E2ERow, LoadRow
from service.bench.perf.inprocess import AnytimeRow, GuardRow, InferenceRow, ScaleRow, StageRow
from service.bench.perf.tti import TtiRow

#: the figures and the raw numbers, relative to ``--out``
FIG_DIR = Path("docs") / "bench"
RESULTS_FILE = FIG_DIR / "perf.json"


class PaperFigures(TypedDict):
    """The papers' reported figures the report compares against (units in the key names)."""

    lsa_llm_s_per_decision: tuple[float, float]  # (low, high)
    lsa_llm_ratio_to_km: float
    lsa_llm_scenario: str
    lsa_km_ms: float
    stackelberg_llama_ms: float


#: the papers' own figures (LSA: arXiv LLM spectrum access; Stackelberg: agentic MAC)
PAPER: PaperFigures = {
    "lsa_llm_s_per_decision": (7.2, 7.8),
    "lsa_llm_ratio_to_km": 0.966,
    "lsa_llm_scenario": "u15-c20-b8",
    "lsa_km_ms": 15.5,
    "stackelberg_llama_ms": 12.85,
}
#: the service's targets: quality and time at Scale III, latency at N = 100, R = 69
#: and (the product's issue on batched calls) per batched TTI, per core, and against the echo floor
TARGETS = {
    "scale_ratio": 0.995,
    "scale_p50_ms": 50.0,
    "grpc_stream_p99_ms": 1.0,
    "rest_p50_ms": 1.0,
    # batched TTI, 8 cells × N = 32 × R = 68, student: p99 per TTI
    "tti_8x32_student_p99_ms": 0.5,
    # decisions per second per core, batched, N = 32, R = 68
    "tti_decisions_per_core_s": 16000.0,
    # 20 cells × 100 users × R = 68 per TTI, on CPU: p99
    "tti_20x100_p99_ms": 2.0,
    # one cell over a gRPC stream, N = 100, R = 69, student: p99, and as a multiple of the echo floor's p99
    "single_stream_student_p99_ms": 0.5,
    "single_stream_to_floor": 2.0,
    # 20 cells × 100 users × R = 68 per TTI on a GPU (the student's batched inference): p99
    "tti_20x100_gpu_p99_ms": 0.5,
    # the single-cell stream (N = 100, R = 69, student) with 4 clients' streams at once: p99 per message
    "concurrent_stream_student_p99_ms": 1.0,
    # one cell over REST, N = 100: p50
    "rest_single_p50_ms": 0.5,
    # the anytime ladder at Scale III: the ratio to KM at a 10 ms deadline (and never lower at a longer one)
    "anytime_10ms_ratio": 0.95,
}


@dataclass
class Results:
    """Every row of one run; ``meta``: command, date, seed, quick, machine, load, wall time."""

    meta: dict[str, Any]
    scale: list[ScaleRow] = field(default_factory=list)
    anytime: list[AnytimeRow] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    guard: list[GuardRow] = field(default_factory=list)
    inference: list[InferenceRow] = field(default_factory=list)
    gpu: str = ""  # the GPU line: which CUDA provider and devices, or "no GPU: why"
    e2e: list[E2ERow] = field(default_factory=list)
    load: list[LoadRow] = field(default_factory=list)
    tti: list[TtiRow] = field(default_factory=list)
    rss_mib: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document (non-finite floats as None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "meta": self.meta,
                "paper": PAPER,
                "targets": TARGETS,
                "scale": [asdict(r) for r in self.scale],
                "anytime": [asdict(r) for r in self.anytime],
                "stages": [asdict(r) for r in self.stages],
                "guard": [asdict(r) for r in self.guard],
                "inference": [{**asdict(r), "infer_per_cell_us": r.infer_per_cell_us} for r in self.inference],
                "gpu": self.gpu,
                "e2e": [asdict(r) for r in self.e2e],
                "load": [asdict(r) for r in self.load],
                "tti": [
                    {**asdict(r), "shape": r.shape, "service_outside_p50_ms": r.service_outside_p50_ms}
                    for r in self.tti
                ],
                "rss_mib": self.rss_mib,
                "notes": self.notes,
            }
        )

    def scale_row(self, scenario: str, policy: str) -> ScaleRow | None:
        return next((r for r in self.scale if r.scenario == scenario and r.policy == policy), None)

    def e2e_row(self, preset: str, n: int, transport: str) -> E2ERow | None:
        return next((r for r in self.e2e if r.preset == preset and r.num_ue == n and r.transport == transport), None)

    def tti_row(self, transport: str, policy: str, cells: int, num_ue: int) -> TtiRow | None:
        return next(
            (
                r
                for r in self.tti
                if r.transport == transport and r.policy == policy and r.cells == cells and r.num_ue == num_ue
            ),
            None,
        )
