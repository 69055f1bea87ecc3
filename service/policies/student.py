"""The distilled student: a permutation-equivariant pair scorer served by onnxruntime.

One ONNX model per preset, found under ``<model_dir>/student-<preset>/<version>/`` as
``model.onnx`` + ``model.json`` (the model card). ``<model_dir>`` is ``$GNBSCHED_MODEL_DIR`` or
the repository's ``models/``; the version is the one named by ``student-<preset>/latest`` (a
symlink or a one-line file) or else the highest version directory.

Serving path (one slot): ``service.serialize.tensors.serialize`` into per-thread reused buffers
→ ``InferenceSession.run`` (one intra-op thread, sequential executor, all graph optimisations;
CUDA provider first when onnxruntime-gpu is installed) → logits [R, N+1] → decode under the PAG
mask (SPEC §4), so the raw output is valid by construction:

* ``capped`` (default, SPEC §4 use 1): **pass 1** visits the resources in order, each takes
  its best admissible token among "leave unused" and the users still below their need
  (``assign.copies_per_user``: the PAG cap, tightened to the resources that empty the user's
  buffer); **pass 2** gives each resource still unused to its best user below the PAG cap if
  that user's logit beats the unused logit by ``surplus_margin`` (surplus grants — the leader
  may give an agentic follower more than its buffer needs, SPEC §3). The trainer samples from
  exactly this two-pass process, so training and serving share one action distribution.
* ``assignment`` (single connectivity, cap 1 — the spectrum preset): an exact linear
  assignment (rectangular Jonker-Volgenant, ``decode_assignment``) on the pair margins
  ``logit[r, 1+u] − logit[r, 0]``.
* ``anchored`` (single connectivity — the spectrum preset): an exact assignment on the utility
  weighted by the network, ``utility[u, r] · (1 + b · tanh(logit[r, 1+u] − logit[r, 0]))``
  (``decode_anchored``, bound ``b`` from the card). The network can move a pair's weight by at
  most a factor (1 ± b), so whatever it outputs, on any input, the decision keeps at least
  ``(1 − b) / (1 + b)`` of the optimum sum-rate (0.990 at the shipped b = 0.005), and a pair of
  zero rate is never granted.
* ``pf_anchored`` (the mac preset): proportional fair's rule with a bounded learned tilt — the
  pairs ranked by ``utility[u, r] / avg_served[u] · (1 + b · tanh(logit[r, 1+u] − logit[r, 0]))``
  and taken greedily under the PAG cap while the user's buffer is not covered
  (``decode_pf_anchored`` over ``assign.greedy_fill``, bound ``b`` from the card):
  work-conserving, like the classical schedulers. The network can reorder only pairs whose PF priorities lie within a factor (1 + b) / (1 − b) of
  each other, so throughput, latency and fairness stay those of PF on any input, and the tilt is
  where a teacher that beats PF on the whole table can act.

Hot reload: ``reload()`` / ``refresh()`` build and validate a new session off the serving path
and swap it in atomically; a corrupt file, a checksum or feature-version mismatch or wrong
inputs raise ``ModelInvalidError`` and the old model keeps serving.

Feature ranges: a card with ``feature_ranges`` (``{"global"|"user"|"resource"|"pair": {"min":
[...], "max": [...]}}``, the range of every feature seen in training) makes every served slot
check its serialized inputs against them (``FeatureRanges.check``: one min and one max per block,
vectorised; tolerance 1e-6 of max(|bound|, 1)). User features are checked over eligible users
only, resource features over every resource, pair features over every pair (admissible or not:
the network sees them all). A slot outside the ranges reports the first few feature names in
``ctx.info["out_of_range_features"]`` (e.g. ``["user.buffer_log"]``; the metrics count it as
``gnbsched_student_out_of_range_total``) and in the policy's own counts since start
(``out_of_range_report()``, served by ``GET /models``). Cards without ranges skip the check.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.assign import NEED_TOLERANCE, greedy_fill, pf_priority
from service.errors import ModelInvalidError, PolicyUnavailableError
from service.history import CellHistory, HistoryView
from service.policies.base import Policy, PolicyContext, register
from service.serialize.tensors import (
    FEATURE_VERSION,
    GLOBAL_FEATURES,
    INPUT_NAMES,
    NUM_GLOBAL,
    NUM_PAIR,
    NUM_RES,
    NUM_USER,
    OUTPUT_NAME,
    PAIR_FEATURES,
    RESOURCE_FEATURES,
    USER_FEATURES,
    StudentInputs,
    serialize,
)
from service.types import SlotState, make_slot

MODEL_DIR_ENV = "GNBSCHED_MODEL_DIR"
MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"
#: default of the model card's ``decode.surplus_margin`` (logit units)
DEFAULT_SURPLUS_MARGIN = 4.0
DECODE_KINDS = ("capped", "assignment", "anchored", "pf_anchored")
#: default bound ``b`` of the anchored decodes (card ``decode.bound``): spectrum, mac
DEFAULT_ANCHOR_BOUND = 0.005
DEFAULT_PF_ANCHOR_BOUND = 0.05

#: expected rank and fixed (feature) dimensions of each input; None = dynamic (N or R)
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
    """``$GNBSCHED_MODEL_DIR`` or the repository's ``models/`` (next to the ``service`` package)."""
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env)
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


