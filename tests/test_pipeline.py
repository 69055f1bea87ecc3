"""``decide``: serialize → policy → check → repair, the fallback chain, deadlines, timings.

Throwaway policies live in a ``PolicySet`` made for the test; the global registry is never
touched (checked at the end of the module)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from service.errors import (
    DeadlineExceededError,
    ModelInvalidError,
    PolicyError,
    PolicyUnavailableError,
    ProblemTooLargeError,
    TeacherUnavailableError,
    UnknownPolicyError,
)
from service.history import CellHistory
from service.pag import is_valid
from service.pipeline import STAGES, decide
from service.policies import Policy, PolicyContext, names
from service.policies.registry import PolicySet
from service.rng import slot_rng
from service.state.record import decision_to_dict
from service.types import Decision, make_slot, served_bits, slot_utility

REGISTERED = names()


@pytest.fixture
def state():
    rng = np.random.default_rng(1)
    return make_slot(
        "spectrum",
        [11, 12, 13, 14],
        [1, 2, 3],
        rate_bps=rng.random((4, 3)) * 1e6,
        resource_available=[True, True, False],
        cell_id="cell-7",
        slot=42,
    )


class Raising(Policy):
    name = "raising"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    def act(self, state, ctx, obs):
        self.calls += 1
        raise self.exc


class Answer(Policy):
    """Returns a fixed raw output; records what it was given."""

    name = "answer"
    version = "7.1"

    def __init__(self, raw: Any, sleep_s: float = 0.0, presets=("spectrum", "mac")) -> None:
        self.raw, self.sleep_s, self.presets = raw, sleep_s, presets
        self.seen: list[PolicyContext] = []

    def serialize(self, state, ctx):
        return {"serialized": state.slot}

    def act(self, state, ctx, obs):
        assert obs == {"serialized": state.slot}
        self.seen.append(ctx)
        ctx.info["note"] = "hello"
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.raw


def _pset(**policies: Policy) -> PolicySet:
    return PolicySet(factories={name: (lambda p=p: p) for name, p in policies.items()})


def test_decision_fields_for_a_valid_output(state):
    pset = _pset(answer=Answer(np.array([2, 1, 0])))
    d = decide(state, CellHistory.empty(), "answer", policies=pset)
    assert isinstance(d, Decision)
    assert d.owner.dtype == np.int64 and d.owner.tolist() == [2, 1, 0]
    assert d.policy == "answer" and d.policy_version == "7.1"
    assert d.valid_before_repair and d.violations == []
    assert d.utility == slot_utility(state, d.owner)
    # what each user gets, kept for the history update: read-only, never stored with the decision
    assert np.array_equal(d.served, served_bits(state, d.owner)) and not d.served.flags.writeable
    assert "served" not in decision_to_dict(d)
    assert d.fallback is None and d.fallback_reason is None
    assert d.notes == {"note": "hello"}
    assert set(d.timings_us) == set(STAGES)
    assert all(v >= 0 for v in d.timings_us.values())
    assert d.timings_us["total"] >= d.timings_us["policy"]


def test_invalid_output_is_repaired_and_its_violations_reported(state):
    pset = _pset(answer=Answer('{"owner": [11, 11, 12]}'))  # cap exceeded, busy resource
    d = decide(state, CellHistory.empty(), "answer", policies=pset)
    assert not d.valid_before_repair
    assert {v.kind for v in d.violations} == {"cap_exceeded", "busy_resource"}
    assert is_valid(state, d.owner) and d.policy == "answer" and d.fallback is None


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RuntimeError("boom"), "error"),
        (ZeroDivisionError(), "error"),
        (PolicyError("no"), "error"),
        (PolicyUnavailableError("no model"), "unavailable"),
        (TeacherUnavailableError("down"), "unavailable"),
        (ModelInvalidError("corrupt"), "model_invalid"),
        (ProblemTooLargeError("big"), "too_large"),
        (DeadlineExceededError("late"), "deadline"),
    ],
)
def test_failing_policy_falls_back(state, exc, reason):
    broken = Raising(exc)
    pset = _pset(broken=broken)
    d = decide(state, CellHistory.empty(), "broken", policies=pset, fallbacks=["greedy"])
    assert d.policy == "greedy" and d.fallback_reason == reason
    assert d.fallback.startswith("broken: " + reason)
    assert is_valid(state, d.owner) and d.valid_before_repair
    assert broken.calls == 1


def test_fallback_chain_is_tried_in_order(state):
    pset = _pset(a=Raising(RuntimeError("a")), b=Raising(PolicyUnavailableError("b")))
    d = decide(state, CellHistory.empty(), "a", policies=pset, fallbacks=["b", "a", "km", "greedy"])
    assert d.policy == "km"
    assert d.fallback_reason == "error"  # the reason of the requested policy
    assert d.fallback.split("; ")[0].startswith("a: error") and d.fallback.split("; ")[1].startswith("b: unavailable")
    assert pset.get("a").calls == 1  # the requested policy is not retried from the fallback list


def test_unknown_policy_falls_back_or_raises(state):
    d = decide(state, CellHistory.empty(), "no-such-policy", policies=PolicySet(), fallbacks=["greedy"])
    assert d.policy == "greedy" and d.fallback_reason == "unknown_policy"
    with pytest.raises(UnknownPolicyError):
        decide(state, CellHistory.empty(), "no-such-policy", policies=PolicySet())


def test_last_policy_of_the_chain_raises(state):
    pset = _pset(a=Raising(RuntimeError("a")), b=Raising(PolicyUnavailableError("b")))
    with pytest.raises(PolicyError, match="a failed"):
        decide(state, CellHistory.empty(), "a", policies=pset)
    with pytest.raises(PolicyUnavailableError):
        decide(state, CellHistory.empty(), "a", policies=pset, fallbacks=["b"])


def test_preset_mismatch_falls_back(state):
    pset = _pset(maconly=Answer(np.array([1, 0, 0]), presets=("mac",)))
    d = decide(state, CellHistory.empty(), "maconly", policies=pset, fallbacks=["greedy"])
    assert d.policy == "greedy" and d.fallback_reason == "error" and "spectrum" in d.fallback


def test_deadline_overrun_falls_back(state):
    slow = Answer(np.array([1, 2, 0]), sleep_s=0.02)
    pset = _pset(slow=slow)
    d = decide(state, CellHistory.empty(), "slow", policies=pset, fallbacks=["greedy"], deadline_s=0.001)
    assert d.policy == "greedy" and d.fallback_reason == "deadline"
    assert d.timings_us["policy"] >= 0 and set(d.timings_us) == set(STAGES)
    # the safety net is accepted even when late; a policy within its deadline is not replaced
    d2 = decide(state, CellHistory.empty(), "slow", policies=pset, deadline_s=0.001)
    assert d2.policy == "slow" and d2.fallback is None
    d3 = decide(state, CellHistory.empty(), "slow", policies=pset, fallbacks=["greedy"], deadline_s=60.0)
    assert d3.policy == "slow"
    # the deadline reaches the policy through its context
    assert slow.seen[-1].deadline is not None and 0 < slow.seen[-1].time_left_s() <= 60.0


def test_context_carries_history_view_and_the_slot_rng(state):
    spy = Answer(np.array([0, 0, 0]))
    decide(state, CellHistory.empty(), "spy", policies=_pset(spy=spy), seed=5)
    ctx = spy.seen[0]
    assert ctx.history.avg_served.shape == (4,) and not ctx.history.known.any()
    assert ctx.deadline is None and ctx.time_left_s() == float("inf")
    assert ctx.rng.integers(2**62) == slot_rng(5, "cell-7", 42).integers(2**62)


def test_slot_rng_is_per_seed_cell_and_slot():
    def draw(*args):
        return slot_rng(*args).integers(2**62, size=4).tolist()

    assert draw(1, "a", 3) == draw(1, "a", 3)
    assert len({tuple(draw(*k)) for k in [(1, "a", 3), (2, "a", 3), (1, "b", 3), (1, "a", 4)]}) == 4
    assert draw(-1, "a", -3) == draw(-1, "a", -3)  # negative seeds / slots are fine


def test_decide_is_deterministic_for_a_seed(state):
    a = decide(state, CellHistory.empty(), "random", policies=PolicySet(), seed=3)
    b = decide(state, CellHistory.empty(), "random", policies=PolicySet(), seed=3)
    assert np.array_equal(a.owner, b.owner)


def test_policy_set_caches_and_replaces_instances():
    built = []

    def factory():
        built.append(1)
        return Answer(np.zeros(3, np.int64))

    pset = PolicySet(factories={"mine": factory})
    assert pset.get("mine") is pset.get("mine") and len(built) == 1
    km = pset.get("km")  # not in the factories: from the registry
    assert km.name == "km" and set(pset.loaded()) == {"mine", "km"}
    new = Answer(np.ones(3, np.int64))
    pset.put("mine", new)
    assert pset.get("mine") is new


def test_registry_was_not_polluted():
    assert names() == REGISTERED
    assert not {"raising", "answer", "broken", "slow", "spy", "mine", "maconly", "a", "b"} & set(names())
