"""Hierarchical state serialization into fixed-width tensors for the student (SPEC §5).

One code path for the trainer (which stacks these arrays and converts them to torch) and the
service (which feeds them to onnxruntime): ``serialize`` for one slot, ``serialize_many`` for the
cells of a TTI in one padded ``StudentBatch``, both through the compiled kernel of
``service.serialize.tensor_kernel``. The hierarchy of SPEC §5 in tensor form:

* **global statistics** ``global_feats`` float32 [G]: active users, available resources,
  utility / bandwidth / buffer / received-power statistics (max, min, mean, std), cap, fairness;
* **per-user tokens** ``user_feats`` float32 [N, Fu] and **per-resource tokens**
  ``res_feats`` float32 [R, Fr]: the local constraints of every user and resource;
* **per-pair block** ``pair_feats`` float32 [Fp, R, N] (channels first; resources as rows, like
  the logits): the utility of each (user, resource) pair relative to the slot's, the user's and the resource's best (the critical constraints of
  an assignment problem cannot be factorised into user and resource tokens once channels fade);
* **output schema**: ``user_mask`` [N] (eligible) and ``res_mask`` [R] (available), the PAG
  of SPEC §4 that the decoder applies to the logits [R, N+1].

Every feature is scale-free (utilities relative to the slot's best pair, powers relative to the
strongest user, counts relative to the slot's size), so one model serves every N, R and preset.
The feature layout is versioned by ``FEATURE_VERSION``; a model card records the version it was
trained with and the student refuses a model whose version differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.history import HistoryView
from service.serialize import tensor_kernel
from service.types import SlotState

FEATURE_VERSION = "tensors-v3"

GLOBAL_FEATURES: tuple[str, ...] = (
    "preset_spectrum",  # 1 for the LSA preset
    "preset_mac",  # 1 for the UDTS preset
    "log_active_users",  # ln(1 + eligible users) / ln(1 + 4096)
    "log_available_resources",  # ln(1 + available resources) / ln(1 + 4096)
    "active_user_fraction",  # eligible / N
    "available_resource_fraction",  # available / R
    "log_users_per_resource",  # ln((1 + eligible) / (1 + available))
    "cap_fraction",  # min(cap, available) / max(available, 1)
    "cap_is_one",  # single connectivity
    "utility_min",  # (min, mean, std) of admissible utility / slot max (max is 1 by construction)
    "utility_mean",
    "utility_std",
    "bandwidth_min",  # (min, mean, std) of available bandwidth / max available bandwidth
    "bandwidth_mean",
    "bandwidth_std",
    "buffer_known",  # 1 when buffers are given
    "buffer_max",  # (max, min, mean, std) of ln(1 + buffer / slot max utility) of eligible users
    "buffer_min",
    "buffer_mean",
    "buffer_std",
    "rx_power_std",  # std of received power over users, in units of 10 dB
    "snr_max",  # (max, mean) of the users' best-channel mean SNR, in units of 100 dB (noise floor)
    "snr_mean",
    "fairness_jfi",  # Jain index of the cumulative resources x_u of the slot's users (SPEC §3 eq. 5)
    "log_mean_cum_resources",  # ln(1 + mean x_u) / 10
)

USER_FEATURES: tuple[str, ...] = (
    "eligible",
    "best_utility",  # max over available resources of utility[u, :] / slot max
    "mean_utility",  # mean over available resources of utility[u, :] / slot max
    "rx_power_rel",  # (rx power - strongest user's) / 10 dB; 0 when unknown
    "buffer_log",  # ln(1 + buffer / best utility): ~ ln(1 + resources needed to empty the buffer)
    "buffer_fill_fraction",  # min(resources needed, available) / max(available, 1)
    "avg_served_rel",  # PF average served / slot max utility, as ln(1 + ·)
    "pf_priority",  # best utility / PF average served, as ln(1 + ·)
    "jfi_gradient",  # 1 - S·x_u / Q (sign and shape of dJFI/dx_u; S = Σx, Q = Σx²)
    "cum_resources_rel",  # x_u / max(mean x, 1) - 1
    "staleness",  # ln(1 + slots since last served) / ln(1 + 1000); 1 when never served
    "known",  # the user has history in this cell
    "resource_rate_rel",  # (x_u / slots present) / mean over users - 1: x_u as a rate, for populations that change
    "spectral_efficiency",  # best reported SE on an available resource / 8 bit/s/Hz (0 when not given)
)

RESOURCE_FEATURES: tuple[str, ...] = (
    "available",
    "bandwidth_rel",  # bandwidth / max available bandwidth
    "best_utility",  # max over eligible users of utility[:, r] / slot max
    "mean_utility",  # mean over eligible users of utility[:, r] / slot max
)

PAIR_FEATURES: tuple[str, ...] = (
    "utility",  # utility[u, r] / slot max
    "utility_rel_user",  # utility[u, r] / user's best
    "utility_rel_resource",  # utility[u, r] / resource's best
    "utility_capped",  # min(utility, buffer) / slot max (what the user can really send; = utility without buffers)
    "admissible",  # 1 where the pair is allowed (user eligible, resource available): the PAG mask as a channel
    "pf_rel",  # utility[u, r] / PF average served[u], relative to the slot's largest (proportional-fair priority)
)

#: ONNX input names, in order (each with a leading batch axis in the served graph: [B, ...])
INPUT_NAMES: tuple[str, ...] = ("global_feats", "user_feats", "res_feats", "pair_feats", "user_mask", "res_mask")
#: ONNX output name: logits [B, R, N+1] (column 0 = leave the resource unused)
OUTPUT_NAME = "logits"

NUM_GLOBAL, NUM_USER, NUM_RES, NUM_PAIR = (
    len(GLOBAL_FEATURES),
    len(USER_FEATURES),
    len(RESOURCE_FEATURES),
    len(PAIR_FEATURES),
)


def feature_spec() -> dict[str, object]:
    """The feature layout as recorded in a model card (names per block, version)."""
    return {
        "version": FEATURE_VERSION,
        "global": list(GLOBAL_FEATURES),
        "user": list(USER_FEATURES),
        "resource": list(RESOURCE_FEATURES),
        "pair": list(PAIR_FEATURES),
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
    }


@dataclass(slots=True)
class StudentInputs:
    """The serialized slot (N users, R resources). Arrays are float32 and C-contiguous.

    global_feats [G], user_feats [N, Fu], res_feats [R, Fr], pair_feats [Fp, R, N],
    user_mask [N] (1 = eligible), res_mask [R] (1 = available).
    """

    global_feats: np.ndarray
    user_feats: np.ndarray
    res_feats: np.ndarray
    pair_feats: np.ndarray
    user_mask: np.ndarray
    res_mask: np.ndarray

    @staticmethod
    def empty(num_ue: int, num_res: int, batch: int | None = None) -> StudentInputs:
        """Zeroed buffers for an N × R slot (reused across slots of the same shape); with
        ``batch``, every array with a leading batch axis of that size (``StudentBatch``)."""
        lead = () if batch is None else (batch,)
        return StudentInputs(
            np.zeros((*lead, NUM_GLOBAL), np.float32),
            np.zeros((*lead, num_ue, NUM_USER), np.float32),
            np.zeros((*lead, num_res, NUM_RES), np.float32),
            np.zeros((*lead, NUM_PAIR, num_res, num_ue), np.float32),
            np.zeros((*lead, num_ue), np.float32),
            np.zeros((*lead, num_res), np.float32),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.user_mask.shape[0]), int(self.res_mask.shape[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The six arrays in ``INPUT_NAMES`` order (no batch axis)."""
        return (self.global_feats, self.user_feats, self.res_feats, self.pair_feats, self.user_mask, self.res_mask)

    def batch_of_one(self) -> tuple[np.ndarray, ...]:
        """The six arrays as a batch of one ([1, ...] views of the same memory)."""
        return tuple(a[None] for a in self.arrays())

    def as_batch(self) -> StudentBatch:
        """This slot as a ``StudentBatch`` of one, on the same memory (writing either writes both)."""
        return StudentBatch(StudentInputs(*self.batch_of_one()), [self.shape])


