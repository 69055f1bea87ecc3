"""Deterministic repair (SPEC §4, LSA theorem 1): property tests over arbitrary raw outputs."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.assign import NEED_TOLERANCE, greedy_fill
from service.pag import check, is_valid, masked_decode, repair
from service.types import SlotState, make_slot, owner_ids, slot_utility

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_utility = st.one_of(
    st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 1.0, 2.0, 100.0])
)  # small set: ties


@st.composite
def slots(draw, preset=None, admissible=False):
    """A small slot of either preset: random ids, utility (with ties), availability, eligibility,
    cap and (sometimes) buffers."""
    preset = preset or draw(st.sampled_from(["spectrum", "mac"]))
    n = draw(st.integers(1, 6))
    r = draw(st.integers(1, 7))
    user_ids = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n, unique=True))
    res_ids = draw(st.lists(st.integers(0, 40), min_size=r, max_size=r, unique=True))
    if draw(st.booleans()):
        util = draw(arrays(np.float64, (n, r), elements=_utility))
    else:  # the same on every resource (mac: TBS per user)
        util = np.repeat(draw(arrays(np.float64, (n, 1), elements=_utility)), r, axis=1)
    avail = np.ones(r, bool) if admissible else draw(arrays(np.bool_, r))
    elig = np.ones(n, bool) if admissible else draw(arrays(np.bool_, n))
    cap = draw(st.integers(1, r))
    buf = None
    if preset == "mac" and draw(st.booleans()):  # in units of the user's best RBG, so that it binds
        factors = [0.5, 1.0, 1.5, 2.5, 1e3] if admissible else [0.0, 0.5, 1.0, 1.5, 2.5, 1e3]
        buf = np.maximum(util.max(axis=1), 1.0) * draw(arrays(np.float64, n, elements=st.sampled_from(factors)))
    return make_slot(
        preset,
        user_ids,
        res_ids,
        utility=util,
        resource_available=avail,
        user_eligible=elig,
        max_resources_per_user=cap,
        buffer_bits=buf,
    )


def _id_or_junk(ids):
    return st.one_of(
        st.sampled_from(ids),
        st.integers(-3, 60),
        st.floats(allow_nan=True),
        st.text(max_size=3),
        st.none(),
        st.booleans(),
    )


@st.composite
def raw_outputs(draw, state):
    """Any raw policy output: DCM arrays of any length / values, user→resource dicts, text."""
    n, r = state.num_ue, state.num_res
    uids, rids = state.user_ids.tolist(), state.resource_ids.tolist()
    dcm = arrays(np.int64, st.integers(0, r + 2), elements=st.integers(-2, n + 2))
    res_value = st.one_of(_id_or_junk(rids), st.lists(_id_or_junk(rids), max_size=r + 2))
    mapping = st.dictionaries(
        st.one_of(st.sampled_from(uids), st.integers(-3, 60), st.text(max_size=2)), res_value, max_size=n + 2
    )
    id_list = st.lists(st.one_of(st.sampled_from(uids), st.none(), st.integers(-3, 60)), max_size=r + 2)
    kind = draw(st.sampled_from(["dcm", "mapping", "text", "json_owner", "json_map", "list"]))
    if kind == "dcm":
        return draw(dcm)
    if kind == "mapping":
        return draw(mapping)
    if kind == "text":
        return draw(st.text(max_size=40))
    if kind == "json_owner":
        return json.dumps({"owner": draw(id_list)})
    if kind == "json_map":
        m = draw(st.dictionaries(st.sampled_from(uids), st.lists(st.sampled_from(rids), max_size=3), max_size=n))
        return "answer:\n```json\n" + json.dumps({"allocation": {str(k): v for k, v in m.items()}}) + "\n```"
    return draw(id_list)


def _fixed(state, raw):
    return repair(state, check(state, raw))


def _fill_is_complete(state, owner):
    """No free available resource with utility above 0 for an eligible user below its cap and
    (mac) with data left (a resource where the user's rate is 0 carries nothing for it)."""
    free = state.resource_available & (owner == 0)
    if not free.any():
        return True
    counts = np.bincount(owner, minlength=state.num_ue + 1)[1:]
    room = state.user_eligible & (counts < state.max_resources_per_user)
    if state.preset == "mac" and state.buffer_bits is not None:
        sched = np.array([state.utility[u, owner == u + 1].sum() for u in range(state.num_ue)])
        room &= sched < state.buffer_bits
    return not (room[:, None] & free[None, :] & (state.utility > 0)).any()


# ----------------------------------------------------------------------------- properties


@PROPS
@given(data=st.data())
def test_repaired_output_passes_every_check_and_is_deterministic(data):
    state = data.draw(slots())
    raw = data.draw(raw_outputs(state))
    result = check(state, raw)
    owner = repair(state, result)
    assert owner.dtype == np.int64 and owner.shape == (state.num_res,)
    assert check(state, owner).violations == []
    assert np.array_equal(owner, _fixed(state, raw))  # deterministic
    assert np.array_equal(_fixed(state, owner), owner)  # idempotent
    if not result.valid:
        assert _fill_is_complete(state, owner)


@PROPS
@given(data=st.data())
def test_repair_never_changes_a_valid_decision(data):
    state = data.draw(slots())
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(state.num_res, state.num_ue + 1)) * data.draw(st.sampled_from([0.1, 1.0, 10.0]))
    owner = masked_decode(state, logits, rng=rng if data.draw(st.booleans()) else None)
    assert is_valid(state, owner)
    assert np.array_equal(_fixed(state, owner), owner)
    # the same decision in id space (user→resource mapping and JSON owner list) is kept as well
    alloc = {}
    for rid, uid in zip(state.resource_ids.tolist(), owner_ids(state, owner), strict=True):
        if uid is not None:
            alloc.setdefault(uid, []).append(rid)
    assert np.array_equal(_fixed(state, alloc), owner)
    if 0 not in state.user_ids:
        assert np.array_equal(_fixed(state, json.dumps({"owner": owner_ids(state, owner)})), owner)


