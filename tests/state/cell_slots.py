"""The slots of one mac cell that the Redis tests drive, and the feedback of a decision."""

from __future__ import annotations

import numpy as np

from service.api.rest.codec import decode_schedule


def mac_doc(cell: str, slot: int, policy: str = "pf") -> dict:
    """``POST /schedule`` body of ``slot`` of ``cell``: 9 of 14 users, 6 RBGs (the same every time)."""
    rng = np.random.default_rng(1000 + slot)
    ids = rng.permutation(14)[:9] + 1
    return {
        "cell_id": cell,
        "slot": slot,
        "preset": "mac",
        "policy": policy,
        "users": [
            {
                "id": int(u),
                "spectral_efficiency": float(rng.choice([0.2344, 0.6016, 1.1758])),
                "buffer_bits": float(rng.integers(0, 12) * 256),
            }
            for u in ids
        ],
        "resources": [{"id": j, "bandwidth_hz": 1.44e6} for j in range(6)],
    }


def feedback(doc: dict, owner: list) -> dict:
    """Deliver what each scheduled user was given, but lose every third user's block."""
    state = decode_schedule(doc).state
    got: dict[str, float] = {}
    for j, uid in enumerate(owner):
        if uid is not None:
            k = int(np.flatnonzero(state.user_ids == uid)[0])
            got[str(uid)] = got.get(str(uid), 0.0) + float(state.utility[k, j])
    return {"delivered_bits": {u: (0.0 if int(u) % 3 == 0 else bits) for u, bits in got.items()}}
