"""The report of ``gnbsched bench perf``: its sections of ``BENCHMARKS.md`` (targets, the tables
of every measurement, the papers' figures beside ours, the figures' links, notes) and the
summary it prints. Every section carries the command and configuration of the run
(``service.bench.benchmarks_md``); the other suites' sections of the file are kept."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path
from typing import Any

from service.bench.benchmarks_md import REPORT_NAME, Producer, md_table, update
from service.bench.perf.e2e import LoadRow
from service.bench.perf.plan import NUM_RBG
from service.bench.perf.results import PAPER, RESULTS_FILE, TARGETS, Results
from service.bench.perf.tti import (
    CONCURRENT_CLIENTS,
    CONCURRENT_SLOTS,
    REST_SINGLE,
    SINGLE_NUM_UE,
    STREAM_SLOTS,
    STREAM_TTIS,
    TtiRow,
)
from service.pipeline import STAGES


def _ms(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _ok(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def target_lines(res: Results) -> list[str]:
    """One Markdown bullet per target: the measured figure and **met** / **missed**."""
    lines = []
    a3 = res.scale_row("scale-III", "auction")
    if a3 is not None:
        lines.append(
            f"- Scale III (2000 users, 2000 channels, 400 busy; fading): `auction` reaches "
            f"{a3.ratio_to_km:.4%} of the exact optimum (target ≥ {TARGETS['scale_ratio']:.1%}) with p50 "
            f"{a3.time_p50_ms:.1f} ms per decision (target ≤ {TARGETS['scale_p50_ms']:.0f} ms): "
            f"{_ok(a3.ratio_to_km >= TARGETS['scale_ratio'] and a3.time_p50_ms <= TARGETS['scale_p50_ms'])}"
            f" — {a3.cpu_p50_ms:.1f} ms of CPU; KM takes {a3.km_time_p50_ms:.0f} ms "
            f"({a3.speedup_vs_km:.0f}× slower)."
        )
    else:
        lines.append("- Scale III: not measured in this run (`--quick`).")
    lines += anytime_target_lines(res)
    s = res.e2e_row("mac", 100, "grpc-stream")
    r = res.e2e_row("mac", 100, "rest")
    if s is not None:
        lines.append(
            f"- gRPC stream at N = 100, R = 69 (mac, pf): p99 {s.p99_ms:.3f} ms (target ≤ "
            f"{TARGETS['grpc_stream_p99_ms']:.0f} ms): {_ok(s.p99_ms <= TARGETS['grpc_stream_p99_ms'])}"
        )
    if r is not None:
        lines.append(
            f"- REST at N = 100, R = 69 (mac, pf): p50 {r.p50_ms:.3f} ms (target ≤ "
            f"{TARGETS['rest_p50_ms']:.0f} ms): {_ok(r.p50_ms <= TARGETS['rest_p50_ms'])}"
        )
    if res.tti:
        lines += tti_target_lines(res)
    return lines


def anytime_target_lines(res: Results) -> list[str]:
    """The anytime ladder at Scale III: the ratio to KM never lower at a longer deadline, and at
    least ``anytime_10ms_ratio`` at 10 ms (with the stage the 10 ms decisions came from)."""
    if not res.anytime:
        return []
    rows = sorted(res.anytime, key=lambda r: r.deadline_ms)
    drops = [(a, b) for a, b in pairwise(rows) if b.ratio_to_km < a.ratio_to_km - 1e-9]
    span = f"{rows[0].deadline_ms:g}–{rows[-1].deadline_ms:g} ms"
    mono = (
        f"- anytime ladder at Scale III, deadlines {span}: the ratio to KM never decreases as the deadline grows: "
        + (
            f"{_ok(True)} ({' → '.join(f'{r.ratio_to_km:.3f}' for r in rows)})."
            if not drops
            else f"{_ok(False)} ("
            + "; ".join(
                f"{b.ratio_to_km:.4f} at {b.deadline_ms:g} ms < {a.ratio_to_km:.4f} at {a.deadline_ms:g} ms"
                for a, b in drops
            )
            + ")."
        )
    )
    lines = [mono]
    at10 = next((r for r in rows if r.deadline_ms == 10.0), None)
    t = TARGETS["anytime_10ms_ratio"]
    if at10 is not None:
        stages = ", ".join(f"{k}: {v}" for k, v in at10.stages.items())
        better = next((r for r in rows if r.ratio_to_km >= t), None)
        reach = (
            f"; the first deadline that reaches it: {better.deadline_ms:g} ms ({better.ratio_to_km:.4f}, p50 "
            f"{better.time_p50_ms:.1f} ms)"
            if better is not None and at10.ratio_to_km < t
            else ""
        )
        lines.append(
            f"- anytime ladder at Scale III, 10 ms deadline: {at10.ratio_to_km:.4f} of the optimum (target ≥ {t:g}): "
            f"{_ok(at10.ratio_to_km >= t)} — stages reached: {stages}{reach}."
        )
    return lines


def _at_most(value: float, target: float, unit: str = "ms") -> str:
    """**met** / **missed** for "value ≤ target", with by how much."""
    if value <= target:
        return f"{_ok(True)} ({target - value:.3f} {unit} to spare)"
    return f"{_ok(False)} by {value - target:.3f} {unit} ({value / target:.1f}× the target)"


def _at_least(value: float, target: float) -> str:
    """**met** / **missed** for "value ≥ target", with by how much."""
    if value >= target:
        return f"{_ok(True)} ({value / target:.2f}× the target)"
    return f"{_ok(False)} by {target - value:,.0f} ({value / target:.1%} of the target)"


def _floor(row: TtiRow, q: str = "p99") -> str:
    fl = getattr(row, f"floor_{q}_ms")
    return "" if fl is None else f"; echo floor {q} {fl:.3f} ms ({getattr(row, f'{q}_to_floor'):.1f}× it)"


def tti_target_lines(res: Results) -> list[str]:
    """The batched-TTI and echo-floor targets: one Markdown bullet each, **met** / **missed**
    and by how much (gRPC ``StreamTtis``: the per-TTI transport)."""
    lines = []
    policies = list(dict.fromkeys(r.policy for r in res.tti))
    s8 = res.tti_row(STREAM_TTIS, "student", 8, 32)
    t = TARGETS["tti_8x32_student_p99_ms"]
    if s8 is not None:
        lines.append(
            f"- batched TTI, 8 cells × N = 32 × R = 68, student (gRPC `StreamTtis`, one call per TTI): p99 "
            f"{s8.p99_ms:.3f} ms per TTI (target ≤ {t:g} ms): {_at_most(s8.p99_ms, t)}{_floor(s8)}."
        )
    else:
        lines.append("- batched TTI, 8 cells × N = 32 × R = 68, student: not measured (no student model, or failed).")
    t = TARGETS["tti_decisions_per_core_s"]
    for pol in policies:
        row = res.tti_row(STREAM_TTIS, pol, 8, 32)
        if row is not None:
            lines.append(
                f"- decisions per second per core, batched (`StreamTtis`, 8 cells), N = 32, R = 68, {pol}: "
                f"{row.decisions_per_cpu_s:,.0f} per CPU-second of the server process "
                f"({row.decisions_per_s:,.0f}/s wall, one lock-step client) (target ≥ {t:,.0f}): "
                f"{_at_least(row.decisions_per_cpu_s, t)}."
            )
    t = TARGETS["tti_20x100_p99_ms"]
    for pol in policies:
        row = res.tti_row(STREAM_TTIS, pol, 20, 100)
        if row is not None:
            lines.append(
                f"- 20 cells × 100 users × R = 68 per TTI, CPU, {pol} (`StreamTtis`): p99 {row.p99_ms:.3f} ms "
                f"(target ≤ {t:g} ms): {_at_most(row.p99_ms, t)}{_floor(row)}."
            )
    if not any(r.cells == 20 for r in res.tti):
        lines.append("- 20 cells × 100 users × R = 68 per TTI: not measured in this run (`--quick`).")
    t = TARGETS["tti_20x100_gpu_p99_ms"]
    gpu = next((r for r in res.inference if r.cells == 20 and not r.provider.startswith("CPU")), None)
    if gpu is not None:
        lines.append(
            f"- 20 cells × 100 users × R = 68 per TTI, GPU ({gpu.provider}), student in process (`act_many`: "
            f"serialize, one inference, decode): p99 {gpu.act_p99_ms:.3f} ms (target ≤ {t:g} ms): "
            f"{_at_most(gpu.act_p99_ms, t)}; the inference call alone p99 {gpu.infer_p99_ms:.3f} ms."
        )
    elif res.gpu:
        lines.append(f"- 20 cells × 100 users × R = 68 per TTI, GPU (target p99 ≤ {t:g} ms): not measured — {res.gpu}.")
    one = res.tti_row(STREAM_SLOTS, "student", 1, SINGLE_NUM_UE)
    t, k = TARGETS["single_stream_student_p99_ms"], TARGETS["single_stream_to_floor"]
    if one is not None:
        if one.floor_p99_ms is None or one.p99_to_floor is None:
            ratio, met = "the echo floor was not measured", False
        else:
            ok_ratio = one.p99_to_floor <= k
            ratio = (
                f"echo floor p99 {one.floor_p99_ms:.3f} ms, so {one.p99_to_floor:.1f}× it (≤ {k:g}×: {_ok(ok_ratio)}"
                + ("" if ok_ratio else f", {one.p99_to_floor / k:.1f}× the allowed ratio")
                + ")"
            )
            met = one.p99_ms <= t and ok_ratio
        lines.append(
            f"- single cell over a gRPC stream (`StreamSlots`), N = {SINGLE_NUM_UE}, R = {NUM_RBG}, student: p99 "
            f"{one.p99_ms:.3f} ms (≤ {t:g} ms: {_at_most(one.p99_ms, t)}); {ratio} — target p99 ≤ {t:g} ms and "
            f"≤ {k:g}× the echo floor: {_ok(met)}."
        )
    many = res.tti_row(CONCURRENT_SLOTS, "student", 1, SINGLE_NUM_UE)
    t = TARGETS["concurrent_stream_student_p99_ms"]
    if many is not None:
        lines.append(
            f"- the same single cell with {CONCURRENT_CLIENTS} concurrent client streams (one cell each), student: "
            f"p99 {many.p99_ms:.3f} ms per message (target ≤ {t:g} ms): {_at_most(many.p99_ms, t)}{_floor(many)}."
        )
    t = TARGETS["rest_single_p50_ms"]
    for pol in policies:
        rest = res.tti_row(REST_SINGLE, pol, 1, SINGLE_NUM_UE)
        if rest is not None:
            floor = (
                ""
                if rest.floor_p50_ms is None
                else f"; {rest.p50_to_floor:.1f}× the HTTP echo floor ({rest.floor_p50_ms:.3f} ms p50)"
            )
            lines.append(
                f"- REST single cell, N = {SINGLE_NUM_UE}, R = {NUM_RBG}, {pol}: p50 {rest.p50_ms:.3f} ms (target ≤ "
                f"{t:g} ms): {_at_most(rest.p50_ms, t)}{floor}."
            )
    return lines


def _per_worker(res: Results, row: LoadRow) -> str:
    """decisions/s of ``row`` over the 1-worker row of its transport ("" when there is none)."""
    one = next((r for r in res.load if r.workers == 1 and r.transport == row.transport), None)
    return f"{row.decisions_per_s / one.decisions_per_s:.2f}×" if one is not None and one.decisions_per_s > 0 else ""


def _transport(row: TtiRow) -> str:
    """The row's transport, with its calls per TTI or its concurrent clients."""
    if row.transport == CONCURRENT_SLOTS:
        return f"{row.transport} ({CONCURRENT_CLIENTS} clients)"
    return row.transport if row.calls_per_tti == 1 else f"{row.transport} ({row.calls_per_tti} calls)"


