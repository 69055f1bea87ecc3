"""Invariances of the shipped student models, decided through the service's own pipeline.

The models are whatever ``models/student-<preset>/latest`` names (``StudentPolicy()``, loaded
the normal way), so nothing here depends on a model version or on a particular decision: every
property compares the pipeline with itself.

* **scale invariance** (mac): every bit quantity of a request — ``rate_bps``, ``buffer_bits``
  and the delivered bits fed back for the previous slot — times one factor ``c`` (log-uniform in
  [1e-6, 1e6]) gives the same decisions over a closed loop of several slots (PF averages and
  cumulative resources carried in a ``CellHistory`` exactly as ``service.core`` does);
  also with buffers that are whole numbers of RBGs (the edge of ceil(buffer / TBS)); and, as the
  cause, bit-identical serialized inputs;
* **scale invariance** (spectrum): every ``rate_bps`` (and the fed-back bit/s) times ``c``;
* **permutation equivariance**: permuting users and resources permutes the decision (owner id
  per resource id), in both presets, over a closed loop — in mac, resources with finite buffers
  only under an order-free decode (the ``capped`` decode visits RBGs in slot order; see the test);
* **any shape the API accepts**: from 1 × 1 to 300 × 5 and 3 × 200, a PAG-valid raw decision.

Scaled runs see bit-identical network inputs, so their decisions match exactly even where
logits tie. Permuted runs do not (the network pools users and resources in float32, in another
order: logits agree to ~1e-6), so their states avoid exact ties (see ``_draw``). Decisions are
compared exactly. Hypothesis runs derandomized; each example draws its arrays from a seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.history import CellHistory, apply_feedback, record_decision
from service.pag.checks import check, is_valid
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.policies.student import StudentPolicy
from service.serialize.tensors import INPUT_NAMES, serialize
from service.types import Decision, SlotState, make_slot, owner_ids, served_bits

TTI_S = 0.0005
SLOTS = 5

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@functools.cache
def _policies() -> PolicySet:
    """The student as shipped (``models/student-*/latest``), loaded once for the module."""
    student = StudentPolicy()
    for preset in ("spectrum", "mac"):
        assert student.model(preset) is not None, f"no shipped student model for the {preset} preset"
    return PolicySet(factories={"student": lambda: student})


def _decide(state: SlotState, history: CellHistory) -> Decision:
    d = decide(state, history, "student", policies=_policies())  # no fallback: the student must serve
    assert d.policy == "student" and d.fallback is None
    assert d.valid_before_repair, d.violations
    return d


# ----------------------------------------------------------------------------- random slots


@dataclass(frozen=True)
class Draw:
    """One slot's raw request fields, index-aligned (users × resources)."""

    rate_bps: np.ndarray  # [N, R] bit/s
    buffer_bits: np.ndarray | None  # [N]
    user_eligible: np.ndarray  # [N]
    resource_available: np.ndarray  # [R]
    bandwidth_hz: np.ndarray  # [R]
    delivery: np.ndarray  # [N] fraction of the scheduled bits really delivered (HARQ losses)


def _draw(rng: np.random.Generator, preset: str, n: int, r: int, ties: bool = True, multiples: bool = False) -> Draw:
    """Continuous random fields: frequency-selective log-normal rates around a log-normal user
    mean, empty buffers, ineligible users and busy resources; with ``ties``, also zero-rate pairs
    (5 %) and users without any rate (5 % each).

    Without ``ties``: no zero-rate pair and at most one user without rate. Zero-rate pairs tie
    exactly: their pair features are all 0, so two users and two resources whose four pairs have
    zero rate can give both ways of matching them the same summed margin (with the shipped
    architecture, no pair MLP, the logit of such a pair is a user term plus a resource term);
    two users without rate (and without buffers) are indistinguishable altogether. It also keeps
    two resources available: with one, a new user's PF average is its rate on it, so every PF
    priority is exactly 1 and the PF-anchored mac decode (like ``pf``) breaks the tie by position.

    ``multiples`` (mac): every non-empty buffer is an exact multiple (1 to 6) of the user's best
    TBS on an available RBG, the edge of ceil(buffer / TBS) (the RBGs a user needs).
    """
    user_mean = rng.normal(np.log(2e6), 1.0, (n, 1))
    rate = np.exp(user_mean + rng.normal(0.0, 0.7, (n, r)))
    if ties:
        rate[rng.random((n, r)) < 0.05] = 0.0
        rate[rng.random(n) < 0.05] = 0.0  # users that no resource serves (PF average floor)
    elif rng.random() < 0.3:
        rate[rng.integers(n)] = 0.0
    buf = None
    if preset == "mac":
        buf = np.exp(rng.normal(np.log(4e3), 2.0, n))
        buf[rng.random(n) < 0.2] = 0.0
    elig = rng.random(n) > 0.1
    avail = rng.random(r) > 0.15
    if not ties and r >= 2 and avail.sum() < 2:
        avail[:2] = True  # one available resource: every new user's PF priority is exactly 1, a tie
    bw = rng.uniform(0.5e6, 2e6, r) if preset == "spectrum" else np.full(r, 1.44e6)
    if buf is not None and multiples:
        best_tbs = (rate[:, avail] if avail.any() else rate).max(axis=1) * TTI_S
        buf = np.where(buf > 0, rng.integers(1, 7, n) * best_tbs, 0.0)
    return Draw(rate, buf, elig, avail, bw, rng.uniform(0.5, 1.0, n))