# ----------------------------------------------------------------------------- decoding (pure)


def user_needs(state: SlotState) -> np.ndarray:
    """int64 [N]: resources each user takes in pass 1 at most — the PAG cap, limited to the
    available resources and (mac, known buffers) to ceil(buffer / best TBS on an available
    resource − ``assign.NEED_TOLERANCE``); 0 if ineligible. The same numbers as
    ``assign.copies_per_user`` (tested), with a shortcut for the common slot where every
    resource is available."""
    avail = state.resource_available
    n_avail = int(np.count_nonzero(avail))
    k = min(state.max_resources_per_user, n_avail)
    if state.preset == "mac" and state.buffer_bits is not None and k > 1:
        util = state.utility if n_avail == state.num_res else state.utility[:, avail]
        best = util.max(axis=1) if n_avail else np.zeros(state.num_ue)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(best > 0, np.ceil(state.buffer_bits / best - NEED_TOLERANCE), 0.0)
        need = np.minimum(need, k).astype(np.int64)
    else:
        need = np.full(state.num_ue, k, np.int64)
    return np.where(state.user_eligible, need, 0)


def _capped_argmax(masked: np.ndarray, rows: np.ndarray, remaining: np.ndarray, owner: np.ndarray,
                   threshold: np.ndarray | None = None) -> None:
    """Sequential argmax decode of ``rows`` (in order) with per-user budgets, in place.

    masked: float [R, N+1] logits with −inf where inadmissible; column 0 = unused (only a
    candidate when ``threshold`` is None). remaining: int [N+1] budget per token (index 0
    ignored). threshold: float [R] or None; with a threshold a row takes its best user only if
    that user's logit exceeds it. Equivalent to visiting the rows one by one and masking a user
    once its budget is spent, but vectorised between budget exhaustions.
    """
    cur = masked[rows]  # [L, N+1] copy
    if rows.size > 1 and (cur == cur[0]).all() and (threshold is None or (threshold[rows] == threshold[rows[0]]).all()):
        _fill_identical(cur[0], rows, remaining, owner, None if threshold is None else float(threshold[rows[0]]))
        return
    if threshold is not None:
        cur[:, 0] = -np.inf
    remaining[0] = rows.size  # "unused" is never exhausted
    start = 0
    while start < rows.size:
        cur[start:, np.flatnonzero(remaining <= 0)] = -np.inf  # users whose budget is spent
        block = cur[start:]
        best = block.argmax(axis=1)
        if threshold is not None:
            top = block[np.arange(best.size), best]
            best = np.where(top > threshold[rows[start:]], best, 0)
        counts = np.bincount(best, minlength=remaining.size)
        over = np.flatnonzero(counts[1:] > remaining[1:]) + 1
        if over.size == 0:
            owner[rows[start:]] = best
            return
        # accept the rows before the first one at which some user's budget would be exceeded
        first = min(int(np.flatnonzero(best == u)[remaining[u]]) for u in over.tolist())
        owner[rows[start:start + first]] = best[:first]
        remaining -= np.bincount(best[:first], minlength=remaining.size)
        start += first