def _server_ms(row: TtiRow) -> float | None:
    """The server's own stages (decode, state, encode) per TTI, ms: their mean per cell × cells."""
    if not row.server_stages_us:
        return None
    return sum(row.server_stages_us.values()) * row.cells / 1e3


def _server_parts(row: TtiRow) -> str:
    return ", ".join(f"{k} {v * row.cells / 1e3:.2f}" for k, v in row.server_stages_us.items())


def _stages(row: TtiRow) -> str:
    return ", ".join(f"{k} {v / 1e3:.2f}" for k, v in row.stages_p50_us.items() if v >= 5.0)


def _pct_of(part: float | None, whole: float) -> str:
    return "" if part is None or not math.isfinite(part) or whole <= 0 else f"{part:.3f} ({part / whole:.0%})"


def tti_sections(res: Results, by: Producer) -> list[str]:
    """The batched-TTI section (latency, throughput, batched / single, where the time goes) and
    the echo-floor section."""
    if not res.tti:
        return []
    batched = [r for r in res.tti if r.cells > 1]
    out = []
    rows = []
    for r in batched:
        single = "" if r.p50_to_single is None else f"{r.p50_to_single:.2f} / {r.p99_to_single:.2f}"
        rows.append(
            [
                r.shape,
                r.policy,
                _transport(r),
                r.ttis,
                f"{r.p50_ms:.3f}",
                f"{r.p99_ms:.3f}",
                f"{r.decisions_per_s:,.0f}",
                f"{r.decisions_per_cpu_s:,.0f}",
                "" if r.floor_p99_ms is None else f"{r.floor_p50_ms:.3f} / {r.floor_p99_ms:.3f}",
                "" if r.p99_to_floor is None else f"{r.p50_to_floor:.1f}× / {r.p99_to_floor:.1f}×",
                single,
                r.fallbacks,
            ]
        )
    where = []
    for r in batched:
        svc = r.service_outside_p50_ms
        own = _server_ms(r)
        where.append(
            [
                r.shape,
                r.policy,
                _transport(r),
                f"{r.p50_ms:.3f}",
                _pct_of(r.pipeline_p50_ms, r.p50_ms),
                _stages(r),
                _pct_of(r.floor_p50_ms, r.p50_ms),
                _pct_of(svc, r.p50_ms),
                "" if own is None else f"{own:.3f} ({_server_parts(r)})",
                "" if own is None or svc is None else f"{svc - own:.3f}",
                f"{r.server_cpu_ms_per_tti:.2f}",
                f"{r.request_bytes:,} / {r.answer_bytes:,}",
            ]
        )
    story = []
    for pol in dict.fromkeys(r.policy for r in batched):
        head = res.tti_row(STREAM_TTIS, pol, 8, 32)
        if head is None or head.floor_p50_ms is None or head.service_outside_p50_ms is None:
            continue
        svc = head.service_outside_p50_ms
        own = _server_ms(head)
        measured = (
            ""
            if own is None
            else f" Of it, {own:.3f} ms is measured in the server cell by cell ({_server_parts(head)} ms: "
            "the request decoded and checked, the cell's record loaded, ruled on and written, the answer "
            f"built), and {svc - own:.3f} ms is the rest: the call's (de)serialization, the event loop and "
            "the transport's dispatch beyond the echo server's."
        )
        story += [
            "",
            f"Where the time goes, {head.shape} {head.policy} over `{head.transport}` (p50 {head.p50_ms:.3f} ms per "
            f"TTI): {head.pipeline_p50_ms:.3f} ms ({head.pipeline_p50_ms / head.p50_ms:.0%}) is the {head.cells} "
            f"cells' decision pipelines ({head.pipeline_p50_ms / head.cells:.3f} ms per cell; summed over the "
            f"cells: {_stages(head)} ms; a policy that batches — the student (one onnxruntime call), the "
            "baselines (one compiled call) — acts once for the TTI, the PAG check of the TTI's DCMs is one "
            "compiled call, and each cell's time holds an equal share of them); "
            f"{head.floor_p50_ms:.3f} ms ({head.floor_p50_ms / head.p50_ms:.0%}) is the transport floor (the echo "
            f"server, same bytes); {svc:.3f} ms ({svc / head.p50_ms:.0%}, {svc / head.cells:.3f} ms per cell) is the "
            "service's own work around the pipelines (request decode and validation, per-cell state load / save "
            f"and history, answer encode, event loop).{measured} Batching saves the per-call transport and "
            "dispatch (see "
            "*batched / single*), the per-cell calls of the policy and of the PAG check (one compiled call each "
            "per TTI; the guard's references likewise) and, for the student, the per-cell serialization, range "
            "check and inference calls (one compiled pass and one onnxruntime call per TTI); the request decode, "
            "the student's decode of its logits, repair of an invalid output and the state work are done cell "
            "by cell.",
        ]
    out.append(
        by.section(
            "Batched TTIs: every cell of a TTI in one call",
            [
                "Per TTI, C mac cells of N users on R = 68 RBGs (the UEs' spectral efficiency and buffers; the service "
                "computes the TBS), all decided in one call by the real `gnbsched serve` on loopback, one client in "
                "lock-step: gRPC `StreamTtis` (one stream, one `CellsRequest` per TTI), gRPC `ScheduleCells` (unary), "
                "REST `POST /schedule/batch` (keep-alive connection, JSON); and, for comparison, the same C cells as "
                "C single-cell calls one after the other over one `StreamSlots` stream. Every cell id is fresh per "
                "row and its slots increase (no replays; checked). *decisions/s* = decisions / Σ TTI latency of the "
                "one client; *per server CPU-s* = decisions / CPU time of the server process (all its threads), "
                "what one core sustains; *echo floor* = the same requests and client against a bare server answering "
                "the same bytes (next section); *batched / single* = this row's p50 / p99 over the C single-cell "
                "calls' p50 / p99; *fallbacks* = decisions served by another policy.",
                "",
                md_table(
                    [
                        "C×N×R",
                        "policy",
                        "transport",
                        "TTIs",
                        "p50 per TTI (ms)",
                        "p99 per TTI (ms)",
                        "decisions/s (1 client)",
                        "decisions per server CPU-s",
                        "echo floor p50 / p99 (ms)",
                        "÷ floor p50 / p99",
                        "batched / single p50 / p99",
                        "fallbacks",
                    ],
                    rows,
                ),
                "",
                "Where the time goes, p50 per TTI: *Σ pipeline* = the decisions' own `timings_us.total` summed over "
                "the TTI's cells (the stages summed likewise: policy, the student's feature `serialize`, its `guard`, "
                "the PAG `check`, `repair`); *transport floor* = the echo floor's p50; *service outside the "
                "pipeline* = latency − Σ pipeline − floor (decode, validation, per-cell state, encode, event loop); "
                "*decode + state + encode* = the server's own stages measured cell by cell "
                '(`gnbsched_stage_seconds{stage="decode"|"state"|"encode"}`: the request decoded and '
                "checked; the cell's record loaded, ruled on, written and the decision counted; the answer "
                "built), mean per cell × C; *the rest* = service outside the pipeline − those (the call's "
                "(de)serialization, the event loop, the transport's dispatch beyond the echo server's). "
                "*server CPU* = CPU time of the server process per TTI.",
                "",
                md_table(
                    [
                        "C×N×R",
                        "policy",
                        "transport",
                        "p50 (ms)",
                        "Σ pipeline (ms, share)",
                        "Σ stages (ms)",
                        "transport floor (ms, share)",
                        "service outside the pipeline (ms, share)",
                        "decode + state + encode (ms)",
                        "the rest (ms)",
                        "server CPU per TTI (ms)",
                        "bytes per TTI in / out",
                    ],
                    where,
                ),
                *story,
            ],
        )
    )
    floor_rows = [
        [
            r.shape,
            r.policy,
            _transport(r),
            f"{r.request_bytes:,} / {r.answer_bytes:,}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            _ms(r.floor_p50_ms),
            _ms(r.floor_p99_ms),
            "" if r.p50_to_floor is None else f"{r.p50_to_floor:.1f}×",
            "" if r.p99_to_floor is None else f"{r.p99_to_floor:.1f}×",
        ]
        for r in res.tti
    ]
    out.append(
        by.section(
            "The echo floor: the transport alone",
            [
                "A bare server in its own process on the service's stack (uvicorn + httptools on the same event "
                "loop as a `grpc.aio` server, `service.bench.perf.echo`) answers every gRPC message and HTTP request "
                "with the row's real answer, pre-serialized (the same `CellsDecision` / `SlotDecision` / JSON bytes), "
                "and does no work. The same requests are sent by the same client code as to the service (gRPC "
                "`grpc.aio`, REST `http.client`), so *÷ floor* is how many times the transport alone the service "
                f"takes. Rows 1×{SINGLE_NUM_UE}×{NUM_RBG}: one cell per call (`StreamSlots`, `POST /schedule`; "
                f"with {CONCURRENT_CLIENTS} clients: {CONCURRENT_CLIENTS} cells, each its own client and stream, at "
                "once, the latency per message over every client); the others: one TTI per row as in the section "
                "above. Measured right after the service, on the same machine.",
                "",
                md_table(
                    [
                        "C×N×R",
                        "policy",
                        "transport",
                        "bytes in / out",
                        "service p50 (ms)",
                        "service p99 (ms)",
                        "floor p50 (ms)",
                        "floor p99 (ms)",
                        "÷ floor p50",
                        "÷ floor p99",
                    ],
                    floor_rows,
                ),
            ],
        )
    )
    return out


