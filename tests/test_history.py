"""Per-cell history: EWMA, exact feedback correction, new and forgotten users, serialization."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.history import CellHistory, apply_feedback, from_bytes, record_decision, to_bytes
from service.types import make_slot, served_bits

A = 1.0 / 100.0  # default ewma_slots = 100


def _mac(ids, slot, buffers, se=None):
    n = len(ids)
    return make_slot(
        "mac", ids, [0, 1, 2], spectral_efficiency=se if se is not None else [1.0] * n, buffer_bits=buffers, slot=slot
    )


TBS = 4 * 12 * 14 * 1.0  # bits per RBG at SE 1


def test_empty_history_view_initialises_users():
    st_ = make_slot(
        "spectrum",
        [5, 3],
        [0, 1, 2],
        rate_bps=[[1.0, 2.0, 3.0], [4.0, 8.0, 0.0]],
        resource_available=[True, True, False],
    )
    view = CellHistory.empty().view(st_)
    assert view.known.tolist() == [False, False]
    assert view.avg_served.tolist() == [1.5, 6.0]  # mean utility on available resources
    assert view.cum_resources.tolist() == [0.0, 0.0] and view.last_served_slot.tolist() == [-1, -1]


def test_record_decision_ewma_counts_and_order():
    s0 = _mac([7, 3], 0, [1e6, 1e6])
    h1 = record_decision(CellHistory.empty(), s0, np.array([1, 1, 0]))
    assert h1.user_ids.tolist() == [3, 7]  # sorted by id
    avg0 = TBS  # fresh users start at their mean utility
    # user 7 (index 0 of the slot) got 2 RBGs, user 3 nothing
    assert h1.avg_served.tolist() == pytest.approx([(1 - A) * avg0, (1 - A) * avg0 + A * 2 * TBS])
    assert h1.cum_resources.tolist() == [0.0, 2.0]
    assert h1.cum_served.tolist() == [0.0, 2 * TBS]
    assert h1.last_served_slot.tolist() == [-1, 0] and h1.last_seen_slot.tolist() == [0, 0]
    assert h1.last_resource_ids.tolist() == [0, 1, 2] and h1.last_owner_ids.tolist() == [7, 7, -1]
    assert h1.last_expected.tolist() == [0.0, 2 * TBS]
    assert (h1.last_slot, h1.slots) == (0, 1)

    s1 = _mac([7, 3], 1, [1e6, 1e6])
    h2 = record_decision(h1, s1, np.array([2, 0, 2]), ewma_slots=10)
    a = 0.1
    assert h2.avg_served.tolist() == pytest.approx(
        [(1 - a) * h1.avg_served[0] + a * 2 * TBS, (1 - a) * h1.avg_served[1]]
    )
    assert h2.cum_resources.tolist() == [2.0, 2.0] and h2.last_served_slot.tolist() == [1, 0]
    view = h2.view(s1)
    assert view.known.all() and view.last_served_slot.tolist() == [0, 1]  # aligned with the slot (7, 3)


def test_served_is_capped_by_buffer_in_the_ewma():
    s0 = _mac([1], 0, [100.0])
    h = record_decision(CellHistory.empty(), s0, np.array([1, 1, 1]))
    assert h.last_expected.tolist() == [100.0] and h.cum_served.tolist() == [100.0]


def test_feedback_corrects_the_last_step_exactly():
    """record(expected) then feedback(delivered) equals an EWMA step with what was delivered."""
    s0 = _mac([1, 2], 0, [1e6, 1e6])
    h0 = record_decision(CellHistory.empty(), s0, np.array([1, 2, 2]))
    s1 = _mac([1, 2], 1, [1e6, 1e6])
    h1 = record_decision(h0, s1, np.array([1, 1, 2]))  # expected: 2 TBS and 1 TBS
    fixed = apply_feedback(h1, {1: 0.0, 2: 500.0})
    assert fixed.avg_served.tolist() == pytest.approx(
        [(1 - A) * h0.avg_served[0] + A * 0.0, (1 - A) * h0.avg_served[1] + A * 500.0]
    )
    assert fixed.cum_served.tolist() == pytest.approx([h0.cum_served[0], h0.cum_served[1] + 500.0])
    assert fixed.last_expected.tolist() == [0.0, 500.0]
    # the same feedback twice changes nothing more; unknown users and empty feedback are ignored
    assert apply_feedback(fixed, {1: 0.0, 2: 500.0}) == fixed
    assert apply_feedback(fixed, {99: 1.0}) == fixed
    assert apply_feedback(fixed, {}) is fixed
    # only the named users are corrected
    partial = apply_feedback(h1, {2: 0.0})
    assert partial.avg_served[0] == h1.avg_served[0] and partial.avg_served[1] < h1.avg_served[1]


def test_feedback_never_makes_the_average_negative():
    s0 = _mac([1], 0, [1e6])
    h = record_decision(CellHistory.empty(), s0, np.array([1, 1, 1]))
    h = apply_feedback(h, {1: -1e12})
    assert h.avg_served[0] == 0.0


def test_new_users_join_and_absent_users_are_kept_then_forgotten():
    """A user absent from the slots keeps its history for ``forget_after_slots`` slots (slot 0 seen,
    window 3: kept through slot 3, dropped at slot 4) and resumes it if it comes back in time."""
    h = record_decision(CellHistory.empty(), _mac([1, 2], 0, [1e6, 1e6]), np.array([1, 2, 0]))
    kept = {f: getattr(h, f)[1] for f in ("avg_served", "cum_resources", "cum_served", "last_served_slot")}
    # user 2 leaves, user 9 arrives
    h = record_decision(h, _mac([1, 9], 1, [1e6, 1e6]), np.array([2, 0, 0]), forget_after_slots=3)
    assert h.user_ids.tolist() == [1, 2, 9]
    assert h.cum_resources.tolist() == [1.0, 1.0, 1.0]
    assert h.last_expected[1] == 0.0  # absent user: nothing expected this slot
    for slot in (2, 3):
        h = record_decision(h, _mac([1, 9], slot, [1e6, 1e6]), np.array([1, 2, 0]), forget_after_slots=3)
    assert h.user_ids.tolist() == [1, 2, 9]
    assert {f: getattr(h, f)[1] for f in kept} == kept  # frozen while absent
    assert h.view(_mac([2], 4, [1e6])).known.tolist() == [True]
    h = record_decision(h, _mac([1, 9], 4, [1e6, 1e6]), np.array([1, 2, 0]), forget_after_slots=3)
    assert h.user_ids.tolist() == [1, 9]
    assert h.view(_mac([2], 5, [1e6])).known.tolist() == [False]


def test_first_seen_slot_is_when_a_user_joined():
    h = record_decision(CellHistory.empty(), _mac([1, 2], 5, [1e6, 1e6]), np.array([1, 2, 0]))
    h = record_decision(h, _mac([1, 2], 6, [1e6, 1e6]), np.array([1, 2, 0]))  # steady population
    h = record_decision(h, _mac([2, 7], 9, [1e6, 1e6]), np.array([1, 2, 0]))  # 1 away, 7 joins
    assert dict(zip(h.user_ids.tolist(), h.first_seen_slot.tolist(), strict=True)) == {1: 5, 2: 5, 7: 9}
    view = h.view(_mac([7, 1, 3], 12, [1e6] * 3))
    assert view.first_seen_slot.tolist() == [9, 5, 12]  # a new user is first seen now
    assert view.present_slots(12).tolist() == [4.0, 8.0, 1.0]


def test_format_1_blobs_are_still_read():
    """A blob written before ``first_seen_slot`` existed (an older replica on the same Redis): every
    user counts as present since the history's first slot."""
    h = CellHistory.empty()
    for slot in range(3, 7):
        h = record_decision(h, _mac([1, 2], slot, [1e6, 1e6]), np.array([1, 2, 0]))
    head, body = to_bytes(h).split(b"\n", 1)
    header = json.loads(head)
    offset, kept = 0, b""
    for name, dtype, length in header["arrays"]:
        size = np.dtype(dtype).itemsize * length
        if name != "first_seen_slot":
            kept += body[offset : offset + size]
        offset += size
    header["format"] = 1
    header["arrays"] = [a for a in header["arrays"] if a[0] != "first_seen_slot"]
    old = from_bytes(json.dumps(header).encode() + b"\n" + kept)
    assert old.first_seen_slot.tolist() == [3, 3]
    assert old == h


