"""Per-UE channel of the MAC preset: a 3-state Markov chain with random change instants
(SPEC §3; Stackelberg paper section III-A3 and appendix B-B, eq. 46).

States ``{0: poor, 1: medium, 2: good}`` map to spectral efficiencies
``service.phy.MAC_SE_LEVELS = {0.2344, 0.6016, 1.1758}`` bit/s/Hz (MCS 2 / 6 / 10 of TS 38.214
table 5.1.3.1-1). The state jumps at random instants spaced ``U[1, 5] ms`` apart; at a jump the
next state is drawn from row ``s`` of the transition matrix ``P``. The paper's ``P`` was lost in
the text; our default has no self-loops (a jump always changes the state) and favours the
neighbouring state (poor↔medium↔good), with stationary distribution ≈ (0.28, 0.44, 0.28).

Information asymmetry: the UE knows its true state at any time; the base station samples it
only at TTI boundaries, so within a TTI the true state may already have moved on (stale CSI).

``UniformStream`` is the buffered U(0,1) source every MAC random process draws from: one
``Generator`` per (process, UE) so a UE's trajectory does not depend on who else is present
(paired comparisons across policies with one seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.phy import MAC_SE_LEVELS

#: row s = P(next state | jump from s); no self-loops, neighbour-biased (our choice, see module doc)
DEFAULT_TRANSITION: tuple[tuple[float, ...], ...] = (
    (0.0, 0.8, 0.2),
    (0.5, 0.0, 0.5),
    (0.2, 0.8, 0.0),
)


class UniformStream:
    """U(0,1) draws from one seeded ``Generator``, fetched in blocks (fast, reproducible)."""

    __slots__ = ("_buf", "_i", "_rng", "block")

    def __init__(self, rng: np.random.Generator, block: int = 256) -> None:
        self._rng = rng
        self.block = block
        self._buf = rng.random(block)
        self._i = 0

    def next(self) -> float:
        if self._i >= self.block:
            self._buf = self._rng.random(self.block)
            self._i = 0
        u = float(self._buf[self._i])
        self._i += 1
        return u


def stream(seed: int, process: int, ue_id: int) -> UniformStream:
    """The stream of random ``process`` (a small int tag) for UE ``ue_id`` under ``seed``."""
    ss = np.random.SeedSequence(entropy=seed & 0xFFFFFFFFFFFFFFFF, spawn_key=(process, ue_id))
    return UniformStream(np.random.Generator(np.random.PCG64(ss)))


def stationary(transition: np.ndarray) -> np.ndarray:
    """Stationary distribution π [S] of the jump chain ``P`` [S, S] (``π P = π``, ``Σ π = 1``)."""
    p = np.asarray(transition, dtype=np.float64)
    s = p.shape[0]
    a = np.vstack([p.T - np.eye(s), np.ones((1, s))])
    b = np.r_[np.zeros(s), 1.0]
    pi, *_ = np.linalg.lstsq(a, b, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def sample_state(cdf_row: np.ndarray, u: float) -> int:
    """Inverse-CDF draw: the first state whose cumulative probability exceeds ``u``."""
    return min(int(np.searchsorted(cdf_row, u, side="right")), cdf_row.size - 1)


@dataclass(frozen=True)
class ChannelConfig:
    """Parameters of the per-UE channel chain.

    se_levels: spectral efficiency (bit/s/Hz) of each state, poor → good.
    transition: jump matrix P [S, S] (rows sum to 1).
    change_interval_s: (min, max) of the uniform time between two jumps (SPEC: 1–5 ms).
    """

    se_levels: tuple[float, ...] = tuple(float(v) for v in MAC_SE_LEVELS)
    transition: tuple[tuple[float, ...], ...] = DEFAULT_TRANSITION
    change_interval_s: tuple[float, float] = (1e-3, 5e-3)

    def __post_init__(self) -> None:
        p = np.asarray(self.transition, dtype=np.float64)
        s = len(self.se_levels)
        if p.shape != (s, s) or (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0):
            raise ValueError(f"transition must be a {s}x{s} row-stochastic matrix")
        lo, hi = self.change_interval_s
        if not 0 < lo <= hi:
            raise ValueError(f"change_interval_s must satisfy 0 < min <= max, got {self.change_interval_s}")


class UeChannel:
    """The true channel state of one UE over continuous time.

    ``advance(t_s)`` plays every jump up to time ``t_s`` and returns the state in force at
    ``t_s``. A UE with ``fixed_state`` never jumps (the Table VIII stress test).
    """

    __slots__ = ("_cdf", "_lo", "_span", "_u", "next_change_s", "state")

    def __init__(self, cfg: ChannelConfig, u: UniformStream, t0_s: float, *, fixed_state: int | None = None) -> None:
        self._u = u
        self._cdf = np.cumsum(np.asarray(cfg.transition, dtype=np.float64), axis=1)
        self._lo, hi = cfg.change_interval_s
        self._span = hi - self._lo
        if fixed_state is not None:
            if not 0 <= fixed_state < len(cfg.se_levels):
                raise ValueError(f"fixed_state {fixed_state} out of range")
            self.state = int(fixed_state)
            self.next_change_s = math.inf
        else:
            pi_cdf = np.cumsum(stationary(np.asarray(cfg.transition)))
            self.state = sample_state(pi_cdf, u.next())
            self.next_change_s = t0_s + self._lo + self._span * u.next()

    def advance(self, t_s: float) -> int:
        """Play the jumps at instants <= ``t_s``; return the state in force at ``t_s``."""
        while self.next_change_s <= t_s:
            self.state = sample_state(self._cdf[self.state], self._u.next())
            self.next_change_s += self._lo + self._span * self._u.next()
        return self.state
