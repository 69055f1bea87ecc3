"""Traffic models (Stackelberg appendix B-D): rates, patterns, Table III compositions."""

import numpy as np
import pytest

from service.sim.traffic import (
    TRAFFIC_CASES,
    TrafficSpec,
    arrivals,
    bernoulli_arrivals,
    bursty_arrivals,
    default_traffic,
    parse_mix,
    periodic_arrivals,
)


def test_bernoulli_rate():
    rng = np.random.default_rng(0)
    p = np.full(20_000, 0.3)
    assert bernoulli_arrivals(p, rng.random(p.size)).mean() == pytest.approx(0.3, abs=0.015)


def test_periodic_and_bursty_patterns_are_exact():
    ttis = np.arange(40)
    per = np.array([periodic_arrivals(t, np.array([4]), np.array([1]))[0] for t in ttis])
    assert per.sum() == 10 and list(np.flatnonzero(per)[:3]) == [3, 7, 11]
    burst = np.array([bursty_arrivals(t, np.array([16]), np.array([8]), np.array([0]))[0] for t in ttis])
    assert list(np.flatnonzero(burst)) == [0, 16, 32] and burst.sum() == 24


def test_mixed_kernel_matches_the_single_kernels():
    kind = np.array([0, 1, 2])
    u = np.array([0.1, 0.9, 0.9])
    out = arrivals(
        8,
        kind,
        np.array([0.5, 0, 0]),
        np.array([1, 4, 1]),
        np.array([0, 0, 3]),
        np.array([1, 1, 8]),
        np.array([0, 0, 0]),
        u,
    )
    assert list(out) == [1, 1, 3]


def test_mean_rates_equal_by_default():
    b, p, o = TrafficSpec("bernoulli", 0.5), TrafficSpec("periodic"), TrafficSpec("bursty")
    assert b.mean_dpdu_per_tti == p.mean_dpdu_per_tti == o.mean_dpdu_per_tti == 0.5


def test_parse_mix_and_table_iii_cases():
    specs = parse_mix("3B/1P/1O")
    assert [s.kind for s in specs] == ["bernoulli"] * 3 + ["periodic", "bursty"]
    assert [s.p_arrival for s in specs[:3]] == [0.2, 0.5, 0.8]
    for name, mix in TRAFFIC_CASES.items():
        assert len(parse_mix(mix)) == 5, name
    assert [s.p_arrival for s in default_traffic()] == [0.2, 0.5, 0.8]
    with pytest.raises(ValueError):
        parse_mix("3X")
    with pytest.raises(ValueError):
        TrafficSpec("poisson")
