"""KPI functions against hand-computed values (SPEC §2–§3)."""

import math

import numpy as np
import pytest

from service import kpi


def test_jain_fairness_hand_values():
    assert kpi.jain_fairness([1, 1, 1, 1]) == pytest.approx(1.0)
    assert kpi.jain_fairness([4, 0, 0, 0]) == pytest.approx(0.25)
    # (1+2+3)^2 / (3 * (1+4+9)) = 36 / 42
    assert kpi.jain_fairness([1, 2, 3]) == pytest.approx(36 / 42)
    assert kpi.jain_fairness([0, 0, 0]) == 1.0
    assert math.isnan(kpi.jain_fairness([]))


def test_throughput_per_ue_averages_over_ttis_and_active_ues():
    # TTI 0: 512 bits over 2 UEs = 256; TTI 1: 256 bits over 1 UE = 256; TTI 2 has no UE (skipped)
    mbps = kpi.throughput_per_ue_mbps([512, 256, 999], [2, 1, 0], 0.0005)
    assert mbps == pytest.approx(256 / 0.0005 / 1e6)
    assert kpi.cell_throughput_mbps([512, 256], 0.0005) == pytest.approx(384 / 0.0005 / 1e6)
    assert math.isnan(kpi.throughput_per_ue_mbps([1.0], [0], 0.0005))


def test_ratios_of_counts():
    assert kpi.resource_efficiency(6, 4) == pytest.approx(1.5)
    assert math.isnan(kpi.resource_efficiency(3, 0))
    assert kpi.packet_success_rate(9, 10) == pytest.approx(0.9)
    assert math.isnan(kpi.packet_success_rate(0, 0))
    assert kpi.valid_action_rate([True, False, True, True]) == pytest.approx(0.75)
    assert kpi.ratio(3.0, 4.0) == pytest.approx(0.75)
    assert math.isnan(kpi.ratio(3.0, 0.0))


def test_latency_and_queue_stats():
    avg, p95 = kpi.latency_stats([1, 2, 3, 4])
    assert avg == pytest.approx(2.5)
    assert p95 == pytest.approx(1 + 0.95 * 3)  # linear interpolation between order statistics
    q_avg, q_max = kpi.queue_stats(np.array([[0, 2], [4, 6]]))
    assert (q_avg, q_max) == (pytest.approx(3.0), 6.0)
    assert kpi.overflow_drops([0, 3, 2]) == 5
    assert all(math.isnan(v) for v in kpi.latency_stats([]))


def test_leader_utility_eq5():
    # half the cell's max bits, x = [1, 1, 2]: JFI = 16 / (3 * 6)
    u = kpi.leader_utility(3160.0, 6320.0, [1, 1, 2], omega=0.5)
    assert u == pytest.approx(0.5 * 0.5 + 0.5 * 16 / 18)
    assert kpi.leader_utility(3160.0, 6320.0, [1, 1, 2], omega=1.0) == pytest.approx(0.5)
    assert kpi.leader_utility(1e9, 6320.0, [5, 5], omega=1.0) == pytest.approx(1.0)  # clipped to 1
    with pytest.raises(ValueError):
        kpi.leader_utility(1.0, 1.0, [1], omega=1.5)


def test_follower_utility_eq2_and_hamming_eq3():
    a = [1, 0, 1, 0]
    b = [1, 1, 0, 0]
    assert kpi.hamming_similarity(a, b) == pytest.approx(0.5)
    assert kpi.hamming_similarity(a, a) == 1.0
    # 2 dPDUs over 4 attempts + similarity 0.5, weights c1 = 2, c2 = 1
    assert kpi.follower_utility(2, 4, a, b, c1=2.0, c2=1.0) == pytest.approx(2 * 0.5 + 0.5)
    assert kpi.follower_utility(0, 0, [0, 0], [1, 0], c1=1.0, c2=1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        kpi.hamming_similarity([1, 0], [1, 0, 0])
