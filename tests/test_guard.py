"""The run-time guard (``service.guard``): the pure kernel, the bounded per-cell windows, and the
core in closed loop with the project's simulators — an adversarial policy (defined here, served
through a test ``PolicySet``) is replaced by the reference from its first bad slot, the served
utility stays within the ratio of the reference's, the counter counts it and the guard releases
once the policy is good again; the shipped students on normal traffic never trip it, and on
inputs outside their training (held-out world families, units beyond the training range) the
served utility keeps the guard's ratio of the reference's; ``guard_enabled=False`` turns it
off."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.core import ServiceCore
from service.guard import CellWindow, Guard, guard_verdict, utility_ratio
from service.history import CellHistory
from service.metrics import Metrics
from service.policies.base import Policy, PolicyContext
from service.policies.registry import PolicySet, make
from service.sim.mac import MacEnv
from service.sim.mac_config import MAC_SCENARIOS
from service.sim.spectrum import SPECTRUM_SCENARIOS, SpectrumConfig, SpectrumEnv
from service.sim.worlds import WorldEnv, random_world
from service.state import MemoryStore
from service.types import SlotState, make_slot

RATIO = 0.97
#: 10 UEs on 4 RBGs (a ``gnbsched bench student`` row): enough queued UEs per slot that a bad
#: grant costs bits (in the lighter ``standard`` cell most slots have at most one UE with data)
N10_M4 = replace(MAC_SCENARIOS["standard"], num_ue=10, num_rbg=4)


def _value(text: str, name: str, **labels: str) -> float | None:
    """Sum of the matching samples, None when there is none."""
    vals = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(vals) if vals else None


# ----------------------------------------------------------------------------- kernel


def test_verdict_floor_window_and_warm_up() -> None:
    kw = {"ratio": 0.97, "floor": 0.5, "min_slots": 10}
    assert not guard_verdict(96.0, 100.0, 9.0, 10.0, 9, **kw).engaged  # window ratio not judged before 10 slots
    v = guard_verdict(96.0, 100.0, 9.0, 10.0, 10, **kw)
    assert v.engaged and v.why == "window" and v.window_ratio == pytest.approx(0.96)
    v = guard_verdict(100.0, 100.0, 4.0, 10.0, 1, **kw)  # the floor from the first slot
    assert v.engaged and v.why == "floor" and v.slot_ratio == pytest.approx(0.4)
    assert not guard_verdict(97.0, 100.0, 5.0, 10.0, 50, **kw).engaged  # at the thresholds: not below
    assert utility_ratio(0.0, 0.0) == 1.0 and utility_ratio(3.0, 0.0) == 1.0  # no reference utility: no evidence
    assert not guard_verdict(0.0, 0.0, 0.0, 0.0, 50, **kw).engaged


def test_window_rolls_and_the_windows_are_bounded() -> None:
    w = CellWindow(3)
    assert w.push(1.0, 2.0) == (1.0, 2.0, 1)
    w.push(2.0, 2.0)
    w.push(3.0, 2.0)
    assert w.push(4.0, 1.0) == (9.0, 5.0, 3)  # the first slot left the window
    g = Guard(Settings(), max_cells=4)
    first = g.window("c0", "mac", "student")
    for k in range(1, 6):
        g.window(f"c{k}", "mac", "student")
    assert len(g) == 4
    assert g.window("c0", "mac", "student") is not first  # evicted (least recently used): a new window
    assert g.window("c5", "mac", "student") is g.window("c5", "mac", "student")


def test_which_policies_and_presets_are_guarded() -> None:
    g = Guard(Settings())
    assert g.reference_for("student", "spectrum") == "greedy"
    assert g.reference_for("teacher", "mac") == "pf" and g.reference_for("teacher", "spectrum") == "greedy"
    assert g.reference_for("student", "mac") == "pf"  # both students are guarded by default
    assert g.reference_for("km", "spectrum") is None
    assert Guard(Settings(guard_exempt=["student/mac"])).reference_for("student", "mac") is None
    g = Guard(Settings(guard_reference={"mac": "rr"}))
    assert g.reference_for("student", "mac") == "rr" and g.reference_for("student", "spectrum") is None


# ----------------------------------------------------------------------------- closed loop


class Adversary(Policy):
    """Bad while ``bad``: every available resource to the worst eligible user — the smallest
    buffer in mac (often empty: the slot is wasted), the weakest best utility in spectrum, where
    it gets its poorest channel and the rest stay unused (cap 1). Good otherwise: the
    reference's own decision."""

    name = "adversary"
    bad: ClassVar[bool] = True

    def __init__(self) -> None:
        self.good = {"mac": make("pf"), "spectrum": make("greedy")}

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        if not type(self).bad:
            return np.asarray(self.good[state.preset].act(state, ctx, obs))
        owner = np.zeros(state.num_res, np.int64)
        elig = np.flatnonzero(state.user_eligible)
        avail = np.flatnonzero(state.resource_available)
        if elig.size == 0 or avail.size == 0:
            return owner
        if state.preset == "mac":
            buffers = state.buffer_bits if state.buffer_bits is not None else state.utility.max(axis=1)
            owner[avail] = elig[np.argmin(buffers[elig])] + 1
        else:
            worst = elig[np.argmin(state.utility[elig][:, avail].max(axis=1))]
            owner[avail[np.argmin(state.utility[worst, avail])]] = worst + 1
        return owner