def _fill_identical(scores: np.ndarray, rows: np.ndarray, remaining: np.ndarray, owner: np.ndarray,
                    threshold: float | None) -> None:
    """``_capped_argmax`` when every row has the same logits [N+1] (e.g. frequency-flat RBGs):
    the rows go, in order, to the users by decreasing logit (ties: lower index), each taking its
    budget, while the user beats "unused" (``scores[0]``, or ``threshold`` in pass 2)."""
    bar = scores[0] if threshold is None else threshold
    users = np.flatnonzero((scores[1:] > bar) & (remaining[1:] > 0)) + 1
    if users.size == 0:
        if threshold is None:
            owner[rows] = 0
        return
    users = users[np.argsort(-scores[users], kind="stable")]
    take = np.minimum(remaining[users], rows.size)
    tokens = np.repeat(users, take)[: rows.size]
    if tokens.size < rows.size:
        tokens = np.concatenate([tokens, np.zeros(rows.size - tokens.size, np.int64)])
    if threshold is None:
        owner[rows] = tokens
    else:
        owner[rows[tokens > 0]] = tokens[tokens > 0]


def _pag_masked(state: SlotState, logits: np.ndarray) -> np.ndarray:
    """A copy of logits [R, N+1] with −inf where the PAG mask (``pag_mask``) forbids the token."""
    masked = np.array(logits, dtype=np.float64 if logits.dtype == np.float64 else np.float32)
    elig, avail = state.user_eligible, state.resource_available
    if not elig.all():
        masked[:, 1:][:, ~elig] = -np.inf
    if not avail.all():
        masked[~avail, 1:] = -np.inf
    return masked


def decode_capped(state: SlotState, logits: np.ndarray, *, needs: np.ndarray | None = None,
                  surplus_margin: float = DEFAULT_SURPLUS_MARGIN) -> np.ndarray:
    """Two-pass PAG decode of logits [R, N+1] (module doc). Returns the DCM int64 [R].

    Valid by construction: tokens only where ``pag_mask`` allows, no user above the cap.
    """
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    masked = _pag_masked(state, logits)
    need = user_needs(state) if needs is None else needs
    owner = np.zeros(r, np.int64)
    rows = np.flatnonzero(state.resource_available)
    if rows.size == 0:
        return owner
    # pass 1: unused or a user below its need
    remaining = np.zeros(n1, np.int64)
    remaining[1:] = need
    _capped_argmax(masked, rows, remaining, owner)
    # pass 2: surplus grants on the rows left unused, users below the PAG cap
    left = rows[owner[rows] == 0]
    if left.size == 0:
        return owner
    counts = np.bincount(owner, minlength=n1)
    budget = np.where(state.user_eligible, state.max_resources_per_user - counts[1:], 0)
    if budget.max(initial=0) <= 0:
        return owner
    remaining = np.zeros(n1, np.int64)
    remaining[1:] = budget
    _capped_argmax(masked, left, remaining, owner, threshold=masked[:, 0] + surplus_margin)
    return owner


