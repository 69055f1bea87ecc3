"""HARQ retransmissions first (PAG rule ``retx_not_first``): the check, the deterministic repair,
and the baselines that satisfy it by construction.

P = the eligible users with ``retx_rbgs > 0``; user u of P needs ``min(retx_rbgs[u], cap)`` RBGs.
A decision breaks the rule when some u of P holds fewer while an available RBG does not serve a
retransmission (new data of a user outside P, RBGs of a user of P beyond its need, or unused).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from testkit import held_history

from service.assign import retx_first, serve_retx
from service.history import CellHistory
from service.pag import check, is_valid, masked_decode, repair
from service.pag.checks import RETX_NOT_FIRST, VIOLATION_KINDS
from service.pipeline import decide
from service.policies import PolicyContext, make, names
from service.policies.registry import PolicySet
from service.policies.student_decode import decode
from service.rng import slot_rng
from service.types import SlotState, make_slot, owner_ids

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_utility = st.one_of(st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 1.0, 100.0]))


@st.composite
def retx_slots(draw) -> SlotState:
    """A small mac slot with retransmissions pending for some users (ties in ``retx_bits`` and in
    the utility), random availability, eligibility, cap and (sometimes) buffers, some of them empty."""
    n = draw(st.integers(1, 6))
    r = draw(st.integers(1, 7))
    user_ids = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n, unique=True))
    res_ids = draw(st.lists(st.integers(0, 40), min_size=r, max_size=r, unique=True))
    if draw(st.booleans()):
        util = draw(arrays(np.float64, (n, r), elements=_utility))
    else:  # TBS per user, the same on every RBG
        util = np.repeat(draw(arrays(np.float64, (n, 1), elements=_utility)), r, axis=1)
    pending = draw(arrays(np.bool_, n))
    rbgs = np.where(pending, draw(arrays(np.int64, n, elements=st.integers(1, r))), 0)
    bits = np.where(pending, draw(arrays(np.float64, n, elements=st.sampled_from([256.0, 1000.0, 4096.5]))), 0.0)
    buf = None
    if draw(st.booleans()):
        buf = np.maximum(util.max(axis=1), 1.0) * draw(arrays(np.float64, n, elements=st.sampled_from([0.0, 1.0, 2.5])))
    return make_slot(
        "mac",
        user_ids,
        res_ids,
        utility=util,
        resource_available=draw(arrays(np.bool_, r, elements=st.sampled_from([True, True, True, False]))),
        user_eligible=draw(arrays(np.bool_, n, elements=st.sampled_from([True, True, True, False]))),
        max_resources_per_user=draw(st.integers(1, r)),
        buffer_bits=buf,
        retx_bits=bits,
        retx_rbgs=rbgs,
    )


@st.composite
def raw_outputs(draw, state: SlotState):
    """Any raw output: DCM arrays of any length and values, user→resource mappings (contention,
    unknown ids), JSON owner lists, junk text."""
    n, r = state.num_ue, state.num_res
    uids, rids = state.user_ids.tolist(), state.resource_ids.tolist()
    kind = draw(st.sampled_from(["dcm", "dcm_exact", "mapping", "json_owner", "text"]))
    if kind == "dcm":
        return draw(arrays(np.int64, st.integers(0, r + 2), elements=st.integers(-2, n + 2)))
    if kind == "dcm_exact":
        return draw(arrays(np.int64, r, elements=st.integers(0, n)))
    if kind == "mapping":
        res = st.one_of(st.sampled_from(rids), st.integers(-3, 60))
        keys = st.one_of(st.sampled_from(uids), st.integers(-3, 60))
        return draw(st.dictionaries(keys, st.one_of(res, st.lists(res, max_size=r + 2)), max_size=n + 2))
    if kind == "json_owner":
        ids = st.one_of(st.sampled_from(uids), st.none(), st.integers(-3, 60))
        return json.dumps({"owner": draw(st.lists(ids, max_size=r + 2))})
    return draw(st.text(max_size=20))


def _held(state: SlotState, owner: np.ndarray) -> np.ndarray:
    return np.bincount(owner, minlength=state.num_ue + 1)[1:]


def _serves_retx_first(state: SlotState, owner: np.ndarray) -> bool:
    """The rule written plainly (for a DCM that passes the other checks)."""
    need = state.retx_need()
    assert need is not None
    held = _held(state, owner)
    if (held >= need).all():
        return True
    for r in np.flatnonzero(state.resource_available).tolist():
        k = owner[r]
        if k == 0 or need[k - 1] == 0:  # unused, or new data of a user outside P
            return False
    return bool((held[need > 0] <= need[need > 0]).all())  # nothing beyond a need either


def _reference_serve(state: SlotState, owner: np.ndarray) -> np.ndarray:
    """The repair step one RBG at a time: P by (-retx_bits, user id); each short user takes the
    unused RBG it values most, else the RBG of a user outside P that its holder values least,
    else the RBG of a user of P beyond its need that it values least (ties: lower index)."""
    owner = owner.copy()
    need = state.retx_need()
    assert need is not None and state.retx_bits is not None
    util = state.utility
    p = sorted(np.flatnonzero(need > 0).tolist(), key=lambda u: (-state.retx_bits[u], int(state.user_ids[u])))
    for u in p:
        while _held(state, owner)[u] < need[u]:
            held = _held(state, owner)
            free = [r for r in range(state.num_res) if state.resource_available[r] and owner[r] == 0]
            outside = [r for r in range(state.num_res) if owner[r] and need[owner[r] - 1] == 0]
            beyond = [
                r
                for r in range(state.num_res)
                if owner[r] and owner[r] != u + 1 and need[owner[r] - 1] > 0 and held[owner[r] - 1] > need[owner[r] - 1]
            ]
            if free:
                pick = min(free, key=lambda r: (-util[u, r], r))
            elif outside:
                pick = min(outside, key=lambda r: (util[owner[r] - 1, r], r))
            elif beyond:
                pick = min(beyond, key=lambda r: (util[owner[r] - 1, r], r))
            else:
                break
            owner[pick] = u + 1
    return owner


# ----------------------------------------------------------------------------- the rule


@pytest.fixture
def state() -> SlotState:
    """Users 10..13 (SE 1.1758, 0.6016, 0.2344, 1.0: TBS 790, 404, 158, 672 bits per RBG), six
    RBGs; 11 has a 2000-bit block in 2 RBGs pending, 12 an 800-bit block in 1 RBG; 11 has an
    empty queue (still eligible: its block waits in the HARQ buffer)."""
    return make_slot(
        "mac",
        [10, 11, 12, 13],
        [100, 101, 102, 103, 104, 105],
        spectral_efficiency=[1.1758, 0.6016, 0.2344, 1.0],
        buffer_bits=[1e5, 0.0, 3e3, 1e4],
        retx_bits=[0.0, 2000.0, 800.0, 0.0],
        retx_rbgs=[0, 2, 1, 0],
    )


def test_state_fields_need_and_order(state):
    assert state.retx_bits.dtype == np.float64 and state.retx_rbgs.dtype == np.int64
    assert state.user_eligible.tolist() == [True, True, True, True]  # 11: empty queue, retransmission pending
    assert state.retx_need().tolist() == [0, 2, 1, 0]
    assert state.retx_order().tolist() == [1, 2]
    plain = make_slot("mac", [1, 2], [0], spectral_efficiency=[1.0, 1.0], buffer_bits=[0.0, 5.0])
    assert plain.retx_need() is None and plain.retx_order().size == 0 and plain.user_eligible.tolist() == [False, True]
    # ties in retx_bits by user id, not by position; the cap wins over a larger retx_rbgs
    tie = make_slot(
        "mac", [9, 3, 5], [0, 1, 2], utility=np.ones((3, 3)), retx_bits=[5.0, 5.0, 7.0], retx_rbgs=[1, 3, 2],
        max_resources_per_user=2,
    )  # fmt: skip
    assert tie.retx_order().tolist() == [2, 1, 0] and tie.retx_need().tolist() == [1, 2, 2]


@pytest.mark.parametrize(
    ("owner", "needle"),
    [
        ([1, 1, 1, 1, 4, 4], "user 11 gets 0 of the 2 resources"),  # everything to new data
        (
            [2, 1, 3, 1, 1, 1],
            "user 11 gets 1 of the 2 resources its pending HARQ retransmission needs while resource 101 goes to user 10",
        ),
        ([2, 2, 0, 0, 0, 0], "user 12 gets 0 of the 1 resources"),  # 12 short, RBGs left unused
        ([2, 2, 2, 0, 0, 0], "user 12 gets 0"),
    ],
)
def test_rule_reports_a_short_retransmission(state, owner, needle):
    res = check(state, np.array(owner))
    assert not res.valid and RETX_NOT_FIRST in VIOLATION_KINDS
    assert {v.kind for v in res.violations} == {RETX_NOT_FIRST}
    assert any(needle in v.message for v in res.violations), [v.message for v in res.violations]
    assert all(state.retx_need()[v.user] > 0 for v in res.violations)


@pytest.mark.parametrize(
    "owner",
    [
        [2, 2, 3, 1, 1, 4],  # P served, new data on the rest
        [3, 2, 2, 0, 0, 0],  # P served, the rest unused
        [2, 2, 2, 3, 4, 4],  # a user of P beyond its need is fine once nobody is short
        [1, 2, 4, 3, 2, 1],  # any RBGs will do
    ],
)
def test_rule_accepts_retransmissions_served_first(state, owner):
    assert is_valid(state, np.array(owner))


def test_when_the_rbgs_cannot_cover_p_every_rbg_goes_to_its_retransmissions():
    # 2 available RBGs, P needs 2 + 1
    st_ = make_slot(
        "mac",
        [10, 11, 12],
        [0, 1, 2],
        utility=np.full((3, 3), 100.0),
        resource_available=[True, False, True],
        retx_bits=[0.0, 2000.0, 800.0],
        retx_rbgs=[0, 2, 1],
    )
    for ok in ([2, 0, 2], [2, 0, 3], [3, 0, 2]):
        assert is_valid(st_, np.array(ok)), ok
    for bad in ([1, 0, 2], [2, 0, 0], [0, 0, 0], [2, 0, 1]):
        assert [v.kind for v in check(st_, np.array(bad)).violations][:1] == [RETX_NOT_FIRST], bad
    assert serve_retx(st_).tolist() == [2, 0, 2]  # the larger block first


def test_rule_ignores_ineligible_users_and_respects_the_cap():
    st_ = make_slot(
        "mac",
        [1, 2, 3],
        [0, 1, 2, 3],
        utility=np.ones((3, 4)),
        user_eligible=[True, False, True],
        max_resources_per_user=1,
        retx_bits=[300.0, 900.0, 0.0],
        retx_rbgs=[3, 2, 0],
    )
    assert st_.retx_need().tolist() == [1, 0, 0]  # cap 1 wins over 3; user 2 may own nothing
    assert is_valid(st_, np.array([1, 3, 0, 0]))
    assert not is_valid(st_, np.array([3, 0, 0, 0]))


def test_every_output_form_is_checked_alike(state):
    bad = np.array([1, 1, 1, 1, 4, 4])
    alloc: dict[int, list[int]] = {}
    for rid, uid in zip(state.resource_ids.tolist(), owner_ids(state, bad), strict=True):
        alloc.setdefault(uid, []).append(rid)
    for raw in (bad, alloc, json.dumps({"owner": owner_ids(state, bad)}), json.dumps({"allocation": alloc})):
        kinds = {v.kind for v in check(state, raw).violations}
        assert kinds == {RETX_NOT_FIRST}, (raw, kinds)


# ----------------------------------------------------------------------------- repair


def _fixed(state: SlotState, raw) -> np.ndarray:
    return repair(state, check(state, raw))


def test_repair_by_example(state):
    # 11 (2000 bits) first: no unused RBG; 13's RBGs (672 bits) cost less than 10's (790): 104, 105.
    # then 12: the four RBGs of 10 are worth the same to it: the lowest index, 100
    assert _fixed(state, np.array([1, 1, 1, 1, 4, 4])).tolist() == [3, 1, 1, 1, 2, 2]
    # unused RBGs are taken first, then the rest is kept as it is
    assert _fixed(state, np.array([1, 0, 0, 4, 4, 0])).tolist() == [1, 2, 2, 4, 4, 3]
    # a user of P beyond its need gives up its surplus (lowest utility to it first) when nothing else is left
    two = make_slot(
        "mac",
        [1, 2],
        [0, 1, 2],
        utility=np.array([[5.0, 1.0, 3.0], [1.0, 1.0, 1.0]]),
        retx_bits=[100.0, 50.0],
        retx_rbgs=[1, 1],
    )
    assert _fixed(two, np.array([1, 1, 1])).tolist() == [1, 2, 1]
    assert _fixed(state, np.array([2, 2, 3, 1, 0, 4])).tolist() == [2, 2, 3, 1, 0, 4]  # valid: kept, not filled
    assert _fixed(state, np.array([2, 0, 3, 1, 1, 4])).tolist() == [2, 2, 3, 1, 1, 4]
    # only the rule was broken: the retransmissions take what they need, nothing else is filled
    assert _fixed(state, np.array([1, 0, 0, 0, 0, 0])).tolist() == [1, 2, 2, 3, 0, 0]


def test_other_violations_are_repaired_and_filled_without_new_data_for_p(state):
    owner = _fixed(state, "no decision")
    assert is_valid(state, owner)
    held = _held(state, owner)
    assert held[1] == 2 and held[2] == 1  # exactly their retransmissions: no new data for them
    assert (owner > 0).all()  # the other RBGs to the users without one


@PROPS
@given(data=st.data())
def test_repaired_output_passes_every_check_and_is_deterministic(data):
    state = data.draw(retx_slots())
    raw = data.draw(raw_outputs(state))
    result = check(state, raw)
    owner = repair(state, result)
    assert check(state, owner).violations == []
    assert _serves_retx_first(state, owner)
    assert np.array_equal(owner, _fixed(state, raw))  # deterministic
    assert np.array_equal(_fixed(state, owner), owner)  # idempotent


def _other_rules_kept(state: SlotState, seed: int, drop: float) -> np.ndarray:
    """A DCM that breaks no rule but (maybe) "retransmissions first": masked sampling where a few
    users hog the RBGs (with or without a retransmission, so that every source of repair step 4
    is reached), then a fraction ``drop`` of the RBGs left unused."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(state.num_res, state.num_ue + 1))
    logits[:, 1:] += rng.choice([0.0, 6.0], state.num_ue)
    if rng.random() < 0.3:  # only users of P hold RBGs (step 4 must take from their surplus)
        logits[:, 1:][:, state.retx_need() == 0] = -30.0
        logits[:, 0] = -30.0
    raw = masked_decode(state, logits, rng=rng)
    raw[rng.random(state.num_res) < drop] = 0
    return raw


