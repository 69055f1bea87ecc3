"""The text blocks of the teacher's prompt (SPEC §5, LSA section IV-B), one renderer per block.

* ``header_block``: the objective (spectrum: sum of Shannon rates ``B·log2(1+SNR)``, one user
  per channel) or, for the mac preset, the SIE ``<Role>`` and ``<Target>`` of LLM4MAC (leader
  utility ``U = ω·throughput + (1 − ω)·JFI(cumulative RBGs)``, SPEC §3 eq. 5);
* ``statistics_block``: global statistics, (max, min, mean, std) of received power, SNR
  (closed-form moments of ``rx[u] − noise[c]`` over the product set, O(N + R)), utility,
  bandwidth and buffer;
* ``detail_rows``: the critical-constraint rows, users (``user_priority``: spectrum by best
  admissible utility; mac by schedulable bits ``min(buffer, Σ best cap utilities)``, then
  staleness) and resources (``resource_priority``: by best utility) interleaved in priority
  order, each with its best admissible partners; in the flat case (``is_flat``: every user's
  utility equal on all resources) resources are id lists of ``FLAT_ID_CHUNK``.

Utilities are shown in Mbit/s (spectrum) or bits per RBG (mac); numbers with three significant
digits (few digits, few tokens). Indices are int64 into the slot's users [N] / resources [R].
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from service.history import HistoryView
from service.serialize.prompt_options import PromptOptions
from service.types import SlotState

#: resource ids per row in the flat case (resources need no row of their own)
FLAT_ID_CHUNK = 16

# ----------------------------------------------------------------------------- formatting


def _num(x: float) -> str:
    """Compact decimal with 3 significant digits (few digits = few tokens), no exponent."""
    if not math.isfinite(x):
        return "nan"
    ax = abs(x)
    if ax >= 100 or ax == 0:
        return str(round(x))
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _stats(values: np.ndarray) -> str:
    """'max a, min b, mean c, std d' of a 1-D array (empty: 'none')."""
    v = np.asarray(values, np.float64)
    if not np.isfinite(v).all():
        v = v[np.isfinite(v)]
    if v.size == 0:
        return "none"
    return f"max {_num(v.max())}, min {_num(v.min())}, mean {_num(v.mean())}, std {_num(v.std())}"


def _unit(state: SlotState) -> tuple[float, str]:
    """Scale and unit of utility values in the prompt: Mbit/s (spectrum), bits per RBG (mac)."""
    return (1e-6, "Mbit/s") if state.preset == "spectrum" else (1.0, "bit")


def is_flat(state: SlotState) -> bool:
    """True when every user's utility is the same on every resource (mac with SE per user)."""
    u = state.utility
    return u.shape[1] <= 1 or bool(np.all(u.max(axis=1) - u.min(axis=1) <= 1e-9 * (1 + u.max(axis=1))))


# ----------------------------------------------------------------------------- blocks


def header_block(state: SlotState, opts: PromptOptions) -> str:
    """Objective (LSA) / SIE <Role> and <Target> (LLM4MAC)."""
    if state.preset == "mac":
        return (
            f"<Role> base station (leader) of cell {state.cell_id}, TTI {state.slot}: uplink scheduler "
            f"granting {state.num_res} RBGs to {state.num_ue} UEs (followers) with one DCM.\n"
            f"<Target> maximise delivered bits this TTI and long-run fairness: leader utility "
            f"U = {opts.omega:g}*throughput + {1 - opts.omega:g}*JFI(cumulative RBGs). A UE cannot send "
            f"more than its buffer: do not give it RBGs beyond its need.\n"
            "Answer with JSON only, no explanation."
        )
    return (
        f"Objective: assign channels to secondary users of cell {state.cell_id}, slot {state.slot}, "
        "to maximise the aggregate throughput (sum of Shannon rates B*log2(1+SNR)) and spectrum "
        "utilisation. Collision-free: one user per channel; a busy channel (primary user present) "
        "stays unused.\n"
        "Answer with JSON only, no explanation."
    )