def decode_assignment(state: SlotState, logits: np.ndarray) -> np.ndarray:
    """Exact assignment on the pair margins ``logit[r, 1+u] − logit[r, 0]`` (single connectivity):
    the DCM int64 [R] maximising the summed margin; pairs with a non-positive margin stay unused.

    Works on the [R, N] margin matrix as it comes out of the network, restricted to available
    resources and eligible users (no transpose, no per-user copies: every cap is 1), and calls
    the rectangular Jonker-Volgenant solver directly — the same optimum as
    ``assign.linear_assignment`` on the transposed margins, at a fraction of its overhead.
    """
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    owner = np.zeros(r, np.int64)
    avail, elig = state.resource_available, state.user_eligible
    res_idx = np.arange(r) if avail.all() else np.flatnonzero(avail)
    ue_idx = np.arange(state.num_ue) if elig.all() else np.flatnonzero(elig)
    if res_idx.size == 0 or ue_idx.size == 0:
        return owner
    margin = logits[res_idx] if res_idx.size < r else logits  # [R', N+1]
    # a pair with a negative margin is never better than leaving the resource unused: clip at 0
    # so the (rectangular) assignment is free to skip it
    score = margin[:, 1:] if ue_idx.size == state.num_ue else margin[:, 1 + ue_idx]
    score = np.maximum(score - margin[:, :1], 0.0, dtype=np.float64)  # [R', U']
    rows, cols = linear_sum_assignment(score, maximize=True)
    keep = score[rows, cols] > 0
    owner[res_idx[rows[keep]]] = ue_idx[cols[keep]] + 1
    return owner


def decode_anchored(state: SlotState, logits: np.ndarray, bound: float = DEFAULT_ANCHOR_BOUND) -> np.ndarray:
    """Exact assignment (cap 1) on ``utility[u, r] · (1 + bound · tanh(m[r, u]))`` with the pair
    margins ``m = logit[r, 1+u] − logit[r, 0]``; the DCM int64 [R].

    Guarantee: with S the result and O any valid assignment (the optimum included), every weight
    lies in [1 − b, 1 + b], so ``(1 + b)·U(S) ≥ W(S) ≥ W(O) ≥ (1 − b)·U(O)``: ``U(S) ≥ (1 − b) /
    (1 + b) · U(O)`` whatever the logits. Pairs of zero utility have weight 0 and stay unused.
    """
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    if not 0.0 <= bound < 1.0:
        raise ValueError(f"bound must be in [0, 1), got {bound}")
    owner = np.zeros(r, np.int64)
    avail, elig = state.resource_available, state.user_eligible
    res_idx = np.flatnonzero(avail)
    ue_idx = np.flatnonzero(elig)
    if res_idx.size == 0 or ue_idx.size == 0:
        return owner
    margin = logits[np.ix_(res_idx, 1 + ue_idx)].astype(np.float64) - logits[res_idx, :1]  # [R', U']
    score = state.utility[np.ix_(ue_idx, res_idx)].T * (1.0 + bound * np.tanh(margin))
    rows, cols = linear_sum_assignment(score, maximize=True)
    keep = score[rows, cols] > 0
    owner[res_idx[rows[keep]]] = ue_idx[cols[keep]] + 1
    return owner


def decode_pf_anchored(state: SlotState, logits: np.ndarray, avg_served: np.ndarray,
                       bound: float = DEFAULT_PF_ANCHOR_BOUND) -> np.ndarray:
    """Greedy (``assign.greedy_fill``) on ``pf_priority · (1 + bound · tanh(m))`` with the pair
    margins ``m = logit[r, 1+u] − logit[r, 0]``; the DCM int64 [R]. avg_served: float64 [N], the
    cell history's PF averages of the slot's users. Valid by construction."""
    r, n1 = state.num_res, state.num_ue + 1
    if logits.shape != (r, n1):
        raise ValueError(f"logits: expected shape ({r}, {n1}), got {logits.shape}")
    if not 0.0 <= bound < 1.0:
        raise ValueError(f"bound must be in [0, 1), got {bound}")
    margin = (logits[:, 1:] - logits[:, :1]).T.astype(np.float64)  # [N, R]
    return greedy_fill(state, pf_priority(state, avg_served) * (1.0 + bound * np.tanh(margin)))