@PROPS
@given(data=st.data())
def test_repair_is_minimal_and_follows_the_documented_order(data):
    """From a decision that breaks no other rule: only short users of P gain RBGs, each moved RBG
    closes one RBG of a shortfall, no user of P at or below its need loses one, unused RBGs go
    before taken ones and RBGs of users outside P before those of P — exactly the reference."""
    state = data.draw(retx_slots())
    raw = _other_rules_kept(state, data.draw(st.integers(0, 2**32 - 1)), data.draw(st.sampled_from([0.0, 0.3])))
    assert {v.kind for v in check(state, raw).violations} <= {RETX_NOT_FIRST}
    owner = _fixed(state, raw)
    assert np.array_equal(owner, _reference_serve(state, raw))
    assert is_valid(state, owner)
    need = state.retx_need()
    before, after = _held(state, raw), _held(state, owner)
    moved = np.flatnonzero(owner != raw)
    gainers = owner[moved] - 1
    assert (need[gainers] > before[gainers]).all()  # only short users of P gain
    assert moved.size == int((np.minimum(after, need) - np.minimum(before, need)).sum())  # one RBG, one RBG of need
    for u in np.flatnonzero((need > 0) & (before <= need)).tolist():
        assert (owner[raw == u + 1] == u + 1).all()  # never taken from a user of P at or below its need
    taken = moved[raw[moved] > 0]
    if taken.size:  # unused RBGs first
        assert not (state.resource_available & (owner == 0)).any()
    if (need[raw[taken] - 1] > 0).any():  # users outside P before users of P
        assert (need[owner[owner > 0] - 1] > 0).all()


