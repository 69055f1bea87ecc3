"""Spectrum-access simulator: the LSA model of SPEC §2 (LSA sections III and V-A).

One base station at the centre of a disc of radius ``cell_radius_m``; secondary users placed by
a homogeneous Poisson point process in the annulus ``[min_distance_m, cell_radius_m]`` (or a
fixed number of users, uniform in the same region — the PPP conditioned on its count);
``num_channels`` orthogonal channels with bandwidths ``B_c ~ U[1, 10] MHz`` drawn once per
episode. Every slot:

* primary-user occupancy ``o_c ~ Bernoulli(pu_occupancy_prob)`` per channel, or exactly
  ``num_busy`` busy channels drawn uniformly (the paper's grid fixes the count);
* bursty activity: each user runs a two-state ON/OFF Markov chain (Gilbert–Elliott); an
  inactive user requests nothing (``user_eligible = False``);
* small-scale fading ``g[u,c] ~ Exp(1)`` (Rayleigh power gain), independent per (user,
  channel) — frequency-selective — or ``g = 1`` (``fading="flat"``);
* rate ``rate[u,c] = B_c · log2(1 + g[u,c]·P_rx(u) / (N0·B_c + I_c))`` with
  ``P_rx(u) = P_t·G_t·G_r·(λ/4π)²·d_u^(−α)`` (``service.phy``), computed by ``make_slot``.

The slot sequence is exogenous (it does not depend on the decisions), so every policy run with
one seed sees the same slots. Randomness comes from independent child streams of one
``SeedSequence``: topology, activity, occupancy, fading and the random reference assignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from service import phy
from service.history import CellHistory
from service.kpi import jain_fairness, ratio
from service.policies.assignment import random_valid
from service.policies.base import Policy, PolicyContext
from service.policies.registry import make
from service.sim.base import SlotEnv, StepResult
from service.types import SlotState, make_slot, served_bits

Fading = Literal["rayleigh", "flat"]


@dataclass(frozen=True)
class SpectrumConfig:
    """Parameters of the spectrum-access model (defaults: SPEC §2)."""

    #: fixed number of registered users (uniform in the annulus); None = Poisson count
    num_ue: int | None = None
    #: Poisson point process: expected number of users in the annulus (intensity × area); a draw
    #: of zero users is redrawn (a slot needs at least one user)
    mean_num_ue: float = 15.0
    #: number of orthogonal channels R
    num_channels: int = 10
    #: fixed number of channels busy with a primary user each slot; None = Bernoulli occupancy
    num_busy: int | None = None
    #: P(o_c = 1): primary-user occupancy probability per channel per slot (when num_busy is None)
    pu_occupancy_prob: float = 0.2
    #: cell radius (m); users lie in the disc around the base station
    cell_radius_m: float = 500.0
    #: minimum user distance from the base station (m)
    min_distance_m: float = 10.0
    #: transmit power P_t (dBm)
    tx_power_dbm: float = 23.0
    #: transmit antenna gain G_t (dBi)
    tx_gain_dbi: float = 0.0
    #: receive antenna gain G_r (dBi)
    rx_gain_dbi: float = 0.0
    #: carrier frequency (Hz), λ = c / f
    carrier_hz: float = 3.5e9
    #: path-loss exponent α of the log-distance model (1 m free-space reference)
    pathloss_exponent: float = 3.5
    #: thermal noise density N0 (dBm/Hz)
    noise_density_dbm_hz: float = -174.0
    #: channel bandwidths B_c ~ U[min_bandwidth_hz, max_bandwidth_hz], drawn once per episode
    min_bandwidth_hz: float = 1.0e6
    max_bandwidth_hz: float = 10.0e6
    #: small-scale fading: "rayleigh" (g ~ Exp(1) per user and channel, redrawn every slot) or "flat" (g = 1)
    fading: Fading = "rayleigh"
    #: interference I_c per channel (dBm): one value for every channel, R values, or None (0 W)
    interference_dbm: float | tuple[float, ...] | None = None
    #: bursty activity (ON/OFF Markov chain per user); False = every user requests every slot
    bursty: bool = True
    #: P(inactive -> active) per slot
    activation_prob: float = 0.5
    #: P(active -> inactive) per slot (mean burst length 1 / deactivation_prob slots)
    deactivation_prob: float = 0.2
    #: single connectivity: channels per user (SPEC §1, LSA constraint (5))
    max_channels_per_user: int = 1
    #: episode length in slots (``done`` after that many steps); None = endless
    episode_slots: int | None = None
    #: compute the KM optimum and a random valid assignment of every played slot (ratio KPIs)
    references: bool = False
    cell_id: str = "cell-0"

    def __post_init__(self) -> None:
        if self.num_ue is not None and self.num_ue < 1:
            raise ValueError(f"num_ue must be >= 1, got {self.num_ue}")
        if self.num_ue is None and not self.mean_num_ue > 0:
            raise ValueError(f"mean_num_ue must be > 0, got {self.mean_num_ue}")
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {self.num_channels}")
        if self.num_busy is not None and not 0 <= self.num_busy <= self.num_channels:
            raise ValueError(f"num_busy must be in 0..{self.num_channels}, got {self.num_busy}")
        if not 0.0 <= self.pu_occupancy_prob <= 1.0:
            raise ValueError(f"pu_occupancy_prob must be in [0, 1], got {self.pu_occupancy_prob}")
        if not 0.0 < self.min_distance_m < self.cell_radius_m:
            raise ValueError("need 0 < min_distance_m < cell_radius_m")
        if not 0.0 < self.min_bandwidth_hz <= self.max_bandwidth_hz:
            raise ValueError("need 0 < min_bandwidth_hz <= max_bandwidth_hz")
        if self.fading not in ("rayleigh", "flat"):
            raise ValueError(f"fading must be 'rayleigh' or 'flat', got {self.fading!r}")
        if isinstance(self.interference_dbm, tuple) and len(self.interference_dbm) != self.num_channels:
            raise ValueError(f"interference_dbm needs {self.num_channels} values, got {len(self.interference_dbm)}")
        for name in ("activation_prob", "deactivation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.max_channels_per_user < 1:
            raise ValueError("max_channels_per_user must be >= 1")

    @property
    def stationary_active_prob(self) -> float:
        """Long-run fraction of slots a user is active (1 when not bursty)."""
        if not self.bursty:
            return 1.0
        total = self.activation_prob + self.deactivation_prob
        return 1.0 if total == 0 else self.activation_prob / total


def _grid(num_ue: int, num_channels: int, num_busy: int) -> SpectrumConfig:
    return SpectrumConfig(num_ue=num_ue, num_channels=num_channels, num_busy=num_busy)


#: The LSA paper's scenario grid (SPEC §2) as (users, channels, busy channels), then the
#: ultra-dense Scale I/II/III; "poisson" is the SPEC default model with a Poisson user count.
SPECTRUM_SCENARIOS: dict[str, SpectrumConfig] = {
    "u5-c5-b1": _grid(5, 5, 1),
    "u7-c10-b2": _grid(7, 10, 2),
    "u10-c15-b3": _grid(10, 15, 3),
    "u15-c20-b4": _grid(15, 20, 4),
    "u5-c5-b2": _grid(5, 5, 2),
    "u8-c10-b4": _grid(8, 10, 4),
    "u12-c15-b6": _grid(12, 15, 6),
    "u15-c20-b8": _grid(15, 20, 8),
    "scale-I": _grid(500, 500, 100),
    "scale-II": _grid(1000, 1000, 200),
    "scale-III": _grid(2000, 2000, 400),
    "poisson": SpectrumConfig(),
}
#: the small-to-medium grid of LSA Table III, in the paper's order
PAPER_GRID: tuple[str, ...] = tuple(SPECTRUM_SCENARIOS)[:8]
#: the ultra-dense grid of LSA Table V
SCALE_GRID: tuple[str, ...] = ("scale-I", "scale-II", "scale-III")


def make_spectrum_env(name: str, seed: int = 0, **overrides: Any) -> SpectrumEnv:
    """Build the simulator of the named scenario (``SPECTRUM_SCENARIOS``), fields overridable."""
    try:
        cfg = SPECTRUM_SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown spectrum scenario {name!r}; known: {', '.join(SPECTRUM_SCENARIOS)}") from None
    return SpectrumEnv(replace(cfg, **overrides) if overrides else cfg, seed=seed)


# --------------------------------------------------------------------------------- kernels


def sample_user_distances(
    rng: np.random.Generator, num_ue: int, cell_radius_m: float, min_distance_m: float
) -> np.ndarray:
    """Distances [num_ue] (m) of points uniform in the annulus ``[min_distance_m, cell_radius_m]``.

    Uniform in area: ``d = sqrt(U·(R² − r0²) + r0²)``, U ~ U[0, 1).
    """
    u = rng.random(num_ue)
    return np.sqrt(u * (cell_radius_m**2 - min_distance_m**2) + min_distance_m**2)


def sample_positions_m(rng: np.random.Generator, cfg: SpectrumConfig) -> np.ndarray:
    """User positions float64 [N, 2] (m, base station at the origin).

    Poisson point process of mean ``cfg.mean_num_ue`` points in the annulus (count ~ Poisson,
    redrawn while 0), or exactly ``cfg.num_ue`` points; uniform in area either way.
    """
    if cfg.num_ue is not None:
        n = cfg.num_ue
    else:
        n = 0
        while n == 0:
            n = int(rng.poisson(cfg.mean_num_ue))
    d = sample_user_distances(rng, n, cfg.cell_radius_m, cfg.min_distance_m)
    theta = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([d * np.cos(theta), d * np.sin(theta)], axis=1)


def sample_occupancy(rng: np.random.Generator, cfg: SpectrumConfig) -> np.ndarray:
    """Primary-user occupancy o_c, bool [R] (True = busy): Bernoulli or exactly ``num_busy``."""
    if cfg.num_busy is None:
        return rng.random(cfg.num_channels) < cfg.pu_occupancy_prob
    busy = np.zeros(cfg.num_channels, bool)
    busy[rng.choice(cfg.num_channels, size=cfg.num_busy, replace=False)] = True
    return busy


def step_activity(
    rng: np.random.Generator, active: np.ndarray, activation_prob: float, deactivation_prob: float
) -> np.ndarray:
    """One slot of the per-user ON/OFF Markov chain. active: bool [N] -> bool [N]."""
    u = rng.random(active.shape[0])
    return np.where(active, u >= deactivation_prob, u < activation_prob)


def evaluate_owner(state: SlotState, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a DCM ``owner`` [R] physically delivers: served rate per user float64 [N] (bit/s)
    and the mask bool [R] of channels that carried a legal transmission.

    A pair delivers nothing when its channel is busy (collision with the primary user) or its
    user is inactive; a user granted more channels than its cap is served on its first ``cap``
    channels (slot order) only.
    """
    owner = np.asarray(owner)
    if owner.shape != (state.num_res,) or not np.issubdtype(owner.dtype, np.integer):
        raise ValueError(f"owner must be an int vector of shape ({state.num_res},), got {owner.dtype} {owner.shape}")
    if owner.size and (owner.min() < 0 or owner.max() > state.num_ue):
        raise ValueError(f"owner tokens must lie in 0..{state.num_ue}")
    owner = owner.astype(np.int64)
    ok = (owner > 0) & state.resource_available
    ok &= state.user_eligible[np.maximum(owner - 1, 0)]
    # cap: the k-th channel of a user (in slot order) counts only while k <= cap
    rank = np.zeros(state.num_res, np.int64)
    seen = np.zeros(state.num_ue + 1, np.int64)
    for r in np.flatnonzero(ok).tolist():
        seen[owner[r]] += 1
        rank[r] = seen[owner[r]]
    ok &= rank <= state.max_resources_per_user
    return served_bits(state, np.where(ok, owner, 0)), ok


