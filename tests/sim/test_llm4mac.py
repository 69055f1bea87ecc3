"""LLM4MAC single-channel preset: actions from the DCM, rewards, episodes."""

import math

import numpy as np
import pytest

from service.sim.llm4mac import Llm4MacConfig, Llm4MacEnv


def grant_first(state) -> np.ndarray:
    elig = np.flatnonzero(state.user_eligible)
    return np.array([elig[0] + 1 if elig.size else 0], np.int64)


def test_episode_shape_and_done():
    env = Llm4MacEnv(seed=1)
    state = env.reset(seed=1)
    assert state.num_res == 1 and 2 <= state.num_ue <= 5 and state.max_resources_per_user == 1
    res = None
    for t in range(24):
        res = env.step(grant_first(state))
        state = res.state
        assert res.done == (t == 23)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(1, np.int64))
    k = env.kpis()
    assert k["ttis"] == 24 and k["throughput_dpdu_per_tti"] == pytest.approx(k["received_dpdus"] / 24)
    assert k["episode_return"] == pytest.approx(1.5 * k["received_dpdus"])


def test_ack_then_delete_cycle_and_reward():
    env = Llm4MacEnv(Llm4MacConfig(num_ue=2, p_arrival=1.0, tbler=0.0), seed=0)
    state = env.reset(seed=0)
    res = env.step(np.array([0]))  # arrivals only: both UEs hold one dPDU now
    state = res.state
    assert state.user_eligible.tolist() == [True, True]
    res = env.step(np.array([1]))  # UE 1 transmits its HOL dPDU
    assert res.reward == pytest.approx(1.5) and res.info["actions"] == ["transmit", "idle"]
    state = res.state
    assert state.user_eligible.tolist() == [False, True]  # UE 1 must delete the ACKed dPDU first
    res = env.step(np.array([1]))  # a grant to a deleting UE is wasted
    assert res.info["actions"][0] == "delete" and res.reward == 0.0 and res.info["idle"]


def test_delete_when_full_costs_rho():
    env = Llm4MacEnv(Llm4MacConfig(num_ue=2, buffer_dpdu=1, p_arrival=1.0, delete_when_full=True), seed=0)
    env.reset(seed=0)
    total = sum(env.step(np.array([0])).reward for _ in range(24))
    assert total == pytest.approx(-1.5 * 2 * 23)  # from the second TTI on, each arrival evicts a HOL
    assert env.kpis()["deleted_unreceived"] == 46


def test_legacy_ues_collide_on_the_single_channel():
    env = Llm4MacEnv(Llm4MacConfig(num_ue=4, followers=("legacy",), p_arrival=0.9), seed=3)
    state = env.reset(seed=3)
    assert not state.user_eligible.any()
    for _ in range(24):
        state = env.step(np.zeros(1, np.int64)).state
    assert env.kpis()["collision_rate"] > 0


def test_same_seed_same_episode():
    def play(seed):
        env = Llm4MacEnv(seed=seed)
        state = env.reset(seed=seed)
        out = []
        for _ in range(24):
            res = env.step(grant_first(state))
            out.append((res.reward, sorted(res.feedback.items()), res.info["actions"]))
            state = res.state
        return out, env.kpis()

    a, b, c = play(4), play(4), play(5)
    assert a[0] == b[0] and same_kpis(a[1], b[1])
    assert a[0] != c[0]


def same_kpis(x: dict, y: dict) -> bool:
    """Equal KPI dicts, NaN == NaN (e.g. the valid action rate when no policy reported)."""
    return x.keys() == y.keys() and all((math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k] for k in x)
