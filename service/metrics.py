"""Prometheus metrics of the service; implements the core's ``Observer`` protocol.

Names are a contract with the dashboards in ``deploy/`` — do not rename:

==========================================  =========  =====================================
gnbsched_requests_total                     counter    transport, preset, policy, outcome
                                                       (ok | fallback | rejected | error;
                                                       policy "none" when rejected)
gnbsched_stage_seconds                      histogram  transport, preset, stage (serialize,
                                                       policy, check, repair, total)
gnbsched_request_seconds                    histogram  transport (decode → encode, in server)
gnbsched_decisions_total                    counter    policy (the policy that served)
gnbsched_valid_before_repair_total          counter    policy (ratio = valid / decisions)
gnbsched_repairs_total                      counter    policy (raw output needed repair)
gnbsched_violations_total                   counter    kind (PAG rule)
gnbsched_fallbacks_total                    counter    requested, served, reason
gnbsched_state_store_errors_total           counter    op (load | save)
gnbsched_state_store_up                     gauge      1 / 0 (multiprocess: the latest answer of any live worker)
gnbsched_policy_info                        gauge      policy, version = 1 (multiprocess: max)
gnbsched_guard_engaged_total                counter    cell, preset (slots where the run-time
                                                       guard served the reference; a child at
                                                       0 from the cell's first guarded slot)
gnbsched_student_out_of_range_total         counter    preset, model_version (slots with a
                                                       feature outside the card's ranges)
gnbsched_teacher_programs_total             counter    event (written | reused: slots the
                                                       teacher's code form decided with a new
                                                       program or one kept ready; failures
                                                       count in gnbsched_fallbacks_total)
gnbsched_client_disconnects_total           counter    transport (a client that went away
                                                       mid-request: during its headers or
                                                       body, or before its answer)
gnbsched_connections_refused_total          counter    transport, reason (header_too_large,
                                                       header_timeout, body_too_large,
                                                       body_timeout, too_many_connections)
==========================================  =========  =====================================

Several uvicorn workers: ``gnbsched serve --workers N`` points ``PROMETHEUS_MULTIPROC_DIR`` at
a fresh directory *before* any worker imports ``prometheus_client``; each worker then writes
its values to mmap files there and ``/metrics`` (any worker) aggregates all of them.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)

from service.types import STAGES, Decision, SlotState

# no *_created series: they double the exposition and the dashboards do not use them
disable_created_metrics()

#: sub-millisecond latency buckets, seconds
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 1.0, 5.0)
#: the server's own stages of a cell around the pipeline, in ``gnbsched_stage_seconds`` beside
#: the pipeline's: ``decode`` (the request checked and turned into a slot), ``state`` (the cell's
#: record loaded, the slot rule, the record written, the decision counted), ``encode`` (the answer)
SERVER_STAGES = ("decode", "state", "encode")
OUTCOMES = ("ok", "fallback", "rejected", "error")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on (set before the first import)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> str:
    """Create ``path`` empty (stale files from an earlier run would be summed in) and export it.

    Must run before ``prometheus_client`` is imported by the processes that record metrics.
    """
    p = Path(path)
    if p.exists():
        for f in p.glob("*.db"):
            f.unlink()
    p.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(p)
    return str(p)


def remove_multiprocess_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Metrics:
    """The service's metrics. One instance per process; its methods are thread-safe and cheap
    (label children are cached, so a decision costs about a dozen counter/histogram updates)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiproc_dir = multiprocess_dir()
        if self.multiproc_dir and values.ValueClass is values.MutexValue:
            raise RuntimeError(
                f"{MULTIPROC_ENV} was set after prometheus_client was imported; "
                "set it before the process imports it (gnbsched serve does)"
            )
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "gnbsched_requests",
            "Scheduling requests by transport, preset, policy and outcome.",
            ("transport", "preset", "policy", "outcome"),
            registry=reg,
        )
        self.stage_seconds = Histogram(
            "gnbsched_stage_seconds",
            "Time per stage of a cell's decision, seconds: the pipeline's (serialize, policy, check, "
            "repair, total) and the server's around it (decode, state, encode).",
            ("transport", "preset", "stage"),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.request_seconds = Histogram(
            "gnbsched_request_seconds",
            "Time inside the server per request, decode to encode, seconds.",
            ("transport",),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.decisions = Counter(
            "gnbsched_decisions", "Decisions by the policy that served them.", ("policy",), registry=reg
        )
        self.valid_before_repair = Counter(
            "gnbsched_valid_before_repair",
            "Decisions whose raw policy output passed the PAG checks.",
            ("policy",),
            registry=reg,
        )
        self.repairs = Counter(
            "gnbsched_repairs", "Decisions whose raw policy output needed repair.", ("policy",), registry=reg
        )
        self.violations = Counter(
            "gnbsched_violations", "PAG violations of raw policy outputs, by rule.", ("kind",), registry=reg
        )
        self.fallbacks = Counter(
            "gnbsched_fallbacks",
            "Requests served by a fallback policy, and why.",
            ("requested", "served", "reason"),
            registry=reg,
        )
        self.store_errors = Counter(
            "gnbsched_state_store_errors", "Per-cell state store failures by operation.", ("op",), registry=reg
        )
        self.state_events = Counter(
            "gnbsched_state_events",
            "Per-cell state events: replayed (a retried slot answered from its stored "
            "decision), stale_slot / slot_reused / stale_epoch (refused, 409), contended "
            "(a write lost to another writer, decided again), restored (a store that lost "
            "a cell got this process's copy back).",
            ("event",),
            registry=reg,
        )
        self.inference_provider = Gauge(
            "gnbsched_inference_provider",
            "The onnxruntime execution provider each loaded model runs on (CUDAExecutionProvider or "
            "CPUExecutionProvider); value 1.",
            ("policy", "preset", "provider"),
            registry=reg,
            multiprocess_mode="max",
        )
        self.cells_live = Gauge(
            "gnbsched_cells_live", "Cells held in process (memory:// store).", registry=reg, multiprocess_mode="livesum"
        )
        self.cells_evicted = Gauge(
            "gnbsched_cells_evicted",
            "Cells evicted from the in-process store since start (LRU bound or TTL).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.store_up = Gauge(
            "gnbsched_state_store_up",
            "1 when the per-cell state store answers, else 0.",
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.policy_info = Gauge(
            "gnbsched_policy_info",
            "Loaded policies and their (model) version; value 1.",
            ("policy", "version"),
            registry=reg,
            multiprocess_mode="max",
        )
        self.guard_engaged = Counter(
            "gnbsched_guard_engaged",
            "Slots where the run-time guard served the reference policy instead of "
            "the guarded (learned / LLM) one, by cell and preset.",
            ("cell", "preset"),
            registry=reg,
        )
        self.teacher_programs = Counter(
            "gnbsched_teacher_programs",
            "Slots decided by the teacher's code form, by whether its program was written for the slot "
            "or reused (failures count in gnbsched_fallbacks_total: code_error, code_timeout, code_limit).",
            ("event",),
            registry=reg,
        )
        self.student_out_of_range = Counter(
            "gnbsched_student_out_of_range",
            "Student slots with a serialized feature outside the model card's training ranges.",
            ("preset", "model_version"),
            registry=reg,
        )
        self.client_disconnects = Counter(
            "gnbsched_client_disconnects",
            "Clients that went away mid-request (during the headers or the body, or before the answer), by transport.",
            ("transport",),
            registry=reg,
        )
        self.connections_refused = Counter(
            "gnbsched_connections_refused",
            "Connections refused and closed by the transport's limits, by reason "
            "(header_too_large, header_timeout, body_too_large, body_timeout, "
            "too_many_connections).",
            ("transport", "reason"),
            registry=reg,
        )
        self._lock = threading.Lock()
        self._children: dict[tuple[object, ...], Any] = {}  # (metric, *labels) -> its labelled child
        self._stage_children: dict[tuple[str, str], tuple[Histogram, ...]] = {}
        self._per_policy: dict[str, tuple[Counter, Counter, Counter]] = {}
        self._seen_policies: set[tuple[str, str]] = set()

    # -- cached children ---------------------------------------------------------------
    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, made once and kept (the hot path looks it up in a dict)."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children[key] = metric.labels(*labels)
        return child

    def _req(self, transport: str, preset: str, policy: str, outcome: str) -> Counter:
        return self._child(self.requests, transport, preset, policy, outcome)

    def _stages(self, transport: str, preset: str) -> tuple[Histogram, ...]:
        key = (transport, preset)
        children = self._stage_children.get(key)
        if children is None:
            with self._lock:
                children = self._stage_children[key] = tuple(
                    self.stage_seconds.labels(transport, preset, s) for s in STAGES
                )
        return children

    def _policy(self, policy: str) -> tuple[Counter, Counter, Counter]:
        children = self._per_policy.get(policy)
        if children is None:
            with self._lock:
                children = self._per_policy[policy] = (
                    self.decisions.labels(policy),
                    self.valid_before_repair.labels(policy),
                    self.repairs.labels(policy),
                )
        return children

    # -- Observer protocol (called by ServiceCore.schedule) -----------------------------
    def decision(self, transport: str, state: SlotState, requested: str, decision: Decision) -> None:
        """Count one decided slot: outcome, per-stage times, PAG validity, repairs, fallbacks."""
        outcome = "ok" if decision.fallback is None else "fallback"
        self._req(transport, state.preset, requested, outcome).inc()
        timings = decision.timings_us
        for child, stage in zip(self._stages(transport, state.preset), STAGES, strict=True):
            us = timings.get(stage)
            if us is not None:
                child.observe(us * 1e-6)
        n_dec, n_valid, n_rep = self._policy(decision.policy)
        n_dec.inc()
        if decision.valid_before_repair:
            n_valid.inc()
        else:
            n_rep.inc()
        for v in decision.violations:
            self.violations.labels(v.kind).inc()
        if decision.fallback is not None:
            self.fallbacks.labels(requested, decision.policy, decision.fallback_reason or "error").inc()
        self.policy_loaded(decision.policy, decision.policy_version)
        notes = decision.notes
        guard = notes.get("guard") if notes else None
        if isinstance(guard, dict):
            self._guard_slot(state, guard)
            notes = guard.get("policy_notes") or notes  # the guarded policy's notes when it was replaced
        if notes and "out_of_range_features" in notes:
            self.student_out_of_range.labels(state.preset, str(notes.get("model_version", ""))).inc()
        if notes and "teacher_program" in notes:
            self.teacher_programs.labels(str(notes["teacher_program"])).inc()
        self.store_up.set(1)  # a decided slot was read from and written to the store

    def _guard_slot(self, state: SlotState, guard: dict) -> None:
        """A slot the run-time guard judged: the (cell, preset) child exists from the first one."""
        child = self._child(self.guard_engaged, state.cell_id, state.preset)
        if guard.get("engaged"):
            child.inc()

    def store_error(self, op: str) -> None:
        self.store_errors.labels(op).inc()
        self.store_up.set(0)

    # -- transports --------------------------------------------------------------------
    def rejected(self, transport: str, preset: object = None) -> None:
        """A request refused before deciding (bad input, limits)."""
        label = preset if isinstance(preset, str) and preset in ("spectrum", "mac") else "none"
        self._req(transport, label, "none", "rejected").inc()

    def error(self, transport: str, preset: str, policy: str) -> None:
        """A request that failed inside the server after it was accepted."""
        self._req(transport, preset, policy, "error").inc()

    def observe_stage(self, transport: str, preset: str, stage: str, seconds: float) -> None:
        """One cell's time in one of the server's own stages (``SERVER_STAGES``)."""
        self._child(self.stage_seconds, transport, preset, stage).observe(seconds)

    def observe_request(self, transport: str, seconds: float) -> None:
        """End-to-end time inside the server (decode → encode) of one request."""
        self._child(self.request_seconds, transport).observe(seconds)

    def client_disconnect(self, transport: str) -> None:
        """A client went away mid-request (a DEBUG line in the log, never an error)."""
        self.client_disconnects.labels(transport).inc()

    def connection_refused(self, transport: str, reason: str) -> None:
        """A connection refused by a transport limit (431 / 408 / 503) and closed."""
        self.connections_refused.labels(transport, reason).inc()

    def policy_loaded(self, name: str, version: str) -> None:
        key = (name, str(version))
        if key not in self._seen_policies:
            with self._lock:
                self._seen_policies.add(key)
                self.policy_info.labels(*key).set(1)

    def policies_loaded(self, items: Iterable[tuple[str, str]]) -> None:
        for name, version in items:
            self.policy_loaded(name, version)

    def set_store_up(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    def inference_providers(self, policy: str, models: dict[str, Any]) -> None:
        """``models``: a policy's ``metadata()["models"]`` (preset -> its description with ``providers``)."""
        for preset, model in models.items():
            providers = model.get("providers") or ["CPUExecutionProvider"]
            self.inference_provider.labels(policy, preset, providers[0]).set(1)

    def state_event(self, event: str) -> None:
        self.state_events.labels(event).inc()

    def set_cells(self, live: int, evicted: int) -> None:
        """The in-process store's cell counts (negative: the store does not count them)."""
        if live >= 0:
            self.cells_live.set(live)
            self.cells_evicted.set(evicted)

    # -- exposition --------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of ``/metrics``: this process, or every worker in multiprocess mode."""
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg, path=self.multiproc_dir)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def process_exit(self) -> None:
        """Drop this process's live gauges (multiprocess mode) when a worker stops."""
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)