# ------------------------------------------------------------------------------ simulator


@dataclass
class _Totals:
    """Accumulators behind ``kpis()``."""

    slots: int = 0
    sum_rate_bps: float = 0.0
    used_free: int = 0
    free: int = 0
    free_bw_hz: float = 0.0
    violations: int = 0
    invalid_slots: int = 0
    active_user_slots: int = 0
    km_bps: float = 0.0
    random_bps: float = 0.0
    per_user_bits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ever_active: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


class SpectrumEnv(SlotEnv):
    """LSA spectrum-access simulator (SPEC §2), Gymnasium-style and seeded.

    ``reset(seed)`` draws the topology (user positions, channel bandwidths) and the first slot;
    ``step(owner)`` plays DCM ``owner`` [R] on the current slot and draws the next one. Slot
    length is ``slot_s`` seconds (1 s by default, so bits per slot = bit/s).
    """

    preset = "spectrum"

    def __init__(self, config: SpectrumConfig | None = None, *, seed: int = 0, slot_s: float = 1.0) -> None:
        self.config = config or SpectrumConfig()
        self.seed = seed
        self.slot_s = slot_s
        self._km: Policy | None = None
        self._state: SlotState | None = None

    # -- episode -------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> SlotState:
        cfg = self.config
        self.seed = self.seed if seed is None else int(seed)
        topo, act, occ, fad, ref = (np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(5))
        self._rng_activity, self._rng_occupancy, self._rng_fading, self._rng_reference = act, occ, fad, ref
        self.positions_m = sample_positions_m(topo, cfg)  # [N, 2]
        self.distance_m = np.hypot(self.positions_m[:, 0], self.positions_m[:, 1])  # [N]
        self.bandwidth_hz = topo.uniform(cfg.min_bandwidth_hz, cfg.max_bandwidth_hz, cfg.num_channels)  # [R]
        self.rx_power_dbm = phy.rx_power_dbm(
            self.distance_m,
            tx_power_dbm=cfg.tx_power_dbm,
            tx_gain_dbi=cfg.tx_gain_dbi,
            rx_gain_dbi=cfg.rx_gain_dbi,
            carrier_hz=cfg.carrier_hz,
            pathloss_exponent=cfg.pathloss_exponent,
        )
        n = self.num_ue
        self.user_ids = np.arange(1, n + 1, dtype=np.int64)
        self.channel_ids = np.arange(1, cfg.num_channels + 1, dtype=np.int64)
        if cfg.interference_dbm is None:
            self.interference_dbm = None
        else:
            self.interference_dbm = np.broadcast_to(
                np.asarray(cfg.interference_dbm, np.float64), (cfg.num_channels,)
            ).copy()
        # activity starts from the chain's stationary distribution
        self.active = (act.random(n) < cfg.stationary_active_prob) if cfg.bursty else np.ones(n, bool)
        self._slot = 0
        self._totals = _Totals(per_user_bits=np.zeros(n), ever_active=np.zeros(n, bool))
        self._state = self._draw_slot()
        return self._state

    @property
    def num_ue(self) -> int:
        return int(self.positions_m.shape[0])

    @property
    def state(self) -> SlotState:
        if self._state is None:
            raise RuntimeError("call reset() first")
        return self._state

    def _draw_slot(self) -> SlotState:
        """The current slot: occupancy, fading and activity drawn, rates computed by make_slot."""
        cfg = self.config
        busy = sample_occupancy(self._rng_occupancy, cfg)  # [R]
        fading = None
        if cfg.fading == "rayleigh":
            fading = self._rng_fading.exponential(1.0, size=(self.num_ue, cfg.num_channels))  # [N, R]
        self.fading_gain = fading  # the slot's g[u, c] (None = flat), kept for inspection
        return make_slot(
            "spectrum",
            self.user_ids,
            self.channel_ids,
            bandwidth_hz=self.bandwidth_hz,
            resource_available=~busy,
            user_eligible=self.active,
            max_resources_per_user=cfg.max_channels_per_user,
            rx_power_dbm=self.rx_power_dbm,
            fading_gain=fading,
            interference_dbm=self.interference_dbm,
            noise_density_dbm_hz=cfg.noise_density_dbm_hz,
            cell_id=cfg.cell_id,
            slot=self._slot,
        )

    def step(self, owner: np.ndarray) -> StepResult:
        state = self.state
        served_bps, carried = evaluate_owner(state, owner)  # [N], [R]
        violations = int(((np.asarray(owner) > 0) & ~carried).sum())
        reward = float(served_bps.sum())
        t = self._totals
        t.slots += 1
        t.sum_rate_bps += reward
        free = state.resource_available
        t.free += int(free.sum())
        t.free_bw_hz += float(state.bandwidth_hz[free].sum())
        t.used_free += int(carried.sum())
        t.violations += violations
        t.invalid_slots += int(violations > 0)
        t.active_user_slots += int(state.user_eligible.sum())
        t.per_user_bits += served_bps * self.slot_s
        t.ever_active |= state.user_eligible
        info: dict[str, Any] = {
            "violations": violations,
            "active_users": int(state.user_eligible.sum()),
            "free_channels": int(free.sum()),
        }
        if self.config.references:
            km_bps, rand_bps = self.reference_utilities(state)
            t.km_bps += km_bps
            t.random_bps += rand_bps
            info.update(km_bps=km_bps, random_bps=rand_bps)
        feedback = {int(uid): float(v) for uid, v in zip(state.user_ids.tolist(), served_bps.tolist(), strict=True)}

        # next slot: activity chain, then fresh occupancy and fading
        cfg = self.config
        if cfg.bursty:
            self.active = step_activity(self._rng_activity, self.active, cfg.activation_prob, cfg.deactivation_prob)
        self._slot += 1
        self._state = self._draw_slot()
        done = cfg.episode_slots is not None and self._slot >= cfg.episode_slots
        return StepResult(self._state, feedback, reward, done, info)

    def reference_utilities(self, state: SlotState) -> tuple[float, float]:
        """Sum-rate (bit/s) of the KM optimum (``service.policies.make("km")``) and of a random
        valid assignment drawn with the simulator's own reference stream, on ``state``."""
        if self._km is None:
            self._km = make("km")
        ctx = PolicyContext(CellHistory.empty().view(state), self._rng_reference)
        km_owner = np.asarray(self._km(state, ctx), np.int64)
        rand_owner = random_valid(state, self._rng_reference)
        return float(served_bits(state, km_owner).sum()), float(served_bits(state, rand_owner).sum())

    # -- KPIs ----------------------------------------------------------------------------

    def kpis(self) -> dict[str, float]:
        """KPIs since ``reset`` (SPEC §2):

        * throughput_bps / throughput_mbps: mean sum-rate per slot;
        * jain_fairness: Jain index of the cumulative per-user throughput over the users active at
          least once (NaN if none was);
        * resource_utilisation: channels carrying a legal transmission / free channels;
        * spectral_efficiency_bps_hz: sum-rate / free bandwidth;
        * violation_rate: share of slots whose DCM broke a constraint;
        * with ``references``: km / random throughput and ``ratio_to_km`` / ``ratio_to_random``
          (ratios of the summed sum-rates on the same slots; NaN when the reference is 0).
        """
        t = self._totals
        slots = max(t.slots, 1)
        out: dict[str, float] = {
            "slots": float(t.slots),
            "throughput_bps": t.sum_rate_bps / slots,
            "throughput_mbps": t.sum_rate_bps / slots / 1e6,
            "jain_fairness": jain_fairness(t.per_user_bits[t.ever_active]),
            "resource_utilisation": t.used_free / t.free if t.free else 0.0,
            "spectral_efficiency_bps_hz": t.sum_rate_bps / t.free_bw_hz if t.free_bw_hz else 0.0,
            "mean_active_users": t.active_user_slots / slots,
            "violation_rate": t.invalid_slots / slots,
        }
        if self.config.references:
            out.update(
                km_throughput_mbps=t.km_bps / slots / 1e6,
                random_throughput_mbps=t.random_bps / slots / 1e6,
                ratio_to_km=ratio(t.sum_rate_bps, t.km_bps),
                ratio_to_random=ratio(t.sum_rate_bps, t.random_bps),
            )
        return out
