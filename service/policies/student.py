"""The distilled student: a permutation-equivariant pair scorer served by onnxruntime.

One ONNX model per preset (``service.policies.student_model``: where models live, loading and
validation of the model card). Serving path (one slot): ``service.serialize.tensors.serialize``
into per-thread reused buffers → ``InferenceSession.run`` through a bound IOBinding (a batch of
one) → logits [R, N+1] → decode under the PAG mask (SPEC §4; ``service.policies.student_decode``: the kinds
``capped``, ``assignment``, ``anchored`` and ``pf_anchored`` named by the card), so the raw
output is valid by construction. The cells of one TTI (``act_many``): serialized together into
one padded batch (``serialize_many``: one call of the compiled feature kernel), one
``InferenceSession.run`` for all of them through the batch's own IOBinding, each decoded from its
own logits — bitwise the inputs and logits it gets alone, so a cell's decision does not depend on
its batch.

Hot reload: ``reload()`` / ``refresh()`` build and validate a new session off the serving path
and swap it in atomically; a corrupt file, a checksum or feature-version mismatch or wrong
inputs raise ``ModelInvalidError`` and the old model keeps serving.

Feature ranges (``service.policies.student_ranges``): a card with ``feature_ranges`` makes every
served slot check its serialized inputs against them. A slot outside the ranges reports the
first few feature names in ``ctx.info["out_of_range_features"]`` (e.g. ``["user.buffer_log"]``;
the metrics count it as ``gnbsched_student_out_of_range_total``) and in the policy's own counts
since start (``out_of_range_report()``, served by ``GET /models``). Cards without ranges skip
the check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ModelInvalidError, PolicyUnavailableError
from service.policies.base import Policy, PolicyContext
from service.policies.registry import register
from service.policies.student_decode import decode
from service.policies.student_model import (
    MODEL_FILE,
    LoadedModel,
    default_model_dir,
    load_model,
    locate_model,
    model_name,
    sha256_file,
)
from service.policies.student_ranges import MAX_RANGE_NAMES, RangeCounts
from service.serialize.tensors import FEATURE_VERSION, StudentBatch, StudentInputs, serialize, serialize_many
from service.types import SlotState


@dataclass(slots=True)
class _ServingBuffers:
    """Per-thread serving buffers of one (model, N, R)."""

    model: LoadedModel | None
    inputs: StudentInputs
    binding: Any
    logits: np.ndarray


@dataclass(slots=True)
class _BatchBuffers:
    """Per-thread buffers of one (model, B, N, R) batch: the padded inputs, their IO binding and
    the logits [B, R, N+1] it writes (None for a graph without a batch axis)."""

    model: LoadedModel
    batch: StudentBatch
    binding: Any
    logits: np.ndarray | None


@register("student")
class StudentPolicy(Policy):
    """Distilled ONNX student (onnxruntime): permutation-equivariant pair scorer, PAG-masked decode."""

    name = "student"
    presets = ("spectrum", "mac")
    batches = True

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        presets: tuple[str, ...] = ("spectrum", "mac"),
        providers: list[str] | None = None,
        versions: dict[str, str] | None = None,
    ) -> None:
        """Load the newest (or ``versions[preset]``) model of each preset found under ``model_dir``.

        A preset without a model is unavailable (``act`` raises ``PolicyUnavailableError`` so the
        pipeline falls back); a model that is present but invalid raises ``ModelInvalidError``.
        """
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.providers = providers
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # serialises reloads, never held while serving
        self._local = threading.local()  # per-thread input buffers
        self._range_counts: dict[str, RangeCounts] = {}  # per preset, since start
        self._counts_lock = threading.Lock()
        for preset in presets:
            path = locate_model(self.model_dir, preset, (versions or {}).get(preset))
            if path is not None:
                self._models[preset] = load_model(path, preset, providers)

    # -- identity ---------------------------------------------------------------------------

    @property
    def version(self) -> str:  # type: ignore[override]
        """``spectrum=<v>,mac=<v>`` for the loaded models ('none' when no model is loaded)."""
        models = dict(self._models)
        return ",".join(f"{p}={m.version}" for p, m in sorted(models.items())) or "none"

    def model(self, preset: str) -> LoadedModel | None:
        return self._models.get(preset)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["model_dir"] = str(self.model_dir)
        meta["models"] = {p: m.describe() for p, m in sorted(dict(self._models).items())}
        meta["feature_version"] = FEATURE_VERSION
        return meta

    def out_of_range_report(self) -> dict[str, dict[str, Any]]:
        """Per preset with a loaded model: the model (version, sha256, feature version, held-out
        families, whether its card has feature ranges) and the out-of-range counts since start."""
        with self._counts_lock:
            counts = {p: c.as_dict() for p, c in self._range_counts.items()}
        out = {}
        for preset, m in sorted(dict(self._models).items()):
            out[preset] = {
                "policy": self.name,
                "version": m.version,
                "sha256": m.sha256,
                "feature_version": m.card.get("feature_version"),
                "path": str(m.path),
                "held_out_families": m.held_out_families,
                "feature_ranges": m.ranges is not None,
                "out_of_range": counts.get(preset, RangeCounts().as_dict()),
            }
        return out

    def _count_ranges(self, preset: str, names: list[str]) -> None:
        with self._counts_lock:
            c = self._range_counts.get(preset)
            if c is None:
                c = self._range_counts[preset] = RangeCounts()
            c.slots_checked += 1
            if names:
                c.slots_out_of_range += 1
                for name in names:
                    c.features[name] = c.features.get(name, 0) + 1

    # -- reload -----------------------------------------------------------------------------

    def reload(self, preset: str, path: str | Path | None = None, *, version: str | None = None) -> LoadedModel:
        """Load ``path`` (or ``version``, or the newest version) for ``preset``, validate it off the
        serving path, then swap it in atomically. On ``ModelInvalidError`` the old model stays."""
        with self._lock:
            target = Path(path) if path is not None else locate_model(self.model_dir, preset, version)
            if target is None:
                raise ModelInvalidError(
                    f"no {model_name(preset)} model under {self.model_dir}"
                    + (f" with version {version!r}" if version else "")
                )
            model = load_model(target, preset, self.providers)
            self._models[preset] = model  # a single reference assignment: atomic for readers
            return model

    def refresh(self) -> dict[str, str]:
        """Swap in any preset whose newest model on disk differs from the served one (by sha256).

        Returns {preset: new version}. Invalid new files are skipped (the old model keeps
        serving); the error is reported under ``"<preset>:error"``.
        """
        changed: dict[str, str] = {}
        for preset in self.presets:
            path = locate_model(self.model_dir, preset)
            if path is None:
                continue
            current = self._models.get(preset)
            try:
                if current is not None and current.path == path and sha256_file(path / MODEL_FILE) == current.sha256:
                    continue
                changed[preset] = self.reload(preset, path).version
            except (ModelInvalidError, OSError) as exc:
                changed[f"{preset}:error"] = str(exc)
        return changed

    # -- serving ----------------------------------------------------------------------------

    def _thread_cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """This thread's entry ``key`` of its buffer cache, built by ``build`` on a miss; at most 16
        entries (a cell's shape and a TTI's batch shape change slowly). Keys start with the model's
        id, and the entry keeps its model alive, so an id cannot be reused while cached."""
        cache: dict[tuple[Any, ...], Any] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        entry = cache.get(key)
        if entry is None:
            if len(cache) >= 16:
                cache.pop(next(iter(cache)))
            entry = cache[key] = build()
        return entry

    def _serving_slot(self, model: LoadedModel | None, num_ue: int, num_res: int) -> _ServingBuffers:
        """This thread's preallocated buffers for (model, N, R): inputs, IO binding, logits."""

        def build() -> _ServingBuffers:
            inputs = StudentInputs.empty(num_ue, num_res)
            binding, out = model.bind(inputs) if model is not None else (None, np.empty(0, np.float32))
            return _ServingBuffers(model, inputs, binding, out)

        return self._thread_cached((id(model), "slot", num_ue, num_res), build)

    def serialize(self, state: SlotState, ctx: PolicyContext) -> StudentInputs:
        slot = self._serving_slot(self._models.get(state.preset), state.num_ue, state.num_res)
        return serialize(state, ctx.history, slot.inputs)

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        model = self._model_for(state.preset)
        inputs = obs if isinstance(obs, StudentInputs) else self.serialize(state, ctx)
        slot = self._serving_slot(model, state.num_ue, state.num_res)
        if inputs is slot.inputs:  # the usual path: bound buffers, no allocation
            model.session.run_with_iobinding(slot.binding)
            logits = slot.logits
        else:  # serialized against a model swapped out since (hot reload between the stages)
            logits = model.logits(inputs)
        return self._decoded(state, ctx, model, logits, self._out_of_range(model, inputs))

    def act_many(
        self, states: Sequence[SlotState], ctxs: Sequence[PolicyContext]
    ) -> list[tuple[np.ndarray | Exception, float, float]]:
        """The slots of one TTI: per preset, all slots serialized together into one padded
        ``StudentBatch`` (``serialize_many``, one kernel call) and range-checked together, one
        onnxruntime call (through this thread's bound batch buffers), then each slot decoded from
        its own logits. A slot's inputs and logits are bitwise its own alone, so its decision does
        not depend on its batch (``Policy.batches``). When the batch cannot be serialized, each
        slot is serialized on its own and a slot that fails is its own answer.

        Per slot: (DCM tokens or the slot's exception, serialize µs: an equal share of the batch's
        serialization and range check, policy µs: its decode plus an equal share of the batch's
        inference).
        """
        out: list[tuple[np.ndarray | Exception, float, float]] = [(np.empty(0, np.int64), 0.0, 0.0)] * len(states)
        by_preset: dict[str, list[int]] = {}
        for i, state in enumerate(states):
            by_preset.setdefault(state.preset, []).append(i)
        for preset, idx in by_preset.items():
            try:
                model = self._model_for(preset)
            except PolicyUnavailableError as exc:
                for i in idx:
                    out[i] = (exc, 0.0, 0.0)
                continue
            t0 = time.perf_counter_ns()
            group = [states[i] for i in idx]
            buffers = self._batch_buffers(
                model, len(idx), max(st.num_ue for st in group), max(st.num_res for st in group)
            )
            batch, failed = self._serialized(buffers, group, [ctxs[i] for i in idx])
            for b, err in failed.items():
                out[idx[b]] = (err, 0.0, 0.0)
            ranges = self._out_of_range_many(model, batch, failed)
            serialize_us = (time.perf_counter_ns() - t0) / 1e3 / len(idx)
            t0 = time.perf_counter_ns()
            try:
                logits = self._logits_batch(model, buffers, batch)
            except Exception as exc:  # the session failed: every slot of the batch gets the error
                for i in idx:
                    out[i] = (exc, 0.0, 0.0)
                continue
            share_us = (time.perf_counter_ns() - t0) / 1e3 / len(idx)
            for b, i in enumerate(idx):
                if b in failed:
                    continue
                n, r = batch.shapes[b]
                t1 = time.perf_counter_ns()
                try:
                    raw: np.ndarray | Exception = self._decoded(
                        states[i], ctxs[i], model, np.ascontiguousarray(logits[b, :r, : n + 1]), ranges[b]
                    )
                except Exception as exc:
                    raw = exc
                out[i] = (raw, serialize_us, share_us + (time.perf_counter_ns() - t1) / 1e3)
        return out

    def _batch_buffers(self, model: LoadedModel, size: int, num_ue: int, num_res: int) -> _BatchBuffers:
        """This thread's padded batch of (B, N, R) for ``model``, with its IO binding and logits
        buffer."""

        def build() -> _BatchBuffers:
            batch = StudentBatch.empty(size, num_ue, num_res)
            return _BatchBuffers(model, batch, *(model.bind_batch(batch) or (None, None)))

        return self._thread_cached((id(model), "batch", size, num_ue, num_res), build)

    @staticmethod
    def _logits_batch(model: LoadedModel, buffers: _BatchBuffers, batch: StudentBatch) -> np.ndarray:
        """Logits [B, R, N+1] of a serialized batch: through the bound buffers when ``batch`` is
        theirs (nothing allocated), else ``LoadedModel.logits_batch``."""
        if batch is buffers.batch and buffers.logits is not None:
            model.session.run_with_iobinding(buffers.binding)
            return buffers.logits
        return model.logits_batch(batch)

    def _serialized(
        self, buffers: _BatchBuffers, states: Sequence[SlotState], ctxs: Sequence[PolicyContext]
    ) -> tuple[StudentBatch, dict[int, Exception]]:
        """``states`` in one padded batch (``buffers.batch``), and {item: exception} of the slots
        that could not be serialized (then each slot is serialized on its own into a new batch;
        the items of the failed ones stay empty: masks 0)."""
        try:
            return serialize_many(states, [c.history for c in ctxs], buffers.batch), {}
        except Exception:  # some slot cannot be serialized: each on its own, a failure is its own
            pass
        batch = StudentBatch.empty(*buffers.batch.capacity)
        failed: dict[int, Exception] = {}
        for b, (state, ctx) in enumerate(zip(states, ctxs, strict=True)):
            try:
                batch.put(b, self.serialize(state, ctx))
            except Exception as exc:
                failed[b] = exc
        return batch, failed

    def _out_of_range_many(
        self, model: LoadedModel, batch: StudentBatch, skip: Mapping[int, Exception]
    ) -> list[list[str] | None]:
        """Per item, the features outside the card's ranges, counted (None: no ranges, or an item
        of ``skip``)."""
        if model.ranges is None:
            return [None] * len(batch.shapes)
        names: list[list[str] | None] = list(model.ranges.check_many(batch))
        for b, item in enumerate(names):
            if b in skip:
                names[b] = None
            else:
                self._count_ranges(model.preset, item or [])
        return names

    # -- the stages both paths share -----------------------------------------------------------

    def _model_for(self, preset: str) -> LoadedModel:
        model = self._models.get(preset)
        if model is None:
            raise PolicyUnavailableError(f"no student model for the {preset} preset under {self.model_dir}")
        return model

    def _out_of_range(self, model: LoadedModel, inputs: StudentInputs) -> list[str] | None:
        """The features of ``inputs`` outside the card's ranges, counted (None: no ranges)."""
        if model.ranges is None:
            return None
        names = model.ranges.check(inputs)
        self._count_ranges(model.preset, names)
        return names

    def _decoded(
        self, state: SlotState, ctx: PolicyContext, model: LoadedModel, logits: np.ndarray, ranges: list[str] | None
    ) -> np.ndarray:
        """Logits [R, N+1] of ``state`` → DCM tokens [R] (the card's decode), notes in ``ctx.info``."""
        if not np.isfinite(logits[:, 0]).all():
            raise ModelInvalidError(f"student {state.preset}/{model.version} produced non-finite logits")
        ctx.info["model_version"] = model.version
        if ranges:
            ctx.info["out_of_range_features"] = ranges[:MAX_RANGE_NAMES]
        return decode(state, logits, model.card.get("decode", {}), ctx.history)
