"""PAG as a mask during generation (SPEC §4, use 1): valid by construction, caps autoregressive."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.pag import is_valid, masked_decode, pag_mask
from service.types import make_slot


def _slot(rng, n, r, preset="mac", cap=None, buffers=False):
    return make_slot(
        preset,
        np.arange(n) + 1,
        np.arange(r),
        utility=rng.random((n, r)),
        resource_available=rng.random(r) < 0.7,
        user_eligible=rng.random(n) < 0.8,
        max_resources_per_user=cap,
        buffer_bits=rng.choice([0.0, 100.0], n) if buffers else None,
    )


def test_mask_admits_only_free_resources_and_eligible_users():
    st_ = make_slot(
        "spectrum",
        [1, 2, 3],
        [10, 20],
        rate_bps=np.ones((3, 2)),
        resource_available=[True, False],
        user_eligible=[True, False, True],
    )
    mask = pag_mask(st_)
    assert mask.shape == (2, 4) and mask.dtype == bool
    assert mask.tolist() == [[True, True, False, True], [True, False, False, False]]


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 8),
    r=st.integers(1, 9),
    preset=st.sampled_from(["spectrum", "mac"]),
    sample=st.booleans(),
    scale=st.sampled_from([0.01, 1.0, 30.0]),
    temperature=st.sampled_from([0.3, 1.0, 5.0]),
)
def test_decode_is_valid_by_construction(seed, n, r, preset, sample, scale, temperature):
    rng = np.random.default_rng(seed)
    cap = int(rng.integers(1, r + 1))
    state = _slot(rng, n, r, preset, cap=cap, buffers=preset == "mac")
    logits = rng.normal(size=(r, n + 1)) * scale
    owner = masked_decode(
        state,
        logits,
        rng=rng if sample else None,
        temperature=temperature,
        order=rng.permutation(r) if rng.random() < 0.5 else None,
    )
    assert owner.dtype == np.int64 and owner.shape == (r,)
    assert is_valid(state, owner)


def test_greedy_decode_is_the_masked_argmax_when_no_cap_binds():
    rng = np.random.default_rng(0)
    state = _slot(rng, 5, 6, cap=6)
    logits = rng.normal(size=(6, 6))
    masked = np.where(pag_mask(state), logits, -np.inf)
    assert masked_decode(state, logits).tolist() == masked.argmax(axis=1).tolist()


def test_caps_are_enforced_autoregressively_in_visit_order():
    """User 1 is the best everywhere, cap 2: it takes the first two positions visited; the rest
    go to user 2 (next best)."""
    state = make_slot("mac", [1, 2], [0, 1, 2, 3], utility=np.ones((2, 4)), max_resources_per_user=2)
    logits = np.tile([0.0, 5.0, 3.0], (4, 1))
    assert masked_decode(state, logits).tolist() == [1, 1, 2, 2]
    assert masked_decode(state, logits, order=np.array([3, 1, 0, 2])).tolist() == [2, 1, 2, 1]
    # cap 1 and more resources than users: the rest stay unused
    one = make_slot("spectrum", [1, 2], [0, 1, 2], rate_bps=np.ones((2, 3)))
    assert masked_decode(one, np.tile([0.0, 5.0, 3.0], (3, 1))).tolist() == [1, 2, 0]


def test_sampling_respects_caps_and_is_seeded():
    state = make_slot("mac", [1, 2, 3], np.arange(8), utility=np.ones((3, 8)), max_resources_per_user=2)
    logits = np.tile([-5.0, 4.0, 4.0, 4.0], (8, 1))
    for seed in range(50):
        owner = masked_decode(state, logits, rng=np.random.default_rng(seed))
        assert np.bincount(owner, minlength=4)[1:].max() <= 2
        assert np.array_equal(owner, masked_decode(state, logits, rng=np.random.default_rng(seed)))
    draws = {tuple(masked_decode(state, logits, rng=np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 1  # it does sample


def test_masked_tokens_are_never_sampled():
    state = make_slot(
        "spectrum",
        [1, 2],
        [0, 1],
        rate_bps=np.ones((2, 2)),
        resource_available=[True, False],
        user_eligible=[False, True],
    )
    logits = np.array([[-50.0, 50.0, 0.0], [-50.0, 50.0, 50.0]])  # favour the masked tokens
    for seed in range(20):
        assert masked_decode(state, logits, rng=np.random.default_rng(seed)).tolist() == [2, 0]


def test_bad_arguments_raise():
    state = make_slot("spectrum", [1], [0, 1], rate_bps=np.ones((1, 2)))
    with pytest.raises(ValueError, match="logits"):
        masked_decode(state, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="temperature"):
        masked_decode(state, np.zeros((2, 2)), rng=np.random.default_rng(0), temperature=0.0)
