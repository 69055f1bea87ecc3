"""The per-slot loop of the Sionna world: every sector of a TR 38.901 drop is a cell the scheduling
service decides, slot by slot.

One slot ``t``:

1. **State** (``states``), per cell: its UTs (served by the sector of minimum coupling loss), its
   RBGs (TS 38.214 Table 5.1.2.2.1-1), the achievable rate ``rate_bps`` [N, R] in bit/s of every
   (UT, RBG) — the CSI SINR of the RBG's PRBs (the channel of slot ``t − csi_delay_slots``, every
   other sector transmitting) mapped by EESM to an effective SINR, less the UT's OLLA offset, to
   the highest MCS within the BLER target (Sionna ILLA on the RBG's REs), times the RBG's data
   REs over the slot; 0 where no MCS meets the target at the reported SINR itself (CQI 0, "out
   of range" in TS 38.214 §5.2.2.1: the gNB schedules no new data there) — and the buffers
   (``buffer_bits``; none with full buffers).
   **Retransmissions first**: when ``service.types.SlotState`` has the per-user HARQ fields
   (``retx_bits``, ``retx_rbgs``) the world sends them and the service serves retransmissions;
   until it has them (and for a scheduler that knows no HARQ, Sionna's PF), the world reserves
   the RBGs of the due retransmissions before asking the scheduler, by the service's own rule
   (``service.assign.serve_retx``: larger blocks first, each UT's highest-rate free RBGs, ties by
   the lower index), marks them unavailable in the slot and marks the UTs ineligible for new
   data this slot: both kinds of scheduler see the same RBGs left.
2. **Decision**: the caller decides every cell (the service in process or over gRPC / REST, or
   Sionna's own PF scheduler, ``SionnaPF``) and passes the DCM tokens to ``step``.
3. **Play** (``step``): the RBGs each UT holds give its PRBs and data REs; a new block takes the
   MCS that Sionna's OLLA chooses for the allocation (EESM of its CSI SINR, less the offset), the
   TBS of ``service.tbs`` at that MCS, and its payload from the head of the UT's queue. The actual
   SINR of every PRB counts the interference of the sectors that transmit on it in this slot;
   Sionna's PHY abstraction gives each block's TBLER from the EESM of that SINR (a
   retransmission: the sum of its attempts' effective SINRs, chase combining), and the world draws
   the block's ACK from its own stream (``numpy.random.default_rng([seed, 3, t])``, the same
   numbers for every policy). An ACK delivers the payload (once); a NACK keeps the block for a
   retransmission ``harq_rtt_slots`` later, at most ``max_retx`` times, after which its bits go
   back to the head of the queue. First transmissions' ACK/NACK drive OLLA on the next slot.
4. **Feedback**: the bits each UT received in the slot, per cell (``{user id: bits}``), for the
   service's next request (PF averages).

Everything exogenous — the drop, the channel, the packet arrivals, the ACK draws — is fixed by
``seed`` and independent of the policy; ``reset`` replays it for the next policy.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import kpi
from service import tbs as service_tbs
from service.assign import serve_retx
from service.types import SlotState, make_slot
from trainer.sionna_world import tbs
from trainer.sionna_world.carrier import Carrier
from trainer.sionna_world.channel import MAX_LINK_SAMPLES, ChannelTrace
from trainer.sionna_world.link import Block, LinkAdaptation
from trainer.sionna_world.topology import SECTORS_PER_SITE, Drop, make_drop
from trainer.sionna_world.traffic import Queues, TrafficSpec

#: default transmit power of a sector (dBm, spread evenly over the carrier's PRBs)
TX_POWER_DBM = {"uma": 46.0, "umi": 44.0}
#: thermal noise density (dBm/Hz)
NOISE_DBM_HZ = -174.0
#: the HARQ fields of the service's mac request, when the contract has them
RETX_FIELDS = ("retx_bits", "retx_rbgs")


def contract_has_retx() -> bool:
    """Whether ``service.types`` carries per-user HARQ retransmission fields (``retx_bits``,
    ``retx_rbgs``) in ``SlotState`` and ``make_slot``."""
    names = {f.name for f in dataclasses.fields(SlotState)}
    params = set(inspect.signature(make_slot).parameters)
    return set(RETX_FIELDS) <= names and set(RETX_FIELDS) <= params


@dataclass(frozen=True)
class WorldConfig:
    """A Sionna world (module doc). Defaults: one UMa site, 3 sectors, 4 UTs per sector, 20 MHz at
    30 kHz, full buffers, OLLA to a BLER of 0.1, HARQ with up to 4 retransmissions.

    Attributes:
        scenario: ``"uma"`` or ``"umi"`` (TR 38.901).
        sites: 1 (no wrap-around), 7 or 19 (wrap-around), 3 sectors each.
        ues_per_sector: UTs dropped per sector.
        scs_khz, bandwidth_mhz, rbg_config, carrier_hz: the carrier (``carrier.Carrier``).
        slots: slots the channel is sampled for (the run's length).
        seed: drop, channel, traffic and ACK draws.
        traffic: ``traffic.TrafficSpec``.
        bler_target: OLLA's first-transmission BLER target.
        olla_delta_up: OLLA's offset step on a NACK (dB).
        max_retx: retransmissions of a block before HARQ gives up (its bits go back to the queue).
        harq_rtt_slots: slots from a transmission to its retransmission at the earliest.
        harq_processes: HARQ processes per UT (a UT with all of them waiting gets no new block).
        mcs_table: PDSCH MCS table, 1 (64QAM) or 2 (256QAM).
        csi_delay_slots: age of the channel behind the reported rates and the MCS choice.
        csi_error_db: the CSI SINR is this many dB above the truth (an optimistic channel
            estimate, which OLLA has to learn; 0: none).
        channel_update_slots: slots between channel samples (``channel``; 1 = every slot).
        tx_power_dbm: sector transmit power (None: 46 dBm UMa, 44 dBm UMi).
        noise_figure_db: UT noise figure.
        speed_kmh: UT speed (fading in time).
        o2i_model: TR 38.901 O2I penetration loss, ``"low"`` or ``"high"``.
        warmup_slots: slots left out of the KPIs (averages and link adaptation settle).
        retx: ``"auto"`` (the service's HARQ fields when the contract has them, else the world
            reserves) or ``"world"`` (always reserve in the world).
        cell_prefix: cell ids are ``<prefix>-<site>-<sector>``.
        torch_threads: torch's intra-op threads, set when the world is built (the per-slot Sionna
            calls work on tensors of a few thousand entries, where one thread is the fastest).
    """

    scenario: str = "uma"
    sites: int = 1
    ues_per_sector: int = 4
    scs_khz: int = 30
    bandwidth_mhz: int = 20
    rbg_config: int = 1
    carrier_hz: float = 3.5e9
    slots: int = 100
    seed: int = 0
    traffic: TrafficSpec = field(default_factory=TrafficSpec)
    bler_target: float = 0.1
    olla_delta_up: float = 1.0
    max_retx: int = 4
    harq_rtt_slots: int = 4
    harq_processes: int = 16
    mcs_table: int = 1
    csi_delay_slots: int = 1
    csi_error_db: float = 0.0
    channel_update_slots: int = 1
    tx_power_dbm: float | None = None
    noise_figure_db: float = 9.0
    speed_kmh: float = 3.0
    o2i_model: str = "low"
    warmup_slots: int = 0
    retx: str = "auto"
    cell_prefix: str = "sionna"
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if not 0.0 < self.bler_target < 1.0:
            raise ValueError(f"bler_target must be in (0, 1), got {self.bler_target}")
        if self.max_retx < 0 or self.harq_rtt_slots < 1 or self.harq_processes < 1:
            raise ValueError("max_retx must be >= 0, harq_rtt_slots and harq_processes >= 1")
        if self.retx not in ("auto", "world"):
            raise ValueError(f"retx must be 'auto' or 'world', got {self.retx!r}")
        if not 0 <= self.warmup_slots < self.slots:
            raise ValueError(f"warmup_slots must be in [0, slots), got {self.warmup_slots}")
        if self.csi_delay_slots < 0:
            raise ValueError(f"csi_delay_slots must be >= 0, got {self.csi_delay_slots}")

    @property
    def carrier(self) -> Carrier:
        return Carrier(self.scs_khz, self.bandwidth_mhz, self.rbg_config, self.carrier_hz)

    @property
    def power_dbm(self) -> float:
        return TX_POWER_DBM[self.scenario] if self.tx_power_dbm is None else float(self.tx_power_dbm)

    def describe(self) -> str:
        c = self.carrier
        return (
            f"{self.scenario.upper()} {self.sites} site(s) x {SECTORS_PER_SITE} sectors "
            f"({'wrap-around' if self.sites > 1 else 'no wrap-around'}), {self.ues_per_sector} UTs/sector, "
            f"{c.describe()}, {self.power_dbm:g} dBm/sector, {self.traffic.describe()}, {self.slots} slots "
            f"({self.warmup_slots} warm-up), BLER target {self.bler_target:g}, MCS table {self.mcs_table}, "
            f"HARQ {self.max_retx} retx / RTT {self.harq_rtt_slots} slots, CSI delay {self.csi_delay_slots} slot(s), "
            f"channel sample every {self.channel_update_slots} slot(s), seed {self.seed}"
        )


@dataclass(frozen=True)
class Exogenous:
    """What a drop fixes for every policy: topology, channel, association, arrivals."""

    drop: Drop
    trace: ChannelTrace
    serving: np.ndarray  # int64 [U]
    arrivals: np.ndarray  # int64 [slots, U]

    @staticmethod
    def build(cfg: WorldConfig) -> Exogenous:
        carrier = cfg.carrier
        drop = make_drop(cfg.scenario, cfg.sites, cfg.ues_per_sector, carrier.carrier_hz, seed=cfg.seed,
                         speed_kmh=cfg.speed_kmh)  # fmt: skip
        trace = ChannelTrace.generate(
            drop, carrier, cfg.slots, seed=cfg.seed, update_slots=cfg.channel_update_slots, o2i_model=cfg.o2i_model
        )
        arrivals = cfg.traffic.arrivals(drop.num_ut, cfg.slots + 1, carrier.slot_s, cfg.seed)
        return Exogenous(drop=drop, trace=trace, serving=trace.serving(), arrivals=arrivals)


def _cell_id(prefix: str, sector: int) -> str:
    """``<prefix>-<site>-<sector of the site>`` of the layout's sector index ``sector``."""
    site, local = divmod(sector, SECTORS_PER_SITE)
    return f"{prefix}-{site}-{local}"


