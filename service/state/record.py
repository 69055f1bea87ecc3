"""A cell's stored state: its history, epoch, write version and its recent decisions.

The record is what the state stores keep per cell and what makes a cell's state exactly-once:

* ``version`` counts the writes applied to the cell; a store writes a record only when the
  stored version is still the one the writer read (compare-and-set), so concurrent writers
  never lose or double-apply a slot.
* ``epoch`` is the cell's lifetime as the caller numbers it; a request with a larger epoch
  starts the cell afresh (a simulator restart), one with a smaller epoch is refused.
* ``recent`` holds the last ``RECENT_DECISIONS`` decisions with the digest of the request
  that produced them: the same (slot, request) again is answered with the stored decision
  (an idempotent replay) without touching the state.

``admit`` is the slot rule (one table in the README): it says whether a request is a replay, a
conflict (older slot, same slot with other content, older epoch) or a new slot to apply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import xxhash

from service.history import CellHistory, from_bytes, to_bytes
from service.types import Decision, SlotState, Violation

#: decisions kept per cell for idempotent replay (a retry of any of them is answered from it)
RECENT_DECISIONS = 8
RECORD_FORMAT = 1
_MAGIC = b"GNBREC1\n"


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


def request_digest(state: SlotState, policy: str | None, feedback: Mapping[int, float] | None) -> str:
    """A digest of what decides a slot: the slot's arrays, the requested policy and the feedback
    (32 hex digits of XXH3-128).

    Two requests with the same digest decide the same way from the same state; a retry is
    recognised by it (the deadline is not part of it: a retry may carry a shorter one). The
    pending HARQ retransmissions (``retx_bits``, ``retx_rbgs``) are part of it when the slot has
    them. XXH3 reads the utility matrix at memory speed (SHA-256 takes about 30 µs for the 54 kB
    of a 100 × 69 slot); it tells a retry from another request for the same cell and slot,
    which is all the digest is for (it is no defence against a caller that crafts collisions:
    such a caller may send that cell's slots anyway)."""
    return _digest(xxhash.xxh3_128(), state, policy, feedback)


def legacy_request_digest(state: SlotState, policy: str | None, feedback: Mapping[int, float] | None) -> str:
    """``request_digest`` as gnbsched 0.2.0 and earlier computed it (SHA-256): what the cell
    records they wrote hold, so that a retry of such a slot is still recognised
    (``CellRecord.admit``'s ``legacy``)."""
    return _digest(hashlib.sha256(), state, policy, feedback)


def _digest(h: _Hash, state: SlotState, policy: str | None, feedback: Mapping[int, float] | None) -> str:
    h.update(
        f"{state.preset}|{state.cell_id}|{state.slot}|{state.max_resources_per_user}|{state.tti_s!r}|"
        f"{policy or ''}|".encode()
    )
    for arr in (
        state.user_ids,
        state.resource_ids,
        state.utility,
        state.resource_available,
        state.user_eligible,
        state.buffer_bits,
        state.bandwidth_hz,
    ):
        if arr is None:
            h.update(b"-")
        else:  # the array's bytes (read in place: no copy of a contiguous one), then its shape
            h.update(np.ascontiguousarray(arr).data)
            h.update(_shape_bytes(arr.shape))
    if state.retx_bits is not None and state.retx_rbgs is not None:  # only then: older digests stay valid
        for arr in (state.retx_bits, state.retx_rbgs):
            h.update(b"retx")
            h.update(np.ascontiguousarray(arr).data)
    if feedback:
        h.update(json.dumps(sorted((int(k), float(v)) for k, v in feedback.items())).encode())
    return h.hexdigest()[:32]


@lru_cache(maxsize=1024)
def _shape_bytes(shape: tuple[int, ...]) -> bytes:
    """``str(shape)`` encoded (part of the digest); a cell's shapes repeat slot after slot."""
    return str(shape).encode()


def decision_to_dict(decision: Decision) -> dict[str, Any]:
    """A JSON-able copy of a decision (owner as a list of DCM tokens)."""
    return {
        "owner": np.asarray(decision.owner, np.int64).tolist(),
        "policy": decision.policy,
        "valid_before_repair": decision.valid_before_repair,
        "violations": [[v.kind, v.message, v.resource, v.user] for v in decision.violations],
        "utility": decision.utility,
        "fallback": decision.fallback,
        "fallback_reason": decision.fallback_reason,
        "timings_us": decision.timings_us,
        "policy_version": decision.policy_version,
        "notes": decision.notes,
    }


def decision_from_dict(d: Mapping[str, Any]) -> Decision:
    return Decision(
        owner=np.asarray(d["owner"], np.int64),
        policy=str(d["policy"]),
        valid_before_repair=bool(d["valid_before_repair"]),
        violations=[Violation(k, m, r, u) for k, m, r, u in d.get("violations", [])],
        utility=float(d["utility"]),
        fallback=d.get("fallback"),
        fallback_reason=d.get("fallback_reason"),
        timings_us=dict(d.get("timings_us", {})),
        policy_version=str(d.get("policy_version", "")),
        notes=dict(d.get("notes", {})),
    )


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A decision kept for replay: its slot, the digest of its request and the decision."""

    slot: int
    digest: str
    decision: dict[str, Any]


class Verdict(Enum):
    """What ``CellRecord.admit`` says about a request."""

    APPLY = "apply"  # a new slot: decide and advance the state
    RESET = "reset"  # a new epoch: start the cell afresh, then apply
    REPLAY = "replay"  # this (slot, request) was applied: answer the stored decision
    STALE_SLOT = "stale_slot"  # older than the last applied slot (or its decision is gone)
    SLOT_REUSED = "slot_reused"  # an applied slot sent again with other content
    STALE_EPOCH = "stale_epoch"  # an epoch older than the cell's


@dataclass(frozen=True, slots=True)
class CellRecord:
    """One cell's stored state (see the module doc). ``version`` 0: the cell was never written."""

    history: CellHistory
    epoch: int = 0
    version: int = 0
    recent: tuple[StoredDecision, ...] = field(default_factory=tuple)

    @staticmethod
    def empty() -> CellRecord:
        return CellRecord(CellHistory.empty())

    @property
    def last_slot(self) -> int:
        return self.history.last_slot

    def admit(
        self, slot: int, epoch: int | None, digest: str, legacy: Callable[[], str] | None = None
    ) -> tuple[Verdict, StoredDecision | None]:
        """The slot rule. ``epoch`` None: the cell's current epoch. ``legacy``: the request's
        digest as older versions computed it (``legacy_request_digest``), asked only when a
        stored decision of the slot does not match ``digest``: a retry of a slot that an older
        version applied is a replay too."""
        if epoch is not None and epoch > self.epoch:
            return Verdict.RESET, None
        if epoch is not None and epoch < self.epoch:
            return Verdict.STALE_EPOCH, None
        if self.version == 0 or self.history.slots == 0 or slot > self.last_slot:
            return Verdict.APPLY, None
        for stored in self.recent:
            if stored.slot == slot:
                same = stored.digest == digest or (legacy is not None and stored.digest == legacy())
                return (Verdict.REPLAY, stored) if same else (Verdict.SLOT_REUSED, stored)
        return Verdict.STALE_SLOT, None

    def advance(self, history: CellHistory, *, epoch: int, slot: int, digest: str, decision: Decision) -> CellRecord:
        """The record after applying ``slot``: the new history, one more write, the decision kept."""
        stored = StoredDecision(slot, digest, decision_to_dict(decision))
        recent = (*[d for d in self.recent if d.slot != slot][-(RECENT_DECISIONS - 1) :], stored)
        return replace(self, history=history, epoch=epoch, version=self.version + 1, recent=recent)

    # -- bytes ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """``_MAGIC``, a JSON header line (epoch, version, recent decisions), the history blob."""
        head = {
            "format": RECORD_FORMAT,
            "epoch": self.epoch,
            "version": self.version,
            "recent": [[d.slot, d.digest, d.decision] for d in self.recent],
        }
        return (
            _MAGIC
            + json.dumps(head, separators=(",", ":"), default=_json_default).encode()
            + b"\n"
            + to_bytes(self.history)
        )

    @staticmethod
    def from_bytes(blob: bytes) -> CellRecord:
        """Inverse of ``to_bytes``; a bare history blob (a store written before records) reads as
        version 1, epoch 0, no recent decisions. Raises ValueError on a malformed blob."""
        if not blob.startswith(_MAGIC):
            history = from_bytes(blob)
            return CellRecord(history, 0, 1 if history.slots else 0, ())
        head, sep, rest = blob[len(_MAGIC) :].partition(b"\n")
        if not sep:
            raise ValueError("truncated cell record")
        try:
            meta = json.loads(head)
            if meta.get("format") != RECORD_FORMAT:
                raise ValueError(f"unsupported cell record format {meta.get('format')!r}")
            recent = tuple(StoredDecision(int(s), str(d), dict(dec)) for s, d, dec in meta["recent"])
            epoch, version = int(meta["epoch"]), int(meta["version"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed cell record header: {exc}") from None
        if version < 0 or epoch < 0:
            raise ValueError("cell record with a negative version or epoch")
        return CellRecord(from_bytes(rest), epoch, version, recent)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