def test_view_aligns_unsorted_slot_ids():
    h = record_decision(CellHistory.empty(), _mac([4, 2, 9], 0, [1e6] * 3), np.array([3, 1, 1]))
    view = h.view(_mac([9, 5, 4], 1, [1e6] * 3))
    assert view.known.tolist() == [True, False, True]
    assert view.cum_resources.tolist() == [1.0, 0.0, 2.0]
    assert view.last_served_slot.tolist() == [0, -1, 0]


def test_view_arrays_are_read_only_and_never_the_history_s():
    s = _mac([1, 2], 0, [1e6, 1e6])
    h = record_decision(CellHistory.empty(), s, np.array([1, 2, 0]))
    view = h.view(s)
    for arr in (view.avg_served, view.cum_resources, view.last_served_slot, view.known, view.first_seen_slot):
        with pytest.raises(ValueError, match="read-only"):
            arr[:] = 0
        assert not np.shares_memory(arr, h.avg_served)
    assert h.avg_served.flags.writeable and (h.avg_served > 0).all()


def test_record_decision_with_the_decision_s_served_bits_equals_without():
    h = CellHistory.empty()
    for slot, (ids, owner) in enumerate([([1, 2], [1, 2, 0]), ([1, 2], [2, 2, 1]), ([2, 3], [0, 1, 2])]):
        s = _mac(ids, slot, [1e6, 2e5])
        own = np.array(owner)
        given = record_decision(h, s, own, served=served_bits(s, own))
        h = record_decision(h, s, own)
        assert given == h