def paper_lines(res: Results) -> list[str]:
    """The table of the papers' figures beside ours (one Markdown table, as a one-line list)."""
    lo, hi = PAPER["lsa_llm_s_per_decision"]
    rows: list[list[Any]] = [["LSA: LLM policy, time per decision (ultra-dense scales)", f"{lo}–{hi} s", "", ""]]
    a3 = res.scale_row("scale-III", "auction")
    if a3 is not None:
        rows[-1][2:] = [
            f"`auction` at Scale III: {a3.time_p50_ms:.1f} ms p50 (ratio {a3.ratio_to_km:.4f})",
            f"{lo * 1e3 / a3.time_p50_ms:.0f}× faster",
        ]
    sc = PAPER["lsa_llm_scenario"]
    a, km = res.scale_row(sc, "auction"), res.scale_row(sc, "km")
    stu = res.scale_row(sc, "student")
    ours_sc = [] if a is None else [f"`auction`: {a.ratio_to_km:.2%}"]
    if stu is not None:
        ours_sc.append(f"`student` (ONNX, distilled): {stu.ratio_to_km:.2%} in {stu.time_p50_ms:.3f} ms")
    rows.append(
        ["LSA: LLM policy, share of KM at (15,20,8)", f"{PAPER['lsa_llm_ratio_to_km']:.1%}", "; ".join(ours_sc), ""]
    )
    rows.append(
        [
            "LSA: KM time at (15,20,8)",
            f"{PAPER['lsa_km_ms']} ms",
            "" if km is None else f"KM (scipy) through our pipeline: {km.time_p50_ms:.3f} ms p50",
            "" if km is None else f"{PAPER['lsa_km_ms'] / km.time_p50_ms:.0f}× faster",
        ]
    )
    st = next((r for r in res.stages if r.preset == "mac" and r.policy == "pf"), None)
    learned = next((r for r in res.stages if r.preset == "mac" and r.policy == "student"), None)
    s = res.e2e_row("mac", 100, "grpc-stream")
    ours = []
    if learned is not None:
        ours.append(f"`student` (ONNX) in process {learned.schedule_p50_us / 1e3:.3f} ms p50")
    if st is not None:
        ours.append(f"pf in process {st.schedule_p50_us / 1e3:.3f} ms p50")
    if s is not None:
        ours.append(f"over gRPC stream {s.p50_ms:.3f} ms p50 / {s.p99_ms:.3f} ms p99 (N = 100)")
    rows.append(
        [
            "Stackelberg: Llama-3.2-1B, time per decision",
            f"{PAPER['stackelberg_llama_ms']} ms",
            "; ".join(ours),
            "" if s is None else f"{PAPER['stackelberg_llama_ms'] / s.p50_ms:.0f}× faster",
        ]
    )
    return [md_table(["figure", "paper", "ours", "ratio"], rows)]