@dataclass
class _Cell:
    """One sector with UTs: its id and its UTs (global indices, ascending = the slot's user order)."""

    cell_id: str
    sector: int
    ues: np.ndarray  # int64 [N]


class SionnaWorld:
    """The world of one configuration (module doc): ``reset()``, then per slot ``states`` →
    decisions → ``step(owners)``, until ``done``; ``kpis()`` at the end."""

    def __init__(self, cfg: WorldConfig, exogenous: Exogenous | None = None) -> None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        self.carrier = cfg.carrier
        self.exo = exogenous if exogenous is not None else Exogenous.build(cfg)
        c = self.carrier
        self.num_ut = self.exo.drop.num_ut
        self.num_bs = self.exo.drop.num_bs
        self.rbg_prbs = c.rbg_prbs
        self.prb_rbg = c.prb_rbg
        self.num_rbg = c.n_rbg
        p_prb_dbm = cfg.power_dbm - 10.0 * math.log10(c.n_prb)
        self.p_prb_mw = 10.0 ** (p_prb_dbm / 10.0)
        self.noise_prb_mw = 10.0 ** ((NOISE_DBM_HZ + 10.0 * math.log10(c.prb_hz) + cfg.noise_figure_db) / 10.0)
        self.cells: list[_Cell] = []
        for b in range(self.num_bs):
            ues = np.flatnonzero(self.exo.serving == b).astype(np.int64)
            if ues.size:
                self.cells.append(_Cell(_cell_id(cfg.cell_prefix, b), b, ues))
        self.use_retx_fields = False
        #: the highest MCS of the table (a block there cannot go higher, whatever OLLA learns)
        self.top_mcs = len(service_tbs.MCS_TABLES[cfg.mcs_table]) - 1
        self.reset()

    # ------------------------------------------------------------------ episode
    def reset(self, *, cell_prefix: str | None = None, retx: str | None = None) -> list[SlotState]:
        """Start again at slot 0 on the same drop, channel and arrivals; returns the first states.
        ``cell_prefix``: new cell ids (``<prefix>-<site>-<sector>``); ``retx``: ``"auto"`` or
        ``"world"`` for this run (default: the configuration's)."""
        mode = self.cfg.retx if retx is None else retx
        if mode not in ("auto", "world"):
            raise ValueError(f"retx must be 'auto' or 'world', got {mode!r}")
        self.use_retx_fields = mode == "auto" and contract_has_retx()
        if cell_prefix is not None:
            for cell in self.cells:
                cell.cell_id = _cell_id(cell_prefix, cell.sector)
        u = self.num_ut
        self.slot = 0
        self.link = LinkAdaptation(u, bler_target=self.cfg.bler_target, mcs_table=self.cfg.mcs_table,
                                   delta_up=self.cfg.olla_delta_up)  # fmt: skip
        self.queues = Queues(u, self.cfg.traffic.packet_bits)
        self.queues.arrive(0, self.exo.arrivals[0])
        self.harq: list[list[Block]] = [[] for _ in range(u)]
        self.olla_feedback = np.full(u, -1, np.int64)
        self.last_mcs = np.full(u, 10, np.int64)
        self.next_block = 0
        # per-slot records [slots, U]
        s = self.cfg.slots
        self.delivered = np.zeros((s, u))
        self.first_tx = np.zeros((s, u), np.int64)
        self.first_nack = np.zeros((s, u), np.int64)
        self.inner_tx = np.zeros((s, u), np.int64)  # first transmissions where OLLA has room both ways
        self.inner_nack = np.zeros((s, u), np.int64)
        self.retx_tx = np.zeros((s, u), np.int64)
        self.harq_failures = 0
        self.valid: list[bool] = []
        self.guard_engaged: list[bool] = []
        self.block_log: list[dict[str, Any]] = []
        self._observe()
        return self.states

    @property
    def done(self) -> bool:
        return self.slot >= self.cfg.slots

    # ------------------------------------------------------------------ slot state
    def _sinr(self, slot: int, active_prb: np.ndarray | None) -> np.ndarray:
        """float64 [U, n_prb]: SINR of every UT on every PRB from its serving sector, with
        interference from ``active_prb`` [B, n_prb] (None: every sector transmits on every PRB)."""
        g = self.exo.trace.at(slot).astype(np.float64)  # [U, B, P]
        serv = self.exo.serving
        own = g[np.arange(self.num_ut), serv, :]  # [U, P]
        other = (g * (1.0 if active_prb is None else active_prb[None, :, :])).sum(axis=1)
        if active_prb is not None:
            other = other - own * active_prb[serv, :]
        else:
            other = other - own
        return self.p_prb_mw * own / (self.p_prb_mw * np.maximum(other, 0.0) + self.noise_prb_mw)

    def _rbg_rates(self, csi: np.ndarray) -> np.ndarray:
        """float64 [U, R]: achievable bit/s of every (UT, RBG) (module doc, step 1)."""
        u, r = self.num_ut, self.num_rbg
        pmax = int(self.rbg_prbs.max())
        per = np.zeros((u, r, pmax))  # SINR of each RBG's PRBs, 0-padded
        start = np.concatenate([[0], np.cumsum(self.rbg_prbs)[:-1]])
        for k in range(r):
            per[:, k, : self.rbg_prbs[k]] = csi[:, start[k] : start[k] + self.rbg_prbs[k]]
        eff = self.link.effective_sinr(per.reshape(u * r, pmax), np.repeat(self.last_mcs, r))
        n_re = np.tile(tbs.data_res(self.rbg_prbs), u)
        # in range (CQI > 0): some MCS meets the BLER target at the reported SINR itself
        reported = self.link.inner_loop_mcs(eff, n_re)
        in_range = self.link.tbler(reported, eff, n_re) <= self.cfg.bler_target
        mcs = self.link.inner_loop_mcs(eff * 10.0 ** (-np.repeat(self.link.offset_db(), r) / 10.0), n_re)
        bits = tbs.info_bits_per_prb(mcs, self.cfg.mcs_table) * np.tile(self.rbg_prbs, u) * in_range
        return (bits / self.carrier.slot_s).reshape(u, r)

    def _due(self, ue: int) -> Block | None:
        """The UT's oldest block due for retransmission in this slot, if any."""
        due = [b for b in self.harq[ue] if b.due_slot <= self.slot]
        return min(due, key=lambda b: (b.first_slot, b.block_id)) if due else None

    def _observe(self) -> None:
        """Build the slot's states (module doc, step 1)."""
        t = self.slot
        self._csi = self._sinr(max(t - self.cfg.csi_delay_slots, 0), None) * 10.0 ** (self.cfg.csi_error_db / 10.0)
        rates = self._rbg_rates(self._csi)
        self._reserved: dict[str, dict[int, int]] = {}  # cell -> {rbg: ue}
        self._retx_block: dict[int, Block] = {}  # ue -> block retransmitted this slot
        self._states: list[SlotState] = []
        full = self.cfg.traffic.full_buffer
        for cell in self.cells:
            n = cell.ues.size
            avail = np.ones(self.num_rbg, bool)
            elig = np.ones(n, bool)
            retx_bits = np.zeros(n)
            retx_rbgs = np.zeros(n, np.int64)
            due: list[tuple[int, Block]] = []
            for i, ue in enumerate(cell.ues.tolist()):
                blk = self._due(ue)
                if blk is not None:
                    due.append((i, blk))
            reserved: dict[int, int] = {}
            for i, blk in due:
                retx_bits[i], retx_rbgs[i] = blk.tbs, blk.n_rbg
            if due and not self.use_retx_fields:
                # the world reserves by the service's own rule (``assign.serve_retx`` on the rates
                # the service would see), so a scheduler that knows no HARQ gets the same RBGs left
                pending = make_slot("mac", cell.ues, np.arange(self.num_rbg), rate_bps=rates[cell.ues],
                                    tti_s=self.carrier.slot_s, retx_bits=retx_bits, retx_rbgs=retx_rbgs)  # fmt: skip
                held = serve_retx(pending)
                avail[held > 0] = False  # a retransmission without room waits; its RBGs stay empty
                for i, blk in due:
                    elig[i] = False  # one block per UT and slot: the retransmission comes first
                    mine = np.flatnonzero(held == i + 1)
                    if mine.size >= blk.n_rbg:
                        reserved.update(dict.fromkeys(mine.tolist(), blk.ue))
                        self._retx_block[blk.ue] = blk
            for i, ue in enumerate(cell.ues.tolist()):
                if len(self.harq[ue]) >= self.cfg.harq_processes and self._due(ue) is None:
                    elig[i] = False  # every HARQ process waits for its retransmission
            self._reserved[cell.cell_id] = reserved
            extra: dict[str, Any] = {}
            if self.use_retx_fields:
                extra = {"retx_bits": retx_bits, "retx_rbgs": retx_rbgs}
            self._states.append(
                make_slot(
                    "mac",
                    cell.ues,
                    np.arange(self.num_rbg),
                    bandwidth_hz=self.carrier.rbg_bandwidth_hz,
                    resource_available=avail,
                    user_eligible=elig,
                    rate_bps=rates[cell.ues],
                    buffer_bits=None if full else self.queues.unsent[cell.ues].astype(np.float64),
                    rb_per_rbg=self.carrier.rbg_size,
                    cell_id=cell.cell_id,
                    slot=t,
                    tti_s=self.carrier.slot_s,
                    **extra,
                )
            )

    @property
    def states(self) -> list[SlotState]:
        """The current slot's state of every cell (cells without UTs are not scheduled)."""
        return list(self._states)

    # ------------------------------------------------------------------ playing a slot
    def _holders(self, owners: Mapping[str, np.ndarray]) -> np.ndarray:
        """int64 [B, R]: the UT on each RBG of each sector, or −1 (reserved retransmissions and the
        decisions). Checks each decision against its slot (reserved RBGs, ineligible UTs)."""
        rbg_ue = np.full((self.num_bs, self.num_rbg), -1, np.int64)
        for cell, state in zip(self.cells, self._states, strict=True):
            for k, ue in self._reserved[cell.cell_id].items():
                rbg_ue[cell.sector, k] = ue
            tokens = np.asarray(owners.get(cell.cell_id, np.zeros(self.num_rbg, np.int64)), dtype=np.int64)
            if tokens.shape != (self.num_rbg,) or (tokens < 0).any() or (tokens > cell.ues.size).any():
                raise ValueError(f"cell {cell.cell_id}: owner must be {self.num_rbg} tokens in 0..{cell.ues.size}")
            given = tokens > 0
            if (given & ~state.resource_available).any() or (
                given & ~state.user_eligible[np.maximum(tokens - 1, 0)]
            ).any():
                raise ValueError(f"cell {cell.cell_id} slot {self.slot}: the decision grants an unavailable RBG "
                                 "or an ineligible UT")  # fmt: skip
            rbg_ue[cell.sector, given] = cell.ues[tokens[given] - 1]
        return rbg_ue

    def step(
        self, owners: Mapping[str, np.ndarray], valid: Mapping[str, bool] | None = None,
        guard: Mapping[str, bool] | None = None,
    ) -> dict[str, dict[int, float]]:  # fmt: skip
        """Play the slot with each cell's DCM tokens ``owners[cell_id]`` [R] (tokens of ``states``);
        ``valid`` / ``guard``: the service's valid-before-repair / guard-engaged flags per cell (KPIs).
        Returns each cell's feedback ``{user id: bits delivered in this slot}`` and moves to the
        next slot."""
        if self.done:
            raise RuntimeError("the run is over: reset() first")
        t, cfg, link = self.slot, self.cfg, self.link
        rbg_ue = self._holders(owners)
        self.valid.extend(bool(v) for v in (valid or {}).values())
        self.guard_engaged.extend(bool(v) for v in (guard or {}).values())
        active_prb = (rbg_ue >= 0)[:, self.prb_rbg].astype(np.float64)  # [B, P]
        sinr = self._sinr(t, active_prb)  # [U, P]
        serv = self.exo.serving
        prb_ue = rbg_ue[serv][:, self.prb_rbg]  # [U, P]: holder of the PRB in the UT's own cell
        mine = prb_ue == np.arange(self.num_ut)[:, None]  # [U, P]
        holds = mine.any(axis=1)

        # which UTs retransmit, which send a new block
        retx_ues: list[int] = []
        if self.use_retx_fields:  # the service granted RBGs: a due block uses its first n_rbg of them
            for ue in np.flatnonzero(holds).tolist():
                blk = self._due(ue)
                if blk is None:
                    continue
                rbgs = np.flatnonzero(rbg_ue[serv[ue]] == ue)
                if rbgs.size >= blk.n_rbg:
                    keep = np.isin(self.prb_rbg, rbgs[: blk.n_rbg])
                    mine[ue] &= keep
                    self._retx_block[ue] = blk
                else:
                    mine[ue] = False  # too few RBGs: the retransmission waits, the RBGs stay empty
        retx_ues = sorted(ue for ue in self._retx_block if mine[ue].any())  # UT order, whoever reserved them
        new_ues = [ue for ue in np.flatnonzero(mine.any(axis=1)).tolist() if ue not in self._retx_block]
        n_prb = mine.sum(axis=1)

        # OLLA: feedback of the last first transmissions, MCS of the new blocks
        num_re = np.zeros(self.num_ut, np.int64)
        num_re[new_ues] = tbs.data_res(n_prb[new_ues])
        csi_alloc = np.where(mine, self._csi, 0.0)
        eff_csi = np.zeros(self.num_ut)
        if new_ues:
            eff_csi[new_ues] = link.effective_sinr(csi_alloc[new_ues], self.last_mcs[new_ues])
        mcs_olla = link.outer_loop_mcs(num_re, self.olla_feedback, eff_csi)
        offset = link.offset_db()
        self.olla_feedback[:] = -1
        # TBLER of each new block as OLLA saw it (effective CSI SINR less the offset): above the
        # target when no MCS met it (the lowest available MCS is then used)
        view_tbler = np.zeros(self.num_ut)
        if new_ues:
            view = eff_csi[new_ues] * 10.0 ** (-offset[new_ues] / 10.0)
            view_tbler[new_ues] = link.tbler(mcs_olla[new_ues], view, num_re[new_ues])

        blocks: list[Block] = []
        for ue in new_ues:
            mcs = int(mcs_olla[ue])
            size = int(tbs.tb_size(mcs, int(n_prb[ue]), table=cfg.mcs_table))
            if cfg.traffic.full_buffer:
                payload, segments = size, []
            else:
                payload = min(size, int(self.queues.unsent[ue]))
                segments = self.queues.take(ue, payload)
            if payload <= 0:
                continue  # nothing to send: the RBGs stay empty
            n_rbg = int(np.unique(self.prb_rbg[mine[ue]]).size)
            blocks.append(Block(self.next_block, ue, mcs, int(n_prb[ue]), n_rbg, int(num_re[ue]), size, payload,
                                segments, first_slot=t))  # fmt: skip
            self.next_block += 1
            self.last_mcs[ue] = mcs
        blocks.extend(self._retx_block[ue] for ue in retx_ues)

        # PHY abstraction: TBLER at the actual effective SINR (chase-combined for retransmissions)
        if blocks:
            ues = np.array([b.ue for b in blocks], np.int64)
            mcs_b = np.array([b.mcs for b in blocks], np.int64)
            eff = link.effective_sinr(np.where(mine[ues], sinr[ues], 0.0), mcs_b)
            combined = eff + np.array([b.sinr_eff_sum for b in blocks])
            tbler = link.tbler(mcs_b, combined, np.array([b.n_re for b in blocks], np.int64))
            draw = np.random.default_rng([cfg.seed, 3, t]).random(self.num_ut)
            ack = draw[ues] >= tbler
        else:
            ues, ack, combined, tbler = np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), np.zeros(0)

        delivered = np.zeros(self.num_ut)
        for i, blk in enumerate(blocks):
            first = blk.transmissions == 0
            blk.transmissions += 1
            blk.sinr_eff_sum = float(combined[i])
            ok = bool(ack[i])
            if first:
                self.first_tx[t, blk.ue] += 1
                self.first_nack[t, blk.ue] += int(not ok)
                if view_tbler[blk.ue] <= cfg.bler_target and blk.mcs < self.top_mcs:
                    self.inner_tx[t, blk.ue] += 1
                    self.inner_nack[t, blk.ue] += int(not ok)
                self.olla_feedback[blk.ue] = int(ok)
            else:
                self.retx_tx[t, blk.ue] += 1
            self.block_log.append(
                {"slot": t, "ue": blk.ue, "block": blk.block_id, "attempt": blk.transmissions, "mcs": blk.mcs,
                 "n_prb": blk.n_prb, "n_re": blk.n_re, "tbs": blk.tbs, "payload": blk.payload, "ack": ok,
                 "tbler": float(tbler[i]), "sinr_eff_db": 10.0 * math.log10(max(float(combined[i]), 1e-30)),
                 "csi_eff_db": 10.0 * math.log10(max(float(eff_csi[blk.ue]), 1e-30)) if first else math.nan,
                 "offset_db": float(offset[blk.ue])}
            )  # fmt: skip
            if ok:
                delivered[blk.ue] += blk.payload
                if not cfg.traffic.full_buffer:
                    self.queues.deliver(blk.segments, t)
                if not first:
                    self.harq[blk.ue].remove(blk)
            elif blk.transmissions > cfg.max_retx:
                self.harq_failures += 1
                if not first:
                    self.harq[blk.ue].remove(blk)
                if not cfg.traffic.full_buffer:
                    self.queues.give_back(blk.ue, blk.segments)
            else:
                blk.due_slot = t + cfg.harq_rtt_slots
                if first:
                    self.harq[blk.ue].append(blk)
        self.delivered[t] = delivered

        feedback = {cell.cell_id: {int(ue): float(delivered[ue]) for ue in cell.ues.tolist()} for cell in self.cells}
        self.slot += 1
        if not self.done:
            self.queues.arrive(self.slot, self.exo.arrivals[self.slot])
            self._observe()
        return feedback

    # ------------------------------------------------------------------ KPIs
    def kpis(self) -> dict[str, float]:
        """KPIs over the slots after the warm-up: cell throughput (bit/s per cell), 5th-percentile
        and mean user throughput (bit/s), Jain index of user throughput, first-transmission BLER
        (``bler``: every first transmission; ``bler_inner``: those where OLLA had room both ways —
        an MCS below the table's highest that met the target at OLLA's view of the SINR; a UT
        whose SINR is below every MCS's gets the lowest available one and fails whatever OLLA
        does, one above the highest MCS's never fails),
        HARQ retransmission share (retransmissions / all transmissions), HARQ failures, packet
        latency mean / p95 (slots and seconds; NaN with full buffers), valid-before-repair rate
        and guard-engaged share (NaN when not reported)."""
        w, t = self.cfg.warmup_slots, max(self.slot, 1)
        span = max(t - w, 1) * self.carrier.slot_s
        delivered = self.delivered[w:t]
        user_bps = delivered.sum(axis=0) / span
        first, nack, retx = self.first_tx[w:t].sum(), self.first_nack[w:t].sum(), self.retx_tx[w:t].sum()
        inner, inner_nack = self.inner_tx[w:t].sum(), self.inner_nack[w:t].sum()
        lat = self.queues.latencies_slots(w) if not self.cfg.traffic.full_buffer else np.zeros(0)
        lat_avg, lat_p95 = kpi.latency_stats(lat) if lat.size else (float("nan"), float("nan"))
        slot_s = self.carrier.slot_s
        return {
            "cell_throughput_bps": float(delivered.sum() / span / max(len(self.cells), 1)),
            "user_throughput_p5_bps": float(np.percentile(user_bps, 5)),
            "user_throughput_mean_bps": float(user_bps.mean()),
            "jain_index": kpi.jain_fairness(user_bps),
            "bler": float(nack / first) if first else float("nan"),
            "bler_inner": float(inner_nack / inner) if inner else float("nan"),
            "bler_target": self.cfg.bler_target,
            "retx_share": float(retx / (first + retx)) if first + retx else float("nan"),
            "harq_failures": float(self.harq_failures),
            "latency_avg_slots": lat_avg,
            "latency_p95_slots": lat_p95,
            "latency_avg_s": lat_avg * slot_s,
            "latency_p95_s": lat_p95 * slot_s,
            "packets_done": float(lat.size),
            "packets_pending": float(self.queues.pending_packets(w)) if not self.cfg.traffic.full_buffer else 0.0,
            "valid_before_repair": float(np.mean(self.valid)) if self.valid else float("nan"),
            "guard_engaged": float(np.mean(self.guard_engaged)) if self.guard_engaged else float("nan"),
            "slots": float(t),
        }

    def user_throughput_bps(self) -> np.ndarray:
        """float64 [U]: each UT's throughput after the warm-up (bit/s)."""
        w, t = self.cfg.warmup_slots, max(self.slot, 1)
        return self.delivered[w:t].sum(axis=0) / (max(t - w, 1) * self.carrier.slot_s)


