"""Multi-cell tier-0 partitioning (Stackelberg Table IV)."""

import math

import numpy as np
import pytest

from service.sim.multicell import (
    PARTITION_STRATEGIES,
    MultiCellConfig,
    MultiCellEnv,
    partition_rbgs,
)


@pytest.mark.parametrize("strategy", PARTITION_STRATEGIES)
@pytest.mark.parametrize(("num_rbg", "num_cells"), [(8, 2), (12, 3), (13, 4), (3, 3), (16, 4)])
def test_partitions_are_disjoint_and_cover_the_pool(strategy, num_rbg, num_cells):
    rng = np.random.default_rng(num_rbg * 10 + num_cells)
    part = partition_rbgs(strategy, num_rbg, num_cells, demand=rng.random(num_cells) * 1e4, uniform=rng.random(num_rbg))
    sets = [set(np.flatnonzero(part == c).tolist()) for c in range(num_cells)]
    assert set().union(*sets) == set(range(num_rbg))
    assert sum(len(s) for s in sets) == num_rbg  # pairwise disjoint
    if strategy == "equal":
        sizes = [len(s) for s in sets]
        assert max(sizes) - min(sizes) <= 1


def test_proportional_follows_demand_with_a_floor():
    part = partition_rbgs("proportional", 12, 3, demand=np.array([0.0, 1.0, 3.0]))
    sizes = np.bincount(part, minlength=3)
    assert sizes.tolist() == [1, 3, 8]  # floor 1 each, the 9 spare split 0 : 2.25 : 6.75
    assert np.bincount(partition_rbgs("proportional", 12, 3, demand=np.zeros(3)), minlength=3).tolist() == [4, 4, 4]
    with pytest.raises(ValueError):
        partition_rbgs("random", 4, 2)


def _play(env: MultiCellEnv, ttis: int):
    states = env.reset()
    serving = []
    for _ in range(ttis):
        masks = [s.resource_available for s in states]
        assert (np.sum(masks, axis=0) == 1).all()  # every RBG belongs to exactly one cell
        ids = [uid for s in states for uid in s.user_ids.tolist()]
        assert sorted(ids) == list(range(1, len(env.ues) + 1))  # every UE attached to one cell
        serving.append(dict(env.serving))
        owners = []
        for s in states:
            owner = np.zeros(s.num_res, np.int64)
            elig = np.flatnonzero(s.user_eligible)
            free = np.flatnonzero(s.resource_available)
            for j, r in enumerate(free[: elig.size]):
                owner[r] = elig[j] + 1
            owners.append(owner)
        res = env.step(owners)
        states = [c.state for c in res.cells]
    return serving, env.kpis()


def test_cells_schedule_locally_edge_ues_move_and_rollouts_repeat():
    cfg = MultiCellConfig(num_cells=3, partition="proportional", edge_dwell_tti=20)
    serving, k = _play(MultiCellEnv(cfg, seed=5), 300)
    edge = [uid for uid in MultiCellEnv(cfg, seed=5).edge_pair]
    assert len(edge) == 3
    assert any(len({s[uid] for s in serving}) == 2 for uid in edge)  # hand-overs happened
    assert k["delivered_dpdus"] > 0 and k["num_cells"] == 3.0
    serving2, k2 = _play(MultiCellEnv(cfg, seed=5), 300)
    assert serving == serving2 and same_kpis(k, k2)
    _, k3 = _play(MultiCellEnv(cfg, seed=6), 300)
    assert not same_kpis(k, k3)


def same_kpis(x: dict, y: dict) -> bool:
    """Equal KPI dicts, NaN == NaN (the valid action rate is NaN when nobody reported it)."""
    return x.keys() == y.keys() and all((math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k] for k in x)


def test_dcm_outside_the_partition_is_rejected():
    env = MultiCellEnv(MultiCellConfig(num_cells=2, partition="equal"), seed=0)
    states = env.reset()
    bad = np.zeros(states[0].num_res, np.int64)
    bad[np.flatnonzero(~states[0].resource_available)[0]] = 1
    with pytest.raises(ValueError):
        env.step([bad, np.zeros(states[1].num_res, np.int64)])