def statistics_block(state: SlotState, view: HistoryView | None, opts: PromptOptions) -> str:
    """Global statistics block (SPEC §5, LSA 'network statistical context')."""
    elig, avail = state.user_eligible, state.resource_available
    scale, unit = _unit(state)
    res_word = "channels" if state.preset == "spectrum" else "RBGs"
    lines = [
        "## Global statistics",
        f"users: {state.num_ue} registered, {int(elig.sum())} active (eligible); {res_word}: "
        f"{state.num_res} total, {int(avail.sum())} available, {int((~avail).sum())} busy; "
        f"max {res_word} per user: {min(state.max_resources_per_user, state.num_res)}",
    ]
    bw_avail = state.bandwidth_hz[avail] if avail.any() else state.bandwidth_hz
    n0 = opts.noise_density_dbm_hz
    noise_dbm = n0 + 10.0 * np.log10(bw_avail)
    lines.append(f"noise floor: N0 {_num(n0)} dBm/Hz; over available bandwidths {_stats(noise_dbm)} dBm")
    lines.append(f"bandwidth (MHz) of available {res_word}: {_stats(bw_avail / 1e6)}")
    if state.rx_power_dbm is not None:
        rx = state.rx_power_dbm[elig]
        lines.append(f"received power (dBm) of active users: {_stats(rx)}")
        # SNR[u,c] = rx[u] - noise[c] over the product set: moments in closed form, O(N + R)
        snr = (
            "none"
            if rx.size == 0
            else (
                f"max {_num(rx.max() - noise_dbm.min())}, min {_num(rx.min() - noise_dbm.max())}, "
                f"mean {_num(rx.mean() - noise_dbm.mean())}, std {_num(float(np.sqrt(rx.var() + noise_dbm.var())))}"
            )
        )
        lines.append(f"mean SNR (dB, before fading) over active pairs: {snr}")
    if state.spectral_efficiency is not None:
        se = state.spectral_efficiency
        se_u = se if se.ndim == 1 else se.mean(axis=1)
        lines.append(f"spectral efficiency (bit/s/Hz) of active users: {_stats(se_u[elig])}")
    if elig.any() and avail.any():
        sub = state.utility[np.ix_(elig, avail)]
        lines.append(f"utility ({unit} per {res_word[:-1]}) over admissible pairs: {_stats(sub.ravel() * scale)}")
    if state.buffer_bits is not None:
        lines.append(f"buffer (bit) of active users: {_stats(state.buffer_bits[elig])}")
    if view is not None and state.preset == "mac" and view.known.any():
        x = view.cum_resources
        jfi = float(x.sum() ** 2 / (x.size * (x**2).sum())) if (x**2).sum() > 0 else 1.0
        lines.append(f"history: JFI of cumulative RBGs {_num(jfi)}; cumulative RBGs per UE {_stats(x)}")
    return "\n".join(lines)


def user_priority(state: SlotState, view: HistoryView | None) -> np.ndarray:
    """Eligible user indices, most critical first.

    spectrum: best admissible utility; mac: schedulable bits min(buffer, sum of the user's best
    ``cap`` utilities), then staleness (slots since last served; never served first).
    """
    users = np.flatnonzero(state.user_eligible)
    if users.size == 0:
        return users
    util = np.where(state.resource_available[None, :], state.utility[users], -np.inf)
    best = util.max(axis=1) if util.shape[1] else np.zeros(users.size)
    best = np.where(np.isfinite(best), best, 0.0)
    if state.preset == "mac":
        cap = min(state.max_resources_per_user, max(int(state.resource_available.sum()), 1))
        top = -np.sort(-np.where(np.isfinite(util), util, 0.0), axis=1)[:, :cap].sum(axis=1)
        key = top if state.buffer_bits is None else np.minimum(state.buffer_bits[users], top)
        stale = (
            np.zeros(users.size)
            if view is None
            else np.where(view.last_served_slot[users] < 0, np.inf, state.slot - view.last_served_slot[users])
        )
        order = np.lexsort((users, -stale, -key))
    else:
        order = np.lexsort((users, -best))
    return users[order]


def resource_priority(state: SlotState) -> np.ndarray:
    """Available resource indices by best utility over eligible users (then index)."""
    res = np.flatnonzero(state.resource_available)
    if res.size == 0 or not state.user_eligible.any():
        return res
    best = state.utility[np.ix_(state.user_eligible, res)].max(axis=0)
    return res[np.lexsort((res, -best))]