class SionnaPF:
    """Sionna's own ``PFSchedulerSUMIMO`` deciding every cell of a ``SionnaWorld``: one batch item
    per cell, one frequency resource per RBG, one OFDM symbol, the cell's UTs padded to the
    largest cell. Its achievable rates are the world's ``rate_bps`` (0 for a UT not eligible in the
    slot and on a reserved RBG), its last-slot rates the bits each UT received over the slot
    duration; ``beta`` is its discount factor (``1 − 1/ewma_slots`` matches the service's PF).
    An RBG whose every rate is 0 stays empty.

    Sionna's PF knows nothing of HARQ: the world must reserve the retransmissions' RBGs itself
    (``world.reset(retx="world")``). ``initial``: ``"sionna"`` keeps Sionna's start of every
    average at 1 bit/s (a UT that is never served successfully then stays ahead of every UT that
    ever was); ``"mean_rate"`` starts each UT's average where the service's PF starts it, at its
    mean achievable rate over the RBGs of the first slot, floored at 1e-9 of the slot's largest
    rate (set in the scheduler's state before its first call, divided by ``beta`` since the first
    call discounts it once)."""

    def __init__(self, world: SionnaWorld, *, beta: float = 0.99, initial: str = "sionna") -> None:
        import torch
        from sionna.sys import PFSchedulerSUMIMO

        if world.use_retx_fields or world.slot != 0:
            raise ValueError("SionnaPF needs a world at slot 0 that reserves retransmissions: reset(retx='world')")
        if initial not in ("sionna", "mean_rate"):
            raise ValueError(f"initial must be 'sionna' or 'mean_rate', got {initial!r}")
        self.world = world
        self.width = max(c.ues.size for c in world.cells)
        self.pf = PFSchedulerSUMIMO(
            num_ut=self.width, num_freq_res=world.num_rbg, num_ofdm_sym=1, batch_size=len(world.cells), beta=beta
        )
        self.last_bps = np.zeros((len(world.cells), self.width))
        if initial == "mean_rate":
            start = np.ones((len(world.cells), self.width))
            for i, st in enumerate(world.states):
                rate = st.utility / st.tti_s
                floor = 1e-9 * max(float(rate.max()), 1.0)  # as the service floors a new UT's average
                start[i, : st.num_ue] = np.maximum(rate.mean(axis=1), floor) / beta
            self.pf._rate_achieved_past.copy_(torch.as_tensor(start, dtype=self.pf._rate_achieved_past.dtype))

    def decide(self) -> dict[str, np.ndarray]:
        """DCM tokens per cell for the world's current states."""
        import torch

        states = self.world.states
        rate = np.zeros((len(states), 1, self.world.num_rbg, self.width), np.float32)
        for i, s in enumerate(states):
            r = s.utility / s.tti_s  # [N, R] bit/s
            r = np.where(s.user_eligible[:, None] & s.resource_available[None, :], r, 0.0)
            rate[i, 0, :, : s.num_ue] = r.T
        sched = self.pf(torch.as_tensor(self.last_bps, dtype=torch.float32), torch.from_numpy(rate))
        pick = sched[:, 0, :, :, 0].numpy()  # [cells, R, width] bool
        owners = {}
        for i, s in enumerate(states):
            ue = pick[i].argmax(axis=1)  # [R]
            ok = pick[i].any(axis=1) & (rate[i, 0, np.arange(self.world.num_rbg), ue] > 0)
            owners[s.cell_id] = np.where(ok, ue + 1, 0).astype(np.int64)
        return owners

    def feedback(self, feedback: Mapping[str, Mapping[int, float]]) -> None:
        """Record the bits each UT received in the slot just played (its next ``rate_last_slot``)."""
        slot_s = self.world.carrier.slot_s
        self.last_bps[:] = 0.0
        for i, cell in enumerate(self.world.cells):
            fb = feedback.get(cell.cell_id, {})
            for j, ue in enumerate(cell.ues.tolist()):
                self.last_bps[i, j] = fb.get(ue, 0.0) / slot_s


