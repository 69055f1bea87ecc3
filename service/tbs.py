"""Transport block size per TS 38.214 §5.1.3.2 (PDSCH / PUSCH without transform precoding).

Pure numpy, vectorised over any broadcastable arrays of (MCS index, PRBs, layers):

1. ``N'_RE = 12 · N_symb − N_DMRS − N_oh`` resource elements per PRB, ``N_RE = min(156, N'_RE) ·
   n_PRB``;
2. ``N_info = N_RE · R · Q_m · v`` with the code rate ``R`` and modulation order ``Q_m`` of the
   MCS index in Table 5.1.3.1-1 (``table=1``, up to 64QAM), 5.1.3.1-2 (``table=2``, 256QAM) or
   5.1.3.1-3 (``table=3``, low spectral efficiency), and ``v`` layers;
3. ``N_info ≤ 3824``: ``n = max(3, ⌊log2 N_info⌋ − 6)``, ``N'_info = max(24, 2^n · ⌊N_info /
   2^n⌋)``, the TBS is the smallest entry of Table 5.1.3.2-1 not below ``N'_info``;
4. ``N_info > 3824``: ``n = ⌊log2(N_info − 24)⌋ − 5``, ``N'_info = max(3840, 2^n ·
   round((N_info − 24) / 2^n))`` (round half up), then with ``C`` code blocks
   ``TBS = 8·C·⌈(N'_info + 24) / (8·C)⌉ − 24``: ``C = ⌈(N'_info + 24) / 3816⌉`` when
   ``R ≤ 1/4`` (LDPC base graph 2), else ``C = ⌈(N'_info + 24) / 8424⌉`` when
   ``N'_info > 8424``, else ``C = 1``.

``ldpc_base_graph`` is the base graph rule of TS 38.212 §7.2.2 (graph 2 when ``A ≤ 292``, or
``A ≤ 3824`` and ``R ≤ 0.67``, or ``R ≤ 0.25``; else graph 1) for payload ``A`` = TBS bits.
The MCS indices the tables reserve for retransmissions (table 1 and 3: 29–31, table 2: 28–31)
carry no code rate and are refused.
"""

from __future__ import annotations

import numpy as np

#: TS 38.214 Table 5.1.3.2-1: TBS for N_info <= 3824 (93 entries)
TBS_TABLE = np.array(
    [
        24,
        32,
        40,
        48,
        56,
        64,
        72,
        80,
        88,
        96,
        104,
        112,
        120,
        128,
        136,
        144,
        152,
        160,
        168,
        176,
        184,
        192,
        208,
        224,
        240,
        256,
        272,
        288,
        304,
        320,
        336,
        352,
        368,
        384,
        408,
        432,
        456,
        480,
        504,
        528,
        552,
        576,
        608,
        640,
        672,
        704,
        736,
        768,
        808,
        848,
        888,
        928,
        984,
        1032,
        1064,
        1128,
        1160,
        1192,
        1224,
        1256,
        1288,
        1320,
        1352,
        1416,
        1480,
        1544,
        1608,
        1672,
        1736,
        1800,
        1864,
        1928,
        2024,
        2088,
        2152,
        2216,
        2280,
        2408,
        2472,
        2536,
        2600,
        2664,
        2728,
        2792,
        2856,
        2976,
        3104,
        3240,
        3368,
        3496,
        3624,
        3752,
        3824,
    ],
    dtype=np.int64,
)

#: TS 38.214 Tables 5.1.3.1-1 / -2 / -3: per MCS index (modulation order Q_m, target code rate R · 1024)
MCS_TABLES: dict[int, np.ndarray] = {
    1: np.array(
        [
            (2, 120),
            (2, 157),
            (2, 193),
            (2, 251),
            (2, 308),
            (2, 379),
            (2, 449),
            (2, 526),
            (2, 602),
            (2, 679),
            (4, 340),
            (4, 378),
            (4, 434),
            (4, 490),
            (4, 553),
            (4, 616),
            (4, 658),
            (6, 438),
            (6, 466),
            (6, 517),
            (6, 567),
            (6, 616),
            (6, 666),
            (6, 719),
            (6, 772),
            (6, 822),
            (6, 873),
            (6, 910),
            (6, 948),
        ],
        dtype=np.float64,
    ),
    2: np.array(
        [
            (2, 120),
            (2, 193),
            (2, 308),
            (2, 449),
            (2, 602),
            (4, 378),
            (4, 434),
            (4, 490),
            (4, 553),
            (4, 616),
            (4, 658),
            (6, 466),
            (6, 517),
            (6, 567),
            (6, 616),
            (6, 666),
            (6, 719),
            (6, 772),
            (6, 822),
            (6, 873),
            (8, 682.5),
            (8, 711),
            (8, 754),
            (8, 797),
            (8, 841),
            (8, 885),
            (8, 916.5),
            (8, 948),
        ],
        dtype=np.float64,
    ),
    3: np.array(
        [
            (2, 30),
            (2, 40),
            (2, 50),
            (2, 64),
            (2, 78),
            (2, 99),
            (2, 120),
            (2, 157),
            (2, 193),
            (2, 251),
            (2, 308),
            (2, 379),
            (2, 449),
            (2, 526),
            (2, 602),
            (4, 340),
            (4, 378),
            (4, 434),
            (4, 490),
            (4, 553),
            (4, 616),
            (6, 438),
            (6, 466),
            (6, 517),
            (6, 567),
            (6, 616),
            (6, 666),
            (6, 719),
            (6, 772),
        ],
        dtype=np.float64,
    ),
}
#: largest TBS of the table branch, and the code block sizes of the two LDPC base graphs (bits, CRC incl.)
N_INFO_TABLE_MAX = 3824
KCB_BG2 = 3816
KCB_BG1 = 8424