def _slot(
    preset: str,
    d: Draw,
    uids: np.ndarray,
    rids: np.ndarray,
    t: int,
    c: float = 1.0,
    pu: np.ndarray | None = None,
    pr: np.ndarray | None = None,
) -> SlotState:
    """The request of draw ``d`` with bit quantities times ``c``; users / resources reordered by
    the index permutations ``pu`` / ``pr`` when given."""
    pu = np.arange(uids.size) if pu is None else pu
    pr = np.arange(rids.size) if pr is None else pr
    return make_slot(
        preset,
        uids[pu],
        rids[pr],
        rate_bps=d.rate_bps[np.ix_(pu, pr)] * c,
        buffer_bits=None if d.buffer_bits is None else d.buffer_bits[pu] * c,
        user_eligible=d.user_eligible[pu],
        resource_available=d.resource_available[pr],
        bandwidth_hz=d.bandwidth_hz[pr],
        tti_s=TTI_S,
        cell_id="inv",
        slot=t,
    )


Feedback = dict[int, float]


def _run(
    make_state: Callable[[int], SlotState],
    slots: int,
    feedback: Callable[[int, SlotState, np.ndarray], Feedback],
    features: list[tuple[np.ndarray, ...]] | None = None,
) -> list[tuple[SlotState, np.ndarray]]:
    """A closed loop as ``ServiceCore.schedule`` runs it: apply the previous slot's feedback,
    decide, record. ``feedback(t, state, owner)`` gives the delivered bits of slot ``t``.
    ``features``: filled with each slot's serialized student inputs (what the network saw)."""
    history, fb = CellHistory.empty(), None
    out = []
    for t in range(slots):
        state = make_state(t)
        if fb:
            history = apply_feedback(history, fb)
        if features is not None:
            features.append(tuple(a.copy() for a in serialize(state, history.view(state)).arrays()))
        d = _decide(state, history)
        history = record_decision(history, state, d.owner)
        fb = feedback(t, state, d.owner)
        out.append((state, d.owner))
    return out


def _delivered(state: SlotState, owner: np.ndarray, delivery: np.ndarray) -> np.ndarray:
    """Bits (bit/s in spectrum) delivered per user: the scheduled ones (capped by the buffer in
    mac) times the slot's delivery fraction."""
    return served_bits(state, owner) * delivery


# ----------------------------------------------------------------------------- scale invariance