def make_world(
    *,
    scenario: str = "uma",
    sites: int = 1,
    ues_per_sector: int = 4,
    scs_khz: int = 30,
    bandwidth_mhz: int = 20,
    slots: int = 100,
    seed: int = 0,
    cell_prefix: str = "sionna",
    **options: Any,
) -> SionnaWorld:
    """A built world (drop and channel drawn) from plain options: the entry ``gnbsched simulate
    --world sionna`` loads by import string. ``options``: any other ``WorldConfig`` field (a
    ``traffic`` given as a kind name becomes ``TrafficSpec(kind)``). When the run needs more
    channel samples than the memory bound allows, the channel is sampled every few slots
    (``channel_update_slots``) instead."""
    traffic = options.pop("traffic", TrafficSpec())
    if isinstance(traffic, str):
        traffic = TrafficSpec(kind=traffic)
    if "channel_update_slots" not in options:
        links = sites * SECTORS_PER_SITE * ues_per_sector * sites * SECTORS_PER_SITE
        options["channel_update_slots"] = max(1, math.ceil(slots * links / MAX_LINK_SAMPLES))
    cfg = WorldConfig(
        scenario=scenario, sites=sites, ues_per_sector=ues_per_sector, scs_khz=scs_khz, bandwidth_mhz=bandwidth_mhz,
        slots=slots, seed=seed, cell_prefix=cell_prefix, traffic=traffic, **options,
    )  # fmt: skip
    return SionnaWorld(cfg)
