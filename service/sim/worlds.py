"""World families: independent mac and spectrum worlds the student is trained and judged on.

The project's own simulators (``service.sim.mac``, ``service.sim.spectrum``) are one channel and
traffic model each. A scheduler that users drive from ns-3, Sionna, MATLAB or a real DU meets
other channel models, traffic, loads, cell sizes and units; this module draws them from named
*families* so that training sees many worlds and the benchmark reports worlds held out of
training entirely.

**mac worlds** (``WorldEnv``, a ``SlotEnv``): one cell, ``num_ue`` users fixed per episode,
``num_rbg`` RBGs of ``prb_per_rbg`` PRBs at ``scs_hz`` (TTI = 1 ms / (scs / 15 kHz)).

* Channel (``channel``), per user and RBG, time-correlated (Gauss-Markov, coefficient ``rho``
  per slot) and frequency-correlated (one fading value per block of ``coherence_rbg`` RBGs):

  - ``markov3``: the project's 3-state chain (SE 0.2344 / 0.6016 / 1.1758 bit/s/Hz), flat over
    the RBGs, jumping at random instants (mean ``markov_dwell_slots``);
  - ``rayleigh``: log-distance pathloss (TR 38.901 UMa NLOS slope, 3.5 GHz) with log-normal
    shadowing (σ = 8 dB) and Rayleigh fading;
  - ``rician``: the same pathloss with Rician fading (K factor ``rician_k_db``);
  - ``los_mix``: TR 38.901 UMi LOS probability per user; LOS users Rician (K = 9 dB) on the
    LOS slope, NLOS users Rayleigh on the NLOS slope.

  Spectral efficiency ``SE = min(0.75 · log2(1 + SNR), 7.4063)`` (an implementation margin and
  the top of TS 38.214 MCS table 2); ``rate_bps = SE · bandwidth``.
* CSI: the base station sees each slot's rates as reported ``csi_delay_slots`` slots earlier.
  A transport block sized from the report fails with probability
  ``clip(bler + 3 · (0.9 − SE_true / SE_reported), bler, 1)`` (a block sent well above the
  channel's capacity fails); its bits stay queued (ARQ).
* Busy RBGs: each RBG is unavailable in a slot with probability ``busy_fraction`` (reserved for
  another cell or for control; half the random worlds have none, half up to 0.4).
* Traffic (``traffic``), packets of ``packet_bits`` per user: ``full_buffer`` (queue topped up
  to ``buffer_cap_bits`` every slot), ``bernoulli`` (one packet with probability ``p``),
  ``periodic`` (one packet every ``T`` slots, random phase), ``bursty`` (Pareto ON/OFF, shape
  1.5: heavy-tailed bursts of back-to-back packets), ``mixture`` (each user one of the
  others). The offered load is ``load`` × what the cell carries, split over users by a Dirichlet draw; a queue holds at most
  ``buffer_cap_bits`` (overflow dropped and counted).
* Units: the state carries ``rate_bps`` in bit/s and ``buffer_bits`` in bits (and, with
  ``report_se``, the reported ``spectral_efficiency`` in bit/s/Hz), times
  ``unit_scale`` (feedback too): a caller whose "bits" are another unit. The physics is
  unchanged, so a scale-invariant scheduler decides the same for every ``unit_scale``.

KPIs (``kpis()``): the leader utility of SPEC §3 eq. 5 (x = RBGs a user transmitted data on),
cell throughput (bit/s), Jain index of the users' throughputs, mean and p95 packet latency
(slots from arrival to the slot its last bit is delivered), block error rate, drops.

**spectrum worlds** (``spectrum_instance``): one LSA slot (N users, R channels, a busy share) with
``rate_bps`` from a family's channel and bandwidth model; the benchmark compares a policy's
sum-rate with the exact optimum (KM).

The families (``MAC_FAMILIES``, ``SPECTRUM_FAMILIES``) and which are held out of training
(``HELD_OUT``) are the contract between ``trainer`` and ``service.bench.student``. Every random
draw comes from one ``SeedSequence``: the same seed gives the same world and rollout.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service import kpi
from service.sim.base import SlotEnv, StepResult
from service.types import SlotState, make_slot

ChannelModel = Literal["markov3", "rayleigh", "rician", "los_mix"]
TrafficModel = Literal["full_buffer", "bernoulli", "periodic", "bursty", "mixture"]
CHANNEL_MODELS: tuple[str, ...] = ("markov3", "rayleigh", "rician", "los_mix")
TRAFFIC_MODELS: tuple[str, ...] = ("full_buffer", "bernoulli", "periodic", "bursty", "mixture")
_ATOMIC_TRAFFIC = ("bernoulli", "periodic", "bursty")

#: spectral efficiencies of the project's 3-state chain (bit/s/Hz, TS 38.214 table 5.1.3.1-1)
MARKOV3_SE = np.array([0.2344, 0.6016, 1.1758])
#: top of TS 38.214 MCS table 2 (256-QAM), bit/s/Hz
SE_MAX = 7.4063
#: Shannon implementation margin
SE_MARGIN = 0.75


@dataclass(frozen=True)
class WorldConfig:
    """One mac world (see the module docstring for the models)."""

    channel: ChannelModel = "rayleigh"
    traffic: TrafficModel = "bernoulli"
    num_ue: int = 20
    num_rbg: int = 17
    #: mean offered bits per slot over the cell's mean capacity
    load: float = 0.7
    #: PRBs per RBG and subcarrier spacing (Hz): RBG bandwidth = prb_per_rbg · 12 · scs_hz
    prb_per_rbg: int = 4
    scs_hz: float = 30e3
    #: multiplies every bit quantity the service sees (rates, buffers, feedback)
    unit_scale: float = 1.0
    packet_bits: float = 12_000.0
    buffer_cap_bits: float = 4e6
    #: cell radius (m) and per-RBG transmit power (dBm) of the pathloss models: a 43 dBm carrier
    #: split evenly over the RBGs
    cell_radius_m: float = 300.0
    tx_power_dbm_per_rbg: float = 43.0 - 10 * math.log10(17)
    noise_figure_db: float = 7.0
    shadowing_db: float = 8.0
    rician_k_db: float = 6.0
    #: Gauss-Markov time correlation of the fading per slot, and RBGs per coherence block
    rho: float = 0.995
    coherence_rbg: int = 2
    markov_dwell_slots: float = 6.0
    csi_delay_slots: int = 1
    bler: float = 0.01
    #: ω of the leader utility (eq. 5)
    omega: float = 0.5
    #: probability that an RBG is unavailable in a slot (reserved for another cell or for control)
    busy_fraction: float = 0.0
    #: the state also carries the reported ``spectral_efficiency`` [N, R] (bit/s/Hz) beside
    #: ``rate_bps`` (some controllers send both, some only rates)
    report_se: bool = False
    episode_slots: int | None = None
    cell_id: str = "world-0"

    def __post_init__(self) -> None:
        if self.channel not in CHANNEL_MODELS:
            raise ValueError(f"unknown channel model {self.channel!r}; expected one of {list(CHANNEL_MODELS)}")
        if self.traffic not in TRAFFIC_MODELS:
            raise ValueError(f"unknown traffic model {self.traffic!r}; expected one of {list(TRAFFIC_MODELS)}")
        if self.num_ue < 1 or self.num_rbg < 1:
            raise ValueError("num_ue and num_rbg must be >= 1")
        if not (self.load > 0 and self.unit_scale > 0 and self.packet_bits > 0):
            raise ValueError("load, unit_scale and packet_bits must be > 0")

    @property
    def tti_s(self) -> float:
        return 1e-3 * 15e3 / self.scs_hz

    @property
    def rbg_bandwidth_hz(self) -> float:
        return self.prb_per_rbg * 12 * self.scs_hz


# ----------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """A named family of worlds: a channel model, a traffic model and the ranges of the rest."""

    name: str
    channel: ChannelModel
    traffic: TrafficModel
    load: tuple[float, float] = (0.25, 3.0)


#: mac families (name -> Family); ``HELD_OUT`` names those never drawn in training
MAC_FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("markov3-bernoulli", "markov3", "bernoulli"),
        Family("rayleigh-full_buffer", "rayleigh", "full_buffer", (1.0, 1.0)),
        Family("rayleigh-periodic", "rayleigh", "periodic"),
        Family("rayleigh-mixture", "rayleigh", "mixture"),
        Family("los_mix-bernoulli", "los_mix", "bernoulli"),
        Family("los_mix-mixture", "los_mix", "mixture"),
        # held out: a channel model and a traffic model that training never sees
        Family("rician-periodic", "rician", "periodic"),
        Family("rayleigh-bursty", "rayleigh", "bursty"),
    )
}
#: spectrum families (name -> description); see ``spectrum_instance``
SPECTRUM_FAMILIES: dict[str, str] = {
    "lsa-disc": "LSA disc: PPP users, log-distance pathloss (α = 3.5), Rayleigh fading, bandwidths U[1, 10] MHz",
    "uma-shadowed": "38.901 UMa-like pathloss with 8 dB shadowing, Rayleigh fading, equal 20 MHz channels",
    "los_mix": "38.901 UMi LOS probability, Rician LOS / Rayleigh NLOS users, bandwidths U[5, 40] MHz",
    "heavy-tailed": "log-normal rates (σ = 1.5 decades) with a per-user and a per-channel factor",
    # held out
    "rician-wideband": "Rician fading (K = 6 dB), shadowing, bandwidths log-uniform in [0.2, 100] MHz",
    "correlated-lowrank": "rates from a rank-2 user × channel model plus noise (strongly correlated)",
}
#: the families held out of training (reported separately by the benchmark)
HELD_OUT: dict[str, tuple[str, ...]] = {
    "mac": ("rician-periodic", "rayleigh-bursty"),
    "spectrum": ("rician-wideband", "correlated-lowrank"),
}


def training_families(preset: str) -> tuple[str, ...]:
    """The families a trainer may draw from (every family but the held-out ones)."""
    fams = MAC_FAMILIES if preset == "mac" else SPECTRUM_FAMILIES
    return tuple(f for f in fams if f not in HELD_OUT[preset])


def random_world(
    family: str,
    rng: np.random.Generator,
    *,
    num_ue: int | None = None,
    num_rbg: int | None = None,
    load: float | None = None,
    unit_scale: float | None = None,
    episode_slots: int | None = None,
) -> WorldConfig:
    """A world of ``family`` with the free parameters drawn from their training ranges:
    N log-uniform in [2, 128], R uniform in [4, 69], load uniform in the family's range,
    numerology 15 / 30 kHz, RBG of 2-16 PRBs, unit scale log-uniform over six decades."""
    fam = MAC_FAMILIES[family]
    n = num_ue if num_ue is not None else round(math.exp(rng.uniform(math.log(2), math.log(128))))
    r = num_rbg if num_rbg is not None else int(rng.integers(4, 70))
    return WorldConfig(
        channel=fam.channel,
        traffic=fam.traffic,
        num_ue=n,
        num_rbg=r,
        load=load if load is not None else float(rng.uniform(*fam.load)),
        prb_per_rbg=int(rng.choice([2, 4, 8, 16])),
        scs_hz=float(rng.choice([15e3, 30e3])),
        unit_scale=unit_scale if unit_scale is not None else float(10 ** rng.uniform(-3, 3)),
        packet_bits=float(rng.choice([1_500.0, 12_000.0, 48_000.0])),
        rician_k_db=float(rng.uniform(3, 10)),
        rho=float(1.0 - 10 ** rng.uniform(-4, -2)),
        coherence_rbg=int(rng.choice([1, 2, 4])),
        shadowing_db=float(rng.uniform(4, 10)),
        tx_power_dbm_per_rbg=43.0 - 10 * math.log10(r),
        cell_radius_m=float(rng.uniform(150, 600)),
        report_se=bool(rng.random() < 0.5),
        busy_fraction=float(rng.uniform(0.0, 0.4)) if rng.random() < 0.5 else 0.0,
        episode_slots=episode_slots,
        cell_id=f"{family}-{n}x{r}",
    )


# ----------------------------------------------------------------------------- channel


def _pathloss_db(d_m: np.ndarray, los: np.ndarray, fc_ghz: float = 3.5) -> np.ndarray:
    """TR 38.901-style UMa / UMi slopes: LOS 28 + 22·log10(d) + 20·log10(fc), NLOS
    13.54 + 39.08·log10(d) + 20·log10(fc) (dB)."""
    lg = np.log10(np.maximum(d_m, 10.0))
    return np.where(los, 28.0 + 22.0 * lg, 13.54 + 39.08 * lg) + 20.0 * np.log10(fc_ghz)


def los_probability(d_m: np.ndarray) -> np.ndarray:
    """TR 38.901 UMi street canyon LOS probability: min(18/d, 1)·(1 − e^(−d/36)) + e^(−d/36)."""
    d = np.maximum(d_m, 1.0)
    return np.minimum(18.0 / d, 1.0) * (1.0 - np.exp(-d / 36.0)) + np.exp(-d / 36.0)


class _Channel:
    """Per-(user, RBG) spectral efficiency over slots for one world (float64 [N, R])."""

    def __init__(self, cfg: WorldConfig, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        n, r = cfg.num_ue, cfg.num_rbg
        self.blocks = -(-r // cfg.coherence_rbg)
        if cfg.channel == "markov3":
            self.state = rng.integers(0, 3, n)
            return
        d = cfg.cell_radius_m * np.sqrt(rng.uniform(0.01, 1.0, n))
        if cfg.channel == "los_mix":
            self.los = rng.random(n) < los_probability(d)
            k_db = np.where(self.los, 9.0, -np.inf)
        else:
            self.los = np.zeros(n, bool)
            k_db = np.full(n, cfg.rician_k_db if cfg.channel == "rician" else -np.inf)
        k = 10.0 ** (k_db / 10.0)
        self.los_amp = np.sqrt(k / (k + 1.0))[:, None]  # [N, 1]
        self.scatter = np.sqrt(1.0 / (k + 1.0))[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, (n, self.blocks))
        noise_dbm = -174.0 + 10 * math.log10(cfg.rbg_bandwidth_hz) + cfg.noise_figure_db
        pl = _pathloss_db(d, self.los) + rng.normal(0.0, cfg.shadowing_db, n)
        self.mean_snr = 10.0 ** ((cfg.tx_power_dbm_per_rbg - pl - noise_dbm) / 10.0)  # [N]
        self.h = (rng.normal(size=(n, self.blocks)) + 1j * rng.normal(size=(n, self.blocks))) / np.sqrt(2)

    def se(self) -> np.ndarray:
        cfg = self.cfg
        if cfg.channel == "markov3":
            return np.repeat(MARKOV3_SE[self.state][:, None], cfg.num_rbg, axis=1)
        g = np.abs(self.los_amp * np.exp(1j * self.phase) + self.scatter * self.h) ** 2  # [N, blocks]
        snr = self.mean_snr[:, None] * np.repeat(g, cfg.coherence_rbg, axis=1)[:, : cfg.num_rbg]
        return np.minimum(SE_MARGIN * np.log2(1.0 + snr), SE_MAX)

    def advance(self) -> None:
        cfg, rng = self.cfg, self.rng
        if cfg.channel == "markov3":
            jump = rng.random(cfg.num_ue) < 1.0 / cfg.markov_dwell_slots
            self.state = np.where(jump, rng.integers(0, 3, cfg.num_ue), self.state)
            return
        w = (rng.normal(size=self.h.shape) + 1j * rng.normal(size=self.h.shape)) / np.sqrt(2)
        self.h = cfg.rho * self.h + math.sqrt(1.0 - cfg.rho**2) * w
        self.phase = self.phase + rng.normal(0.0, 0.05, self.phase.shape)


# ----------------------------------------------------------------------------- traffic


class _Traffic:
    """Packet arrivals per user and slot (counts int64 [N])."""

    def __init__(self, cfg: WorldConfig, rng: np.random.Generator, bits_per_rbg: np.ndarray) -> None:
        n = cfg.num_ue
        self.cfg, self.rng = cfg, rng
        kinds = rng.choice(_ATOMIC_TRAFFIC, n) if cfg.traffic == "mixture" else np.full(n, cfg.traffic)
        share = rng.dirichlet(np.full(n, 2.0))
        self.kind = kinds
        #: mean packets per slot of each user: load · time share · R · its mean bits per RBG
        offered = cfg.load * share * cfg.num_rbg * bits_per_rbg
        self.rate = np.maximum(offered / cfg.packet_bits, 1e-6)
        self.period = np.maximum(1, np.round(1.0 / np.minimum(self.rate, 1.0))).astype(np.int64)
        self.per_slot = np.maximum(1, np.round(self.rate)).astype(np.int64)  # periodic: packets per event
        self.phase = rng.integers(0, 1 << 30, n) % self.period
        # bursty: ON periods Pareto(1.5) with mean 8 slots, one packet rate ``on_rate`` while ON;
        # OFF periods exponential, sized so the mean rate is ``rate``
        self.on_len, self.on_rate = 8.0, np.maximum(self.rate * 4.0, 1e-6)
        self.off_mean = self.on_len * 3.0
        self.on_left = np.zeros(n)
        self.off_left = rng.exponential(self.off_mean, n)

    def arrivals(self, t: int) -> np.ndarray:
        rng, n = self.rng, self.cfg.num_ue
        out = np.zeros(n, np.int64)
        b = self.kind == "bernoulli"
        if b.any():
            lam = self.rate[b]
            # Bernoulli for rates below 1 packet per slot, Poisson above
            out[b] = np.where(lam < 1.0, rng.random(lam.size) < lam, rng.poisson(lam))
        p = self.kind == "periodic"
        if p.any():
            hit = (t + self.phase[p]) % self.period[p] == 0
            out[p] = np.where(hit, np.maximum(1, np.round(self.rate[p] * self.period[p])), 0)
        s = self.kind == "bursty"
        if s.any():
            idx = np.flatnonzero(s)
            on = self.on_left[idx] > 0
            out[idx[on]] = rng.poisson(self.on_rate[idx[on]])
            self.on_left[idx[on]] -= 1
            self.off_left[idx[~on]] -= 1
            start = idx[~on][self.off_left[idx[~on]] <= 0]
            if start.size:  # Pareto(1.5) ON periods with mean on_len: x_m = on_len / 3
                self.on_left[start] = (self.on_len / 3.0) * (1.0 - rng.random(start.size)) ** (-1 / 1.5)
                self.off_left[start] = rng.exponential(self.off_mean, start.size)
        return out


# ----------------------------------------------------------------------------- the mac world


class WorldEnv(SlotEnv):
    """One mac cell of a ``WorldConfig``; the same seed gives the same exogenous processes
    (channel, arrivals, block errors) whatever the policy decides."""

    preset = "mac"

    def __init__(self, config: WorldConfig | None = None, *, seed: int = 0) -> None:
        self.cfg = config or WorldConfig()
        self.reset(seed)

    def reset(self, seed: int | None = None) -> SlotState:
        if seed is not None:
            self.seed = seed
        cfg = self.cfg
        ss = np.random.SeedSequence(self.seed)
        ch_rng, tr_rng, err_rng, busy_rng = (np.random.default_rng(s) for s in ss.spawn(4))
        self.busy_rng = busy_rng
        self.available = self._draw_available()
        self.channel = _Channel(cfg, ch_rng)
        self.err_rng = err_rng
        bw = cfg.rbg_bandwidth_hz
        self.reports: deque[np.ndarray] = deque()
        for _ in range(cfg.csi_delay_slots + 1):
            self.reports.append(self.channel.se())
            self.channel.advance()
        self.traffic = _Traffic(cfg, tr_rng, self.reports[-1].mean(axis=1) * bw * cfg.tti_s)
        n = cfg.num_ue
        self.queues: list[deque[list[float]]] = [deque() for _ in range(n)]  # [arrival slot, bits left]
        self.queue_bits = np.zeros(n)
        if cfg.traffic == "full_buffer":
            self.queue_bits[:] = cfg.buffer_cap_bits
        self.t = 0
        self.cum_used = np.zeros(n)
        self.delivered = np.zeros(n)
        self.bits_t: list[float] = []
        self.utility_t: list[float] = []
        self.latencies: list[int] = []
        self.blocks = self.errors = 0
        self.dropped_bits = self.arrived_bits = 0.0
        self.used_rbg = 0
        self._arrive()
        return self.state()

    def _draw_available(self) -> np.ndarray:
        """bool [R]: the RBGs this slot may use (one draw per RBG and slot, whatever is scheduled)."""
        u = self.busy_rng.random(self.cfg.num_rbg)
        return u >= self.cfg.busy_fraction

    # -- observation -------------------------------------------------------------------------
    def state(self) -> SlotState:
        cfg = self.cfg
        se_rep = self.reports[0]
        rate = se_rep * cfg.rbg_bandwidth_hz * cfg.unit_scale
        return make_slot(
            "mac",
            np.arange(cfg.num_ue),
            np.arange(cfg.num_rbg),
            bandwidth_hz=np.full(cfg.num_rbg, cfg.rbg_bandwidth_hz),
            rate_bps=rate,
            resource_available=self.available,
            buffer_bits=self.queue_bits * cfg.unit_scale,
            cell_id=cfg.cell_id,
            slot=self.t,
            spectral_efficiency=se_rep if cfg.report_se else None,
            tti_s=cfg.tti_s,
            max_resources_per_user=cfg.num_rbg,
            rb_per_rbg=cfg.prb_per_rbg,
        )

    # -- dynamics ----------------------------------------------------------------------------
    def _arrive(self) -> None:
        cfg = self.cfg
        if cfg.traffic == "full_buffer":
            self.queue_bits[:] = cfg.buffer_cap_bits
            return
        counts = self.traffic.arrivals(self.t)
        for u in np.flatnonzero(counts).tolist():
            bits = float(counts[u]) * cfg.packet_bits
            self.arrived_bits += bits
            room = cfg.buffer_cap_bits - self.queue_bits[u]
            take = min(bits, max(room, 0.0))
            self.dropped_bits += bits - take
            k = int(take // cfg.packet_bits)
            for _ in range(k):
                self.queues[u].append([self.t, cfg.packet_bits])
            self.queue_bits[u] += k * cfg.packet_bits

    def _deliver(self, u: int, bits: float) -> None:
        if self.cfg.traffic == "full_buffer":
            return
        q = self.queues[u]
        left = bits
        while q and left > 0:
            head = q[0]
            take = min(head[1], left)
            head[1] -= take
            left -= take
            if head[1] <= 1e-9:
                q.popleft()
                self.latencies.append(self.t - int(head[0]) + 1)
        self.queue_bits[u] = max(self.queue_bits[u] - bits, 0.0)

    def step(self, owner: np.ndarray) -> StepResult:
        cfg = self.cfg
        owner = np.asarray(owner, np.int64)
        if owner.shape != (cfg.num_rbg,):
            raise ValueError(f"owner must have shape ({cfg.num_rbg},), got {owner.shape}")
        owner = np.where(self.available, owner, 0)  # a grant on a busy RBG carries nothing
        se_rep, se_true = self.reports[0], self.channel.se()
        bits_per_rbg = se_rep * cfg.rbg_bandwidth_hz * cfg.tti_s  # [N, R], from the report
        n = cfg.num_ue
        delivered = np.zeros(n)
        used = np.zeros(n)
        max_bits = float(bits_per_rbg[:, self.available].max(axis=0, initial=0.0).sum())
        # one error draw per user and slot, whoever is scheduled: the same seed gives every
        # policy the same block-error process
        err_u = self.err_rng.random(n)
        for u in np.unique(owner[owner > 0]).tolist():
            ui = u - 1
            rbgs = np.flatnonzero(owner == u)
            if self.queue_bits[ui] <= 0:
                continue  # nothing to send: the grant goes unused
            tbs = float(bits_per_rbg[ui, rbgs].sum())
            bits = min(tbs, self.queue_bits[ui])
            need = rbgs[np.argsort(-bits_per_rbg[ui, rbgs], kind="stable")]
            k = int(np.searchsorted(np.cumsum(bits_per_rbg[ui, need]), bits - 1e-9) + 1)
            used[ui] = min(k, rbgs.size)
            ratio = float(se_true[ui, rbgs].mean() / max(se_rep[ui, rbgs].mean(), 1e-12))
            p_err = min(max(cfg.bler + 3.0 * (0.9 - ratio), cfg.bler), 1.0)
            self.blocks += 1
            if err_u[ui] < p_err:
                self.errors += 1
                continue
            delivered[ui] = bits
            self._deliver(ui, bits)
        self.cum_used += used
        self.used_rbg += int(used.sum())
        self.delivered += delivered
        total = float(delivered.sum())
        self.bits_t.append(total)
        reward = kpi.leader_utility(total, max_bits, self.cum_used, cfg.omega)
        self.utility_t.append(reward)
        feedback = {int(u): float(b) * cfg.unit_scale for u, b in enumerate(delivered.tolist())}
        # next slot
        self.t += 1
        self.reports.popleft()
        self.channel.advance()
        self.reports.append(self.channel.se())
        self.available = self._draw_available()
        self._arrive()
        done = cfg.episode_slots is not None and self.t >= cfg.episode_slots
        return StepResult(self.state(), feedback, reward, done, {"delivered_bits": total})

    def kpis(self) -> dict[str, float]:
        cfg = self.cfg
        t = max(len(self.bits_t), 1)
        lat = np.asarray(self.latencies, float)
        return {
            "slots": float(len(self.bits_t)),
            "leader_utility": float(np.mean(self.utility_t)) if self.utility_t else math.nan,
            "cell_throughput_bps": float(np.sum(self.bits_t)) / (t * cfg.tti_s),
            "offered_load_bps": self.arrived_bits / (t * cfg.tti_s) if cfg.traffic != "full_buffer" else math.nan,
            "jain_throughput": kpi.jain_fairness(self.delivered),
            "jain_rbg": kpi.jain_fairness(self.cum_used),
            "latency_mean_slots": float(lat.mean()) if lat.size else math.nan,
            "latency_p95_slots": float(np.percentile(lat, 95)) if lat.size else math.nan,
            "bler": self.errors / self.blocks if self.blocks else 0.0,
            "dropped_share": self.dropped_bits / self.arrived_bits if self.arrived_bits else 0.0,
            "rbg_utilisation": self.used_rbg / (t * cfg.num_rbg),
        }


# ----------------------------------------------------------------------------- spectrum


def spectrum_instance(
    family: str,
    num_ue: int,
    num_res: int,
    rng: np.random.Generator,
    *,
    busy_fraction: float | None = None,
    unit_scale: float | None = None,
    cell_id: str = "world",
) -> SlotState:
    """One spectrum slot of ``family`` (``SPECTRUM_FAMILIES``): ``rate_bps`` [N, R] in bit/s
    (times ``unit_scale``, default log-uniform over six decades), a busy share of the channels
    (default uniform in [0, 0.5]), every user eligible."""
    n, r = num_ue, num_res
    busy_fraction = rng.uniform(0.0, 0.5) if busy_fraction is None else busy_fraction
    scale = 10 ** rng.uniform(-3, 3) if unit_scale is None else unit_scale
    noise_dbm_hz = -174.0 + 7.0
    if family == "lsa-disc":
        bw = rng.uniform(1e6, 10e6, r)
        d = 500.0 * np.sqrt(rng.uniform(0.0016, 1.0, n))
        lam = 3e8 / 3.5e9
        prx_dbm = 23.0 + 20 * np.log10(lam / (4 * np.pi)) - 35.0 * np.log10(d)
        g = rng.exponential(1.0, (n, r))
        snr = 10 ** ((prx_dbm[:, None] - noise_dbm_hz) / 10) * g / bw[None, :]
        rate = bw * np.log2(1 + snr)
    elif family in ("uma-shadowed", "rician-wideband", "los_mix"):
        d = 400.0 * np.sqrt(rng.uniform(0.01, 1.0, n))
        if family == "uma-shadowed":
            bw = np.full(r, 20e6)
            los = np.zeros(n, bool)
            k = np.zeros(n)
        elif family == "los_mix":
            bw = rng.uniform(5e6, 40e6, r)
            los = rng.random(n) < los_probability(d)
            k = np.where(los, 10**0.9, 0.0)
        else:
            bw = 10 ** rng.uniform(np.log10(0.2e6), np.log10(100e6), r)
            los = np.zeros(n, bool)
            k = np.full(n, 10**0.6)
        pl = _pathloss_db(d, los) + rng.normal(0.0, 8.0, n)
        h = (rng.normal(size=(n, r)) + 1j * rng.normal(size=(n, r))) / np.sqrt(2)
        amp = np.sqrt(k / (k + 1))[:, None] * np.exp(1j * rng.uniform(0, 2 * np.pi, (n, r)))
        g = np.abs(amp + np.sqrt(1 / (k + 1))[:, None] * h) ** 2
        snr = 10 ** ((30.0 - pl - noise_dbm_hz)[:, None] / 10) * g / bw[None, :]
        rate = bw * np.log2(1 + snr)
    elif family == "heavy-tailed":
        rate = 10 ** (6 + rng.normal(0, 0.5, (n, 1)) + rng.normal(0, 0.3, (1, r)) + rng.normal(0, 0.5, (n, r)))
        bw = np.full(r, 10e6)
    elif family == "correlated-lowrank":
        a, b = rng.exponential(1.0, (n, 2)), rng.exponential(1.0, (2, r))
        rate = 1e6 * (a @ b + 0.1 * rng.exponential(1.0, (n, r)))
        bw = np.full(r, 10e6)
    else:
        raise ValueError(f"unknown spectrum family {family!r}; expected one of {list(SPECTRUM_FAMILIES)}")
    avail = np.ones(r, bool)
    nb = min(int(busy_fraction * r), r - 1)
    avail[rng.choice(r, nb, replace=False)] = False
    return make_slot(
        "spectrum",
        np.arange(n),
        np.arange(r),
        bandwidth_hz=bw,
        resource_available=avail,
        rate_bps=np.maximum(rate, 0.0) * scale,
        cell_id=cell_id,
    )
