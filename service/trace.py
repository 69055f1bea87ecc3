"""Slot traces: one JSON Lines row per decided slot, the request in the REST format (``--record``).

``rest_request`` is the one place a ``SlotState`` becomes a ``POST /schedule`` body (REST field
names); ``gnbsched simulate`` sends what it returns and the recorder writes it, so a recorded
request can be re-sent as it is and replays (``service.bench.replay``) through the same decoder
(``service.api.rest.codec.decode_schedule``) to a bit-identical slot.

Row format (``FORMAT``; one JSON object per line)::

    {"format": "gnbsched.trace/1", "time": <unix s>, "transport": "rest" | "grpc" | "inproc",
     "request": {<POST /schedule body>},
     "decision": {"owner": [<user id or null>, ...], "policy": "pf", "fallback_reason": null,
                  "utility": 1320.5, "valid_before_repair": true}}

``Recorder`` (``Settings.record_dir``, ``gnbsched serve --record DIR``) appends the rows of a
cell to ``DIR/<cell id, sanitised>.jsonl`` through a buffered handle under a lock (flushed at
least every ``FLUSH_S`` seconds while slots arrive, and at ``close()``). A file that would grow
beyond ``record_max_bytes`` is rotated to ``<name>.1.jsonl`` (one old file kept, the older one
dropped), so a cell never takes more than twice the bound on disk; a single row larger than the
bound is dropped (counted). A failed write never fails a slot: it is logged once and counted
(``errors``). With ``--workers N`` each worker writes under ``DIR/worker-<pid>/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from cachetools import LRUCache

from service import phy
from service.types import DEFAULT_RB_PER_RBG, Decision, SlotState

log = logging.getLogger("gnbsched.trace")

FORMAT = "gnbsched.trace/1"
#: flush buffered rows at least this often (seconds) while rows arrive
FLUSH_S = 1.0
#: open file handles kept (least recently written cells are closed beyond it)
MAX_OPEN_FILES = 128
_BUFFER_BYTES = 1 << 16
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME = 96


# ----------------------------------------------------------------------------- the request


def _compact_mac(state: SlotState) -> int | None:
    """``rb_per_rbg`` with which ``spectral_efficiency`` reproduces the utility exactly, or None."""
    se = state.spectral_efficiency
    if se is None:
        return None
    candidates = [DEFAULT_RB_PER_RBG]
    pos = np.flatnonzero(se.ravel() > 0)
    if pos.size:
        i = int(pos[0])
        per_rb = float(phy.tbs_bits(se.ravel()[i], 1))
        util0 = state.utility.ravel()[i] if se.ndim == 2 else state.utility[i, 0]
        rb = round(float(util0) / per_rb) if per_rb > 0 else 0
        if 1 <= rb <= 275 and rb != DEFAULT_RB_PER_RBG:
            candidates.append(rb)
    for rb in candidates:
        tbs = phy.tbs_bits(se, rb)
        if np.array_equal(np.broadcast_to(tbs[:, None] if tbs.ndim == 1 else tbs, state.utility.shape), state.utility):
            return rb
    return None


def _compact_spectrum(state: SlotState) -> bool:
    """Do ``rx_power_dbm`` and the bandwidths (no fading, no interference, N0 -174 dBm/Hz)
    reproduce the utility exactly? (The first user is checked alone first: with fading, the
    usual case of a simulator, the answer is no after R values.)"""
    p = state.rx_power_dbm
    if p is None or p.size == 0:
        return False
    with np.errstate(over="ignore"):
        if not np.array_equal(phy.shannon_rate_bps(p[:1], state.bandwidth_hz), state.utility[:1]):
            return False
        return bool(np.array_equal(phy.shannon_rate_bps(p, state.bandwidth_hz), state.utility))


def _users(state: SlotState) -> list[dict[str, Any]]:
    """``users[]``: id, eligible and the physical fields the state has (literal dicts for the
    common shapes: half the time of the generic path at N = 100)."""
    ids, eligible = state.user_ids.tolist(), state.user_eligible.tolist()
    rx = None if state.rx_power_dbm is None else state.rx_power_dbm.tolist()
    se = None if state.spectral_efficiency is None else state.spectral_efficiency.tolist()
    buf = None if state.buffer_bits is None else state.buffer_bits.tolist()
    if rx is None and se is not None and buf is not None:
        return [
            {"id": i, "eligible": e, "spectral_efficiency": s, "buffer_bits": b}
            for i, e, s, b in zip(ids, eligible, se, buf, strict=True)
        ]
    if rx is not None and se is None and buf is None:
        return [{"id": i, "eligible": e, "rx_power_dbm": p} for i, e, p in zip(ids, eligible, rx, strict=True)]
    users: list[dict[str, Any]] = [{"id": i, "eligible": e} for i, e in zip(ids, eligible, strict=True)]
    for name, values in (("rx_power_dbm", rx), ("spectral_efficiency", se), ("buffer_bits", buf)):
        if values is not None:
            for row, v in zip(users, values, strict=True):
                row[name] = v
    return users


def _add_retx(state: SlotState, users: list[dict[str, Any]]) -> None:
    """Every user's ``retx_bits`` and ``retx_rbgs`` (0 and 0 included, so the columns come back
    as given) when the state has them."""
    if state.retx_bits is None or state.retx_rbgs is None:
        return
    for row, b, k in zip(users, state.retx_bits.tolist(), state.retx_rbgs.tolist(), strict=True):
        row["retx_bits"] = b
        row["retx_rbgs"] = k


def rest_request(
    state: SlotState,
    feedback: Mapping[int, float] | None = None,
    *,
    policy: str | None = None,
    deadline_ms: float | None = None,
    compact: bool = False,
    numpy: bool = False,
    epoch: int | None = None,
) -> dict[str, Any]:
    """The ``POST /schedule`` JSON body of ``state`` (+ the previous slot's feedback).

    Every field the state has travels: user ids with ``eligible`` and the physical fields
    (``rx_power_dbm``, ``spectral_efficiency``, ``buffer_bits``), the pending HARQ retransmissions
    (``retx_bits``, ``retx_rbgs``), resources with ``bandwidth_hz``
    and ``available``, ``max_resources_per_user`` and ``tti_s``. The utility matrix travels
    exactly (JSON floats round-trip) as ``rate_bps`` in spectrum (bit/s: the utility is the rate)
    and as the unitless ``utility`` in mac (bits per RBG per slot, used as given; mac ``rate_bps``
    is bit/s and would be multiplied by ``tti_s``) — always, or with ``compact`` only when the
    physical fields do not reproduce it bit for bit (mac: ``spectral_efficiency`` with some
    ``rb_per_rbg``; spectrum: ``rx_power_dbm`` without fading or interference), which is what a
    RAN that sends spectral efficiencies gets recorded as (N values instead of N×R). ``numpy``:
    the matrix stays a float64 array (for ``orjson.OPT_SERIALIZE_NUMPY``: same text, no
    intermediate Python floats).
    """
    resources = [
        {"id": r, "bandwidth_hz": b, "available": a}
        for r, b, a in zip(
            state.resource_ids.tolist(), state.bandwidth_hz.tolist(), state.resource_available.tolist(), strict=True
        )
    ]
    users = _users(state)
    _add_retx(state, users)
    body: dict[str, Any] = {
        "cell_id": state.cell_id,
        "slot": state.slot,
        "preset": state.preset,
        "max_resources_per_user": state.max_resources_per_user,
        "tti_s": state.tti_s,
        "users": users,
        "resources": resources,
    }
    rb = None
    if compact:
        if state.preset == "mac":
            rb = _compact_mac(state)
        elif _compact_spectrum(state):
            rb = 0  # reproduced: no matrix, no rb_per_rbg
    if rb is None:  # the matrix itself: a spectrum utility is a rate (bit/s); mac's is bits per RBG per
        # slot, sent as the unitless `utility` taken as given (mac `rate_bps` is bit/s, times tti_s)
        key = "rate_bps" if state.preset == "spectrum" else "utility"
        body[key] = np.ascontiguousarray(state.utility) if numpy else state.utility.tolist()
    elif rb not in (0, DEFAULT_RB_PER_RBG):
        body["rb_per_rbg"] = rb
    if policy is not None:
        body["policy"] = policy
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    if epoch is not None:
        body["epoch"] = epoch
    if feedback:
        body["feedback"] = {"delivered_bits": {str(k): float(v) for k, v in feedback.items()}}
    return body


def decision_record(state: SlotState, decision: Decision) -> dict[str, Any]:
    """The decision part of a trace row: owner user ids aligned with the resources (null = unused)."""
    owner = decision.owner
    ids: list[int | None] = state.user_ids[np.maximum(owner - 1, 0)].tolist()
    for j in np.flatnonzero(owner <= 0).tolist():
        ids[j] = None
    return {
        "owner": ids,
        "policy": decision.policy,
        "fallback_reason": decision.fallback_reason,
        "utility": decision.utility,
        "valid_before_repair": decision.valid_before_repair,
    }


def trace_row(
    state: SlotState,
    decision: Decision,
    *,
    policy: str | None = None,
    deadline_ms: float | None = None,
    feedback: Mapping[int, float] | None = None,
    transport: str = "inproc",
) -> dict[str, Any]:
    """One trace row (``FORMAT``): the request as ``POST /schedule`` takes it, and the decision."""
    return {
        "format": FORMAT,
        "time": time.time(),
        "transport": transport,
        "request": rest_request(state, feedback, policy=policy, deadline_ms=deadline_ms, compact=True, numpy=True),
        "decision": decision_record(state, decision),
    }


def file_stem(cell_id: str) -> str:
    """A file name for a cell: ``[A-Za-z0-9_-]`` kept; any other character (``.`` included, so
    that no cell's file looks like another's rotation) or a long id adds a hash of the id, so
    two cells never share a file."""
    safe = _SAFE.sub("_", cell_id)
    if safe == cell_id and len(safe) <= _MAX_NAME:
        return safe
    return f"{safe[:_MAX_NAME]}-{hashlib.sha256(cell_id.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------- the recorder


class _File:
    __slots__ = ("fh", "path", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[bytes] = path.open("ab", buffering=_BUFFER_BYTES)
        self.size = self.fh.tell()


class _OpenFiles(LRUCache[str, _File]):
    """The open trace files, at most ``MAX_OPEN_FILES``: the least recently written one is closed
    to make room (``popitem`` is cachetools' eviction hook)."""

    def popitem(self) -> tuple[str, _File]:
        cell_id, f = super().popitem()
        f.fh.close()
        return cell_id, f


class Recorder:
    """Appends trace rows per cell to ``directory`` (see the module docstring); thread-safe."""

    def __init__(self, directory: str | Path, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.rows = 0
        self.errors = 0
        self.dropped = 0
        self.rotations = 0
        self._files = _OpenFiles(maxsize=MAX_OPEN_FILES)
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._warned: set[str] = set()
        self._closed = False

    @staticmethod
    def from_settings(settings: Any) -> Recorder:
        directory = Path(settings.record_dir)
        if int(getattr(settings, "workers", 1)) > 1:  # one writer per file: a directory per worker
            directory = directory / f"worker-{os.getpid()}"
        return Recorder(directory, max_bytes=int(settings.record_max_bytes))

    def path(self, cell_id: str) -> Path:
        return self.directory / f"{file_stem(cell_id)}.jsonl"

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message + " (logged once; counted)", *args)

    def record(
        self,
        state: SlotState,
        decision: Decision,
        *,
        policy: str | None = None,
        deadline_ms: float | None = None,
        feedback: Mapping[int, float] | None = None,
        transport: str = "inproc",
    ) -> None:
        """Append the slot's row. Never raises: a failure is logged once and counted."""
        try:
            line = (
                orjson.dumps(
                    trace_row(
                        state, decision, policy=policy, deadline_ms=deadline_ms, feedback=feedback, transport=transport
                    ),
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
                + b"\n"
            )
        except Exception as exc:
            self.errors += 1
            self._warn_once("encode", "trace: cannot encode slot %s of cell %r: %r", state.slot, state.cell_id, exc)
            return
        if len(line) > self.max_bytes:
            self.dropped += 1
            self._warn_once(
                "size", "trace: a row of %d bytes exceeds record_max_bytes=%d; dropped", len(line), self.max_bytes
            )
            return
        with self._lock:
            if self._closed:
                return
            try:
                self._write(state.cell_id, line)
                self.rows += 1
            except Exception as exc:
                self.errors += 1
                self._discard(state.cell_id)
                self._warn_once("write", "trace: cannot write %s: %r", self.path(state.cell_id), exc)
            now = time.monotonic()
            if now - self._last_flush >= FLUSH_S:
                self._last_flush = now
                self._flush_all()

    def _write(self, cell_id: str, line: bytes) -> None:
        f = self._files.get(cell_id)
        if f is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            f = self._files[cell_id] = _File(self.path(cell_id))  # may close the least recent file
        if f.size and f.size + len(line) > self.max_bytes:
            f.fh.close()
            del self._files[cell_id]
            os.replace(f.path, f.path.with_name(f.path.name.removesuffix(".jsonl") + ".1.jsonl"))
            self.rotations += 1
            f = self._files[cell_id] = _File(f.path)
        f.fh.write(line)
        f.size += len(line)

    def _discard(self, cell_id: str) -> None:
        f = self._files.pop(cell_id, None)
        if f is not None:
            try:
                f.fh.close()
            except Exception:  # the buffer could not be written: that row is lost, already counted
                pass

    def _flush_all(self) -> None:
        for cell_id, f in list(self._files.items()):
            try:
                f.fh.flush()
            except Exception as exc:
                self.errors += 1
                self._discard(cell_id)
                self._warn_once("write", "trace: cannot write %s: %r", f.path, exc)

    def flush(self) -> None:
        with self._lock:
            self._last_flush = time.monotonic()
            self._flush_all()

    def close(self) -> None:
        """Flush and close every file; later rows are ignored."""
        with self._lock:
            self._flush_all()
            for cell_id in list(self._files):
                self._discard(cell_id)
            self._closed = True

    def stats(self) -> dict[str, Any]:
        return {
            "dir": str(self.directory),
            "rows": self.rows,
            "errors": self.errors,
            "dropped": self.dropped,
            "rotations": self.rotations,
            "max_bytes": self.max_bytes,
        }