@dataclass(slots=True)
class StudentBatch:
    """B serialized slots padded to one (N, R): the student graph's batched input.

    ``inputs``: the six arrays of ``StudentInputs`` with a leading batch axis — global_feats
    [B, G], user_feats [B, N, Fu], res_feats [B, R, Fr], pair_feats [B, Fp, R, N], user_mask
    [B, N], res_mask [B, R]; item b fills [:n_b] users and [:r_b] resources, the rest is zero
    (masks 0). ``shapes[b]`` = (n_b, r_b). The served network pools with masked products, so an
    item's logits [:r_b, :n_b + 1] are bitwise its logits alone (``trainer.export`` checks every
    exported model for it).
    """

    inputs: StudentInputs
    shapes: list[tuple[int, int]]

    @staticmethod
    def empty(batch: int, num_ue: int, num_res: int) -> StudentBatch:
        """Zeroed buffers for ``batch`` slots of at most ``num_ue`` users and ``num_res`` resources."""
        return StudentBatch(StudentInputs.empty(num_ue, num_res, batch), [(0, 0)] * batch)

    @staticmethod
    def of(inputs: Sequence[StudentInputs], num_ue: int = 0, num_res: int = 0) -> StudentBatch:
        """``inputs`` padded into one batch of their largest N and R (at least ``num_ue`` /
        ``num_res``)."""
        n = max([x.shape[0] for x in inputs] + [num_ue])
        r = max([x.shape[1] for x in inputs] + [num_res])
        batch = StudentBatch.empty(len(inputs), n, r)
        for b, x in enumerate(inputs):
            batch.put(b, x)
        return batch

    @property
    def capacity(self) -> tuple[int, int, int]:
        """(B, N, R) of the buffers."""
        b, n = self.inputs.user_mask.shape
        return int(b), int(n), int(self.inputs.res_mask.shape[1])

    def put(self, b: int, inputs: StudentInputs) -> None:
        """Copy one serialized slot into item ``b``; the rest of the item is zero."""
        refill = self.shapes[b] != (0, 0)  # a fresh item is zero already
        for dst, src in zip(self.inputs.arrays(), inputs.arrays(), strict=True):
            item = dst[b]
            if refill:
                item[...] = 0.0
            item[tuple(slice(0, k) for k in src.shape)] = src
        self.shapes[b] = inputs.shape

    def item(self, b: int) -> StudentInputs:
        """Item ``b`` without its padding (contiguous copies)."""
        n, r = self.shapes[b]
        x = StudentInputs.empty(n, r)
        for dst, src in zip(x.arrays(), self.inputs.arrays(), strict=True):
            dst[...] = src[b][tuple(slice(0, k) for k in dst.shape)]
        return x

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The six arrays in ``INPUT_NAMES`` order, each [B, ...]."""
        return self.inputs.arrays()


def _fallback_scale(state: SlotState, history: HistoryView | None) -> float:
    """The slot's bit scale when no admissible pair has utility (no free resource, no eligible
    user, or only zero rates): its largest utility on any pair, else its largest buffer, else its
    largest PF average, else 1 — a quantity of the slot rather than an absolute 1 bit, so that
    the buffer and PF features stay scale-free in these slots too."""
    for values in (state.utility, state.buffer_bits, None if history is None else history.avg_served):
        if values is not None and values.size:
            top = float(values.max())
            if top > 0.0:
                return top
    return 1.0


@dataclass(slots=True)
class _Padded:
    """The inputs of B slots padded to (N, R), the arguments of ``tensor_kernel.features``: zeros
    (False) outside each slot's own users and resources unless said; float64 unless said."""

    util_t: np.ndarray  # [B, R, N] utility^T on admissible pairs (0 elsewhere)
    elig: np.ndarray  # bool [B, N]
    avail: np.ndarray  # bool [B, R]
    n: np.ndarray  # int64 [B] users
    r: np.ndarray  # int64 [B] resources
    cap: np.ndarray  # int64 [B] max resources per user
    slot: np.ndarray  # int64 [B]
    spectrum: np.ndarray  # bool [B]
    buf: np.ndarray  # [B, N] queued bits (0 where unknown)
    has_buf: np.ndarray  # bool [B]
    p_rx: np.ndarray  # [B, N] dBm (0 where unknown)
    has_prx: np.ndarray  # bool [B]
    bw: np.ndarray  # [B, R] Hz
    se_user: np.ndarray  # [B, N] best reported SE on an available resource, bit/s/Hz (0 unknown)
    has_hist: np.ndarray  # bool [B]
    avg_served: np.ndarray  # [B, N]
    cum: np.ndarray  # [B, N] x_u
    last: np.ndarray  # int64 [B, N] last served slot (-1 never)
    known: np.ndarray  # bool [B, N]
    present: np.ndarray  # [B, N] slots present (1 where unknown: the rate is then x_u itself)
    u_ref: np.ndarray  # [B] the slot's bit scale: its largest admissible utility (or fallback)


