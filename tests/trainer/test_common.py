"""The trainer's action distribution is the served decode's stochastic twin."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from trainer.common import collate, row_logprobs, sample_tokens

from service.policies.student_decode import decode_capped, user_needs
from service.serialize.tensors import serialize
from service.types import make_slot


def _slot(rng: np.random.Generator, n: int, r: int, mac: bool):
    return make_slot(
        "mac" if mac else "spectrum",
        np.arange(n),
        np.arange(r),
        utility=rng.random((n, r)) * 1e3 + 1,
        resource_available=rng.random(r) < 0.8,
        user_eligible=rng.random(n) < 0.85,
        buffer_bits=rng.integers(0, 4, n) * 700.0 if mac else None,
        max_resources_per_user=int(rng.integers(1, 4)) if mac else None,
    )


def _batch(states):
    return collate(
        [serialize(s) for s in states], [user_needs(s) for s in states], [s.max_resources_per_user for s in states]
    )


def test_the_probabilities_of_all_trajectories_sum_to_one():
    rng = np.random.default_rng(0)
    for _ in range(12):
        n, r = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        state = _slot(rng, n, r, mac=bool(rng.integers(2)))
        batch = _batch([state])
        logits = torch.randn(1, r, n + 1) * 2
        free = [i for i in range(r) if state.resource_available[i]]
        pass1, final = [], []
        for y1 in itertools.product(range(n + 1), repeat=len(free)):  # pass-1 draws on free rows
            left = [i for i, k in zip(free, y1, strict=True) if k == 0]
            for y2 in itertools.product(range(n + 1), repeat=len(left)):  # pass-2 draws on rows left
                a, b = np.zeros(r, np.int64), np.zeros(r, np.int64)
                a[free] = y1
                b[free] = y1
                b[left] = y2
                pass1.append(a)
                final.append(b)
        p1, tokens = torch.tensor(np.array(pass1)), torch.tensor(np.array(final))
        big = batch.index(torch.zeros(tokens.shape[0], dtype=torch.long))
        logp, _ = row_logprobs(logits.expand(tokens.shape[0], -1, -1), tokens, big, 1.5, p1)
        total = torch.exp(logp.sum(1)).sum().item()
        assert abs(total - 1.0) < 1e-5, total


def test_greedy_sampling_is_the_served_decode():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, r = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        state = _slot(rng, n, r, mac=bool(rng.integers(2)))
        logits = rng.normal(size=(r, n + 1)).astype(np.float32) * 3
        ref = decode_capped(state, logits, surplus_margin=2.0)
        got = sample_tokens(torch.from_numpy(logits)[None], _batch([state]), 2.0, greedy=True)[0][0].numpy()
        np.testing.assert_array_equal(got, ref)


def test_sampling_frequencies_follow_the_log_probabilities():
    rng = np.random.default_rng(2)
    state = _slot(rng, 2, 3, mac=True)
    batch = _batch([state])
    logits = torch.tensor(rng.normal(size=(1, 3, 3)), dtype=torch.float32)
    draws = 20000
    big = batch.index(torch.zeros(draws, dtype=torch.long))
    tokens, pass1 = sample_tokens(logits.expand(draws, -1, -1), big, 1.0, torch.Generator().manual_seed(0))
    traj, counts = torch.unique(torch.cat([tokens, pass1], 1), dim=0, return_counts=True)
    seqs, p1 = traj[:, :3], traj[:, 3:]
    sub = batch.index(torch.zeros(seqs.shape[0], dtype=torch.long))
    logp, _ = row_logprobs(logits.expand(seqs.shape[0], -1, -1), seqs, sub, 1.0, p1)
    expected = torch.exp(logp.sum(1)) * draws
    assert torch.all((counts - expected).abs() <= 5 * expected.sqrt() + 5), (counts, expected)


def test_a_fine_tuning_stage_is_kept_only_if_it_improves_without_breaking_fairness():
    from trainer.cli import rejection

    # mac: the mean utility ratio must not drop, and Jain must stay >= min(0.95, the previous stage's)
    def mac(ratio: float, jain: float) -> dict[str, float]:
        return {"eval/utility_ratio_mean": ratio, "eval/jain_mean": jain}

    assert rejection("mac", mac(1.08, 0.97), mac(1.07, 0.98)) is None
    assert "utility_ratio_mean" in rejection("mac", mac(1.06, 0.99), mac(1.07, 0.98))
    assert "jain_mean" in rejection("mac", mac(1.09, 0.94), mac(1.07, 0.98))
    assert rejection("mac", mac(1.09, 0.91), mac(1.07, 0.90)) is None  # below 0.95 before
    # spectrum has no guard: the min ratio to KM alone decides
    assert rejection("spectrum", {"eval/ratio_km_min": 0.995}, {"eval/ratio_km_min": 0.992}) is None
    assert rejection("spectrum", {"eval/ratio_km_min": 0.990}, {"eval/ratio_km_min": 0.992}) is not None