def test_view_of_one_slot_is_built_once_and_a_new_slot_gets_its_own():
    s = _mac([1, 2], 0, [1e6, 1e6])
    h = record_decision(CellHistory.empty(), s, np.array([1, 2, 0]))
    nxt = _mac([1, 2], 1, [1e6, 1e6])
    view = h.view(nxt)
    assert h.view(nxt) is view  # the pipeline, the guard and record_decision share it
    other = _mac([2, 3], 1, [1e6, 1e6])  # another slot object: aligned afresh
    assert h.view(other).known.tolist() == [True, False]
    assert h.view(nxt) is not view and np.array_equal(h.view(nxt).avg_served, view.avg_served)
    assert replace(h, slots=h.slots)._memo is None  # a changed history never inherits the memo


# ----------------------------------------------------------------------------- serialization


@st.composite
def histories(draw):
    """Histories reached by a random sequence of slots, decisions and feedback."""
    h = CellHistory.empty()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for slot in range(draw(st.integers(0, 8))):
        if slot == 0 or rng.random() < 0.3:  # a new population (large ids), else the known users
            ids = rng.choice(2**40, size=int(rng.integers(1, 6)), replace=False)
        else:
            ids = rng.permutation(h.user_ids)
        r = int(rng.integers(1, 5))
        state = make_slot(
            "mac",
            ids,
            np.arange(r) + 1000,
            spectral_efficiency=rng.random(ids.size) * 2,
            buffer_bits=rng.choice([0.0, 300.0, 1e5], ids.size),
            slot=slot,
        )
        owner = rng.integers(0, ids.size + 1, r)  # any DCM: the history records what was decided
        h = record_decision(h, state, owner, forget_after_slots=int(rng.integers(1, 5)))
        if rng.random() < 0.5:
            h = apply_feedback(
                h, {int(u): float(rng.random() * 1e3) for u in ids[: int(rng.integers(0, ids.size + 1))]}
            )
    return h


@settings(max_examples=100, deadline=None)
@given(h=histories())
def test_to_bytes_from_bytes_roundtrip(h):
    blob = to_bytes(h)
    back = from_bytes(blob)
    assert back == h
    assert to_bytes(back) == blob
    for name in ("user_ids", "last_served_slot", "last_seen_slot", "last_resource_ids", "last_owner_ids"):
        assert getattr(back, name).dtype == np.int64
    assert back.avg_served.dtype == np.float64


def test_from_bytes_rejects_malformed_blobs():
    h = record_decision(CellHistory.empty(), _mac([1, 2], 0, [1e6, 1e6]), np.array([1, 2, 0]))
    blob = to_bytes(h)
    head, body = blob.split(b"\n", 1)
    bad = [
        b"",
        b"not json\n",
        b"[1, 2]\n",
        b'{"format": 2}\n' + body,
        b'{"format": 3}\n' + body,
        head + b"\n" + body[:-3],
        head + b"\n" + body + b"extra",
        head.replace(b'"avg_served"', b'"avg_servd"') + b"\n" + body,
        head.replace(b"<f8", b"<i8", 1) + b"\n" + body,
    ]
    for b in bad:
        with pytest.raises(ValueError):
            from_bytes(b)


def test_equality_compares_every_field():
    s = _mac([1, 2], 0, [1e6, 1e6])
    h = record_decision(CellHistory.empty(), s, np.array([1, 2, 0]))
    assert h == from_bytes(to_bytes(h))
    assert h != record_decision(CellHistory.empty(), s, np.array([1, 1, 0]))
    assert h != apply_feedback(h, {1: 0.0})
    assert CellHistory.empty() == CellHistory.empty()
    assert h != "history"
