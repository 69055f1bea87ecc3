"""One contract over EVERY registered policy (``service.policies.names()``), both presets.

For each policy and each instance: the raw output passes the PAG check (or, for policies that
may answer invalidly, repairs to a valid decision); the same seed gives the same output; a
size-limited policy refuses large instances with ``ProblemTooLargeError``.

Policies that need something outside the process (a model file, an endpoint) are listed in
``EXTERNAL``: when the resource is absent their test id says so and the test asserts that they
fail cleanly with ``PolicyUnavailableError`` (the pipeline then falls back); when it is present
they run the full contract. A policy registered later that needs a resource and is not listed
fails here until it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from service import phy
from service.errors import PolicyUnavailableError, ProblemTooLargeError
from service.history import CellHistory, record_decision
from service.pag import check, is_valid, repair
from service.pipeline import decide
from service.policies import PolicyContext, make, names
from service.policies.assignment import random_valid
from service.policies.registry import PolicySet
from service.rng import slot_rng
from service.types import PRESETS, SlotState, make_slot


def _student_ready(preset: str) -> bool:
    return make("student").model(preset) is not None


def _teacher_ready(preset: str) -> bool:
    return bool(make("teacher").config.url)


#: name -> (what it needs, is it present for a preset)
EXTERNAL: dict[str, tuple[str, Callable[[str], bool]]] = {
    "student": ("an ONNX model (student-<preset>) under $GNBSCHED_MODEL_DIR or models/", _student_ready),
    "teacher": ("an LLM endpoint in $GNBSCHED_TEACHER_URL", _teacher_ready),
}
#: policies whose raw output may violate the PAG (the pipeline repairs it)
MAY_BE_INVALID = {"teacher"}
#: remote models: same seed, same answer is the endpoint's business, not ours
NOT_SEEDED = {"teacher"}
#: policies that refuse instances beyond a size limit
SIZE_LIMITED = {"exhaustive"}


@dataclass
class Instance:
    name: str
    state: SlotState
    history: CellHistory
    large: bool = False


def _spectrum(rng: np.random.Generator, n: int, r: int, slot: int) -> SlotState:
    """LSA-like slot from physical fields: distances in a 500 m disc, Rayleigh fading, busy channels."""
    dist = np.sqrt(rng.uniform(10.0**2, 500.0**2, n))
    return make_slot(
        "spectrum",
        rng.choice(1000, n, replace=False),
        np.arange(r) + 1,
        rx_power_dbm=phy.rx_power_dbm(dist),
        bandwidth_hz=rng.uniform(1e6, 10e6, r),
        fading_gain=rng.exponential(size=(n, r)),
        resource_available=rng.random(r) > 0.2,
        user_eligible=rng.random(n) > 0.15,
        cell_id="contract",
        slot=slot,
    )


def _mac(
    rng: np.random.Generator, n: int, r: int, slot: int, per_rbg: bool = False, cap: int | None = None
) -> SlotState:
    """UDTS-like slot: SE from the 3-state channel, 256-bit dPDU buffers (some empty)."""
    se = rng.choice(phy.MAC_SE_LEVELS, (n, r) if per_rbg else n)
    return make_slot(
        "mac",
        np.arange(n) + 1,
        np.arange(r),
        spectral_efficiency=se,
        buffer_bits=256.0 * rng.choice([0, 1, 2, 5, 20], n),
        max_resources_per_user=cap,
        resource_available=rng.random(r) > 0.1,
        cell_id="contract",
        slot=slot,
    )


def _with_history(state: SlotState, rng: np.random.Generator) -> CellHistory:
    """A history of a few earlier slots with the same users (random valid decisions)."""
    h = CellHistory.empty()
    for slot in range(3):
        past = SlotState(**{**{f: getattr(state, f) for f in state.__slots__}, "slot": state.slot - 3 + slot})
        h = record_decision(h, past, random_valid(past, rng))
    return h


def _instances() -> list[Instance]:
    rng = np.random.default_rng(2024)
    out: list[Instance] = []
    for i, (n, r) in enumerate([(3, 3), (5, 4), (4, 6), (6, 5)]):
        s = _spectrum(rng, n, r, slot=10 + i)
        out.append(Instance(f"spectrum-{n}x{r}", s, _with_history(s, rng)))
    for i, (n, r, per_rbg, cap) in enumerate(
        [(3, 4, False, None), (5, 5, False, 2), (4, 6, True, None), (2, 3, False, 1)]
    ):
        s = _mac(rng, n, r, slot=20 + i, per_rbg=per_rbg, cap=cap)
        out.append(Instance(f"mac-{n}x{r}{'-rbg' if per_rbg else ''}", s, _with_history(s, rng)))
    # corner cases: nothing available / nobody eligible
    none_free = make_slot("spectrum", [1, 2], [1, 2], rate_bps=np.ones((2, 2)), resource_available=[False, False])
    out.append(Instance("spectrum-no-free-resource", none_free, CellHistory.empty()))
    no_data = make_slot("mac", [1, 2], [0, 1, 2], spectral_efficiency=[0.6, 1.1], buffer_bits=[0.0, 0.0])
    out.append(Instance("mac-no-data", no_data, CellHistory.empty()))
    # large: beyond exhaustive search
    out.append(Instance("spectrum-large", _spectrum(rng, 12, 9, slot=30), CellHistory.empty(), large=True))
    out.append(Instance("mac-large", _mac(rng, 10, 8, slot=31), CellHistory.empty(), large=True))
    return out


INSTANCES = _instances()
SEED = 7


def _status(name: str) -> str:
    if name not in EXTERNAL:
        return "builtin"
    _need, ready = EXTERNAL[name]
    missing = [p for p in PRESETS if not ready(p)]
    return "ready" if not missing else f"unavailable:{'+'.join(missing)}"


def _params():
    return [pytest.param(name, _status(name), id=f"{name}[{_status(name)}]") for name in names()]


def _raw(name: str, inst: Instance, seed: int):
    pol = make(name)
    ctx = PolicyContext(inst.history.view(inst.state), slot_rng(seed, inst.state.cell_id, inst.state.slot))
    return pol(inst.state, ctx)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


@pytest.mark.parametrize(("name", "status"), _params())
def test_policy_contract(name, status):
    pol = make(name)
    assert pol.name == name
    meta = pol.metadata()
    assert meta["name"] == name and set(meta["presets"]) <= set(PRESETS) and meta["presets"]
    for inst in INSTANCES:
        preset = inst.state.preset
        if preset not in pol.presets:  # declared out of scope: the pipeline falls back
            d = decide(inst.state, inst.history, name, policies=PolicySet(), fallbacks=["greedy"])
            assert d.policy == "greedy" and d.fallback_reason == "error" and preset in d.fallback
            continue
        if name in EXTERNAL and not EXTERNAL[name][1](preset):
            with pytest.raises(PolicyUnavailableError):
                _raw(name, inst, 0)
            continue
        if name in SIZE_LIMITED and inst.large:
            with pytest.raises(ProblemTooLargeError):
                _raw(name, inst, 0)
            with pytest.raises(ProblemTooLargeError):  # no fallback: the error reaches the caller
                decide(inst.state, inst.history, name, policies=PolicySet())
            continue
        seed = SEED
        raw = _raw(name, inst, seed)
        result = check(inst.state, raw)
        if name not in MAY_BE_INVALID:
            assert result.valid, f"{name} on {inst.name}: {[v.message for v in result.violations]}"
        owner = repair(inst.state, result)
        assert is_valid(inst.state, owner), f"{name} on {inst.name}: repaired output invalid"
        if isinstance(raw, np.ndarray) and result.valid:
            assert raw.shape == (inst.state.num_res,) and np.array_equal(owner, raw)
        # through the pipeline, with a fresh instance of the policy
        d = decide(inst.state, inst.history, name, policies=PolicySet(), seed=seed)
        assert d.policy == name and d.fallback is None and is_valid(inst.state, d.owner)
        if name not in NOT_SEEDED:
            assert _same(raw, _raw(name, inst, seed)), f"{name} on {inst.name}: same seed, other output"
            assert np.array_equal(d.owner, owner), f"{name} on {inst.name}: the pipeline decided otherwise"


def test_external_policies_fail_cleanly_when_their_resource_is_missing(monkeypatch, tmp_path):
    """With no model directory content and no endpoint, every EXTERNAL policy raises
    PolicyUnavailableError and the pipeline serves the slot with the fallback."""
    monkeypatch.setenv("GNBSCHED_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("GNBSCHED_TEACHER_URL", raising=False)
    for name in EXTERNAL:
        assert name in names(), f"{name} is listed as external but not registered"
        for inst in [next(i for i in INSTANCES if i.state.preset == p) for p in PRESETS]:  # one per preset
            assert not EXTERNAL[name][1](inst.state.preset)
            with pytest.raises(PolicyUnavailableError):
                _raw(name, inst, 0)
            d = decide(inst.state, inst.history, name, policies=PolicySet(), fallbacks=["greedy"])
            assert d.policy == "greedy" and d.fallback_reason == "unavailable"
            assert name in d.fallback and is_valid(inst.state, d.owner)


def test_exhaustive_refuses_large_instances_with_a_clear_error():
    state = make_slot("spectrum", np.arange(20), np.arange(20), rate_bps=np.ones((20, 20)))
    ctx = PolicyContext(CellHistory.empty().view(state), np.random.default_rng(0))
    with pytest.raises(ProblemTooLargeError, match="exceeds max_candidates"):
        make("exhaustive").act(state, ctx, None)
    small = make("exhaustive", max_candidates=10)
    with pytest.raises(ProblemTooLargeError):
        small.act(INSTANCES[0].state, ctx, None)


def test_random_policies_depend_on_the_seed():
    inst = next(i for i in INSTANCES if i.name == "spectrum-large")
    draws = {tuple(decide(inst.state, inst.history, "random", policies=PolicySet(), seed=s).owner) for s in range(5)}
    assert len(draws) > 1
    other_cell = SlotState(**{**{f: getattr(inst.state, f) for f in inst.state.__slots__}, "cell_id": "other"})
    a = decide(inst.state, inst.history, "random", policies=PolicySet()).owner
    b = decide(other_cell, inst.history, "random", policies=PolicySet()).owner
    assert not np.array_equal(a, b)  # per-(cell, slot) streams
