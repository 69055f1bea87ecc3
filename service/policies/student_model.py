"""Finding, loading and validating a student's ONNX model and its model card.

One ONNX model per preset, found under ``<model_dir>/student-<preset>/<version>/`` as
``model.onnx`` + ``model.json`` (the model card). ``<model_dir>`` is the setting ``model_dir``
(``GNBSCHED_MODEL_DIR``, ``service.config.Settings``) or the repository's ``models/``; the
version is the one named by ``student-<preset>/latest`` (a symlink or a one-line file) or else
the highest version directory (natural order: ``v10`` after ``v9``).

``load_model`` validates a version directory before it serves: the card names the preset and
the serializer's ``FEATURE_VERSION``, ``model.onnx`` matches the card's sha256, the card's
``feature_ranges`` fit the serializer, the onnxruntime session builds (one intra-op thread,
sequential executor, all graph optimisations; CUDA provider first when onnxruntime-gpu is
installed), its inputs and output have the serializer's names, ranks and feature widths (with a
leading batch axis: ``LoadedModel.logits_batch`` decides the cells of a TTI in one call; a graph
exported without one is still served, once per cell), and a probe slot yields finite logits
[R, N+1]. Any failure raises ``ModelInvalidError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.assign import ShareTilt
from service.config import Settings
from service.errors import ModelInvalidError
from service.policies.student_decode import DECODE_KINDS, DEFAULT_SURPLUS_MARGIN
from service.policies.student_ranges import FeatureRanges
from service.serialize.tensors import (
    FEATURE_VERSION,
    INPUT_NAMES,
    NUM_GLOBAL,
    NUM_PAIR,
    NUM_RES,
    NUM_USER,
    OUTPUT_NAME,
    StudentBatch,
    StudentInputs,
    serialize,
)
from service.types import SlotState, make_slot

MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"

#: expected rank and fixed (feature) dimensions of each input without the batch axis; None =
#: dynamic (N or R). A served graph has a leading dynamic batch axis on every input (or, exported
#: before the axis existed, none on any)
_INPUT_SHAPES: dict[str, tuple[int | None, ...]] = {
    "global_feats": (NUM_GLOBAL,),
    "user_feats": (None, NUM_USER),
    "res_feats": (None, NUM_RES),
    "pair_feats": (NUM_PAIR, None, None),
    "user_mask": (None,),
    "res_mask": (None,),
}


def model_name(preset: str) -> str:
    """Directory name of a preset's student under the model directory."""
    return f"student-{preset}"


def default_model_dir() -> Path:
    """The setting ``model_dir`` (``GNBSCHED_MODEL_DIR``) or the repository's ``models/`` (next to
    the ``service`` package)."""
    configured = Settings().model_dir
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "models"


