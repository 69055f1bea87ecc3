"""The baselines and the PAG check over the cells of one TTI (``service.batched``): each cell's
decision and verdict are the ones it gets alone, whatever else is in its batch, and round robin's
compiled turns are the plain rule."""

from __future__ import annotations

import numpy as np
import pytest

from service.batched import CellBatch, valid_many
from service.history import CellHistory, HistoryView, record_decision
from service.pag.checks import check_dcm
from service.pipeline import decide, decide_many
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet
from service.types import SlotState, make_slot

BATCHED = ("pf", "pf_spread", "max_weight", "rr", "greedy")


def _slot(rng: np.random.Generator, preset: str, slot: int = 30) -> SlotState:
    """A random slot: 1-40 users on 1-30 resources, random ids, busy resources, ineligible users,
    caps, zero-rate pairs; mac with or without buffers and with HARQ retransmissions now and then."""
    n, r = int(rng.integers(1, 41)), int(rng.integers(1, 31))
    rate = np.exp(rng.normal(np.log(1e6), 1.0, (n, r))) * (rng.random((n, r)) > 0.1)
    kw: dict = {}
    if preset == "mac":
        if rng.random() < 0.8:
            kw["buffer_bits"] = rng.choice([0.0, 300.0, 2_000.0, 20_000.0, 1e6], n)
        if rng.random() < 0.3:
            rbgs = np.minimum(rng.choice([0, 0, 1, 2, 3], n), r)
            kw["retx_rbgs"] = rbgs
            kw["retx_bits"] = np.where(rbgs > 0, rng.integers(100, 5_000, n), 0).astype(float)
    return make_slot(
        preset,
        rng.choice(10_000, n, replace=False),
        rng.choice(10_000, r, replace=False),
        rate_bps=rate,
        resource_available=rng.random(r) > 0.2,
        user_eligible=rng.random(n) > 0.1,
        max_resources_per_user=int(rng.choice([1, 2, 3, 100])) if preset == "mac" else 1,
        tti_s=1e-3,
        slot=slot,
        **kw,
    )


def _view(rng: np.random.Generator, state: SlotState) -> HistoryView:
    """A random history of the slot's users: PF averages, resources held, last service (ties
    included), first seen."""
    n = state.num_ue
    return HistoryView(
        rng.choice([1e2, 1e3, 1e4, 1e5], n) * rng.random(n),
        rng.integers(0, 5, n).astype(float),
        rng.integers(-1, 4, n),
        np.ones(n, bool),
        np.zeros(n, np.int64),
    )


def _rr_reference(
    state: SlotState, hist: HistoryView, start: np.ndarray | None, users: np.ndarray | None
) -> np.ndarray:
    """Round robin written plainly: users in order of last service (ties by resources held, then
    slot order), one resource per user per round (the lowest free one with rate above 0), until
    the resources run out or a round gives none; caps, and buffers in mac."""
    order = np.lexsort((np.arange(state.num_ue), hist.cum_resources, hist.last_served_slot))
    order = order[state.user_eligible[order]]
    owner = np.zeros(state.num_res, np.int64) if start is None else start.copy()
    if users is not None:
        order = order[np.isin(order, users)]
    free = np.flatnonzero(state.resource_available & (owner == 0)).tolist()
    left = None if state.preset != "mac" or state.buffer_bits is None else state.buffer_bits.copy()
    counts = np.zeros(state.num_ue, np.int64)
    while free:
        progressed = False
        for u in order.tolist():
            if not free:
                break
            if counts[u] >= state.max_resources_per_user or (left is not None and left[u] <= 0):
                continue
            i = next((i for i, r in enumerate(free) if state.utility[u, r] > 0), None)
            if i is None:
                continue
            r = free.pop(i)
            owner[r] = u + 1
            counts[u] += 1
            if left is not None:
                left[u] -= state.utility[u, r]
            progressed = True
        if not progressed:
            break
    return owner


def test_round_robin_kernel_is_the_plain_rule() -> None:
    from service.assign import retx_first

    rng = np.random.default_rng(11)
    rr = PolicySet().get("rr")
    for _ in range(300):
        state = _slot(rng, str(rng.choice(["mac", "spectrum"])))
        view = _view(rng, state)
        got = rr.act(state, PolicyContext(view, rng), None)
        assert np.array_equal(got, _rr_reference(state, view, *retx_first(state)))