def _user_row(state: SlotState, u: int, view: HistoryView | None, opts: PromptOptions, flat: bool) -> str:
    scale, _ = _unit(state)
    uid = int(state.user_ids[u])
    parts: list[str] = []
    if state.preset == "mac":
        head = f"<UE {uid}>"
        if state.buffer_bits is not None:
            parts.append(f"buf {round(float(state.buffer_bits[u]))}")
        best = float(state.utility[u][state.resource_available].max()) if state.resource_available.any() else 0.0
        if flat:
            parts.append(f"bit/RBG {round(best)}")
        if state.buffer_bits is not None and best > 0:
            parts.append(f"need {math.ceil(float(state.buffer_bits[u]) / best)} RBG")
        if view is not None:
            last = int(view.last_served_slot[u])
            parts.append("stale never" if last < 0 else f"stale {state.slot - last}")
    else:
        head = f"{uid}:"
        if state.rx_power_dbm is not None:
            parts.append(f"rx {_num(float(state.rx_power_dbm[u]))} dBm")
    if not flat and opts.pairs_per_row:
        row = np.where(state.resource_available, state.utility[u], -np.inf)
        k = min(opts.pairs_per_row, int(np.isfinite(row).sum()))
        if k:
            idx = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
            idx = idx[np.lexsort((idx, -row[idx]))][:k]
            parts.append("best " + " ".join(f"{int(state.resource_ids[r])}={_num(float(row[r]) * scale)}" for r in idx))
    return head + " " + "; ".join(parts) if parts else head


def _resource_row(state: SlotState, r: int, opts: PromptOptions) -> str:
    scale, _ = _unit(state)
    rid = int(state.resource_ids[r])
    parts = [f"bw {_num(float(state.bandwidth_hz[r]) / 1e6)} MHz"]
    if opts.pairs_per_row:
        col = np.where(state.user_eligible, state.utility[:, r], -np.inf)
        k = min(opts.pairs_per_row, int(np.isfinite(col).sum()))
        if k:
            idx = np.argpartition(-col, k - 1)[:k] if k < col.size else np.arange(col.size)
            idx = idx[np.lexsort((idx, -col[idx]))][:k]
            parts.append("best " + " ".join(f"{int(state.user_ids[u])}={_num(float(col[u]) * scale)}" for u in idx))
    return f"{rid}: " + "; ".join(parts)


def detail_rows(
    state: SlotState,
    view: HistoryView | None,
    opts: PromptOptions,
    users: np.ndarray,
    resources: np.ndarray,
    flat: bool,
) -> Iterator[tuple[str, int, str]]:
    """Detail rows in priority order: ("u"|"r", index, text) interleaved so that both lists
    advance in proportion to their lengths. In the flat case resources need no row of their own
    (their ids are listed in chunks)."""
    if flat:
        chunk = FLAT_ID_CHUNK
        for i in range(max(users.size, 1)):
            if i < users.size:
                yield "u", int(users[i]), _user_row(state, int(users[i]), view, opts, flat)
            lo = i * chunk
            if lo < resources.size:
                ids = resources[lo : lo + chunk]
                yield "R", lo, " ".join(str(int(state.resource_ids[r])) for r in ids)
        for lo in range((max(users.size, 1)) * chunk, resources.size, chunk):
            ids = resources[lo : lo + chunk]
            yield "R", lo, " ".join(str(int(state.resource_ids[r])) for r in ids)
        return
    nu, nr = users.size, resources.size
    iu = ir = 0
    while iu < nu or ir < nr:
        take_user = ir >= nr or (iu < nu and (iu + 1) / nu <= (ir + 1) / nr)
        if take_user:
            u = int(users[iu])
            iu += 1
            yield "u", u, _user_row(state, u, view, opts, flat)
        else:
            r = int(resources[ir])
            ir += 1
            yield "r", r, _resource_row(state, r, opts)


def count_detail_rows(users: np.ndarray, resources: np.ndarray, flat: bool) -> int:
    """How many rows ``detail_rows`` yields for these priority lists."""
    if flat:
        chunks = -(-resources.size // FLAT_ID_CHUNK)
        return users.size + chunks
    return users.size + resources.size