def _core(metrics: Metrics | None = None, **settings: Any) -> ServiceCore:
    s = Settings(grpc_port=0, rest_port=0, fallbacks=[], **{"guard_policies": ["adversary", "student"], **settings})
    return ServiceCore(s, store=MemoryStore(), policies=PolicySet(factories={"adversary": Adversary}), observer=metrics)


def _play(
    core: ServiceCore,
    env: MacEnv | SpectrumEnv | WorldEnv,
    policy: str,
    slots: int,
    cell: str,
    epoch: int | None = None,
) -> list:
    """``slots`` slots of a fresh episode of ``env`` (a new ``epoch`` when the cell played one before)."""
    state = env.reset()
    feedback: dict[int, float] = {}
    out = []
    for _ in range(slots):
        d = core.schedule(replace(state, cell_id=cell), policy=policy, feedback=feedback, epoch=epoch)
        res = env.step(d.owner, raw_valid=d.valid_before_repair) if isinstance(env, MacEnv) else env.step(d.owner)
        out.append(d)
        state, feedback = res.state, res.feedback
    return out


@pytest.fixture
def adversary_bad():
    Adversary.bad = True
    yield
    Adversary.bad = True


@pytest.mark.parametrize("preset", ["mac", "spectrum"])
def test_the_guard_replaces_a_bad_policy_and_releases_it_when_good_again(preset: str, adversary_bad) -> None:
    metrics = Metrics()
    core = _core(metrics)
    env = MacEnv(N10_M4, seed=3) if preset == "mac" else SpectrumEnv(SPECTRUM_SCENARIOS["u15-c20-b8"], seed=3)
    cell = f"adv-{preset}"
    bad = _play(core, env, "adversary", 120, cell)
    guarded = [d for d in bad if "guard" in d.notes]
    assert len(guarded) == len(bad)
    engaged = [d for d in bad if d.fallback_reason == "guard"]
    below_floor = [d for d in bad if d.notes["guard"]["slot_ratio"] < core.settings.guard_floor]
    assert below_floor and all(d.fallback_reason == "guard" for d in below_floor)  # from the first such slot
    assert below_floor[0].notes["guard"]["why"] == "floor"
    ref = "pf" if preset == "mac" else "greedy"
    for d in engaged:
        assert d.policy == ref and "adversary: guard:" in (d.fallback or "") and "ratio" in (d.fallback or "")
        assert d.notes["guard"]["engaged"] is True and d.timings_us["guard"] > 0
    served = sum(d.utility for d in bad)
    reference = sum(d.notes["guard"]["reference_utility"] for d in bad)
    would_have = sum(d.notes["guard"]["utility"] for d in bad)
    assert served >= RATIO * reference, (served, reference)
    assert would_have < 0.5 * reference  # the adversary really is bad: the guard did the work
    text = metrics.exposition()[0].decode()
    assert _value(text, "gnbsched_guard_engaged_total", cell=cell, preset=preset) == len(engaged) > len(bad) / 2
    assert _value(text, "gnbsched_fallbacks_total", requested="adversary", served=ref, reason="guard") == len(engaged)
    assert _value(text, "gnbsched_requests_total", policy="adversary", outcome="fallback") == len(engaged)

    Adversary.bad = False  # the policy becomes good: the window ratio comes back, the guard lets go
    good = _play(core, env, "adversary", 120, cell, epoch=1)  # the episode restarts at slot 0
    released = next(i for i, d in enumerate(good) if d.fallback_reason is None)
    assert released <= core.settings.guard_window_slots + 5, released
    assert all(d.policy == "adversary" and d.fallback is None for d in good[released:])
    text = metrics.exposition()[0].decode()
    assert _value(text, "gnbsched_guard_engaged_total", cell=cell, preset=preset) == len(engaged) + released