def producer(res: Results) -> Producer:
    """The command and configuration of the run, as the sections' headers state them."""
    m = res.meta
    return Producer(
        "perf", str(m.get("command", "gnbsched bench perf")), int(m.get("seed", 0)), bool(m.get("quick", False))
    )


def sections(out: Path, res: Results, figures: list[Path]) -> list[str]:
    """The perf sections of ``BENCHMARKS.md``, each with its header."""
    m = res.meta
    by = producer(res)
    run_line = (
        f" on {m['date']} in {m['wall_s']:.0f} s. Machine: {m['machine']}; load average at start / end "
        f"{m['load_start']} / {m['load_end']} (other work on the machine inflates every time of this run). "
        f"Raw figures in `{RESULTS_FILE.as_posix()}`."
    )
    out_sections = [by.section("Targets", target_lines(res), extra=run_line)]
    if res.scale:
        out_sections.append(
            by.section(
                "Our policies against the exact Hungarian solver, at every scale",
                [
                    "Spectrum access (SPEC §2: path loss, Rayleigh fading, bursty users, busy channels). Every policy plays "
                    "the same slots with its own cell history through `service.pipeline.decide`. *ratio* = Σ sum-rate / "
                    "Σ KM sum-rate on those slots; *time* = policy + PAG check + repair per decision; *speed-up* = KM's p50 "
                    "time / the policy's. *CPU* = CPU time of the deciding process per decision, which other work on a "
                    "shared machine does not inflate the way it inflates wall time. `auction` also proves optimality per "
                    "slot (LP duality certificate): *certified* is the share of its slots with a proof (instances below "
                    "160 000 pairs go to the dense exact solver, which is exact by construction).",
                    "",
                    md_table(
                        [
                            "scenario (N, R, busy)",
                            "active users",
                            "policy",
                            "slots",
                            "ratio to KM",
                            "time p50 (ms)",
                            "time max (ms)",
                            "CPU p50 (ms)",
                            "speed-up vs KM",
                            "certified",
                        ],
                        [
                            [
                                f"{r.scenario} ({r.num_ue},{r.num_channels},{r.num_busy})",
                                f"{r.mean_active_users:.0f}",
                                r.policy,
                                r.slots,
                                f"{r.ratio_to_km:.4f}",
                                f"{r.time_p50_ms:.3f}",
                                f"{r.time_max_ms:.3f}",
                                _ms(r.cpu_p50_ms),
                                f"{r.speedup_vs_km:.2f}×",
                                "" if r.certified_share is None else f"{r.certified_share:.0%}",
                            ]
                            for r in res.scale
                        ],
                    ),
                ],
            )
        )
    if res.anytime:
        out_sections.append(
            by.section(
                "Anytime: `auction` at Scale III under a per-slot deadline",
                [
                    "The deadline covers the whole pipeline (history view, policy, check, repair) of a cell that already "
                    "knows its users. At the deadline the policy returns its best decision so far, from the last stage it "
                    "completed: *sorted* (strongest users on the widest channels, O(n log n)), *sampled* (bids on 32 "
                    "seeded random channels per user), *coarse* (a few rounds of the auction with a large increment on "
                    "each user's best channels, completed by bids on the best free ones), *auction* (the auction's "
                    "assignment, completed likewise), *sparse_exact*, *certified_optimal* (proved optimal). *fallbacks* "
                    "counts slots where the pipeline had to replace it because it answered late (fallback chain: "
                    "`random`).",
                    "",
                    md_table(
                        [
                            "deadline (ms)",
                            "ratio to KM",
                            "time p50 (ms)",
                            "time max (ms)",
                            "stages reached",
                            "fallbacks",
                        ],
                        [
                            [
                                f"{r.deadline_ms:g}",
                                f"{r.ratio_to_km:.4f}",
                                f"{r.time_p50_ms:.2f}",
                                f"{r.time_max_ms:.2f}",
                                ", ".join(f"{k}: {v}" for k, v in r.stages.items()),
                                r.fell_back,
                            ]
                            for r in res.anytime
                        ],
                    ),
                ],
            )
        )
    if res.stages:
        out_sections.append(
            by.section(
                "Per-stage times in process (N = 100 users, R = 69 RBGs / channels)",
                [
                    "`ServiceCore.schedule` with the in-process store, p50 per stage in µs; *core* = what the core adds "
                    "around the pipeline (store load / save, history update).",
                    "",
                    md_table(
                        [
                            "preset",
                            "policy",
                            *[f"{k} (µs)" for k in STAGES],
                            "core (µs)",
                            "schedule p50 (µs)",
                            "schedule p99 (µs)",
                        ],
                        [
                            [
                                r.preset,
                                r.policy,
                                *[f"{r.stage_p50_us[k]:.1f}" for k in STAGES],
                                f"{r.core_overhead_p50_us:.1f}",
                                f"{r.schedule_p50_us:.1f}",
                                f"{r.schedule_p99_us:.1f}",
                            ]
                            for r in res.stages
                        ],
                    ),
                ],
            )
        )
    if res.guard:
        out_sections.append(
            by.section(
                "Cost of the run-time guard (N = 100 users, R = 69 RBGs)",
                [
                    "`ServiceCore.schedule` of the student with the guard off and on (the reference decided on the same "
                    "slot, both utilities windowed), alternating slot by slot on the same states; p50 wall time in µs.",
                    "",
                    md_table(
                        [
                            "preset",
                            "policy",
                            "reference",
                            "slots",
                            "guard off p50 (µs)",
                            "guard on p50 (µs)",
                            "on / off",
                            "guard stage p50 (µs)",
                        ],
                        [
                            [
                                r.preset,
                                r.policy,
                                r.reference,
                                r.slots,
                                f"{r.off_p50_us:.1f}",
                                f"{r.on_p50_us:.1f}",
                                f"{r.ratio:.2f}×",
                                f"{r.guard_stage_p50_us:.1f}",
                            ]
                            for r in res.guard
                        ],
                    ),
                ],
            )
        )
    if res.inference:
        out_sections.append(
            by.section(
                "The student's inference per TTI: one onnxruntime call for every cell",
                [
                    "In process, no server: the mac student (`StudentPolicy.act_many`) on C cells of N = 100 users "
                    "and R = 68 RBGs per TTI (20 distinct slots cycled over the cells, empty histories): every "
                    "cell serialized into one padded batch, **one** onnxruntime call, every cell decoded. *call* = "
                    "that onnxruntime call alone; *act_many* = the whole policy stage of the TTI; per execution "
                    "provider present. " + res.gpu + ".",
                    "",
                    md_table(
                        [
                            "provider",
                            "cells C",
                            "N",
                            "R",
                            "TTIs",
                            "call p50 (ms)",
                            "call p99 (ms)",
                            "call per cell p50 (µs)",
                            "act_many p50 (ms)",
                            "act_many p99 (ms)",
                        ],
                        [
                            [
                                r.provider,
                                r.cells,
                                r.num_ue,
                                r.num_res,
                                r.ttis,
                                f"{r.infer_p50_ms:.3f}",
                                f"{r.infer_p99_ms:.3f}",
                                f"{r.infer_per_cell_us:.1f}",
                                f"{r.act_p50_ms:.3f}",
                                f"{r.act_p99_ms:.3f}",
                            ]
                            for r in res.inference
                        ],
                    ),
                ],
            )
        )
    if res.e2e:
        out_sections.append(
            by.section(
                "End to end through the real service",
                [
                    "`gnbsched serve` (REST on uvicorn + gRPC, one process, in-process state) on loopback, one client in "
                    "lock-step: REST = `POST /schedule` over a keep-alive connection (JSON, orjson); gRPC unary = "
                    "`Schedule`; gRPC stream = one `StreamSlots` call, one request per slot. mac requests carry the UEs' "
                    "spectral efficiency and buffers (the service computes the TBS), spectrum requests the rate matrix. "
                    f"R = {NUM_RBG}. *server pipeline* = the decision's own time (policy, check, repair, as the service "
                    "reports it); *server decode* = request to slot (validation, utility); the rest is transport.",
                    "",
                    md_table(
                        [
                            "preset",
                            "policy",
                            "N",
                            "transport",
                            "requests",
                            "p50 (ms)",
                            "p99 (ms)",
                            "server pipeline p50 (ms)",
                            "server decode p50 (ms)",
                        ],
                        [
                            [
                                r.preset,
                                r.policy,
                                r.num_ue,
                                r.transport,
                                r.requests,
                                f"{r.p50_ms:.3f}",
                                f"{r.p99_ms:.3f}",
                                _ms(r.server_total_p50_ms),
                                _ms(r.server_decode_p50_ms),
                            ]
                            for r in res.e2e
                        ],
                    ),
                ],
            )
        )
    if res.load:
        out_sections.append(
            by.section(
                "Decisions per second under a bounded concurrent load",
                [
                    "A fixed number of concurrent lock-step clients, one cell and one connection each, for a fixed "
                    "time, against `gnbsched serve` with 1 worker process and, for scaling, with `--workers W` up to "
                    "the machine's cores (each worker runs REST and gRPC on the same ports; clients and server "
                    "share the machine's cores). *× 1 worker* = decisions/s over the 1-worker row of the transport.",
                    "",
                    md_table(
                        [
                            "workers",
                            "transport",
                            "preset",
                            "policy",
                            "N",
                            "clients",
                            "seconds",
                            "decisions",
                            "decisions/s",
                            "× 1 worker",
                            "p50 (ms)",
                            "p99 (ms)",
                        ],
                        [
                            [
                                r.workers,
                                r.transport,
                                r.preset,
                                r.policy,
                                r.num_ue,
                                r.clients,
                                f"{r.seconds:g}",
                                r.decisions,
                                f"{r.decisions_per_s:.0f}",
                                _per_worker(res, r),
                                f"{r.p50_ms:.3f}",
                                f"{r.p99_ms:.3f}",
                            ]
                            for r in res.load
                        ],
                    ),
                ],
            )
        )
    out_sections += tti_sections(res, by)
    if res.rss_mib:
        out_sections.append(
            by.section(
                "Peak memory",
                [md_table(["process", "peak RSS (MiB)"], [[k, f"{v:.0f}"] for k, v in res.rss_mib.items()])],
            )
        )
    out_sections.append(by.section("The papers' figures beside ours", paper_lines(res)))
    if figures:
        out_sections.append(by.section("Figures", [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]))
    if res.notes:
        out_sections.append(by.section("Notes", [f"- {n}" for n in res.notes]))
    return out_sections


