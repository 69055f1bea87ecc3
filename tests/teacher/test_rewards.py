"""Composite reward (SPEC §6, LSA eq. 12–14) on crafted completions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.finetune.rewards import (
    STRUCT_MAX,
    RewardConfig,
    composite_reward,
    composite_reward_func,
    depth_reward,
    perf_reward,
    random_reference,
    reward_funcs,
    reward_terms,
    struct_reward,
)
from service.history import CellHistory
from service.policies.base import PolicyContext
from service.policies.registry import make
from service.rng import slot_rng
from service.serialize.slot_codec import slot_to_dict
from service.types import SlotState, make_slot, slot_utility


def slot() -> SlotState:
    """6 users (one inactive), 6 channels (one busy), frequency-selective fading."""
    rng = np.random.default_rng(42)
    return make_slot(
        "spectrum",
        [21, 22, 23, 24, 25, 26],
        [1, 2, 3, 4, 5, 6],
        bandwidth_hz=rng.uniform(1e6, 1e7, 6),
        resource_available=[1, 1, 0, 1, 1, 1],
        user_eligible=[1, 1, 1, 1, 1, 0],
        rx_power_dbm=rng.uniform(-110, -80, 6),
        fading_gain=rng.exponential(1.0, (6, 6)),
        slot=12,
    )


def owner_json(state: SlotState, owner: np.ndarray) -> str:
    return json.dumps({"owner": [None if k == 0 else int(state.user_ids[k - 1]) for k in owner.tolist()]})


def km(state: SlotState) -> np.ndarray:
    ctx = PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot))
    return np.asarray(make("km")(state, ctx), np.int64)


def test_optimal_answer_gets_full_structure_and_beats_random() -> None:
    s = slot()
    text = owner_json(s, km(s))
    assert struct_reward(s, text) == pytest.approx(STRUCT_MAX)
    gain = (slot_utility(s, km(s)) - random_reference(s)) / random_reference(s)
    assert perf_reward(s, text) == pytest.approx(min(gain, 3.0)) and perf_reward(s, text) > 0


def test_malformed_answer_is_penalised() -> None:
    s = slot()
    cfg = RewardConfig()
    for text in ["", "user 21 gets channel 1", '{"owner": [21, 22', "```python\naction = {21: 1}\n```"]:
        assert struct_reward(s, text, cfg) == cfg.malformed_penalty
        assert perf_reward(s, text, cfg) == pytest.approx(-cfg.kappa)
    assert composite_reward(s, "garbage") < composite_reward(s, '{"owner": [null, null, null, null, null, null]}')


def test_out_of_domain_answer_loses_domain_credit() -> None:
    s = slot()
    good = owner_json(s, km(s))
    unknown_user = json.dumps({"owner": [99, 22, None, 23, 24, 21]})
    busy_channel = json.dumps({"owner": [21, 22, 23, 24, 25, None]})  # channel 3 is busy
    inactive_user = json.dumps({"allocation": {"26": [1], "22": [2]}})
    for bad in (unknown_user, busy_channel, inactive_user):
        assert 0.3 <= struct_reward(s, bad) < struct_reward(s, good)
        assert struct_reward(s, bad) <= STRUCT_MAX - 0.4 + 1e-9  # neither in-domain nor feasible credit


def test_typing_and_length_are_rewarded() -> None:
    s = slot()
    typed = json.dumps({"owner": [21, 22, None, 23, 24, 25]})
    stringly = json.dumps({"owner": ["21", "22", None, "23", "24", "25"]})
    short = json.dumps({"owner": [21, 22]})
    assert struct_reward(s, typed) > struct_reward(s, stringly)
    assert struct_reward(s, typed) > struct_reward(s, short)


def test_contention_and_cap_are_infeasible_and_collide() -> None:
    s = slot()
    both_on_1 = json.dumps({"allocation": {"21": [1], "22": [1]}})
    alone_on_1 = json.dumps({"allocation": {"21": [1]}})
    assert struct_reward(s, both_on_1) < struct_reward(s, alone_on_1)
    cfg = RewardConfig()
    t = random_reference(s, cfg)
    # a collided channel carries nothing: T(a) = 0 -> R_perf = -κ
    assert perf_reward(s, both_on_1, cfg, t_rand=t) == pytest.approx(-cfg.kappa)
    over_cap = json.dumps({"allocation": {"21": [1, 2]}})
    first_only = json.dumps({"allocation": {"21": [1]}})
    assert perf_reward(s, over_cap, cfg, t_rand=t) == pytest.approx(perf_reward(s, first_only, cfg, t_rand=t))


def test_better_and_worse_than_random() -> None:
    s = slot()
    ref = random_reference(s)
    best = owner_json(s, km(s))
    # the weakest admissible pair only: far below a random complete assignment
    adm = np.where(s.admissible(), s.utility, np.inf)
    u, r = np.unravel_index(np.argmin(adm), adm.shape)
    weak = json.dumps({"allocation": {str(int(s.user_ids[u])): [int(s.resource_ids[r])]}})
    assert perf_reward(s, best) > 0 > perf_reward(s, weak)
    assert random_reference(s) == ref  # seeded by the slot: the same reference every time


def test_depth_penalty_below_min_tokens() -> None:
    cfg = RewardConfig(min_tokens=40, eta=0.5)
    assert depth_reward(40, cfg) == 0.0 and depth_reward(100, cfg) == 0.0
    assert depth_reward(30, cfg) == pytest.approx(-0.5 * 10 / 40)
    assert depth_reward(0, cfg) == pytest.approx(-0.5)
    s = slot()
    terms = reward_terms(s, '{"owner":[]}', cfg)
    assert terms["depth"] < 0
    assert terms["total"] == pytest.approx(terms["struct"] + terms["perf"] + terms["depth"])


def test_trl_reward_functions() -> None:
    s = slot()
    state_col = json.dumps(slot_to_dict(s))
    completions = [
        [{"role": "assistant", "content": owner_json(s, km(s))}],
        [{"role": "assistant", "content": "no idea"}],
        owner_json(s, km(s)),  # standard (string) format too
    ]
    fs, fp, fd = reward_funcs(RewardConfig(min_tokens=8))
    kw = {"prompts": [None] * 3, "completions": completions, "state": [state_col] * 3}
    struct = fs(**kw)
    perf = fp(**kw)
    depth = fd(**kw, completion_ids=[[0] * 50, [0] * 2, [0] * 50])
    assert struct[0] == pytest.approx(STRUCT_MAX) and struct[1] == -1.0 and struct[2] == struct[0]
    assert perf[0] > 0 > perf[1]
    assert depth == [0.0, pytest.approx(-0.5 * 6 / 8), 0.0]
    comp = composite_reward_func(RewardConfig(lambda_perf=2.0))(**kw)
    assert comp[0] == pytest.approx(struct[0] + 2.0 * perf[0])
    with pytest.raises(ValueError, match="state"):
        fs(prompts=[None], completions=["x"])


def test_mac_answer_respects_buffer_in_throughput() -> None:
    s = make_slot("mac", [1, 2], [0, 1, 2, 3], spectral_efficiency=[1.1758, 0.2344], buffer_bits=[256.0, 4096.0])
    greedy_all_to_1 = json.dumps({"owner": [1, 1, 1, 1]})  # UE 1 needs one RBG: the rest is wasted
    split = json.dumps({"owner": [1, 2, 2, 2]})
    assert perf_reward(s, split) > perf_reward(s, greedy_all_to_1)