@pytest.mark.parametrize(
    ("label", "cfg", "seed"),
    [
        ("u5-c5-b2", SPECTRUM_SCENARIOS["u5-c5-b2"], 1),  # the tightest small scenario in a 3-seed probe
        ("u15-c20-b8", SPECTRUM_SCENARIOS["u15-c20-b8"], 0),
        ("u30-c30-b6", SpectrumConfig(num_ue=30, num_channels=30, num_busy=6), 2),
    ],
)
def test_the_shipped_student_never_trips_the_guard_on_normal_spectrum_traffic(
    label: str, cfg: SpectrumConfig, seed: int
) -> None:
    metrics = Metrics()
    core = ServiceCore(Settings(grpc_port=0, rest_port=0), store=MemoryStore(), observer=metrics)
    if core.policies.get("student").model("spectrum") is None:  # type: ignore[attr-defined]
        pytest.fail("no spectrum student model could be loaded from models/")
    decisions = _play(core, SpectrumEnv(cfg, seed=seed), "student", 200, f"student-{label}")
    assert all(d.policy == "student" and d.fallback is None for d in decisions)
    assert all(d.notes["guard"]["engaged"] is False for d in decisions)
    assert min(d.notes["guard"]["window_ratio"] for d in decisions[core.settings.guard_min_slots - 1 :]) >= RATIO
    text = metrics.exposition()[0].decode()
    assert _value(text, "gnbsched_guard_engaged_total", cell=f"student-{label}", preset="spectrum") == 0


def test_the_mac_student_is_guarded_by_default_and_exempt_on_request() -> None:
    state = make_slot(
        "mac", [1, 2, 3], [0, 1, 2, 3], spectral_efficiency=[1.0, 0.5, 0.2], buffer_bits=[4096.0, 1024.0, 256.0]
    )
    core = ServiceCore(Settings(grpc_port=0, rest_port=0), store=MemoryStore())
    d = core.schedule(state, policy="student")
    assert d.policy == "student" and d.notes["guard"]["reference"] == "pf" and d.timings_us["guard"] > 0
    core = ServiceCore(Settings(grpc_port=0, rest_port=0, guard_exempt=["student/mac"]), store=MemoryStore())
    d = core.schedule(state, policy="student")
    assert "guard" not in d.notes and "guard" not in d.timings_us


def _mac_student_core(metrics: Metrics) -> ServiceCore:
    core = ServiceCore(Settings(grpc_port=0, rest_port=0), store=MemoryStore(), observer=metrics)
    if core.policies.get("student").model("mac") is None:  # type: ignore[attr-defined]
        pytest.fail("no mac student model could be loaded from models/")
    return core


