"""An exact JSON record of one slot (``slot_to_dict`` / ``slot_from_dict``).

Written by the teacher's decision recorder and the fine-tuning datasets, read by the reward
functions and the trainer: the one codec all of them import. Small arrays travel as lists, the
utility matrix as base64 float64, so a record gives the same slot back bit for bit.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from service.types import SlotState

SLOT_FORMAT = 1


def _arr(a: np.ndarray | None) -> Any:
    """Small arrays as lists; large float arrays (the utility matrix) as base64 float64 (exact)."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype == np.float64 and a.size > 64:
        return {
            "dtype": "float64",
            "shape": list(a.shape),
            "b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(),
        }
    return a.tolist()


def _unarr(v: Any, dtype: type) -> np.ndarray | None:
    if v is None:
        return None
    if isinstance(v, dict):
        raw = base64.b64decode(v["b64"])
        return np.frombuffer(raw, dtype=np.dtype(v["dtype"])).reshape(v["shape"]).astype(dtype, copy=True)
    return np.asarray(v, dtype=dtype)


def slot_to_dict(state: SlotState) -> dict[str, Any]:
    """A JSON-able, exact record of ``state`` (the utility matrix included, base64 float64).

    ``utility`` is the slot's utility matrix itself (spectrum: bit/s; mac: bits per RBG per
    slot), like the request field ``utility`` that is used as given — never ``rate_bps``, which
    in mac is bit/s and would be multiplied by ``tti_s`` again — so ``slot_from_dict`` gives the
    same utility back bit for bit. ``retx_bits`` (float64 [N], bits) and ``retx_rbgs`` (int64 [N],
    RBGs) are written only when the slot has them, so the record of a slot without pending HARQ
    retransmissions is what it was before they existed."""
    record: dict[str, Any] = {
        "format": SLOT_FORMAT,
        "preset": state.preset,
        "cell_id": state.cell_id,
        "slot": state.slot,
        "tti_s": state.tti_s,
        "user_ids": state.user_ids.tolist(),
        "resource_ids": state.resource_ids.tolist(),
        "utility": _arr(state.utility),
        "resource_available": state.resource_available.tolist(),
        "user_eligible": state.user_eligible.tolist(),
        "max_resources_per_user": state.max_resources_per_user,
        "bandwidth_hz": _arr(state.bandwidth_hz),
        "buffer_bits": _arr(state.buffer_bits),
        "rx_power_dbm": _arr(state.rx_power_dbm),
        "spectral_efficiency": _arr(state.spectral_efficiency),
    }
    if state.retx_bits is not None and state.retx_rbgs is not None:
        record["retx_bits"] = state.retx_bits.tolist()  # lists of JSON floats / ints: exact
        record["retx_rbgs"] = state.retx_rbgs.tolist()
    return record


def slot_from_dict(d: dict[str, Any]) -> SlotState:
    """Inverse of ``slot_to_dict`` (shapes checked; a record without ``retx_bits`` / ``retx_rbgs``
    has no retransmission pending)."""
    if d.get("format", SLOT_FORMAT) != SLOT_FORMAT:
        raise ValueError(f"slot record format {d.get('format')} is not {SLOT_FORMAT}")
    uids = np.asarray(d["user_ids"], np.int64)
    rids = np.asarray(d["resource_ids"], np.int64)
    util = _unarr(d["utility"], np.float64)
    bw = _unarr(d["bandwidth_hz"], np.float64)
    if util is None or bw is None:
        raise ValueError("slot record without utility or bandwidth_hz")
    util = util.reshape(uids.size, rids.size)
    return SlotState(
        preset=d["preset"],
        user_ids=uids,
        resource_ids=rids,
        utility=util,
        resource_available=np.asarray(d["resource_available"], bool),
        user_eligible=np.asarray(d["user_eligible"], bool),
        max_resources_per_user=int(d["max_resources_per_user"]),
        bandwidth_hz=bw,
        buffer_bits=_unarr(d.get("buffer_bits"), np.float64),
        rx_power_dbm=_unarr(d.get("rx_power_dbm"), np.float64),
        spectral_efficiency=_unarr(d.get("spectral_efficiency"), np.float64),
        cell_id=str(d.get("cell_id", "cell-0")),
        slot=int(d.get("slot", 0)),
        tti_s=float(d.get("tti_s", 0.0005)),
        retx_bits=_unarr(d.get("retx_bits"), np.float64),
        retx_rbgs=_unarr(d.get("retx_rbgs"), np.int64),
    )
