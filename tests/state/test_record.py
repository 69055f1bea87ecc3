"""``CellRecord``: the slot rule, the kept decisions, and its bytes (round trip, malformed input)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import xxhash

from service.history import CellHistory, record_decision, to_bytes
from service.state.record import (
    RECENT_DECISIONS,
    CellRecord,
    Verdict,
    decision_from_dict,
    decision_to_dict,
    legacy_request_digest,
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


def _digest_by_its_definition(state, policy, feedback, h) -> str:
    """The digest as its format is defined (records in a shared store keep it across versions):
    XXH3-128 (SHA-256 before: ``legacy_request_digest``) of the header, each array's C-order
    bytes and ``str(shape)``, ``-`` for an absent one, the HARQ columns when given, the sorted
    feedback as JSON; 32 hex digits."""
    h.update(
        f"{state.preset}|{state.cell_id}|{state.slot}|{state.max_resources_per_user}|{state.tti_s!r}|{policy or ''}|".encode()
    )
    for arr in (state.user_ids, state.resource_ids, state.utility, state.resource_available, state.user_eligible,
                state.buffer_bits, state.bandwidth_hz):  # fmt: skip
        h.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode())
    if state.retx_bits is not None and state.retx_rbgs is not None:
        for arr in (state.retx_bits, state.retx_rbgs):
            h.update(b"retx" + np.ascontiguousarray(arr).tobytes())
    if feedback:
        h.update(json.dumps(sorted((int(k), float(v)) for k, v in feedback.items())).encode())
    return h.hexdigest()[:32]


@pytest.mark.parametrize("layout", ["C", "F"])
def test_the_digest_keeps_its_format(layout: str) -> None:
    st = _state(3)
    st = replace(st, utility=np.asarray(st.utility, order=layout))  # type: ignore[call-overload]
    harq = replace(st, retx_bits=np.array([900.0, 0.0]), retx_rbgs=np.array([1, 0]))
    spectrum = make_slot("spectrum", [4, 9], [0, 1], rate_bps=[[1e6, 2e6], [3e6, 0.0]], cell_id="s", slot=7)
    for state in (st, harq, spectrum):
        for policy, feedback in ((None, None), ("pf", {2: 511.0, 1: 1999.5})):
            assert request_digest(state, policy, feedback) == _digest_by_its_definition(
                state, policy, feedback, xxhash.xxh3_128()
            )
            assert legacy_request_digest(state, policy, feedback) == _digest_by_its_definition(
                state, policy, feedback, hashlib.sha256()
            )


def test_a_retry_of_a_slot_an_older_version_applied_is_a_replay() -> None:
    """Records written before the digest was XXH3 hold SHA-256 digests: the retry of such a slot
    is recognised by its legacy digest (asked only when the new one does not match), and
    another request for the slot is still refused."""
    st = _state(12)
    rec = CellRecord.empty().advance(
        record_decision(CellHistory.empty(), st, np.array([1, 2, 0])),
        epoch=0,
        slot=12,
        digest=legacy_request_digest(st, "pf", None),
        decision=_decision(12),
    )
    asked: list[str] = []

    def legacy_of(state, policy, feedback):
        def legacy() -> str:
            asked.append(policy)
            return legacy_request_digest(state, policy, feedback)

        return legacy

    assert rec.admit(12, None, request_digest(st, "pf", None))[0] is Verdict.SLOT_REUSED  # without the legacy digest
    assert rec.admit(12, None, request_digest(st, "pf", None), legacy_of(st, "pf", None))[0] is Verdict.REPLAY
    other = _state(12, (1.0, 1.0))
    verdict, _ = rec.admit(12, None, request_digest(other, "pf", None), legacy_of(other, "pf", None))
    assert verdict is Verdict.SLOT_REUSED and asked == ["pf", "pf"]
    new = _applied(range(12, 13))  # written with the new digest: the legacy one is never asked
    assert new.admit(12, None, request_digest(st, "pf", None), legacy_of(st, "km", None))[0] is Verdict.REPLAY
    assert asked == ["pf", "pf"]


def test_the_digest_sees_what_decides_the_slot() -> None:
    base = request_digest(_state(1), "pf", None)
    assert base == request_digest(_state(1), "pf", None)
    assert base != request_digest(_state(1, (2000.0, 513.0)), "pf", None)
    assert base != request_digest(_state(2), "pf", None)