def _version_key(name: str) -> tuple:
    """Natural sort key: ``v10`` after ``v9``, ``1.10`` after ``1.9``."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|[^\d]+", name))


def locate_model(model_dir: Path | str, preset: str, version: str | None = None) -> Path | None:
    """The version directory to serve for ``preset`` (None when there is none).

    ``version`` given: ``<dir>/student-<preset>/<version>``. Else ``latest`` (a symlink to a
    version directory, or a file whose first line names one), else the highest version that
    holds a ``model.onnx``.
    """
    root = Path(model_dir) / model_name(preset)
    if version is not None:
        path = root / version
        return path if path.is_dir() else None
    if not root.is_dir():
        return None
    latest = root / "latest"
    if latest.is_dir():
        return latest.resolve()
    if latest.is_file():
        name = latest.read_text().strip().splitlines()[0].strip() if latest.read_text().strip() else ""
        if name and (root / name).is_dir():
            return root / name
    versions = [p for p in root.iterdir() if p.is_dir() and p.name != "latest" and (p / MODEL_FILE).exists()]
    if not versions:
        return None
    return max(versions, key=lambda p: _version_key(p.name))


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(slots=True)
class LoadedModel:
    """One validated model: its session, card and identity."""

    preset: str
    version: str
    path: Path
    sha256: str
    card: dict[str, Any]
    session: Any
    providers: list[str] = field(default_factory=list)
    decode_kind: str = "capped"
    surplus_margin: float = DEFAULT_SURPLUS_MARGIN
    #: the card's ``feature_ranges`` (None: the card has none, no check)
    ranges: FeatureRanges | None = None
    #: the graph takes a leading batch axis (every export since the axis exists); a graph without
    #: one is run once per cell of a batch
    batched: bool = True

    @property
    def held_out_families(self) -> list[Any] | None:
        """The card's ``training.held_out_families`` (None when absent)."""
        training = self.card.get("training")
        fams = training.get("held_out_families") if isinstance(training, dict) else None
        return list(fams) if isinstance(fams, list | tuple) else None

    @property
    def decode_spec(self) -> dict[str, Any]:
        return dict(self.card.get("decode", {}))

    def logits(self, inputs: StudentInputs) -> np.ndarray:
        """Run the session on one slot: logits float32 [R, N+1]."""
        if self.batched:
            feed = dict(zip(INPUT_NAMES, inputs.batch_of_one(), strict=True))
            return self.session.run([OUTPUT_NAME], feed)[0][0]
        return self.session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, inputs.arrays(), strict=True)))[0]

    def logits_batch(self, batch: StudentBatch) -> np.ndarray:
        """Run the session on a padded batch: logits float32 [B, R, N+1] (item b's own logits are
        ``[b, :r_b, :n_b + 1]``, bitwise its logits alone). One onnxruntime call; a graph without
        a batch axis is run once per item."""
        if self.batched:
            return self.session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, batch.arrays(), strict=True)))[0]
        size, num_ue, num_res = batch.capacity
        out = np.zeros((size, num_res, num_ue + 1), np.float32)
        for b, (n, r) in enumerate(batch.shapes):
            out[b, :r, : n + 1] = self.logits(batch.item(b))
        return out

    def bind(self, inputs: StudentInputs) -> tuple[Any, np.ndarray]:
        """An IOBinding of ``inputs`` (bound in place: refilling the arrays refills the inputs) and a
        preallocated logits buffer [R, N+1] — ``session.run_with_iobinding`` then allocates nothing."""
        n, r = inputs.shape
        if self.batched:
            binding, out = self._bind(inputs.batch_of_one(), (1, r, n + 1))
            return binding, out[0]
        return self._bind(inputs.arrays(), (r, n + 1))

    def bind_batch(self, batch: StudentBatch) -> tuple[Any, np.ndarray] | None:
        """An IOBinding of a padded batch's arrays (bound in place, as ``bind``) and its
        preallocated logits buffer [B, R, N+1]; None for a graph without a batch axis."""
        if not self.batched:
            return None
        size, num_ue, num_res = batch.capacity
        return self._bind(batch.arrays(), (size, num_res, num_ue + 1))

    def _bind(self, arrays: tuple[np.ndarray, ...], out_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        out = np.empty(out_shape, np.float32)
        binding = self.session.io_binding()
        for name, array in zip(INPUT_NAMES, arrays, strict=True):
            binding.bind_cpu_input(name, array)
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        return binding, out

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "version": self.version,
            "path": str(self.path),
            "sha256": self.sha256,
            "feature_version": self.card.get("feature_version"),
            "decode": self.decode_spec,
            "providers": self.providers,
            "parameters": self.card.get("architecture", {}).get("parameters"),
            "feature_ranges": self.ranges is not None,
            "held_out_families": self.held_out_families,
            "batch_axis": self.batched,
        }


def session_options() -> Any:
    """onnxruntime options tuned for one-slot latency: one intra-op thread, sequential executor,
    every graph optimisation, no thread spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


log = logging.getLogger("gnbsched.student")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_device_count() -> int:
    """CUDA devices the driver sees (``cuDeviceGetCount`` through ``libcuda``); 0 without a
    driver or a device. Needs neither torch nor onnxruntime-gpu."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def select_providers(available: Sequence[str], cuda_devices: int) -> list[str]:
    """The execution providers to ask for: CUDA first when this onnxruntime build has it (the
    ``gpu`` extra: onnxruntime-gpu) and a CUDA device is present, CPU always (last)."""
    return [CUDA, CPU] if CUDA in available and cuda_devices > 0 else [CPU]


def default_providers() -> list[str]:
    """``select_providers`` for this machine."""
    import onnxruntime as ort

    return select_providers(ort.get_available_providers(), cuda_device_count())


def _probe_slot(preset: str) -> SlotState:
    """A tiny deterministic slot (3 users, 4 resources, one busy) to smoke-test a session."""
    util = np.array([[3.0, 1.0, 2.0, 0.5], [1.0, 2.5, 0.5, 1.5], [0.2, 0.4, 0.6, 0.8]]) * 1e6
    return make_slot(
        preset,
        [1, 2, 3],
        [1, 2, 3, 4],
        utility=util,
        resource_available=[True, True, False, True],
        buffer_bits=[2e6, 1e6, 4e6] if preset == "mac" else None,
    )