@pytest.mark.parametrize("name", BATCHED)
def test_a_cells_decision_in_a_batch_is_its_decision_alone(name: str) -> None:
    rng = np.random.default_rng(sum(map(ord, name)))
    pol = PolicySet().get(name)
    assert pol.batches
    for _ in range(40):
        size = int(rng.integers(1, 9))
        presets = [p for p in rng.choice(["mac", "spectrum"], size) if p in pol.presets] or ["mac"]
        states = [_slot(rng, p) for p in presets]
        ctxs = [PolicyContext(_view(rng, s), rng) for s in states]
        alone = [pol.act(s, c, None) for s, c in zip(states, ctxs, strict=True)]
        together = pol.act_many(states, ctxs)
        assert len(together) == len(states)
        for a, (raw, serialize_us, policy_us) in zip(alone, together, strict=True):
            assert isinstance(raw, np.ndarray) and raw.dtype == np.int64
            assert np.array_equal(raw, a)
            assert serialize_us == 0.0 and policy_us >= 0.0


def _mutate(rng: np.random.Generator, state: SlotState, owner: np.ndarray) -> np.ndarray:
    """The DCM, or one broken (or kept valid) in one of the grammar's ways."""
    owner = owner.copy()
    if owner.size == 0:
        return owner
    k = int(rng.integers(owner.size))
    match int(rng.integers(6)):
        case 0:
            owner[k] = state.num_ue + 1  # out of domain
        case 1:
            owner[k] = -1
        case 2:
            owner[:] = 1  # user 1 everywhere: busy resources, cap, maybe ineligible
        case 3:
            owner[k] = int(rng.integers(0, state.num_ue + 1))  # any token: valid or not
        case _:
            pass
    return owner


def test_the_batched_check_is_the_rule_of_check_dcm() -> None:
    rng = np.random.default_rng(5)
    pf = PolicySet().get("pf")
    for _ in range(150):
        states = [_slot(rng, str(rng.choice(["mac", "spectrum"]))) for _ in range(int(rng.integers(1, 9)))]
        owners = [_mutate(rng, s, pf.act(s, PolicyContext(_view(rng, s), rng), None)).astype(np.int64) for s in states]
        got = valid_many(states, owners)
        for s, o, v in zip(states, owners, got.tolist(), strict=True):
            expected = False if s.retx_rbgs is not None else check_dcm(s, o).valid
            assert v == expected, (o, s.num_ue, s.resource_available, s.user_eligible)


def test_a_batch_flat_layout_keeps_each_cell() -> None:
    rng = np.random.default_rng(2)
    states = [_slot(rng, "mac") for _ in range(5)]
    batch = CellBatch.of(states)
    for c, s in enumerate(states):
        m0, m1 = batch.mat_off[c], batch.mat_off[c + 1]
        assert np.array_equal(batch.utility[m0:m1].reshape(s.num_ue, s.num_res), s.utility)
        assert np.array_equal(batch.available[batch.res_off[c] : batch.res_off[c + 1]], s.resource_available)
        assert np.array_equal(batch.eligible[batch.ue_off[c] : batch.ue_off[c + 1]], s.user_eligible)


@pytest.mark.parametrize("name", BATCHED)
def test_decide_many_of_a_baseline_is_decide_alone_over_a_closed_loop(name: str) -> None:
    """Several cells, 12 slots each: every decision of the batch (owner, validity, violations,
    utility, policy) is the one ``decide`` gives the cell alone, and the histories advance alike."""
    rng = np.random.default_rng(sum(map(ord, name)) + 1)
    pset = PolicySet()
    presets = [p for p in ("mac", "spectrum", "mac") if p in pset.get(name).presets]
    cells = [[_slot(rng, p, slot=t) for t in range(12)] for p in presets]
    histories = [CellHistory.empty() for _ in cells]
    for t in range(12):
        states = [c[t] for c in cells]
        batch = decide_many(states, histories, name, policies=pset)
        for k, (state, d) in enumerate(zip(states, batch, strict=True)):
            assert not isinstance(d, Exception)
            alone = decide(state, histories[k], name, policies=pset)
            assert np.array_equal(d.owner, alone.owner)
            assert (d.policy, d.valid_before_repair, d.utility) == (
                alone.policy,
                alone.valid_before_repair,
                alone.utility,
            )
            assert [(v.kind, v.message) for v in d.violations] == [(v.kind, v.message) for v in alone.violations]
            histories[k] = record_decision(histories[k], state, d.owner)