@PROPS
@given(data=st.data())
def test_repair_never_changes_a_valid_decision(data):
    state = data.draw(retx_slots())
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    owner = serve_retx(state, masked_decode(state, rng.normal(size=(state.num_res, state.num_ue + 1))))
    assert is_valid(state, owner) and _serves_retx_first(state, owner)
    assert np.array_equal(_fixed(state, owner), owner)
    alloc: dict[int, list[int]] = {}
    for rid, uid in zip(state.resource_ids.tolist(), owner_ids(state, owner), strict=True):
        if uid is not None:
            alloc.setdefault(uid, []).append(rid)
    assert np.array_equal(_fixed(state, alloc), owner)


# ----------------------------------------------------------------------------- baselines

#: every registered policy that serves mac without an outside resource (the student is below)
BASELINES = sorted(set(names()) - {"student", "teacher", "auction"})


def _act(name: str, state: SlotState, history: CellHistory | None = None) -> np.ndarray:
    ctx = PolicyContext((history or CellHistory.empty()).view(state), slot_rng(7, state.cell_id, state.slot))
    return np.asarray(make(name)(state, ctx))


def _random_slot(rng: np.random.Generator, n: int, r: int, slot: int = 0) -> SlotState:
    pending = rng.random(n) < 0.4
    return make_slot(
        "mac",
        np.arange(n) * 3 + 1,
        np.arange(r),
        spectral_efficiency=rng.choice([0.2344, 0.6016, 1.1758], (n, r)),
        buffer_bits=np.where(rng.random(n) < 0.2, 0.0, rng.integers(1, 8000, n).astype(float)),
        user_eligible=rng.random(n) < 0.9,
        resource_available=rng.random(r) < 0.85,
        max_resources_per_user=int(rng.integers(1, r + 1)) if rng.random() < 0.5 else None,
        retx_bits=np.where(pending, rng.choice([512.0, 1024.0, 3000.0], n), 0.0),
        retx_rbgs=np.where(pending, rng.integers(1, r + 1, n), 0),
        slot=slot,
    )


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_serve_retransmissions_first_by_construction(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    for i in range(40):
        n, r = (int(rng.integers(1, 5)), int(rng.integers(1, 6))) if name == "exhaustive" else (
            int(rng.integers(1, 12)), int(rng.integers(1, 14)))  # fmt: skip
        state = _random_slot(rng, n, r, slot=i)
        owner = _act(name, state)
        res = check(state, owner)
        assert res.valid, (name, i, [v.message for v in res.violations])
        need = state.retx_need()
        start, _ = retx_first(state)
        if start is not None and name != "de":  # de repairs each candidate: the rule holds, the RBGs may differ
            assert np.array_equal(owner[start > 0], start[start > 0]), (name, i)  # P first, as serve_retx put it
            assert (_held(state, owner)[need > 0] == _held(state, start)[need > 0]).all()  # and no new data for P


def test_pf_fair_serves_retransmissions_first_whatever_its_share_tilt():
    """The share tilt re-ranks only the users without a retransmission: with a history that makes
    it act, pf_fair's decision still starts from ``serve_retx`` and gives P no new data."""
    rng = np.random.default_rng(21)
    tilted = 0
    for i in range(60):
        state = _random_slot(rng, int(rng.integers(2, 12)), int(rng.integers(2, 14)), slot=50 + i)
        n = state.num_ue
        view = held_history(rng.exponential(300.0, n), rng.integers(0, 80, n))
        ctx = PolicyContext(view, slot_rng(7, state.cell_id, state.slot))
        owner = np.asarray(make("pf_fair")(state, ctx))
        assert check(state, owner).valid, i
        start, _ = retx_first(state)
        if start is not None:
            assert np.array_equal(owner[start > 0], start[start > 0]), i
            need = state.retx_need()
            assert (_held(state, owner)[need > 0] == _held(state, start)[need > 0]).all(), i
        tilted += not np.array_equal(owner, np.asarray(make("pf")(state, ctx)))
    assert tilted > 0  # the tilt acted on some slots


def test_pf_spread_leaves_the_retransmissions_where_serve_retx_put_them():
    """The idle spread moves only users without a retransmission: with a history that makes it
    act, pf_spread's decision keeps P's RBGs as ``serve_retx`` placed them and stays valid."""
    rng = np.random.default_rng(22)
    spread = 0
    for i in range(80):
        state = _random_slot(rng, int(rng.integers(2, 12)), int(rng.integers(2, 14)), slot=50 + i)
        assert state.buffer_bits is not None
        state = replace(state, buffer_bits=state.buffer_bits / 20.0)  # light: RBGs left idle
        n = state.num_ue
        view = held_history(rng.exponential(300.0, n), rng.integers(0, 80, n))
        ctx = PolicyContext(view, slot_rng(7, state.cell_id, state.slot))
        owner, pf = np.asarray(make("pf_spread")(state, ctx)), np.asarray(make("pf")(state, ctx))
        assert check(state, owner).valid, i
        need = state.retx_need()
        if need is not None:
            for u in np.flatnonzero(need > 0).tolist():
                assert np.array_equal(owner == u + 1, pf == u + 1), i
        spread += not np.array_equal(owner, pf)
    assert spread > 0  # the spread acted on some slots


def test_baselines_and_the_shipped_student_through_the_pipeline_are_valid_before_repair():
    """The baselines and the shipped mac student (``pf_anchored`` decode) serve retransmissions
    first by construction; a student decode that does not know the rule (``capped``) is repaired."""
    rng = np.random.default_rng(5)
    policies = PolicySet({name: (lambda name=name: make(name)) for name in [*BASELINES, "student"]})
    assert make("student").model("mac") is not None, "the mac student ships with the repository"
    repaired = 0
    for i in range(10):
        state = _random_slot(rng, 8, 10, slot=i)
        for name in ["pf", "pf_fair", "pf_spread", "rr", "max_weight", "greedy", "km", "student"]:
            d = decide(state, CellHistory.empty(), name, policies=policies)
            assert d.policy == name and d.valid_before_repair and not d.violations, (name, d.violations)
            assert _serves_retx_first(state, d.owner)
        logits = np.random.default_rng(i).normal(size=(state.num_res, state.num_ue + 1))
        raw = decode(state, logits, {"kind": "capped"})
        fixed = repair(state, check(state, raw))
        assert is_valid(state, fixed) and _serves_retx_first(state, fixed)
        repaired += not check(state, raw).valid
    assert repaired > 0  # the capped decode breaks the rule on some of these slots
