"""``CellRecord``: the slot rule, the kept decisions, and its bytes (round trip, malformed input)."""

from __future__ import annotations

import numpy as np
import pytest

from service.history import record_decision, to_bytes
from service.state.record import (
    RECENT_DECISIONS,
    CellRecord,
    Verdict,
    decision_from_dict,
    decision_to_dict,
    request_digest,
)
from service.types import Decision, Violation, make_slot


def _state(slot: int, buffers=(2000.0, 512.0)):
    return make_slot(
        "mac",
        [1, 2],
        [0, 1, 2],
        spectral_efficiency=[1.1758, 0.6016],
        buffer_bits=list(buffers),
        cell_id="c",
        slot=slot,
    )


def _decision(slot: int) -> Decision:
    return Decision(
        owner=np.array([1, 2, 0]),
        policy="pf",
        valid_before_repair=False,
        violations=[Violation("busy_resource", "r2 busy", 2, None)],
        utility=float(slot),
        fallback="student: deadline",
        fallback_reason="deadline",
        timings_us={"total": 12.5},
        policy_version="1",
        notes={"k": [1, 2]},
    )


def _applied(slots: range, epoch: int = 0) -> CellRecord:
    rec = CellRecord.empty()
    for s in slots:
        st = _state(s)
        hist = record_decision(rec.history, st, np.array([1, 2, 0]))
        rec = rec.advance(hist, epoch=epoch, slot=s, digest=request_digest(st, "pf", None), decision=_decision(s))
    return rec


def test_the_slot_rule() -> None:
    rec = _applied(range(3, 13))
    digest = request_digest(_state(12), "pf", None)
    assert rec.version == 10 and len(rec.recent) == RECENT_DECISIONS
    assert rec.admit(13, None, "x")[0] is Verdict.APPLY
    verdict, stored = rec.admit(12, None, digest)
    assert verdict is Verdict.REPLAY and stored is not None and stored.slot == 12
    assert rec.admit(12, None, request_digest(_state(12, (1.0, 1.0)), "pf", None))[0] is Verdict.SLOT_REUSED
    assert rec.admit(12, None, request_digest(_state(12), "km", None))[0] is Verdict.SLOT_REUSED  # other policy
    assert rec.admit(12, None, request_digest(_state(12), "pf", {1: 3.0}))[0] is Verdict.SLOT_REUSED  # feedback
    assert rec.admit(5, None, request_digest(_state(5), "pf", None))[0] is Verdict.REPLAY  # still kept
    assert rec.admit(4, None, request_digest(_state(4), "pf", None))[0] is Verdict.STALE_SLOT  # no longer kept
    assert rec.admit(0, 1, "x")[0] is Verdict.RESET
    assert rec.admit(13, 0, "x")[0] is Verdict.APPLY  # the current epoch, said explicitly
    assert _applied(range(2), epoch=3).admit(5, 2, "x")[0] is Verdict.STALE_EPOCH
    assert CellRecord.empty().admit(0, None, "x")[0] is Verdict.APPLY


def test_bytes_round_trip_and_the_kept_decision() -> None:
    rec = _applied(range(4), epoch=2)
    back = CellRecord.from_bytes(rec.to_bytes())
    assert back == rec
    d = decision_from_dict(back.recent[-1].decision)
    want = _decision(3)
    assert np.array_equal(d.owner, want.owner) and d.violations[0].resource == 2
    assert decision_to_dict(d) == decision_to_dict(want)
    plain = CellRecord.from_bytes(to_bytes(rec.history))  # a bare history blob: version 1, no decisions
    assert plain.history == rec.history and plain.version == 1 and plain.recent == ()


@pytest.mark.parametrize(
    "blob",
    [
        b"GNBREC1\n",
        b"GNBREC1\nnot json\n",
        b'GNBREC1\n{"format": 2, "epoch": 0, "version": 1, "recent": []}\n',
        b'GNBREC1\n{"format": 1, "epoch": -1, "version": 1, "recent": []}\n',
        b'GNBREC1\n{"format": 1, "epoch": 0, "version": 1, "recent": [[1]]}\n',
        b'GNBREC1\n{"format": 1, "epoch": 0, "version": 1, "recent": []}\ntruncated history',
        b"\x80\x04\x95cos\nsystem\n.",
    ],
)
def test_malformed_records_raise_value_error(blob: bytes) -> None:
    with pytest.raises(ValueError):
        CellRecord.from_bytes(blob)


def test_the_digest_sees_what_decides_the_slot() -> None:
    base = request_digest(_state(1), "pf", None)
    assert base == request_digest(_state(1), "pf", None)
    assert base != request_digest(_state(1, (2000.0, 513.0)), "pf", None)
    assert base != request_digest(_state(2), "pf", None)
