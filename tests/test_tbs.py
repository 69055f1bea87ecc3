"""Transport block size per TS 38.214 §5.1.3.2 (``service.tbs``): golden values worked out by hand
from the specification, each branch of the procedure, the tables' shape and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from service.tbs import MCS_TABLES, TBS_TABLE, ldpc_base_graph, mcs_params, transport_block_size

# (table, mcs, n_prb, layers) -> TBS, worked out step by step from §5.1.3.2 with 12 symbols,
# 12 DMRS REs per PRB and no xOverhead (N'_RE = 132 REs per PRB):
GOLDEN = [
    # N_info = 132 · 120/1024 · 2 = 30.94: n = 3, N'_info = max(24, 8·3) = 24 -> table: 24
    ((1, 0, 1, 1), 24),
    # N_info = 1320 · 679/1024 · 2 = 1750.5: n = 4, N'_info = 16·109 = 1744 -> table: 1800
    ((1, 9, 10, 1), 1800),
    # N_info = 3960 · 308/1024 · 2 = 2382.2: n = 5, N'_info = 32·74 = 2368 -> table: 2408
    ((1, 4, 30, 1), 2408),
    # N_info = 2640 · 340/1024 · 4 = 3506.25: n = 5, N'_info = 32·109 = 3488 -> table: 3496
    ((1, 10, 20, 1), 3496),
    # N_info = 5280 · 340/1024 · 4 = 7012.5 > 3824: n = 12 - 5 = 7, N'_info = 128·round(54.60) = 7040;
    # R > 1/4 and N'_info <= 8424: C = 1, TBS = 8·⌈7064/8⌉ - 24 = 7040
    ((1, 10, 40, 1), 7040),
    # N_info = 36036 · 910/1024 · 6 · 4 = 768 580.3: n = 19 - 5 = 14, N'_info = 16384·47 = 770 048;
    # N'_info > 8424: C = ⌈770 072/8424⌉ = 92, TBS = 736·⌈770 072/736⌉ - 24 = 736·1047 - 24 = 770 568
    ((1, 27, 273, 4), 770_568),
    # table 3, R = 30/1024 <= 1/4: N_info = 36036 · 30/1024 · 2 · 4 = 8445.9: n = 13 - 5 = 8,
    # N'_info = 256·round(32.90) = 8448; C = ⌈8472/3816⌉ = 3, TBS = 24·⌈8472/24⌉ - 24 = 8448
    ((3, 0, 273, 4), 8448),
    # table 2, MCS 27 (256QAM, R = 948/1024): N_info = 36036 · 948/1024 · 8 = 266 891.6: n = 18 - 5 = 13,
    # N'_info = 8192·round(32.58) = 270 336; C = ⌈270 360/8424⌉ = 33, TBS = 264·⌈270 360/264⌉ - 24 = 270 576
    ((2, 27, 273, 1), 270_576),
]


@pytest.mark.parametrize(("args", "expected"), GOLDEN)
def test_golden_values_worked_out_from_the_specification(args: tuple[int, int, int, int], expected: int) -> None:
    table, mcs, n_prb, layers = args
    assert int(transport_block_size(mcs, n_prb, table=table, layers=layers)) == expected


def test_vectorised_over_mcs_prbs_and_layers_equals_the_scalar_calls() -> None:
    mcs = np.arange(28)[:, None, None]
    prb = np.array([1, 3, 17, 52, 106, 273])[None, :, None]
    layers = np.array([1, 2, 4])[None, None, :]
    grid = transport_block_size(mcs, prb, table=2, layers=layers)
    assert grid.shape == (28, 6, 3) and grid.dtype == np.int64
    for m, p, v in [(0, 1, 1), (13, 52, 2), (27, 273, 4), (20, 3, 1)]:
        i, j, k = m, [1, 3, 17, 52, 106, 273].index(p), [1, 2, 4].index(v)
        assert grid[i, j, k] == transport_block_size(m, p, table=2, layers=v)
    # more PRBs, layers or a higher MCS never carry fewer bits; a byte-aligned size always
    assert (np.diff(grid, axis=1) >= 0).all() and (np.diff(grid, axis=2) >= 0).all()
    assert (grid % 8 == 0).all()


def test_every_table_branch_returns_a_table_entry_or_a_segmented_size() -> None:
    tbs = transport_block_size(np.arange(29)[:, None], np.arange(1, 274)[None, :], table=1)
    small = tbs <= 3824
    assert np.isin(tbs[small], TBS_TABLE).all()
    big = tbs[~small]
    assert ((big + 24) % 8 == 0).all() and big.min() >= 3840  # CRC-aligned, above the table


def test_tables_and_base_graph() -> None:
    assert TBS_TABLE.size == 93 and TBS_TABLE[0] == 24 and TBS_TABLE[-1] == 3824 and (np.diff(TBS_TABLE) > 0).all()
    assert {k: len(v) for k, v in MCS_TABLES.items()} == {1: 29, 2: 28, 3: 29}
    qm, r = mcs_params(np.array([0, 20, 27]), table=2)
    assert qm.tolist() == [2, 8, 8] and r.tolist() == [120 / 1024, 682.5 / 1024, 948 / 1024]
    # TS 38.212 §7.2.2: graph 2 for small blocks, small blocks at R <= 0.67, or any R <= 0.25
    assert ldpc_base_graph([200, 3000, 3000, 8000, 8000], [0.9, 0.6, 0.7, 0.25, 0.3]).tolist() == [2, 2, 1, 2, 1]


def test_zero_prbs_carry_nothing_and_bad_inputs_are_refused() -> None:
    assert int(transport_block_size(5, 0)) == 0
    with pytest.raises(ValueError, match="reserved for retransmissions"):
        transport_block_size(29, 10, table=1)
    with pytest.raises(ValueError, match="reserved for retransmissions"):
        transport_block_size(28, 10, table=2)
    with pytest.raises(ValueError, match="1, 2 or 3"):
        transport_block_size(1, 10, table=4)
    with pytest.raises(ValueError, match="layers"):
        transport_block_size(1, 10, layers=5)
    with pytest.raises(ValueError, match="n_symb"):
        transport_block_size(1, 10, n_symb=15)