def decode(state: SlotState, logits: np.ndarray, spec: dict[str, Any],
           history: HistoryView | None = None) -> np.ndarray:
    """Decode logits [R, N+1] with the model card's ``decode`` block (``kind``, ``surplus_margin``,
    ``bound``); ``pf_anchored`` reads the PF averages of ``history`` (a new cell's when None)."""
    kind = spec.get("kind", "capped")
    if kind == "pf_anchored":
        view = history if history is not None else CellHistory.empty().view(state)
        return decode_pf_anchored(state, logits, view.avg_served, float(spec.get("bound", DEFAULT_PF_ANCHOR_BOUND)))
    if kind == "assignment" and state.max_resources_per_user == 1:
        return decode_assignment(state, logits)
    if kind == "anchored" and state.max_resources_per_user == 1:
        return decode_anchored(state, logits, float(spec.get("bound", DEFAULT_ANCHOR_BOUND)))
    return decode_capped(state, logits, surplus_margin=float(spec.get("surplus_margin", DEFAULT_SURPLUS_MARGIN)))


# ----------------------------------------------------------------------------- feature ranges

#: card block name -> (feature names, width); the blocks of ``service.serialize.tensors``
RANGE_BLOCKS: dict[str, tuple[str, ...]] = {
    "global": GLOBAL_FEATURES, "user": USER_FEATURES, "resource": RESOURCE_FEATURES, "pair": PAIR_FEATURES}
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
                raise ModelInvalidError(f"{where}: feature_ranges.{block} has {mn.shape} / {mx.shape} entries, "
                                        f"the serializer has {len(feats)} {block} features")
            if not (np.isfinite(mn).all() and np.isfinite(mx).all() and (mn <= mx).all()):
                raise ModelInvalidError(f"{where}: feature_ranges.{block}: bounds must be finite with min <= max")
            lo.append(mn - RANGE_TOLERANCE * np.maximum(np.abs(mn), 1.0))
            hi.append(mx + RANGE_TOLERANCE * np.maximum(np.abs(mx), 1.0))
            names += [f"{block}.{f}" for f in feats]
        return FeatureRanges(_f32_bound(np.concatenate(lo), True), _f32_bound(np.concatenate(hi), False),
                             tuple(names))

    def check(self, inputs: StudentInputs) -> list[str]:
        """Names (``block.feature``) of the features of ``inputs`` outside the ranges; [] when none.

        Users: eligible rows only (``user_mask``); resources and pairs: all. One min and one max
        per block, one comparison over all of them (about 26 µs at N = 100, R = 69)."""
        n, r = inputs.shape
        g0, g1 = NUM_GLOBAL, NUM_GLOBAL + NUM_USER
        r1 = g1 + NUM_RES
        users = inputs.user_feats
        if n and not inputs.user_mask.all():
            users = users[inputs.user_mask > 0]
        g = inputs.global_feats
        if users.shape[0] and r:  # the usual slot: every block has rows
            pairs = inputs.pair_feats.reshape(NUM_PAIR, -1)
            mins = np.concatenate((g, users.min(axis=0), inputs.res_feats.min(axis=0), pairs.min(axis=1)))
            maxs = np.concatenate((g, users.max(axis=0), inputs.res_feats.max(axis=0), pairs.max(axis=1)))
        else:  # an empty block cannot be out of range: its own bounds stand in
            mins, maxs = self.lo.copy(), self.hi.copy()
            mins[:g0] = maxs[:g0] = g
            if users.shape[0]:
                mins[g0:g1], maxs[g0:g1] = users.min(axis=0), users.max(axis=0)
            if r:
                mins[g1:r1], maxs[g1:r1] = inputs.res_feats.min(axis=0), inputs.res_feats.max(axis=0)
        out = (mins < self.lo) | (maxs > self.hi)
        if not out.any():
            return []
        return [self.names[i] for i in np.flatnonzero(out).tolist()]


@dataclass(slots=True)
class RangeCounts:
    """Out-of-range counts of one preset since start (this process)."""

    slots_checked: int = 0
    slots_out_of_range: int = 0
    features: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"slots_checked": self.slots_checked, "slots_out_of_range": self.slots_out_of_range,
                "features": dict(sorted(self.features.items()))}