def _scale_check(
    preset: str, seed: int, n: int, r: int, sorted_ids: bool, features: bool = False, multiples: bool = False
) -> None:
    """Base run and one run per scale c in {1e-6, 1e6, one log-uniform draw in [1e-6, 1e6]}: the
    same decisions in every slot (``features``: and bit-identical student inputs). The draw of c
    comes from the seed (hypothesis would mostly try c ≈ 1 and subnormal exponents)."""
    rng = np.random.default_rng(seed)
    log_scales = [-6.0, 6.0, float(rng.uniform(-6.0, 6.0))]
    draws = [_draw(rng, preset, n, r, multiples=multiples) for _ in range(SLOTS)]
    uids = rng.choice(100_000, n, replace=False).astype(np.int64)
    rids = rng.choice(1_000, r, replace=False).astype(np.int64)
    if sorted_ids:
        uids.sort()
    base_fb: list[np.ndarray] = []

    def base_feedback(t: int, state: SlotState, owner: np.ndarray) -> Feedback:
        bits = _delivered(state, owner, draws[t].delivery)
        base_fb.append(bits)
        return {int(u): float(b) for u, b in zip(uids, bits, strict=True)}

    base_x: list[tuple[np.ndarray, ...]] | None = [] if features else None
    base = _run(lambda t: _slot(preset, draws[t], uids, rids, t), SLOTS, base_feedback, base_x)
    for e in log_scales:
        c = 10.0**e

        def scaled_feedback(t: int, state: SlotState, owner: np.ndarray, c: float = c) -> Feedback:
            return {int(u): float(b) * c for u, b in zip(uids, base_fb[t], strict=True)}

        def scaled_state(t: int, c: float = c) -> SlotState:
            return _slot(preset, draws[t], uids, rids, t, c)

        scaled_x: list[tuple[np.ndarray, ...]] | None = [] if features else None
        scaled = _run(scaled_state, SLOTS, scaled_feedback, scaled_x)
        for t, ((_, a), (_, b)) in enumerate(zip(base, scaled, strict=True)):
            if base_x is not None and scaled_x is not None:
                for name, x, y in zip(INPUT_NAMES, base_x[t], scaled_x[t], strict=True):
                    assert np.array_equal(x, y), (
                        f"slot {t}: c = {c!r} changed {name} (max |diff| {np.abs(x - y).max()})"
                    )
            assert np.array_equal(a, b), f"slot {t}: c = {c!r} changed the decision\n{a}\n{b}"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=SEEDS, n=st.integers(2, 40), r=st.integers(2, 30), sorted_ids=st.booleans())
@example(seed=1, n=17, r=9, sorted_ids=True)
@example(seed=2, n=40, r=30, sorted_ids=False)
def test_mac_decisions_are_scale_invariant(seed: int, n: int, r: int, sorted_ids: bool):
    _scale_check("mac", seed, n, r, sorted_ids)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=SEEDS, n=st.integers(2, 40), r=st.integers(2, 40), sorted_ids=st.booleans())
@example(seed=3, n=12, r=30, sorted_ids=True)
@example(seed=4, n=40, r=7, sorted_ids=False)
def test_spectrum_decisions_are_scale_invariant(seed: int, n: int, r: int, sorted_ids: bool):
    _scale_check("spectrum", seed, n, r, sorted_ids)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=SEEDS, n=st.integers(2, 40), r=st.integers(2, 30))
def test_mac_decisions_are_scale_invariant_with_buffers_of_whole_rbgs(seed: int, n: int, r: int):
    """Buffers that are exact multiples of the TBS: ceil(buffer / TBS) on the scaled values
    rounds a few ulps above the integer about half the time; the decode's pass-1 budget
    (``user_needs``) must not count one RBG more for it."""
    _scale_check("mac", seed, n, r, sorted_ids=True, multiples=True)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(preset=st.sampled_from(["mac", "spectrum"]), seed=SEEDS, n=st.integers(2, 40), r=st.integers(2, 30))
@example(preset="mac", seed=1, n=17, r=9)
@example(preset="spectrum", seed=9, n=39, r=19)
def test_serialized_features_are_bit_identical_under_scaling(preset: str, seed: int, n: int, r: int):
    """What makes the scale tests above hold, checked directly: every bit quantity is divided by
    the slot's max utility in float64 before the float32 cast, so the network sees the same
    tensors.
    (Exact ties, e.g. two eligible users with no rate at all, are then broken the same way too.)"""
    _scale_check(preset, seed, n, r, sorted_ids=False, features=True)


def test_a_user_without_rate_starts_with_a_pf_average_relative_to_the_slot():
    """Regression: the initial PF average of a user that no available resource serves was floored
    at an absolute 1e-9 bits, huge next to the other averages at c = 1e-6 (pf_priority ≈ 13
    instead of ≈ 24 in the next slot, another decision). The floor is now relative to the slot."""
    rate = np.array([[3e6, 1e6, 2e6], [0.0, 0.0, 5e6], [4e5, 2e6, 1e6]])
    views = []
    for c in (1e-6, 1.0, 1e6):
        state = make_slot(
            "mac",
            [4, 8, 9],
            [0, 1, 2],
            rate_bps=rate * c,
            buffer_bits=[1e3 * c] * 3,
            resource_available=[True, True, False],
            tti_s=TTI_S,
        )
        views.append(CellHistory.empty().view(state).avg_served / c)
    assert views[1][1] > 0
    for v in views:
        np.testing.assert_allclose(v, views[1], rtol=1e-12)


# ----------------------------------------------------------------------------- permutation equivariance


