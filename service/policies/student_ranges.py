"""Feature ranges of a student's model card and the per-slot check of the served inputs.

A card with ``feature_ranges`` (``{"global"|"user"|"resource"|"pair": {"min": [...], "max":
[...]}}``, the range of every feature seen in training, widths those of
``service.serialize.tensors``) makes every served slot check its serialized inputs against them
(``FeatureRanges.check``; ``check_many`` for a batch: the min and max of every feature in one
compiled pass; tolerance ``RANGE_TOLERANCE`` of max(|bound|, 1)). User features are checked over
eligible users only, resource features over every resource, pair features over every pair
(admissible or not: the network sees them all). A slot outside the ranges yields the ``block.feature`` names (e.g.
``user.buffer_log``); ``RangeCounts`` counts them per preset since start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import ModelInvalidError
from service.serialize import tensor_kernel
from service.serialize.tensors import (
    GLOBAL_FEATURES,
    PAIR_FEATURES,
    RESOURCE_FEATURES,
    USER_FEATURES,
    StudentBatch,
    StudentInputs,
)

#: card block name -> (feature names, width); the blocks of ``service.serialize.tensors``
RANGE_BLOCKS: dict[str, tuple[str, ...]] = {
    "global": GLOBAL_FEATURES,
    "user": USER_FEATURES,
    "resource": RESOURCE_FEATURES,
    "pair": PAIR_FEATURES,
}
#: relative tolerance of the range check (of max(|bound|, 1): absolute below 1)
RANGE_TOLERANCE = 1e-6
#: at most this many feature names in a slot's ``out_of_range_features`` note
MAX_RANGE_NAMES = 5


def _f32_bound(x: np.ndarray, down: bool) -> np.ndarray:
    """``x`` as float32, rounded outwards (down for a lower bound, up for an upper one)."""
    y = x.astype(np.float32)
    if down:
        return np.where(y > x, np.nextafter(y, np.float32(-np.inf)), y).astype(np.float32)
    return np.where(y < x, np.nextafter(y, np.float32(np.inf)), y).astype(np.float32)


@dataclass(frozen=True, slots=True)
class FeatureRanges:
    """The card's ``feature_ranges``, widened by the tolerance: float32 bounds of every feature of
    the four blocks, concatenated in ``RANGE_BLOCKS`` order, and the ``block.feature`` names."""

    lo: np.ndarray  # float32 [G + Fu + Fr + Fp]
    hi: np.ndarray
    names: tuple[str, ...]

    @staticmethod
    def from_card(spec: Any, where: str) -> FeatureRanges:
        """Parse and validate the card's ``feature_ranges`` (every block, the serializer's widths,
        finite, min <= max); ``ModelInvalidError`` names what is wrong."""
        if not isinstance(spec, dict):
            raise ModelInvalidError(f"{where}: feature_ranges must be an object of blocks")
        lo, hi, names = [], [], []
        for block, feats in RANGE_BLOCKS.items():
            entry = spec.get(block)
            try:
                mn = np.asarray(entry["min"], np.float64)  # type: ignore[index]
                mx = np.asarray(entry["max"], np.float64)  # type: ignore[index]
            except (TypeError, KeyError, ValueError):
                raise ModelInvalidError(f"{where}: feature_ranges.{block} needs numeric min and max lists") from None
            if mn.shape != (len(feats),) or mx.shape != (len(feats),):
                raise ModelInvalidError(
                    f"{where}: feature_ranges.{block} has {mn.shape} / {mx.shape} entries, "
                    f"the serializer has {len(feats)} {block} features"
                )
            if not (np.isfinite(mn).all() and np.isfinite(mx).all() and (mn <= mx).all()):
                raise ModelInvalidError(f"{where}: feature_ranges.{block}: bounds must be finite with min <= max")
            lo.append(mn - RANGE_TOLERANCE * np.maximum(np.abs(mn), 1.0))
            hi.append(mx + RANGE_TOLERANCE * np.maximum(np.abs(mx), 1.0))
            names += [f"{block}.{f}" for f in feats]
        return FeatureRanges(_f32_bound(np.concatenate(lo), True), _f32_bound(np.concatenate(hi), False), tuple(names))

    def check(self, inputs: StudentInputs) -> list[str]:
        """Names (``block.feature``) of the features of one serialized slot outside the ranges;
        [] when none (``check_many`` of a batch of one)."""
        return self.check_many(inputs.as_batch())[0]

    def check_many(self, batch: StudentBatch) -> list[list[str]]:
        """Per item of a padded batch, the names of its features outside the ranges ([] when none).

        Users: the item's eligible rows only (``user_mask``); resources and pairs: all of the
        item's own (its padding is not looked at): ``tensor_kernel.extremes``, one compiled pass
        for the whole batch; a block with no rows cannot be out of range."""
        x = batch.inputs
        shapes = np.asarray(batch.shapes, np.int64).reshape(-1, 2)
        mins, maxs = tensor_kernel.extremes(
            x.global_feats, x.user_feats, x.res_feats, x.pair_feats, x.user_mask, shapes[:, 0], shapes[:, 1]
        )
        out = (mins < self.lo) | (maxs > self.hi)  # [B, features]
        names: list[list[str]] = [[] for _ in batch.shapes]
        for b, i in zip(*np.nonzero(out), strict=True):
            names[int(b)].append(self.names[int(i)])
        return names


@dataclass(slots=True)
class RangeCounts:
    """Out-of-range counts of one preset since start (this process)."""

    slots_checked: int = 0
    slots_out_of_range: int = 0
    features: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "slots_checked": self.slots_checked,
            "slots_out_of_range": self.slots_out_of_range,
            "features": dict(sorted(self.features.items())),
        }
