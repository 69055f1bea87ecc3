"""Metrics: the exact names, types, labels and buckets the dashboards use; the Observer protocol
through a real ``ServiceCore``; multiprocess aggregation; ``promtool check metrics`` passes.

promtool comes from the Debian package ``prometheus``; the ``promtool_check`` fixture fails (not
skips) when it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.core import ServiceCore
from service.errors import StateStoreUnavailableError
from service.metrics import LATENCY_BUCKETS, Metrics
from service.policies.base import Policy, PolicyContext
from service.policies.registry import PolicySet
from service.state import MemoryStore
from service.state.base import StateStore
from service.state.record import CellRecord
from service.types import Decision, Violation, make_slot

REPO = Path(__file__).resolve().parents[1]

#: family name -> (type, label names); the exposition adds _total to counters
EXPECTED = {
    "gnbsched_requests": ("counter", {"transport", "preset", "policy", "outcome"}),
    "gnbsched_stage_seconds": ("histogram", {"transport", "preset", "stage"}),
    "gnbsched_request_seconds": ("histogram", {"transport"}),
    "gnbsched_decisions": ("counter", {"policy"}),
    "gnbsched_valid_before_repair": ("counter", {"policy"}),
    "gnbsched_repairs": ("counter", {"policy"}),
    "gnbsched_violations": ("counter", {"kind"}),
    "gnbsched_fallbacks": ("counter", {"requested", "served", "reason"}),
    "gnbsched_state_store_errors": ("counter", {"op"}),
    "gnbsched_state_store_up": ("gauge", set()),
    "gnbsched_state_events": ("counter", {"event"}),
    "gnbsched_cells_live": ("gauge", set()),
    "gnbsched_cells_evicted": ("gauge", set()),
    "gnbsched_policy_info": ("gauge", {"policy", "version"}),
}


def _slot(preset: str = "spectrum", slot: int = 0):
    if preset == "mac":
        return make_slot(
            "mac", [1, 2, 3], [0, 1], spectral_efficiency=[1.0, 0.5, 0.2], buffer_bits=[512.0, 0, 256], slot=slot
        )
    return make_slot("spectrum", [1, 2], [5, 6, 7], rx_power_dbm=[-70.0, -80.0], slot=slot)


def _decision(policy: str = "km", *, fallback: str | None = None, violations: int = 0) -> Decision:
    return Decision(
        owner=np.array([1, 0, 2]),
        policy=policy,
        valid_before_repair=violations == 0,
        violations=[Violation("busy_resource", "r2 is busy")] * violations,
        utility=1.0,
        fallback=fallback,
        fallback_reason="deadline" if fallback else None,
        timings_us={"serialize": 1.0, "policy": 40.0, "check": 5.0, "repair": 2.0, "total": 50.0},
        policy_version="3",
    )


def _record_everything(m: Metrics) -> None:
    st = _slot()
    m.decision("rest", st, "km", _decision())
    m.decision("grpc", st, "student", _decision("greedy", fallback="student: deadline: too slow"))
    m.decision("rest", st, "teacher", _decision("teacher", violations=2))
    m.rejected("rest", "spectrum")
    m.rejected("grpc", ["not", "a", "preset"])
    m.error("rest", "mac", "pf")
    m.observe_request("rest", 3e-4)
    m.store_error("save")
    m.policy_loaded("km", "1")


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_names_types_labels_and_buckets_are_the_dashboard_contract() -> None:
    m = Metrics()
    _record_everything(m)
    text = m.exposition()[0].decode()
    fams = _families(text)
    for name, (kind, labels) in EXPECTED.items():
        assert name in fams, name
        assert fams[name].type == kind, name
        for s in fams[name].samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    assert "gnbsched_requests_total" in text and "gnbsched_valid_before_repair_total" in text
    buckets = [
        float(s.labels["le"])
        for s in fams["gnbsched_stage_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["stage"] == "total" and s.labels["transport"] == "rest"
    ]
    assert buckets == [*LATENCY_BUCKETS, float("inf")]
    assert "_created" not in text


def test_decision_outcomes_fallbacks_repairs_and_store_state() -> None:
    m = Metrics()
    _record_everything(m)
    text = m.exposition()[0].decode()
    assert _value(text, "gnbsched_requests_total", transport="rest", policy="km", outcome="ok") == 1
    assert _value(text, "gnbsched_requests_total", transport="grpc", policy="student", outcome="fallback") == 1
    assert (
        _value(text, "gnbsched_requests_total", transport="rest", preset="spectrum", policy="none", outcome="rejected")
        == 1
    )
    assert _value(text, "gnbsched_requests_total", transport="grpc", preset="none", outcome="rejected") == 1
    assert _value(text, "gnbsched_requests_total", preset="mac", policy="pf", outcome="error") == 1
    assert _value(text, "gnbsched_decisions_total") == 3
    assert _value(text, "gnbsched_decisions_total", policy="greedy") == 1
    assert _value(text, "gnbsched_valid_before_repair_total") == 2
    assert _value(text, "gnbsched_repairs_total", policy="teacher") == 1
    assert _value(text, "gnbsched_violations_total", kind="busy_resource") == 2
    assert _value(text, "gnbsched_fallbacks_total", requested="student", served="greedy", reason="deadline") == 1
    assert _value(text, "gnbsched_stage_seconds_sum", transport="rest", stage="policy") == pytest.approx(80e-6)
    assert _value(text, "gnbsched_stage_seconds_bucket", transport="rest", stage="total", le="5e-05") == 2
    assert _value(text, "gnbsched_stage_seconds_bucket", transport="rest", stage="total", le="2.5e-05") == 0
    assert _value(text, "gnbsched_request_seconds_count", transport="rest") == 1
    assert _value(text, "gnbsched_state_store_errors_total", op="save") == 1
    assert _value(text, "gnbsched_state_store_up") == 0  # the last thing seen was an error
    assert _value(text, "gnbsched_policy_info", policy="teacher", version="3") == 1
    m.decision("rest", _slot(), "km", _decision())  # a decided slot was written: the store is up again
    assert _value(m.exposition()[0].decode(), "gnbsched_state_store_up") == 1


class _FlakyStore(StateStore):
    """Fails every write while ``down``."""

    kind = "flaky"

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False

    def load(self, cell_id: str) -> CellRecord:
        return self.inner.load(cell_id)

    def compare_and_set(self, cell_id: str, expected_version: int, record: CellRecord) -> bool:
        if self.down:
            raise StateStoreUnavailableError("flaky store is down")
        return self.inner.compare_and_set(cell_id, expected_version, record)

    def restore(self, cell_id: str, record: CellRecord) -> bool:
        return self.inner.restore(cell_id, record)

    def ping(self) -> bool:
        return not self.down


class _Busy(Policy):
    name = "busy"

    def act(self, state, ctx: PolicyContext, obs):
        return np.ones(state.num_res, np.int64)


def test_core_reports_through_the_observer_protocol() -> None:
    m = Metrics()
    store = _FlakyStore()
    settings = Settings(grpc_port=0)
    core = ServiceCore(settings, store=store, policies=PolicySet(factories={"busy": _Busy}), observer=m)
    core.schedule(_slot(slot=0), transport="inproc")  # no policy named: the configured spectrum default
    core.schedule(_slot(slot=1), policy="busy", transport="inproc")  # one channel per user: cap exceeded
    store.down = True
    with pytest.raises(StateStoreUnavailableError):  # refused: no write goes around the store
        core.schedule(_slot(slot=2), policy="pf", transport="inproc")
    core.schedule(_slot(slot=1), policy="busy", transport="inproc")  # a retry: replayed, nothing written
    text = m.exposition()[0].decode()
    assert (
        _value(
            text,
            "gnbsched_requests_total",
            transport="inproc",
            preset="spectrum",
            policy=settings.default_policy("spectrum"),
            outcome="ok",
        )
        == 1
    )
    assert _value(text, "gnbsched_repairs_total", policy="busy") == 1
    assert _value(text, "gnbsched_violations_total") >= 1
    assert _value(text, "gnbsched_state_store_errors_total", op="write") == 1
    assert _value(text, "gnbsched_state_store_up") == 0
    assert _value(text, "gnbsched_state_events_total", event="replayed") == 1
    assert _value(text, "gnbsched_stage_seconds_count", transport="inproc", stage="total") == 2
    store.down = False
    core.schedule(_slot(slot=2), policy="pf", transport="inproc")
    assert _value(m.exposition()[0].decode(), "gnbsched_state_store_up") == 1


def test_exposition_passes_promtool(promtool_check) -> None:
    m = Metrics()
    _record_everything(m)
    promtool_check(m.exposition()[0].decode())


_WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from service.metrics import Metrics
    from service.types import Decision, make_slot
    m = Metrics()
    st = make_slot("spectrum", [1, 2], [5, 6, 7], rx_power_dbm=[-70.0, -80.0])
    for _ in range(int(sys.argv[1])):
        m.decision("rest", st, "km", Decision(owner=np.array([1, 0, 2]), policy="km", valid_before_repair=True,
                   timings_us={"serialize": 1, "policy": 40, "check": 5, "repair": 2, "total": 50}))
        m.observe_request("rest", 2e-4)
    m.policy_loaded("km", "1")
    m.set_store_up(True)
    if len(sys.argv) > 2:
        sys.stdout.write(m.exposition()[0].decode())
""")


def test_multiprocess_mode_sums_every_process_and_passes_promtool(tmp_path: Path, promtool_check) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", _WORKER, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    run("3")
    run("4")
    text = run("5", "expose")  # a third process scrapes what all three recorded
    assert _value(text, "gnbsched_requests_total", transport="rest", policy="km", outcome="ok") == 12
    assert _value(text, "gnbsched_stage_seconds_count", transport="rest", stage="total") == 12
    assert _value(text, "gnbsched_request_seconds_bucket", transport="rest", le="0.00025") == 12
    assert _value(text, "gnbsched_policy_info", policy="km", version="1") == 1  # max, not a sum
    promtool_check(text)


def test_setting_the_multiprocess_dir_too_late_is_refused(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics()
