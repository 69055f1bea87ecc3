"""Link layer on Sionna SYS: effective SINR (EESM), PHY abstraction, inner- and outer-loop link
adaptation, HARQ blocks.

* ``phy_abstraction()`` — one ``sionna.sys.PHYAbstraction`` per process (building it interpolates
  the BLER tables and costs seconds), PDSCH tables (``mcs_category = 1``).
* ``LinkAdaptation`` — per run: Sionna's ``EESM`` (effective SINR of a set of PRBs for an MCS),
  ``InnerLoopLinkAdaptation`` (the highest MCS whose TBLER at an effective SINR is within the
  BLER target: the per-RBG MCS behind the rates the world reports) and
  ``OuterLoopLinkAdaptation`` (OLLA: the MCS of a new block from the effective SINR of its
  allocation less an offset that rises by ``delta_up`` dB on a NACK and falls by
  ``delta_up · target / (1 − target)`` on an ACK, so that the first-transmission BLER converges to
  the target).
* ``Block`` — one transport block in a HARQ process: its MCS, PRBs, REs, TBS, payload and the sum
  of the effective SINRs of its attempts (chase combining: a retransmission is decoded at the sum
  of the effective SINRs of all its transmissions so far).

Shapes: ``G`` transmissions or (UT, RBG) pairs in one call, ``P`` PRBs; SINRs are linear, 0 on a
PRB that is not part of the allocation (Sionna's EESM skips those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.sionna_world.traffic import Segments

#: MCS tables the world supports (Sionna's EESM beta parameters exist for PDSCH tables 1 and 2)
MCS_TABLES = (1, 2)
#: Sionna's PDSCH category of the BLER tables
PDSCH = 1

_PHY: Any = None


def phy_abstraction() -> Any:
    """The process's ``sionna.sys.PHYAbstraction`` (built on first use, then shared)."""
    global _PHY
    if _PHY is None:
        from sionna.sys import PHYAbstraction

        _PHY = PHYAbstraction()
    return _PHY


@dataclass
class Block:
    """A transport block waiting for (re)transmission in a HARQ process.

    Attributes:
        block_id: world-wide counter; ue: the UT; mcs: MCS index of every attempt.
        n_prb, n_rbg, n_re: PRBs, RBGs and data REs of the first transmission (a retransmission
            occupies ``n_rbg`` RBGs and is decoded as ``n_re`` REs).
        tbs: TBS bits (TS 38.214, ``service.tbs``); payload: bits of data it carries (<= tbs).
        segments: the packet segments of the payload (``traffic.Queues``).
        transmissions: attempts so far; sinr_eff_sum: sum of their effective SINRs (linear).
        due_slot: first slot a retransmission may use; first_slot: slot of the first attempt.
    """

    block_id: int
    ue: int
    mcs: int
    n_prb: int
    n_rbg: int
    n_re: int
    tbs: int
    payload: int
    segments: Segments = field(default_factory=list)
    transmissions: int = 0
    sinr_eff_sum: float = 0.0
    due_slot: int = 0
    first_slot: int = 0


class LinkAdaptation:
    """EESM, ILLA and OLLA of one run over ``num_ut`` UTs (module doc)."""

    def __init__(self, num_ut: int, *, bler_target: float = 0.1, mcs_table: int = 1, delta_up: float = 1.0) -> None:
        from sionna.sys import EESM, InnerLoopLinkAdaptation, OuterLoopLinkAdaptation

        if mcs_table not in MCS_TABLES:
            raise ValueError(f"mcs_table must be one of {MCS_TABLES} (Sionna's EESM parameters), got {mcs_table}")
        self.num_ut = int(num_ut)
        self.table = int(mcs_table)
        self.bler_target = float(bler_target)
        self.phy = phy_abstraction()
        self.eesm = EESM()
        self.illa = InnerLoopLinkAdaptation(self.phy, bler_target=bler_target)
        self.olla = OuterLoopLinkAdaptation(self.phy, num_ut=self.num_ut, bler_target=bler_target, delta_up=delta_up)

    def offset_db(self) -> np.ndarray:
        """float64 [U]: OLLA's SINR offset per UT (dB)."""
        return self.olla.offset.double().numpy().copy()

    def effective_sinr(self, sinr: np.ndarray, mcs: np.ndarray) -> np.ndarray:
        """float64 [G]: EESM effective SINR of ``sinr`` [G, P] (linear, 0 = PRB not used) with the
        β of ``mcs`` [G]; 0 for a row without any used PRB."""
        import torch

        if sinr.shape[0] == 0:
            return np.zeros(0)
        # [1 symbol, P subcarriers (one per PRB), G "users", 1 stream]
        t = torch.from_numpy(np.ascontiguousarray(sinr.T, dtype=np.float32))[None, :, :, None]
        eff = self.eesm(t, torch.as_tensor(np.asarray(mcs), dtype=torch.int32), mcs_table_index=self.table)
        return eff.double().numpy()

    def inner_loop_mcs(self, sinr_eff: np.ndarray, num_re: np.ndarray) -> np.ndarray:
        """int64 [G]: the highest MCS whose TBLER at ``sinr_eff`` [G] (linear) on ``num_re`` [G]
        REs is within the BLER target (the lowest available MCS when none is)."""
        import torch

        if sinr_eff.shape[0] == 0:
            return np.zeros(0, np.int64)
        mcs = self.illa(
            sinr_eff=torch.as_tensor(sinr_eff, dtype=torch.float32),
            num_allocated_re=torch.as_tensor(num_re, dtype=torch.int32),
            mcs_table_index=self.table,
            mcs_category=PDSCH,
        )
        return mcs.numpy().astype(np.int64)

    def outer_loop_mcs(self, num_re: np.ndarray, harq_feedback: np.ndarray, sinr_eff: np.ndarray) -> np.ndarray:
        """int64 [U]: OLLA's MCS for the UTs with ``num_re`` [U] > 0 after applying
        ``harq_feedback`` [U] (1 ACK, 0 NACK, −1 none) to the offsets; ``sinr_eff`` [U] is the
        effective SINR each UT's allocation is expected to see (0: keep the last one)."""
        import torch

        mcs = self.olla(
            torch.as_tensor(num_re, dtype=torch.int32),
            harq_feedback=torch.as_tensor(harq_feedback, dtype=torch.int32),
            sinr_eff=torch.as_tensor(sinr_eff, dtype=torch.float32),
            mcs_table_index=self.table,
            mcs_category=PDSCH,
        )
        return mcs.numpy().astype(np.int64)

    def tbler(self, mcs: np.ndarray, sinr_eff: np.ndarray, num_re: np.ndarray) -> np.ndarray:
        """float64 [G]: Sionna's transport block error rate of blocks at ``mcs`` [G] decoded at
        ``sinr_eff`` [G] over ``num_re`` [G] REs (its code block segmentation included)."""
        import torch

        if mcs.shape[0] == 0:
            return np.zeros(0)
        out = self.phy(
            torch.as_tensor(mcs, dtype=torch.int32),
            sinr_eff=torch.as_tensor(sinr_eff, dtype=torch.float32),
            num_allocated_re=torch.as_tensor(num_re, dtype=torch.int32),
            mcs_table_index=self.table,
            mcs_category=PDSCH,
        )
        return out[3].double().numpy()