def _world(family: str, num_ue: int, num_rbg: int, seed: int, **overrides: Any) -> WorldEnv:
    cfg = random_world(family, np.random.default_rng(seed), num_ue=num_ue, num_rbg=num_rbg)
    return WorldEnv(replace(cfg, **overrides), seed=seed)


@pytest.mark.parametrize(
    ("label", "make_env"),
    [
        ("standard", lambda: MacEnv(MAC_SCENARIOS["standard"], seed=3)),
        ("n10-m4", lambda: MacEnv(N10_M4, seed=1)),
        ("rayleigh-mixture-n20", lambda: _world("rayleigh-mixture", 20, 17, 11)),
        ("los_mix-bernoulli-n50", lambda: _world("los_mix-bernoulli", 50, 33, 12)),
        ("markov3-bernoulli-n20", lambda: _world("markov3-bernoulli", 20, 17, 13)),
    ],
)
def test_the_shipped_mac_student_never_trips_the_guard_on_normal_traffic(label: str, make_env: Any) -> None:
    """The project's simulator and worlds of the training families: the student serves every
    slot and its window ratio to pf's scheduled bits never drops below the guard's ratio."""
    metrics = Metrics()
    core = _mac_student_core(metrics)
    decisions = _play(core, make_env(), "student", 200, f"student-{label}")
    assert all(d.policy == "student" and d.fallback is None for d in decisions)
    assert all(d.notes["guard"]["engaged"] is False for d in decisions)
    assert min(d.notes["guard"]["window_ratio"] for d in decisions[core.settings.guard_min_slots - 1 :]) >= RATIO
    text = metrics.exposition()[0].decode()
    assert _value(text, "gnbsched_guard_engaged_total", cell=f"student-{label}", preset="mac") == 0


@pytest.mark.parametrize(
    ("label", "make_env"),
    [
        # a held-out channel model and traffic model (never drawn in training) ...
        ("rician-periodic-n20", lambda: _world("rician-periodic", 20, 17, 507)),
        ("rayleigh-bursty-n50", lambda: _world("rayleigh-bursty", 50, 33, 21)),
        # ... and units three decades beyond the training range (bits as micro- and mega-units)
        ("scale-1e-6", lambda: _world("rayleigh-mixture", 30, 25, 31, unit_scale=1e-6)),
        ("scale-1e6", lambda: _world("los_mix-mixture", 30, 25, 32, unit_scale=1e6)),
    ],
)
def test_on_inputs_outside_training_the_served_utility_keeps_the_ratio(label: str, make_env: Any) -> None:
    """Whatever the student does on worlds it was not trained for, what the cell is served keeps
    at least guard_ratio of the reference's scheduled bits over the run, and every slot the guard
    took over is served by pf and counted."""
    metrics = Metrics()
    core = _mac_student_core(metrics)
    decisions = _play(core, make_env(), "student", 300, f"unseen-{label}")
    served = sum(d.utility for d in decisions)
    reference = sum(d.notes["guard"]["reference_utility"] for d in decisions)
    assert reference > 0 and served >= RATIO * reference, (served, reference)
    engaged = [d for d in decisions if d.fallback_reason == "guard"]
    assert all(d.policy == "pf" and d.notes["guard"]["engaged"] for d in engaged)
    assert all(d.policy == "student" for d in decisions if d.fallback_reason is None)
    text = metrics.exposition()[0].decode()
    assert _value(text, "gnbsched_guard_engaged_total", cell=f"unseen-{label}", preset="mac") == len(engaged)


def test_guard_enabled_false_turns_it_off(adversary_bad) -> None:
    metrics = Metrics()
    core = _core(metrics, guard_enabled=False)
    assert core.guard is None
    decisions = _play(core, MacEnv(MAC_SCENARIOS["standard"], seed=3), "adversary", 30, "off")
    assert all(d.policy == "adversary" and d.fallback is None and "guard" not in d.notes for d in decisions)
    assert _value(metrics.exposition()[0].decode(), "gnbsched_guard_engaged_total") is None


