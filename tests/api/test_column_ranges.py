"""``service.api.contract``: the range test of a column agrees with the element-wise one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.api.contract import RULES, check_column
from service.errors import InvalidSlotError

#: the rules with a numeric range (what ``check_column`` checks)
RANGED = sorted(k for k, r in RULES.items() if r.kind in ("int", "float") and (r.lo is not None or r.hi is not None))


def _edges(rule) -> list[float]:
    """Values at and beside the rule's bounds, and the non-finite ones."""
    out = [0.0, 1.0, -1.0, np.nan, np.inf, -np.inf]
    for b in (rule.lo, rule.hi):
        if b is not None:
            out += [b, np.nextafter(b, -np.inf), np.nextafter(b, np.inf)]
    return out


@pytest.mark.parametrize("key", RANGED)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_all_in_range_is_out_of_range_none(key: str, data) -> None:
    rule = RULES[key]
    values = arrays(np.float64, st.integers(0, 12), elements=st.sampled_from(_edges(rule)) | st.floats(-1e20, 1e20))
    arr = data.draw(values)
    assert rule.all_in_range(arr) == (not rule.out_of_range(arr).any())
    if arr.size and not rule.all_in_range(arr):  # the refusal names the first bad element
        first = int(np.flatnonzero(rule.out_of_range(arr))[0])
        with pytest.raises(InvalidSlotError) as info:
            check_column(rule, arr, rule.proto + "[{i}]")
        assert info.value.field == f"{rule.proto}[{first}]"
    else:
        assert check_column(rule, arr, rule.proto + "[{i}]") is arr
    if rule.kind == "int":  # integer columns (retx_rbgs) arrive as int64
        bounds = [int(b) + d for b in (rule.lo, rule.hi) if b is not None for d in (-1, 0, 1)]
        ints = st.sampled_from([b for b in bounds if -(2**63) <= b < 2**63]) | st.integers(-(2**63), 2**63 - 1)
        arr_i = data.draw(arrays(np.int64, st.integers(0, 12), elements=ints))
        assert rule.all_in_range(arr_i) == (not rule.out_of_range(arr_i).any())