def load_model(path: Path | str, preset: str, providers: list[str] | None = None) -> LoadedModel:
    """Load and validate the model in version directory ``path`` for ``preset``.

    Checks: the card parses and names this preset and ``FEATURE_VERSION``; ``model.onnx`` matches
    the card's sha256; ``feature_ranges``, when present, fits the serializer; the session builds; inputs and output have the expected names, ranks and
    feature widths; a probe slot yields finite logits of shape [R, N+1]. Raises
    ``ModelInvalidError`` (with the reason) on any failure.
    """
    path = Path(path)
    onnx_path, card_path = path / MODEL_FILE, path / CARD_FILE
    if not onnx_path.is_file() or not card_path.is_file():
        raise ModelInvalidError(f"{path}: expected {MODEL_FILE} and {CARD_FILE}")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelInvalidError(f"{card_path}: unreadable model card: {exc}") from None
    if not isinstance(card, dict):
        raise ModelInvalidError(f"{card_path}: the model card is not a JSON object")
    if card.get("preset") != preset:
        raise ModelInvalidError(f"{card_path}: model is for preset {card.get('preset')!r}, not {preset!r}")
    if card.get("feature_version") != FEATURE_VERSION:
        raise ModelInvalidError(
            f"{card_path}: feature version {card.get('feature_version')!r} does not match "
            f"the serializer's {FEATURE_VERSION!r}"
        )
    spec = card.get("decode", {})
    kind = spec.get("kind", "capped")
    if kind not in DECODE_KINDS:
        raise ModelInvalidError(f"{card_path}: unknown decode kind {kind!r}")
    tilt = spec.get("share_tilt") if kind == "pf_anchored" else None
    if tilt:  # refused here, not at every slot the decode would read it
        try:
            ShareTilt.from_dict(tilt)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelInvalidError(f"{card_path}: decode.share_tilt: {exc}") from None
    spread = spec.get("spread_idle", False)
    if not isinstance(spread, bool) or (spread and kind != "pf_anchored"):
        raise ModelInvalidError(
            f"{card_path}: decode.spread_idle must be true or false, and true only with the pf_anchored decode "
            f"(got {spread!r} with {kind!r})"
        )
    digest = sha256_file(onnx_path)
    if card.get("sha256") != digest:
        raise ModelInvalidError(
            f"{onnx_path}: sha256 {digest[:12]}… does not match the card's "
            f"{str(card.get('sha256'))[:12]}… (corrupt or replaced file)"
        )
    try:
        import onnxruntime as ort

        provs = providers or default_providers()
        try:
            sess = ort.InferenceSession(str(onnx_path), session_options(), providers=provs)
        except Exception as exc:
            if provs == [CPU]:
                raise
            log.warning("student %s: the %s session failed (%s); falling back to the CPU", preset, provs[0], exc)
            sess = ort.InferenceSession(str(onnx_path), session_options(), providers=[CPU])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelInvalidError(f"{onnx_path}: onnxruntime cannot load it: {exc}") from None
    log.info("student %s %s: onnxruntime on %s", preset, path.name, ", ".join(sess.get_providers()))
    batched = _check_signature(sess, onnx_path)
    ranges = FeatureRanges.from_card(card["feature_ranges"], str(card_path)) if "feature_ranges" in card else None
    model = LoadedModel(
        preset=preset,
        version=str(card.get("version", path.name)),
        path=path,
        sha256=digest,
        card=card,
        session=sess,
        providers=list(sess.get_providers()),
        decode_kind=kind,
        surplus_margin=float(spec.get("surplus_margin", DEFAULT_SURPLUS_MARGIN)),
        ranges=ranges,
        batched=batched,
    )
    probe = _probe_slot(preset)
    try:
        inputs = serialize(probe)  # (compiles the feature kernels, or loads them from numba's cache)
        if ranges is not None:
            ranges.check(inputs)
        out = model.logits(inputs)
    except Exception as exc:
        raise ModelInvalidError(f"{onnx_path}: inference on a probe slot failed: {exc}") from None
    if out.shape != (probe.num_res, probe.num_ue + 1) or not np.isfinite(out).all():
        raise ModelInvalidError(
            f"{onnx_path}: probe logits have shape {out.shape} (expected "
            f"{(probe.num_res, probe.num_ue + 1)}) or are not finite"
        )
    return model


def has_batch_axis(sess: Any) -> bool:
    """Does the session's graph take a leading batch axis (``global_feats`` of rank 2)?"""
    shape = next(i for i in sess.get_inputs() if i.name == "global_feats").shape
    return len(shape) == len(_INPUT_SHAPES["global_feats"]) + 1


def _check_signature(sess: Any, onnx_path: Path) -> bool:
    """Inputs' names, ranks, feature widths and types; True when the graph has a batch axis."""
    inputs = {i.name: i for i in sess.get_inputs()}
    if set(inputs) != set(INPUT_NAMES):
        raise ModelInvalidError(
            f"{onnx_path}: inputs {sorted(inputs)} do not match the serializer's {list(INPUT_NAMES)}"
        )
    batched = has_batch_axis(sess)
    for name, expected in _INPUT_SHAPES.items():
        shape = inputs[name].shape
        want_rank = len(expected) + batched
        if len(shape) != want_rank:
            raise ModelInvalidError(f"{onnx_path}: input {name} has rank {len(shape)}, expected {want_rank}")
        for got, want in zip(shape[batched:], expected, strict=True):
            if want is not None and got != want:
                raise ModelInvalidError(
                    f"{onnx_path}: input {name} has shape {shape}, expected {expected} (feature width mismatch)"
                )
        if inputs[name].type != "tensor(float)":
            raise ModelInvalidError(f"{onnx_path}: input {name} is {inputs[name].type}, expected tensor(float)")
    outputs = [o.name for o in sess.get_outputs()]
    if OUTPUT_NAME not in outputs:
        raise ModelInvalidError(f"{onnx_path}: no output named {OUTPUT_NAME!r} (outputs: {outputs})")
    if not batched:
        log.warning("%s: the graph has no batch axis: a batch of cells runs it once per cell "
                    "(re-export it with one: gnbsched train rebatch %s)", onnx_path, onnx_path.parent)  # fmt: skip
    return batched