@PROPS
@given(data=st.data())
def test_contention_goes_to_the_highest_utility_user(data):
    """Each user claims one resource (no cap issue); a contended resource goes to the claimant
    with the highest utility on it (ties: lowest user index)."""
    state = data.draw(slots(preset="spectrum", admissible=True))
    n, r = state.num_ue, state.num_res
    claims = data.draw(st.lists(st.integers(0, r - 1), min_size=n, max_size=n))
    raw = {int(state.user_ids[u]): int(state.resource_ids[c]) for u, c in enumerate(claims)}
    owner = _fixed(state, raw)
    claims_arr = np.array(claims)
    for c in set(claims):
        claimants = np.flatnonzero(claims_arr == c)
        u_best = claimants[np.argmax(state.utility[claimants, c])]  # argmax: first = lowest index
        assert owner[c] == u_best + 1


@PROPS
@given(data=st.data())
def test_cap_keeps_the_highest_utility_resources(data):
    """A user over its cap keeps its top-``cap`` claimed resources by utility (ties: lowest
    resource index); claims are disjoint between users so only the cap rule applies."""
    state = data.draw(slots(preset="mac", admissible=True))
    n, r, cap = state.num_ue, state.num_res, state.max_resources_per_user
    holder = data.draw(st.lists(st.integers(-1, n - 1), min_size=r, max_size=r))  # who claims each resource
    raw: dict[int, list[int]] = {}
    for c, u in enumerate(holder):
        if u >= 0:
            raw.setdefault(int(state.user_ids[u]), []).append(int(state.resource_ids[c]))
    owner = _fixed(state, raw)
    holder_arr = np.array(holder)
    for u in range(n):
        claimed = np.flatnonzero(holder_arr == u)
        if claimed.size <= cap:
            continue
        order = np.lexsort((claimed, -state.utility[u, claimed]))
        assert set(np.flatnonzero(owner == u + 1).tolist()) == set(claimed[order[:cap]].tolist())


@PROPS
@given(data=st.data())
def test_mac_fill_only_while_the_user_has_data(data):
    """Fill from nothing (an unparsable answer): a user gets another RBG only while the bits
    scheduled so far do not cover its buffer, and no RBG stays free while a user could use it."""
    state = data.draw(slots(preset="mac"))
    owner = _fixed(state, "no decision")
    assert is_valid(state, owner)
    assert _fill_is_complete(state, owner)
    if state.buffer_bits is None:
        return
    for u in range(state.num_ue):
        got = state.utility[u, owner == u + 1]
        if got.size:
            assert state.buffer_bits[u] > 0
            # filled highest utility first: the last RBG was granted while data was left
            assert got.sum() - got.min() < state.buffer_bits[u]


