"""The seeded generator of one (cell, slot): the only randomness a policy may draw from."""

from __future__ import annotations

import zlib

import numpy as np


def slot_rng(seed: int, cell_id: str, slot: int) -> np.random.Generator:
    """The generator of one (cell, slot): same seed, cell and slot ⇒ same draws in any process."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(cell_id.encode()), slot & 0xFFFFFFFF])