def _pad(states: Sequence[SlotState], histories: Sequence[HistoryView | None], num_ue: int, num_res: int) -> _Padded:
    """Copy B slots into padded arrays of (``num_ue``, ``num_res``): the only loop over slots."""
    b = len(states)
    z = np.zeros
    p = _Padded(
        util_t=z((b, num_res, num_ue)),
        elig=z((b, num_ue), bool),
        avail=z((b, num_res), bool),
        n=z(b, np.int64),
        r=z(b, np.int64),
        cap=z(b, np.int64),
        slot=z(b, np.int64),
        spectrum=z(b, bool),
        buf=z((b, num_ue)),
        has_buf=z(b, bool),
        p_rx=z((b, num_ue)),
        has_prx=z(b, bool),
        bw=z((b, num_res)),
        se_user=z((b, num_ue)),
        has_hist=z(b, bool),
        avg_served=z((b, num_ue)),
        cum=z((b, num_ue)),
        last=np.full((b, num_ue), -1, np.int64),
        known=z((b, num_ue), bool),
        present=np.ones((b, num_ue)),
        u_ref=z(b),
    )
    for i, (st, hv) in enumerate(zip(states, histories, strict=True)):
        n, r = st.num_ue, st.num_res
        elig, avail = st.user_eligible, st.resource_available
        p.util_t[i, :r, :n] = st.utility.T
        if not (elig.all() and avail.all()):
            p.util_t[i, :r, :n] *= avail[:, None] & elig[None, :]
        p.elig[i, :n], p.avail[i, :r] = elig, avail
        p.n[i], p.r[i], p.cap[i], p.slot[i] = n, r, st.max_resources_per_user, st.slot
        p.spectrum[i] = st.preset == "spectrum"
        if st.buffer_bits is not None:
            p.buf[i, :n], p.has_buf[i] = st.buffer_bits, True
        if st.rx_power_dbm is not None:
            p.p_rx[i, :n], p.has_prx[i] = st.rx_power_dbm, True
        p.bw[i, :r] = st.bandwidth_hz
        se = st.spectral_efficiency
        if se is not None:
            p.se_user[i, :n] = se if se.ndim == 1 else (se if avail.all() else se[:, avail]).max(axis=1, initial=0.0)
        if hv is not None:
            p.has_hist[i] = True
            p.avg_served[i, :n], p.cum[i, :n], p.last[i, :n], p.known[i, :n] = (
                hv.avg_served,
                hv.cum_resources,
                hv.last_served_slot,
                hv.known,
            )
            present = hv.present_slots(st.slot)
            if present is not None:
                p.present[i, :n] = present
        top = float(p.util_t[i].max())
        p.u_ref[i] = top if top > 0.0 else _fallback_scale(st, hv)
    return p