# ----------------------------------------------------------------------------- loading


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
        """Run the session: logits float32 [R, N+1]."""
        return self.session.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, inputs.arrays(), strict=True)))[0]

    def bind(self, inputs: StudentInputs) -> tuple[Any, np.ndarray]:
        """An IOBinding of ``inputs`` (bound in place: refilling the arrays refills the inputs) and a
        preallocated logits buffer [R, N+1] — ``session.run_with_iobinding`` then allocates nothing."""
        n, r = inputs.shape
        out = np.empty((r, n + 1), np.float32)
        binding = self.session.io_binding()
        for name, array in zip(INPUT_NAMES, inputs.arrays(), strict=True):
            binding.bind_cpu_input(name, array)
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        return binding, out

    def describe(self) -> dict[str, Any]:
        return {"preset": self.preset, "version": self.version, "path": str(self.path), "sha256": self.sha256,
                "feature_version": self.card.get("feature_version"), "decode": self.decode_spec,
                "providers": self.providers, "parameters": self.card.get("architecture", {}).get("parameters"),
                "feature_ranges": self.ranges is not None, "held_out_families": self.held_out_families}


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


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu), CPU always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or ["CPUExecutionProvider"]


def _probe_slot(preset: str) -> SlotState:
    """A tiny deterministic slot (3 users, 4 resources, one busy) to smoke-test a session."""
    util = np.array([[3.0, 1.0, 2.0, 0.5], [1.0, 2.5, 0.5, 1.5], [0.2, 0.4, 0.6, 0.8]]) * 1e6
    return make_slot(preset, [1, 2, 3], [1, 2, 3, 4], utility=util, resource_available=[True, True, False, True],
                     buffer_bits=[2e6, 1e6, 4e6] if preset == "mac" else None)


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
        raise ModelInvalidError(f"{card_path}: feature version {card.get('feature_version')!r} does not match "
                                f"the serializer's {FEATURE_VERSION!r}")
    kind = card.get("decode", {}).get("kind", "capped")
    if kind not in DECODE_KINDS:
        raise ModelInvalidError(f"{card_path}: unknown decode kind {kind!r}")
    digest = sha256_file(onnx_path)
    if card.get("sha256") != digest:
        raise ModelInvalidError(f"{onnx_path}: sha256 {digest[:12]}… does not match the card's "
                                f"{str(card.get('sha256'))[:12]}… (corrupt or replaced file)")
    try:
        import onnxruntime as ort

        provs = providers or default_providers()
        sess = ort.InferenceSession(str(onnx_path), session_options(), providers=provs)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelInvalidError(f"{onnx_path}: onnxruntime cannot load it: {exc}") from None
    _check_signature(sess, onnx_path)
    spec = card.get("decode", {})
    ranges = FeatureRanges.from_card(card["feature_ranges"], str(card_path)) if "feature_ranges" in card else None
    model = LoadedModel(preset=preset, version=str(card.get("version", path.name)), path=path, sha256=digest,
                        card=card, session=sess, providers=list(sess.get_providers()), decode_kind=kind,
                        surplus_margin=float(spec.get("surplus_margin", DEFAULT_SURPLUS_MARGIN)), ranges=ranges)
    probe = _probe_slot(preset)
    try:
        out = model.logits(serialize(probe))
    except Exception as exc:
        raise ModelInvalidError(f"{onnx_path}: inference on a probe slot failed: {exc}") from None
    if out.shape != (probe.num_res, probe.num_ue + 1) or not np.isfinite(out).all():
        raise ModelInvalidError(f"{onnx_path}: probe logits have shape {out.shape} (expected "
                                f"{(probe.num_res, probe.num_ue + 1)}) or are not finite")
    return model