def mcs_params(mcs: np.ndarray | int, table: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(Q_m, R) arrays of the MCS indices ``mcs`` in MCS table ``table`` (1, 2 or 3); R is the
    code rate (a fraction, not ×1024). Raises ``ValueError`` for an unknown table or an index
    the table reserves for retransmissions."""
    if table not in MCS_TABLES:
        raise ValueError(f"mcs table must be 1, 2 or 3 (TS 38.214 Table 5.1.3.1-1/2/3), got {table}")
    rows = MCS_TABLES[table]
    idx = np.asarray(mcs)
    if idx.dtype.kind not in "iu" or (idx < 0).any() or (idx >= len(rows)).any():
        raise ValueError(
            f"mcs index must be an integer in [0, {len(rows) - 1}] for table {table} "
            f"(higher indices are reserved for retransmissions), got {mcs}"
        )
    return rows[idx, 0], rows[idx, 1] / 1024.0


def transport_block_size(
    mcs: np.ndarray | int,
    n_prb: np.ndarray | int,
    *,
    table: int = 1,
    layers: np.ndarray | int = 1,
    n_symb: int = 12,
    n_dmrs_prb: int = 12,
    n_oh_prb: int = 0,
) -> np.ndarray:
    """TBS in bits (int64, the broadcast shape of ``mcs``, ``n_prb``, ``layers``) per TS 38.214
    §5.1.3.2 (module doc). n_symb: OFDM symbols of the allocation (1–14); n_dmrs_prb: DMRS REs per
    PRB, CDM groups without data included; n_oh_prb: the xOverhead (0, 6, 12 or 18). A zero-PRB
    allocation carries 0 bits."""
    if not 1 <= n_symb <= 14:
        raise ValueError(f"n_symb must be in [1, 14], got {n_symb}")
    if n_dmrs_prb < 0 or n_oh_prb < 0 or 12 * n_symb - n_dmrs_prb - n_oh_prb <= 0:
        raise ValueError("n_dmrs_prb and n_oh_prb must be >= 0 and leave data REs in the PRB")
    qm, rate = mcs_params(mcs, table)
    prb = np.asarray(n_prb, dtype=np.int64)
    v = np.asarray(layers, dtype=np.int64)
    if (prb < 0).any() or (v < 1).any() or (v > 4).any():
        raise ValueError("n_prb must be >= 0 and layers in [1, 4] (one codeword)")
    n_re = min(156, 12 * n_symb - n_dmrs_prb - n_oh_prb) * prb
    n_info = n_re * rate * qm * v  # float64
    qm, rate, n_info = np.broadcast_arrays(qm, rate, n_info)
    tbs = np.zeros(n_info.shape, dtype=np.int64)

    small = (n_info > 0) & (n_info <= N_INFO_TABLE_MAX)
    if small.any():
        ni = n_info[small]
        n = np.maximum(3, np.floor(np.log2(ni)).astype(np.int64) - 6)
        p = np.ldexp(1.0, n)
        ni_q = np.maximum(24, p * np.floor(ni / p))
        tbs[small] = TBS_TABLE[np.searchsorted(TBS_TABLE, ni_q, side="left")]

    large = n_info > N_INFO_TABLE_MAX
    if large.any():
        ni, r = n_info[large], rate[large]
        n = np.floor(np.log2(ni - 24)).astype(np.int64) - 5
        p = np.ldexp(1.0, n)
        ni_q = np.maximum(3840.0, p * np.floor((ni - 24) / p + 0.5))  # round half up
        c = np.where(
            r <= 0.25, np.ceil((ni_q + 24) / KCB_BG2), np.where(ni_q > KCB_BG1, np.ceil((ni_q + 24) / KCB_BG1), 1.0)
        )
        tbs[large] = (8 * c * np.ceil((ni_q + 24) / (8 * c)) - 24).astype(np.int64)
    return tbs


def ldpc_base_graph(tbs: np.ndarray | int, rate: np.ndarray | float) -> np.ndarray:
    """LDPC base graph (1 or 2, int64) of a transport block of ``tbs`` bits at code rate ``rate``
    (TS 38.212 §7.2.2)."""
    a = np.asarray(tbs, dtype=np.int64)
    r = np.asarray(rate, dtype=np.float64)
    bg2 = (a <= 292) | ((a <= 3824) & (r <= 0.67)) | (r <= 0.25)
    return np.where(bg2, 2, 1).astype(np.int64)