# ----------------------------------------------------------------------------- examples


def test_repair_steps_by_example():
    util = np.array([[5.0, 3.0, 8.0, 1.0], [6.0, 2.0, 7.0, 4.0], [1.0, 1.0, 1.0, 9.0]])
    state = make_slot(
        "spectrum",
        [1, 2, 3],
        [10, 20, 30, 40],
        rate_bps=util,
        resource_available=[True, True, True, False],
        user_eligible=[True, True, True],
    )
    # 1 and 2 contend for 10 (2 wins: 6 > 5); 3 asks for busy 40 (dropped); fill: 1 -> 30 (8), 3 -> 20
    raw = {1: 10, 2: 10, 3: 40}
    owner = _fixed(state, raw)
    assert owner.tolist() == [2, 3, 1, 0]
    assert is_valid(state, owner)
    # cap 1: user 1 asks for 10, 20, 30 -> keeps 30 (8); then fill gives 10 to 2 (6), 20 to 3
    assert _fixed(state, {1: [10, 20, 30]}).tolist() == [2, 3, 1, 0]


def test_ties_break_towards_the_lowest_index():
    state = make_slot("spectrum", [7, 8], [1, 2], rate_bps=np.ones((2, 2)))
    assert _fixed(state, {7: 1, 8: 1}).tolist() == [1, 2]  # contention tie: user index 0 wins
    mac = make_slot("mac", [7], [1, 2, 3], utility=np.ones((1, 3)), max_resources_per_user=2)
    assert _fixed(mac, {7: [3, 2, 1]}).tolist() == [1, 1, 0]  # cap tie: lowest resource indices


def test_valid_but_sparse_decisions_are_not_filled():
    state = make_slot("spectrum", [1, 2], [10, 20], rate_bps=np.ones((2, 2)))
    assert _fixed(state, np.array([0, 0])).tolist() == [0, 0]  # valid: kept, even though unused
    assert _fixed(state, {1: 10}).tolist() == [1, 0]
    assert _fixed(state, "garbage").tolist() == [1, 2]  # invalid: filled


def test_repair_improves_on_dropping_to_nothing():
    rng = np.random.default_rng(3)
    state = make_slot("spectrum", np.arange(6), np.arange(6), rate_bps=rng.random((6, 6)))
    owner = _fixed(state, np.array([9, 9, 9, 9, 9, 9]))  # all out of domain
    assert (owner > 0).all() and slot_utility(state, owner) > 0


# ----------------------------------------------------------------------------- fill kernel


def _reference_greedy(state: SlotState, score: np.ndarray, owner: np.ndarray, users: np.ndarray | None) -> np.ndarray:
    """The fill step written plainly: visit every (user, resource) pair by descending score
    (NaN last; ties: lower user, then lower resource), take it iff its utility is above 0, the resource is
    free and available, the user eligible, selected, below its cap and (mac) still has unscheduled data beyond
    ``NEED_TOLERANCE`` of its best TBS."""
    owner = owner.copy()
    n, r = state.num_ue, state.num_res
    counts = np.bincount(owner, minlength=n + 1)[1:].tolist()
    left = None
    if state.preset == "mac" and state.buffer_bits is not None:
        left = [
            float(state.buffer_bits[u]) - sum(float(state.utility[u, c]) for c in range(r) if owner[c] == u + 1)
            for u in range(n)
        ]

    def key(u: int, c: int) -> tuple[bool, float, int, int]:  # NaN last
        v = float(score[u, c])
        return (v != v, 0.0 if v != v else -v, u, c)

    pairs = sorted(key(u, c) for u in range(n) for c in range(r))
    for _, _, u, c in pairs:
        if owner[c] or not state.resource_available[c] or not state.user_eligible[u] or state.utility[u, c] <= 0:
            continue
        if users is not None and u not in set(users.tolist()):
            continue
        if counts[u] >= state.max_resources_per_user or (
            left is not None and left[u] <= NEED_TOLERANCE * float(state.utility[u].max(initial=0.0))
        ):
            continue
        owner[c] = u + 1
        counts[u] += 1
        if left is not None:
            left[u] -= float(state.utility[u, c])
    return owner


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_greedy_fill_matches_the_pair_by_pair_reference(data):
    state = data.draw(slots())
    n, r = state.num_ue, state.num_res
    kind = data.draw(st.sampled_from(["utility", "scaled rows", "random", "ties"]))
    if kind == "utility":
        score = state.utility
    elif kind == "scaled rows":  # PF / max-weight: a per-user weight times the utility
        score = state.utility * data.draw(arrays(np.float64, (n, 1), elements=st.sampled_from([0.5, 1.0, 3.0])))
    elif kind == "random":
        score = data.draw(arrays(np.float64, (n, r), elements=st.floats(-1e3, 1e3)))
    else:
        score = data.draw(arrays(np.float64, (n, r), elements=st.sampled_from([0.0, 1.0, 2.0])))
    start = np.zeros(r, np.int64)
    if data.draw(st.booleans()):  # start from a partial valid decision
        start = repair(state, check(state, data.draw(arrays(np.int64, r, elements=st.integers(0, n)))))
        start[data.draw(arrays(np.bool_, r))] = 0
    users = None
    if data.draw(st.booleans()):
        users = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)))
    got = greedy_fill(state, score, start, users)
    assert np.array_equal(got, _reference_greedy(state, score, start, users)), (got, score)
    assert is_valid(state, got)


