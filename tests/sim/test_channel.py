"""The 3-state channel chain with random change instants (Stackelberg appendix B-B)."""

import numpy as np
import pytest

from service.sim.channel import DEFAULT_TRANSITION, ChannelConfig, UeChannel, stationary, stream


def test_stationary_distribution_is_invariant():
    p = np.asarray(DEFAULT_TRANSITION)
    pi = stationary(p)
    assert pi.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(pi @ p, pi, atol=1e-12)


def test_jumps_are_spaced_by_1_to_5_ms_and_occupancy_matches_the_chain():
    cfg = ChannelConfig()
    ch = UeChannel(cfg, stream(1, 0, 1), 0.0)
    dt = 1e-4
    states, jumps, last = [], [], ch.state
    last_jump = 0.0
    for i in range(1, 100_001):  # 10 s
        s = ch.advance(i * dt)
        if s != last:  # no self-loops: every jump changes the state
            jumps.append(i * dt - last_jump)
            last_jump, last = i * dt, s
        states.append(s)
    gaps = np.asarray(jumps[1:])
    assert gaps.min() >= 1e-3 - dt and gaps.max() <= 5e-3 + dt
    assert len(jumps) == pytest.approx(10 / 3e-3, rel=0.05)  # mean spacing 3 ms
    occ = np.bincount(states, minlength=3) / len(states)
    np.testing.assert_allclose(occ, stationary(np.asarray(DEFAULT_TRANSITION)), atol=0.03)


def test_fixed_state_never_changes_and_config_is_validated():
    ch = UeChannel(ChannelConfig(), stream(1, 0, 2), 0.0, fixed_state=2)
    assert all(ch.advance(t * 1e-3) == 2 for t in range(100))
    with pytest.raises(ValueError):
        ChannelConfig(transition=((0.5, 0.5, 0.5), (1, 0, 0), (1, 0, 0)))
    with pytest.raises(ValueError):
        ChannelConfig(change_interval_s=(5e-3, 1e-3))


def test_streams_are_seeded_per_process_and_ue():
    a = [stream(3, 0, 1).next() for _ in range(2)]
    assert a[0] == a[1]
    assert stream(3, 0, 1).next() != stream(3, 0, 2).next() != stream(4, 0, 1).next()