def serialize(state: SlotState, history: HistoryView | None = None, out: StudentInputs | None = None) -> StudentInputs:
    """Serialize one slot (and its cell history) into the student's tensors: ``serialize_many``
    of a batch of one, so a slot's tensors are bitwise the same alone and in any batch.

    state: the slot (utility [N, R], availability [R], eligibility [N], cap, buffers, powers).
    history: the cell's history aligned with the slot's users (None = a cell without history:
        PF averages = mean utility, no cumulative resources, never served).
    out: buffers of the slot's shape to fill in place (``StudentInputs.empty(N, R)``); new
        arrays when None or of another shape.
    Returns the filled ``StudentInputs``.
    """
    n, r = state.num_ue, state.num_res
    if out is None or out.shape != (n, r):
        out = StudentInputs.empty(n, r)
    serialize_many([state], [history], out.as_batch())
    return out


def serialize_many(
    states: Sequence[SlotState], histories: Sequence[HistoryView | None], out: StudentBatch | None = None
) -> StudentBatch:
    """Serialize B slots (each with its cell history, or None) into one padded ``StudentBatch``,
    in one call of the compiled kernel (``tensor_kernel.features``, no GIL).

    out: a batch of B items and at least the largest N and R to fill in place (every element is
    written, the padding with zeros); a new one when None or too small. Item b's tensors are
    bitwise ``serialize(states[b], histories[b])`` whatever the rest of the batch (the kernel
    computes each slot on its own users and resources). Every bit quantity (utility, buffers, PF averages) is divided by the
    slot's largest admissible utility in float64 before the float32 cast, so scaling all of them
    by one factor gives the same features to float64 rounding.
    """
    bsz = len(states)
    num_ue = max(s.num_ue for s in states)
    num_res = max(s.num_res for s in states)
    if out is None or out.capacity[0] != bsz or out.capacity[1] < num_ue or out.capacity[2] < num_res:
        out = StudentBatch.empty(bsz, num_ue, num_res)
    _, num_ue, num_res = out.capacity
    _features(_pad(states, histories, num_ue, num_res), out.inputs)
    out.shapes = [(s.num_ue, s.num_res) for s in states]
    return out


def _features(p: _Padded, out: StudentInputs) -> None:
    """The feature blocks of ``p`` into ``out`` (arrays [B, ...]): the compiled kernel."""
    tensor_kernel.features(
        p.util_t, p.elig, p.avail, p.n, p.r, p.cap, p.slot, p.spectrum, p.buf, p.has_buf, p.p_rx, p.has_prx,
        p.bw, p.se_user, p.has_hist, p.avg_served, p.cum, p.last, p.known, p.present, p.u_ref,
        out.global_feats, out.user_feats, out.res_feats, out.pair_feats, out.user_mask, out.res_mask,
    )  # fmt: skip