def write_report(out: Path, res: Results, figures: list[Path]) -> Path:
    """Replace the perf sections of ``<out>/BENCHMARKS.md`` (created when missing), keeping the
    other suites' sections."""
    return update(out / REPORT_NAME, "perf", sections(out, res, figures))


def summary(res: Results) -> str:
    """The stdout summary: ratios first."""
    out = ["", "gnbsched bench perf — summary (ratios to exact KM; times p50)"]
    for r in res.scale:
        if r.policy == "km":
            continue
        out.append(
            f"  {r.scenario:22s} {r.policy:11s} ratio {r.ratio_to_km:.4f}  time {r.time_p50_ms:9.3f} ms  "
            f"= KM/{r.speedup_vs_km:.1f}"
            + ("" if r.certified_share is None else f"  certified {r.certified_share:.0%}")
        )
    for a in res.anytime:
        out.append(
            f"  anytime scale-III deadline {a.deadline_ms:5g} ms: ratio {a.ratio_to_km:.4f}, p50 {a.time_p50_ms:.1f} ms"
        )
    for st in res.stages:
        out.append(
            f"  stages {st.preset}/{st.policy}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in st.stage_p50_us.items())
            + f" µs; schedule {st.schedule_p50_us:.0f} µs"
        )
    for g in res.guard:
        out.append(
            f"  guard {g.preset}/{g.policy} (reference {g.reference}) N={g.num_ue} R={g.num_res}: "
            f"off {g.off_p50_us:.0f} µs, on {g.on_p50_us:.0f} µs p50 = {g.ratio:.2f}× "
            f"(guard stage {g.guard_stage_p50_us:.0f} µs)"
        )
    for inf in res.inference:
        out.append(
            f"  inference {inf.provider} C={inf.cells:<5d} call p50 {inf.infer_p50_ms:.3f} ms "
            f"({inf.infer_per_cell_us:.1f} µs per cell)  act_many p50 {inf.act_p50_ms:.3f} ms  "
            f"p99 {inf.act_p99_ms:.3f} ms"
        )
    if res.gpu:
        out.append(f"  {res.gpu}")
    for e in res.e2e:
        out.append(
            f"  e2e {e.preset}/{e.policy} N={e.num_ue:<5d} {e.transport:12s} p50 {e.p50_ms:.3f} ms  p99 {e.p99_ms:.3f} ms"
        )
    for ld in res.load:
        out.append(
            f"  load {ld.transport:12s} {ld.workers} worker(s) {ld.clients} clients: {ld.decisions_per_s:.0f} decisions/s (p99 {ld.p99_ms:.2f} ms)"
        )
    for t in res.tti:
        floor = "" if t.floor_p99_ms is None else f"  floor p99 {t.floor_p99_ms:.3f} ms ({t.p99_to_floor:.1f}×)"
        out.append(
            f"  tti {t.shape:9s} {t.policy:8s} {t.transport:18s}"
            + (f" ×{t.calls_per_tti}" if t.calls_per_tti > 1 else "   ")
            + f" p50 {t.p50_ms:.3f} ms  p99 {t.p99_ms:.3f} ms{floor}  {t.decisions_per_cpu_s:,.0f} decisions per server CPU-s"
        )
    for k, v in res.rss_mib.items():
        out.append(f"  peak RSS {k}: {v:.0f} MiB")
    out += ["  " + line.lstrip("- ") for line in target_lines(res)]
    return "\n".join(out)