def test_greedy_fill_matches_the_reference_on_larger_instances():
    """The vectorised paths (one resource per user, scores constant per user, general) on
    N, R up to 40 with physical utilities."""
    rng = np.random.default_rng(11)
    for i in range(60):
        n, r = int(rng.integers(1, 41)), int(rng.integers(1, 41))
        preset = "spectrum" if i % 2 else "mac"
        if preset == "spectrum":
            util = rng.exponential(size=(n, r)) * rng.uniform(0.01, 1.0, (n, 1)) * 1e6
        else:
            se = rng.choice([0.2344, 0.6016, 1.1758], (n, 1) if i % 4 == 0 else (n, r))
            util = np.broadcast_to(se * 672.0, (n, r))
        state = make_slot(
            preset,
            np.arange(n),
            np.arange(r),
            utility=util,
            max_resources_per_user=int(rng.integers(1, r + 1)) if i % 3 else None,
            buffer_bits=rng.integers(0, 4000, n).astype(float) if preset == "mac" else None,
            resource_available=rng.random(r) < 0.85,
            user_eligible=rng.random(n) < 0.9,
        )
        score = state.utility / rng.uniform(1, 10, (n, 1))
        empty = np.zeros(r, np.int64)
        assert np.array_equal(greedy_fill(state, score), _reference_greedy(state, score, empty, None))


def test_greedy_fill_matches_the_reference_with_infinite_and_nan_scores_and_a_start():
    """Scores of -inf, +inf and NaN (visited last), partial starting decisions, a user subset and
    frequency-selective utilities with zeros: the compiled fill against the plain reference."""
    rng = np.random.default_rng(5)
    for i in range(300):
        n, r = int(rng.integers(1, 25)), int(rng.integers(1, 25))
        util = rng.choice([0.0, 336.0, 672.0, 1344.0], (n, r)) if i % 2 else rng.exponential(size=(n, r))
        state = make_slot(
            "mac" if i % 3 else "spectrum",
            np.arange(n),
            np.arange(r),
            utility=util,
            max_resources_per_user=int(rng.integers(1, r + 1)),
            buffer_bits=rng.integers(0, 5000, n).astype(float) if i % 3 else None,
            resource_available=rng.random(r) < 0.8,
            user_eligible=rng.random(n) < 0.9,
        )
        score = rng.normal(size=(n, r))
        score[rng.random((n, r)) < 0.15] = rng.choice([np.nan, np.inf, -np.inf])
        start = repair(state, check(state, rng.integers(0, n + 1, r)))
        start[rng.random(r) < 0.6] = 0
        users = np.flatnonzero(rng.random(n) < 0.6) if i % 4 == 0 else None
        got = greedy_fill(state, score, start, users)
        assert np.array_equal(got, _reference_greedy(state, score, start, users)), i
        assert is_valid(state, got)