def test_unguarded_policies_fallbacks_and_a_failing_reference_leave_the_slot_alone() -> None:
    state = make_slot("spectrum", [1, 2], [5, 6, 7], rx_power_dbm=[-70.0, -80.0])
    core = _core()
    assert "guard" not in core.schedule(state, policy="km").notes  # not a guarded policy
    # a reference that fails: the guarded policy serves, unguarded
    core = _core(guard_reference={"spectrum": "no-such-policy"})
    d = core.schedule(state, policy="adversary")
    assert d.policy == "adversary" and "guard" not in d.notes


def test_the_guard_is_the_cores_for_every_transport() -> None:
    """Both transports call ``ServiceCore.schedule``: the guard is there, not in a transport."""
    core = _core()
    assert isinstance(core.guard, Guard)
    d = core.schedule(
        make_slot("spectrum", [1, 2], [5, 6, 7], rx_power_dbm=[-70.0, -80.0]), policy="adversary", transport="grpc"
    )
    assert d.fallback_reason == "guard"
    assert isinstance(core.history("cell-0"), CellHistory)


def test_bench_perf_measures_the_guard_cost_and_prints_both_numbers() -> None:
    from service.bench import perf

    plan = replace(perf.QUICK, stage_slots=15)
    rows = perf.run_guard(plan, 0, notes := [])
    assert not notes and len(rows) == 1
    row = rows[0]
    assert (row.preset, row.policy, row.reference, row.num_ue, row.num_res) == ("mac", "student", "pf", 100, 69)
    assert row.off_p50_us > 0 and row.on_p50_us > 0 and row.ratio == pytest.approx(row.on_p50_us / row.off_p50_us)
    assert row.guard_stage_p50_us > 0
    res = perf.Results(meta={}, guard=rows)
    line = next(x for x in perf.summary(res).splitlines() if "guard mac/student" in x)
    assert f"off {row.off_p50_us:.0f} µs" in line and f"on {row.on_p50_us:.0f} µs" in line and "×" in line
    assert res.as_dict()["guard"][0]["ratio"] == row.ratio


def test_a_batch_of_cells_is_guarded_as_each_cell_alone(adversary_bad) -> None:
    """``Guard.decide_many`` (the references decided together) gives every slot the answer, the
    verdict and the window ``Guard.decide`` gives it alone, through engagements and releases."""
    from service.history import record_decision

    settings = Settings(guard_policies=["adversary", "student"])
    pset = PolicySet(factories={"adversary": Adversary})
    together, alone = Guard(settings), Guard(settings)
    envs = [MacEnv(N10_M4, seed=1), SpectrumEnv(SPECTRUM_SCENARIOS["u15-c20-b8"], seed=2), MacEnv(N10_M4, seed=3)]
    states = [replace(env.reset(), cell_id=f"g{k}") for k, env in enumerate(envs)]
    histories = [CellHistory.empty() for _ in envs]
    engaged = 0
    for t in range(60):
        Adversary.bad = t < 30  # bad, then good: the guard engages, then lets go
        for policy in ("adversary", "student"):
            batch = together.decide_many(states, histories, policy, policies=pset)
            for k, d in enumerate(batch):
                assert not isinstance(d, Exception)
                one = alone.decide(states[k], histories[k], policy, policies=pset)
                assert np.array_equal(d.owner, one.owner)
                assert (d.policy, d.fallback_reason, d.utility) == (one.policy, one.fallback_reason, one.utility)
                verdict = {k2: v for k2, v in d.notes["guard"].items() if k2 != "policy_notes"}
                assert verdict == {k2: v for k2, v in one.notes["guard"].items() if k2 != "policy_notes"}
                assert d.timings_us["guard"] > 0
                engaged += d.fallback_reason == "guard"
        for k, env in enumerate(envs):
            d = batch[k]
            histories[k] = record_decision(histories[k], states[k], d.owner)  # type: ignore[union-attr]
            states[k] = replace(env.step(d.owner).state, cell_id=f"g{k}")  # type: ignore[union-attr]
    assert engaged > 0
