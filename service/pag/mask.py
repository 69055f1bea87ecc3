"""PAG as a mask during generation (SPEC §4, use 1; seed 003 eq. 13).

Logits have shape [R, N+1]: row ``r`` scores token ``k`` for resource ``r`` (0 = unused).
Inadmissible tokens get ``-inf``; per-user caps are enforced autoregressively over positions.
"""

from __future__ import annotations

import numpy as np

from service.types import SlotState


def pag_mask(state: SlotState) -> np.ndarray:
    """bool [R, N+1]: token admissible at position r before caps. Column 0 is always allowed."""
    mask = np.empty((state.num_res, state.num_ue + 1), bool)
    mask[:, 0] = True
    mask[:, 1:] = state.resource_available[:, None] & state.user_eligible[None, :]
    return mask


def masked_decode(
    state: SlotState,
    logits: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    temperature: float = 1.0,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Decode a DCM [R] from logits [R, N+1] under the PAG mask with per-user caps.

    Greedy (``rng`` None): argmax per position; sampling: softmax(logits / temperature).
    Positions are visited in ``order`` (default 0..R-1); a user who reached the cap is masked
    for the remaining positions. Valid by construction.
    """
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    if rng is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    masked = np.where(pag_mask(state), logits, -np.inf)
    cap = state.max_resources_per_user
    if rng is None:
        best = masked.argmax(axis=1)
        counts = np.bincount(best, minlength=n1)[1:]
        if (counts <= cap).all():  # fast path: no cap binds
            return best.astype(np.int64)
    owner = np.zeros(r, np.int64)
    counts = np.zeros(n1, np.int64)
    blocked = np.zeros(n1, bool)
    for pos in range(r) if order is None else order.tolist():
        row = np.where(blocked, -np.inf, masked[pos])
        if rng is None:
            k = int(row.argmax())
        else:
            z = row / temperature
            z = np.exp(z - z.max())
            k = int(rng.choice(n1, p=z / z.sum()))
        owner[pos] = k
        if k:
            counts[k] += 1
            if counts[k] >= cap:
                blocked[k] = True
    return owner