def _check_signature(sess: Any, onnx_path: Path) -> None:
    inputs = {i.name: i for i in sess.get_inputs()}
    if set(inputs) != set(INPUT_NAMES):
        raise ModelInvalidError(f"{onnx_path}: inputs {sorted(inputs)} do not match the serializer's {list(INPUT_NAMES)}")
    for name, expected in _INPUT_SHAPES.items():
        shape = inputs[name].shape
        if len(shape) != len(expected):
            raise ModelInvalidError(f"{onnx_path}: input {name} has rank {len(shape)}, expected {len(expected)}")
        for got, want in zip(shape, expected, strict=True):
            if want is not None and got != want:
                raise ModelInvalidError(f"{onnx_path}: input {name} has shape {shape}, expected {expected} "
                                        "(feature width mismatch)")
        if inputs[name].type != "tensor(float)":
            raise ModelInvalidError(f"{onnx_path}: input {name} is {inputs[name].type}, expected tensor(float)")
    outputs = [o.name for o in sess.get_outputs()]
    if OUTPUT_NAME not in outputs:
        raise ModelInvalidError(f"{onnx_path}: no output named {OUTPUT_NAME!r} (outputs: {outputs})")


# ----------------------------------------------------------------------------- the policy


@dataclass(slots=True)
class _ServingBuffers:
    """Per-thread serving buffers of one (model, N, R)."""

    model: LoadedModel | None
    inputs: StudentInputs
    binding: Any
    logits: np.ndarray


@register("student")
class StudentPolicy(Policy):
    """Distilled ONNX student (onnxruntime): permutation-equivariant pair scorer, PAG-masked decode."""

    name = "student"
    presets = ("spectrum", "mac")

    def __init__(self, model_dir: str | Path | None = None, *, presets: tuple[str, ...] = ("spectrum", "mac"),
                 providers: list[str] | None = None, versions: dict[str, str] | None = None) -> None:
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
            out[preset] = {"policy": self.name, "version": m.version, "sha256": m.sha256,
                           "feature_version": m.card.get("feature_version"), "path": str(m.path),
                           "held_out_families": m.held_out_families, "feature_ranges": m.ranges is not None,
                           "out_of_range": counts.get(preset, RangeCounts().as_dict())}
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
                raise ModelInvalidError(f"no {model_name(preset)} model under {self.model_dir}"
                                        + (f" with version {version!r}" if version else ""))
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

    def _serving_slot(self, model: LoadedModel | None, num_ue: int, num_res: int) -> _ServingBuffers:
        """This thread's preallocated buffers for (model, N, R): inputs, IO binding, logits."""
        cache: dict[tuple[int, int, int], _ServingBuffers] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        key = (id(model), num_ue, num_res)
        slot = cache.get(key)
        if slot is None:
            if len(cache) >= 16:  # bounded: a cell's shape changes slowly
                cache.pop(next(iter(cache)))
            inputs = StudentInputs.empty(num_ue, num_res)
            binding, out = model.bind(inputs) if model is not None else (None, np.empty(0, np.float32))
            # the entry keeps ``model`` alive, so its id cannot be reused while cached
            slot = cache[key] = _ServingBuffers(model, inputs, binding, out)
        return slot

    def serialize(self, state: SlotState, ctx: PolicyContext) -> StudentInputs:
        slot = self._serving_slot(self._models.get(state.preset), state.num_ue, state.num_res)
        return serialize(state, ctx.history, slot.inputs)

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> np.ndarray:
        model = self._models.get(state.preset)
        if model is None:
            raise PolicyUnavailableError(f"no student model for the {state.preset} preset under {self.model_dir}")
        inputs = obs if isinstance(obs, StudentInputs) else self.serialize(state, ctx)
        slot = self._serving_slot(model, state.num_ue, state.num_res)
        if inputs is slot.inputs:  # the usual path: bound buffers, no allocation
            model.session.run_with_iobinding(slot.binding)
            logits = slot.logits
        else:  # serialized against a model swapped out since (hot reload between the stages)
            logits = model.logits(inputs)
        if not np.isfinite(logits[:, 0]).all():
            raise ModelInvalidError(f"student {state.preset}/{model.version} produced non-finite logits")
        ctx.info["model_version"] = model.version
        if model.ranges is not None:
            names = model.ranges.check(inputs)
            self._count_ranges(state.preset, names)
            if names:
                ctx.info["out_of_range_features"] = names[:MAX_RANGE_NAMES]
        return decode(state, logits, model.card.get("decode", {}), ctx.history)
