"""Transport block sizes of the world: the service's TS 38.214 §5.1.3.2 function, and Sionna's for
comparison.

The world's PDSCH occupies ``PDSCH_SYMBOLS`` = 12 OFDM symbols of the 14 of a slot (2 for the
PDCCH) with one front-loaded DMRS symbol of type 1 whose CDM groups carry no data
(``DMRS_RE_PER_PRB`` = 12 REs per PRB) and no xOverhead: ``N'_RE = 12 · 12 − 12 = 132`` data REs
per PRB (below the 156 cap), one codeword on ``layers`` layers. A block's size is
``service.tbs.transport_block_size`` of its MCS and PRBs; ``data_res`` is the REs the PHY
abstraction is told the block occupies (``num_allocated_re``), so that its own code block
segmentation sees the same coded bits.

``sionna_tb_size`` is Sionna's ``calculate_tb_size`` (``sionna.phy.nr.utils``) for the same
allocation. It follows the same clause and rounds the ties of step 4 upwards as the clause does,
but computes ``N_info = R · N_RE · Q_m · v`` in float32, so where the exact ``N_info`` is not
representable in float32 its quantisation (``⌊N_info / 2^n⌋`` in step 3, ``round((N_info − 24) /
2^n)`` in step 4) could land on the other side of a boundary. Over every (MCS, PRBs 1–275, layers
1–4, MCS table 1–3) and the PDSCH configurations the tests sweep, the two agree bit for bit
(``tests/sim/test_sionna_world.py`` explains any disagreement by that float32 rule, and there is
none in Sionna 2.2.0).
"""

from __future__ import annotations

import numpy as np

from service import tbs as service_tbs

PDSCH_SYMBOLS = 12
DMRS_RE_PER_PRB = 12
OVERHEAD_RE_PER_PRB = 0
#: data REs per PRB: min(156, 12 · N_symb − N_DMRS − N_oh)
DATA_RE_PER_PRB = min(156, 12 * PDSCH_SYMBOLS - DMRS_RE_PER_PRB - OVERHEAD_RE_PER_PRB)


def tb_size(mcs: np.ndarray | int, n_prb: np.ndarray | int, *, table: int = 1, layers: int = 1) -> np.ndarray:
    """int64: TBS bits of blocks at MCS ``mcs`` on ``n_prb`` PRBs (``service.tbs``, module doc)."""
    return service_tbs.transport_block_size(
        mcs, n_prb, table=table, layers=layers, n_symb=PDSCH_SYMBOLS, n_dmrs_prb=DMRS_RE_PER_PRB, n_oh_prb=OVERHEAD_RE_PER_PRB
    )  # fmt: skip


def data_res(n_prb: np.ndarray | int, layers: int = 1) -> np.ndarray:
    """int64: data REs (times layers) of an allocation of ``n_prb`` PRBs."""
    return np.asarray(n_prb, dtype=np.int64) * DATA_RE_PER_PRB * int(layers)


def info_bits_per_prb(mcs: np.ndarray, table: int = 1) -> np.ndarray:
    """float64: ``N_info`` per PRB, ``R · Q_m · N'_RE``, before quantisation (the rate the world
    reports per RBG is this times the RBG's PRBs over the slot duration)."""
    qm, rate = service_tbs.mcs_params(np.asarray(mcs, dtype=np.int64), table)
    return qm * rate * DATA_RE_PER_PRB


def sionna_tb_size(
    mcs: np.ndarray,
    n_prb: np.ndarray,
    *,
    table: int = 1,
    layers: np.ndarray | int = 1,
    n_symb: int = PDSCH_SYMBOLS,
    n_dmrs_prb: int = DMRS_RE_PER_PRB,
    n_oh_prb: int = OVERHEAD_RE_PER_PRB,
) -> np.ndarray:
    """int64: Sionna's ``calculate_tb_size`` of the same allocations (PDSCH MCS table ``table``;
    by default the world's PDSCH: 12 symbols, 12 DMRS REs per PRB, no overhead)."""
    import torch
    from sionna.phy.nr.utils import calculate_tb_size, decode_mcs_index

    mcs_t = torch.as_tensor(np.asarray(mcs), dtype=torch.int32)
    qm, rate = decode_mcs_index(mcs_t, table_index=table, is_pusch=False)
    shape = list(mcs_t.shape)
    out = calculate_tb_size(
        modulation_order=qm.to(torch.int32),
        target_coderate=rate,
        num_prbs=torch.as_tensor(np.broadcast_to(n_prb, shape).copy(), dtype=torch.int32),
        num_ofdm_symbols=n_symb,
        num_dmrs_per_prb=n_dmrs_prb,
        num_layers=torch.as_tensor(np.broadcast_to(layers, shape).copy(), dtype=torch.int32),
        num_ov=n_oh_prb,
        return_cw_length=False,
    )
    return out[0].numpy().astype(np.int64)