def _by_resource(state: SlotState, owner: np.ndarray) -> dict[int, int | None]:
    return dict(zip(state.resource_ids.tolist(), owner_ids(state, owner), strict=True))


def _perm_check(preset: str, seed: int, n: int, r: int, permute_resources: bool, full_buffers: bool = False) -> None:
    """Base run and a run with users (and resources) reordered: the same owner id per resource
    id in every slot. No exact ties (at most one user without rate): the network's float32
    pooling sums users / resources in another order, so its logits agree only to ~1e-6 and a
    tie could legitimately be broken the other way."""
    rng = np.random.default_rng(seed)
    draws = [_draw(rng, preset, n, r, ties=False) for _ in range(SLOTS)]
    if full_buffers:
        draws = [
            Draw(d.rate_bps, None, d.user_eligible, d.resource_available, d.bandwidth_hz, d.delivery) for d in draws
        ]
    uids = rng.choice(100_000, n, replace=False).astype(np.int64)
    rids = rng.choice(1_000, r, replace=False).astype(np.int64)
    pu = rng.permutation(n)
    pr = rng.permutation(r) if permute_resources else np.arange(r)

    def feedback(t: int, state: SlotState, owner: np.ndarray) -> Feedback:
        # delivery fractions follow the user (by id), whatever its index in the request
        frac = dict(zip(uids.tolist(), draws[t].delivery.tolist(), strict=True))
        bits = served_bits(state, owner)
        return {int(u): float(b) * frac[int(u)] for u, b in zip(state.user_ids, bits, strict=True)}

    base = _run(lambda t: _slot(preset, draws[t], uids, rids, t), SLOTS, feedback)
    perm = _run(lambda t: _slot(preset, draws[t], uids, rids, t, pu=pu, pr=pr), SLOTS, feedback)
    for t, ((sa, a), (sb, b)) in enumerate(zip(base, perm, strict=True)):
        assert _by_resource(sa, a) == _by_resource(sb, b), f"slot {t}: the permuted request got another decision"


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=SEEDS, n=st.integers(2, 40), r=st.integers(2, 40))
def test_spectrum_decisions_are_permutation_equivariant(seed: int, n: int, r: int):
    _perm_check("spectrum", seed, n, r, permute_resources=True)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=SEEDS, n=st.integers(2, 40), r=st.integers(2, 30))
def test_mac_decisions_are_user_permutation_equivariant(seed: int, n: int, r: int):
    _perm_check("mac", seed, n, r, permute_resources=False)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=SEEDS, n=st.integers(2, 40), r=st.integers(2, 30))
def test_mac_decisions_are_permutation_equivariant(seed: int, n: int, r: int):
    """Users and resources permuted. The ``capped`` decode is *not* resource-order free with
    finite buffers, by design: its pass 1 visits the RBGs in slot order and a user stops once it
    holds the RBGs that empty its buffer (SPEC §4; the trainer samples this very process), so
    the same logits, permuted, may give a user other RBGs. Under that decode the check uses full
    buffers (no budget binds below the cap R: a per-RBG argmax); any other decode gets finite
    buffers too."""
    student = _policies().get("student")
    assert isinstance(student, StudentPolicy)
    model = student.model("mac")
    assert model is not None
    _perm_check("mac", seed, n, r, permute_resources=True, full_buffers=True)
    if model.decode_kind != "capped":
        _perm_check("mac", seed, n, r, permute_resources=True)


# ----------------------------------------------------------------------------- any shape


@pytest.mark.parametrize("preset", ["spectrum", "mac"])
@pytest.mark.parametrize(("n", "r"), [(1, 1), (1, 7), (7, 1), (300, 5), (3, 200), (120, 120)])
def test_any_shape_the_api_accepts_gets_a_pag_valid_decision(preset: str, n: int, r: int):
    rng = np.random.default_rng(1000 * n + r)
    uids = rng.choice(1_000_000, n, replace=False).astype(np.int64)
    rids = rng.choice(100_000, r, replace=False).astype(np.int64)
    draws = [_draw(rng, preset, n, r) for _ in range(2)]

    def feedback(t: int, state: SlotState, owner: np.ndarray) -> Feedback:
        bits = _delivered(state, owner, draws[t].delivery)
        return {int(u): float(b) for u, b in zip(uids, bits, strict=True)}

    for state, owner in _run(lambda t: _slot(preset, draws[t], uids, rids, t), 2, feedback):
        assert owner.shape == (r,) and owner.dtype.kind == "i"
        assert check(state, owner).valid and is_valid(state, owner)
