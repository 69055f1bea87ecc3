"""Checkpoints: the network, its preset and decode rule, and the record of every training stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.assign import ShareTilt
from service.history import HistoryView
from service.policies.student_decode import (
    DEFAULT_ANCHOR_BOUND,
    DEFAULT_PF_ANCHOR_BOUND,
    DEFAULT_SURPLUS_MARGIN,
    decode,
)
from service.serialize.tensors import FEATURE_VERSION, serialize
from service.types import SlotState
from trainer.net import NetConfig, StudentNet

CHECKPOINT_FILE = "checkpoint.pt"


@dataclasses.dataclass
class Checkpoint:
    """Everything export needs: weights, architecture, preset, decode rule, training record."""

    net: StudentNet
    preset: str
    decode: dict[str, Any]
    stages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: per-block min / max of every input feature over the training slots (the card's ``feature_ranges``)
    feature_ranges: dict[str, Any] | None = None

    @staticmethod
    def new(
        preset: str,
        config: NetConfig,
        surplus_margin: float = DEFAULT_SURPLUS_MARGIN,
        kind: str = "",
        share_tilt: bool = False,
        spread_idle: bool = False,
    ) -> Checkpoint:
        """A fresh network; ``kind`` is the served decode (default: assignment for spectrum,
        capped for mac); ``share_tilt`` adds pf_fair's resource-share tilt to ``pf_anchored``,
        ``spread_idle`` the spread of the idle RBGs (``service.assign.spread_idle``)."""
        kind = kind or ("assignment" if preset == "spectrum" else "capped")
        spec: dict[str, Any] = {"kind": kind, "surplus_margin": surplus_margin}
        if kind == "anchored":
            spec["bound"] = DEFAULT_ANCHOR_BOUND
        if kind == "pf_anchored":
            spec["bound"] = DEFAULT_PF_ANCHOR_BOUND
            if share_tilt:
                spec["share_tilt"] = ShareTilt().as_dict()
            if spread_idle:
                spec["spread_idle"] = True
        elif share_tilt or spread_idle:
            raise ValueError(f"share_tilt and spread_idle apply to the pf_anchored decode, not {kind!r}")
        return Checkpoint(StudentNet(config), preset, spec)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "config": self.net.config.as_dict(),
                "state_dict": self.net.state_dict(),
                "preset": self.preset,
                "decode": self.decode,
                "stages": self.stages,
                "feature_version": FEATURE_VERSION,
                "feature_ranges": self.feature_ranges,
            },
            path / CHECKPOINT_FILE,
        )
        return path / CHECKPOINT_FILE

    @staticmethod
    def load(path: str | Path) -> Checkpoint:
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if blob.get("feature_version") != FEATURE_VERSION:
            raise ValueError(f"{path}: feature version {blob.get('feature_version')} != {FEATURE_VERSION}")
        net = StudentNet(NetConfig(**blob["config"]))
        net.load_state_dict(blob["state_dict"])
        return Checkpoint(
            net, blob["preset"], dict(blob["decode"]), list(blob.get("stages", [])), blob.get("feature_ranges")
        )

    @property
    def surplus_margin(self) -> float:
        return float(self.decode.get("surplus_margin", DEFAULT_SURPLUS_MARGIN))


class TorchStudent:
    """The PyTorch student as a behaviour policy: serialize → forward → the served decode."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt

    @torch.no_grad()
    def logits(self, state: SlotState, view: HistoryView | None) -> np.ndarray:
        x = serialize(state, view)
        out = self.ckpt.net(*(torch.from_numpy(a) for a in x.arrays()))
        return out.numpy()

    def __call__(self, state: SlotState, view: HistoryView, rng: np.random.Generator | None = None) -> np.ndarray:
        return decode(state, self.logits(state, view), self.ckpt.decode, view)
