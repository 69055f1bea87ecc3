"""Hierarchical state serialization into fixed-width tensors for the student (SPEC §5).

One code path for the trainer (which stacks these arrays and converts them to torch) and the
service (which feeds them to onnxruntime). The hierarchy of SPEC §5 in tensor form:

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

#: SE normaliser (bit/s/Hz): above the highest entry of the TS 38.214 MCS tables (7.4063)
_SE_SCALE = 8.0

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

_LOG_MAX_COUNT = float(np.log1p(4096.0))
_LOG_STALE = float(np.log1p(1000.0))


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


def _stats(values: np.ndarray) -> tuple[float, float, float, float]:
    """(max, min, mean, std) of a 1-D array; zeros when empty."""
    if values.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    mean = float(values.sum()) / values.size
    var = float(np.dot(values, values)) / values.size - mean * mean
    return float(values.max()), float(values.min()), mean, float(np.sqrt(max(var, 0.0)))


def _safe_inv(x: np.ndarray) -> np.ndarray:
    """1 / max(x, tiny): finite everywhere; where x = 0 the numerators are 0 as well."""
    return 1.0 / np.maximum(x, np.float32(1e-30))


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


def serialize(state: SlotState, history: HistoryView | None = None, out: StudentInputs | None = None) -> StudentInputs:
    """Serialize one slot (and its cell history) into the student's tensors.

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
    elig = state.user_eligible
    avail = state.resource_available
    n_elig, n_avail = int(np.count_nonzero(elig)), int(np.count_nonzero(avail))
    full = n_elig == n and n_avail == r

    # ---- per-pair block [Fp, R, N]; channel 0: admissible utility / slot max
    # Every quantity in bits (utility, buffers, PF averages) is divided by the slot max u_ref in
    # float64, before the float32 cast: scaling all of them by one factor then gives the same
    # float32 features (to float64 rounding), and everything below works on these ratios.
    pc = out.pair_feats
    adm = pc[0]  # [R, N]
    util_t = state.utility.T if full else state.utility.T * (avail[:, None] & elig[None, :])  # [R, N] float64
    u_ref = float(util_t.max()) if util_t.size else 0.0
    if u_ref <= 0.0:
        u_ref = _fallback_scale(state, history)
    np.divide(util_t, u_ref, out=adm, casting="unsafe")
    row_max = adm.max(axis=0)  # [N] user's best / slot max
    col_max = adm.max(axis=1)  # [R] resource's best / slot max
    row_mean = adm.sum(axis=0) * np.float32(1.0 / max(n_avail, 1))  # [N] mean over available resources
    col_mean = adm.sum(axis=1) * np.float32(1.0 / max(n_elig, 1))  # [R] mean over eligible users
    np.multiply(adm, _safe_inv(row_max)[None, :], out=pc[1])
    np.multiply(adm, _safe_inv(col_max)[:, None], out=pc[2])
    buf = state.buffer_bits
    if buf is not None:
        np.minimum(adm, (buf / u_ref).astype(np.float32)[None, :], out=pc[3])
    else:
        pc[3] = adm
    if full:
        pc[4] = 1.0
    else:
        np.logical_and(avail[:, None], elig[None, :], out=pc[4], casting="unsafe")

    # ---- per-user tokens [N, Fu]
    uf = out.user_feats
    uf[:, 0] = elig
    uf[:, 1] = row_max
    uf[:, 2] = row_mean
    p_rx = state.rx_power_dbm
    uf[:, 3] = 0.0 if p_rx is None else (p_rx - p_rx.max()) / 10.0
    if buf is not None:
        need = (buf / u_ref) * _safe_inv(row_max).astype(np.float64)  # resources to empty the buffer
        uf[:, 4] = np.log1p(need)
        uf[:, 5] = np.minimum(need, n_avail) / max(n_avail, 1)
    else:
        uf[:, 4:6] = 0.0
    if history is not None:
        avg = np.maximum(history.avg_served / u_ref, 1e-12)  # in units of the slot max
    else:  # no history: a new user's PF average, its mean utility on available resources
        avg = np.maximum(row_mean.astype(np.float64), 1e-12)
    # pair channel 5: the PF priority utility / average, relative to the slot's largest
    pf = adm * (1.0 / avg)[None, :]  # [R, N] float64
    pf_max = float(pf.max()) if pf.size else 0.0
    np.multiply(pf, 1.0 / pf_max if pf_max > 0.0 else 0.0, out=pc[5], casting="unsafe")
    if history is not None:
        x = history.cum_resources
        uf[:, 6] = np.log1p(avg)
        uf[:, 7] = np.log1p(row_max / avg)
        s, q = float(x.sum()), float(np.dot(x, x))
        uf[:, 8] = 1.0 - s * x / q if q > 0 else 0.0
        mean_x = s / n
        uf[:, 9] = x / max(mean_x, 1.0) - 1.0
        last = history.last_served_slot
        age = np.where(last >= 0, np.clip(state.slot - last, 0, 1000), 1000)
        uf[:, 10] = np.log1p(age) * (1.0 / _LOG_STALE)
        uf[:, 11] = history.known
        present = history.present_slots(state.slot)
        rate = x / present if present is not None else x
        mean_rate = float(rate.sum()) / n
        uf[:, 12] = rate / mean_rate - 1.0 if mean_rate > 0 else 0.0
        jfi = s * s / (n * q) if q > 0 else 1.0
    else:
        uf[:, 6] = np.log1p(row_mean)
        uf[:, 7] = np.log1p(row_max * _safe_inv(row_mean))
        uf[:, 8:10] = 0.0
        uf[:, 10] = 1.0
        uf[:, 11:13] = 0.0
        mean_x, jfi = 0.0, 1.0
    se = state.spectral_efficiency
    if se is None:
        uf[:, 13] = 0.0
    elif se.ndim == 1:
        uf[:, 13] = se * (1.0 / _SE_SCALE)
    else:
        uf[:, 13] = (se if n_avail == r else se[:, avail]).max(axis=1, initial=0.0) * (1.0 / _SE_SCALE)
    if n_elig < n:
        uf[~elig, 1:8] = 0.0  # utility, buffer and PF terms of users who may own nothing
        uf[~elig, 13] = 0.0

    # ---- per-resource tokens [R, Fr]
    rf = out.res_feats
    bw = state.bandwidth_hz
    bw_av = bw if n_avail == r else bw[avail]
    bw_ref = float(bw_av.max()) if bw_av.size else float(bw.max())
    rf[:, 0] = avail
    rf[:, 1] = bw * (1.0 / bw_ref)
    rf[:, 2] = col_max
    rf[:, 3] = col_mean
    if n_avail < r:
        rf[~avail, 1:] = 0.0

    # ---- global statistics [G]
    g = out.global_feats
    g[0] = state.preset == "spectrum"
    g[1] = state.preset == "mac"
    g[2] = np.log1p(n_elig) / _LOG_MAX_COUNT
    g[3] = np.log1p(n_avail) / _LOG_MAX_COUNT
    g[4] = n_elig / n
    g[5] = n_avail / r
    g[6] = np.log((1.0 + n_elig) / (1.0 + n_avail))
    g[7] = min(state.max_resources_per_user, n_avail) / max(n_avail, 1)
    g[8] = state.max_resources_per_user == 1
    if n_elig and n_avail:
        flat = adm.reshape(-1)
        count = n_elig * n_avail
        mean = float(flat.sum(dtype=np.float64)) / count
        var = float(np.dot(flat, flat)) / count - mean * mean
        g[9] = float(adm.min()) if full else float(np.where(avail[:, None] & elig[None, :], adm, np.inf).min())
        g[10], g[11] = mean, np.sqrt(max(var, 0.0))
    else:
        g[9:12] = 0.0
    if bw_av.size:
        _, g[12], g[13], g[14] = _stats(bw_av * (1.0 / bw_ref))
    else:
        g[12:15] = 0.0
    if buf is not None:
        g[15] = 1.0
        g[16], g[17], g[18], g[19] = _stats(np.log1p((buf if n_elig == n else buf[elig]) / u_ref))
    else:
        g[15:20] = 0.0
    if p_rx is not None:
        g[20] = _stats(p_rx)[3] / 10.0
        snr = p_rx - (-174.0 + 10.0 * np.log10(bw_ref))  # mean SNR on the widest channel, dB
        g[21], g[22] = float(snr.max()) / 100.0, float(snr.mean()) / 100.0
    else:
        g[20:23] = 0.0
    g[23] = jfi
    g[24] = np.log1p(mean_x) / 10.0

    out.user_mask[:] = elig
    out.res_mask[:] = avail
    return out
