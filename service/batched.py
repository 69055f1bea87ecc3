"""The cells of one TTI decided together: one flat layout, one compiled call per rule and TTI.

``CellBatch`` lays the slots of C cells end to end (numpy in, numpy out, no I/O): the utilities
float64 [Σ N_c·R_c] (cell c's [N_c, R_c] matrix row-major, from ``mat_off[c]``), per-user arrays
[Σ N_c] (from ``ue_off[c]``) and per-resource arrays [Σ R_c] (from ``res_off[c]``). The batched
kernels loop over the cells in compiled code and run, on each cell's views, the very kernel the
single-cell path runs (``assign._greedy_kernel``, ``assign.rr_kernel``), or the same rule
(``valid_many``: the PAG fast path of ``pag.checks.check_dcm``), so a cell's decision is bit for
bit the one it gets alone, whatever else is in its batch.

Used by the baselines' ``act_many`` (pf, max_weight, rr, greedy, pf_spread:
``service.policies.schedulers``, ``service.policies.assignment``) and by
``service.pipeline.decide_many`` for the PAG check of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.assign import NEED_TOLERANCE, _greedy_kernel, retx_first, rr_kernel, rr_order
from service.history import HistoryView
from service.jit import kernel
from service.types import SlotState, make_slot

__all__ = [
    "MAX_WEIGHT",
    "PF",
    "UTILITY",
    "CellBatch",
    "greedy_fill_many",
    "round_robin_many",
    "valid_many",
]


def warm_up() -> None:
    """Compile (or load from numba's cache) the batched kernels on two 2 × 2 slots, so that no
    served TTI pays for it; ``ServiceCore.preload`` calls it before the service is ready."""
    states = [make_slot("mac", [0, 1], [0, 1], utility=np.ones((2, 2)), buffer_bits=[1.0, 1.0])] * 2
    batch = CellBatch.of(states)
    for rule in (UTILITY, PF, MAX_WEIGHT):
        greedy_fill_many(batch, rule, np.ones(4))
    view = HistoryView(np.ones(2), np.zeros(2), np.full(2, -1), np.ones(2, bool), np.zeros(2, np.int64))
    valid_many(states, round_robin_many(batch, [view, view]))


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """int64 [C + 1]: 0 then the running sums of ``sizes`` [C]."""
    off = np.zeros(sizes.size + 1, np.int64)
    np.cumsum(sizes, out=off[1:])
    return off


@dataclass(frozen=True, slots=True)
class CellBatch:
    """The slots of C cells laid end to end (see the module doc). Arrays are read, never written."""

    states: tuple[SlotState, ...]
    num_ue: np.ndarray  # int64 [C]
    num_res: np.ndarray  # int64 [C]
    ue_off: np.ndarray  # int64 [C + 1]
    res_off: np.ndarray  # int64 [C + 1]
    mat_off: np.ndarray  # int64 [C + 1]
    utility: np.ndarray  # float64 [Σ N·R]
    available: np.ndarray  # bool [Σ R]
    eligible: np.ndarray  # bool [Σ N]
    cap: np.ndarray  # int64 [C], max_resources_per_user
    buffer: np.ndarray  # float64 [Σ N], 0 where a cell has none
    with_buffer: np.ndarray  # bool [C]: a mac cell with buffers (what caps a user's fill)

    @staticmethod
    def of(states: Sequence[SlotState]) -> CellBatch:
        """The batch of ``states`` (at least one)."""
        num_ue = np.fromiter((s.num_ue for s in states), np.int64, len(states))
        num_res = np.fromiter((s.num_res for s in states), np.int64, len(states))
        with_buffer = np.fromiter(
            (s.preset == "mac" and s.buffer_bits is not None for s in states), np.bool_, len(states)
        )
        return CellBatch(
            states=tuple(states),
            num_ue=num_ue,
            num_res=num_res,
            ue_off=_offsets(num_ue),
            res_off=_offsets(num_res),
            mat_off=_offsets(num_ue * num_res),
            utility=np.concatenate([s.utility.ravel() for s in states]).astype(np.float64, copy=False),
            available=np.concatenate([s.resource_available for s in states]).astype(np.bool_, copy=False),
            eligible=np.concatenate([s.user_eligible for s in states]).astype(np.bool_, copy=False),
            cap=np.fromiter((s.max_resources_per_user for s in states), np.int64, len(states)),
            buffer=np.concatenate(
                [s.buffer_bits if w else np.zeros(s.num_ue) for s, w in zip(states, with_buffer.tolist(), strict=True)]
            ).astype(np.float64, copy=False),
            with_buffer=with_buffer,
        )

    def per_user(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """float64 [Σ N] of one [N_c] array per cell."""
        return np.concatenate(arrays).astype(np.float64, copy=False)

    def split_res(self, flat: np.ndarray) -> list[np.ndarray]:
        """``flat`` [Σ R] as one [R_c] array per cell (copies, owned by the caller)."""
        return [a.copy() for a in np.split(flat, self.res_off[1:-1])]


#: the score rules of ``greedy_fill_many`` (each the single-cell policy's score, computed in the
#: kernel per cell: no [Σ N·R] temporary)
UTILITY, PF, MAX_WEIGHT = 0, 1, 2


def _starts(batch: CellBatch) -> tuple[np.ndarray, np.ndarray]:
    """The DCMs the baselines start from (HARQ retransmissions served first, ``assign.retx_first``)
    int64 [Σ R], and which users may take more, bool [Σ N]."""
    owner = np.zeros(int(batch.res_off[-1]), np.int64)
    selected = np.ones(int(batch.ue_off[-1]), np.bool_)
    for c, state in enumerate(batch.states):
        if state.retx_rbgs is None:
            continue
        start, users = retx_first(state)
        if start is None or users is None:
            continue
        owner[batch.res_off[c] : batch.res_off[c + 1]] = start
        sel = selected[batch.ue_off[c] : batch.ue_off[c + 1]]
        sel[:] = False
        sel[users] = True
    return owner, selected


def greedy_fill_many(batch: CellBatch, rule: int, weight: np.ndarray | None = None) -> list[np.ndarray]:
    """``greedy_fill(state, score_c, *retx_first(state))`` of every cell (the baselines' rule) in
    one compiled call, the score computed per cell in the kernel: ``UTILITY`` (greedy: the
    utility), ``PF`` (pf: ``utility / max(avg, 1e-9 · the cell's largest utility)``, weight = the
    users' PF averages, as ``assign.pf_priority``) or ``MAX_WEIGHT`` (``utility · weight``,
    weight = the users' queues). weight: float64 [Σ N]. Returns one DCM int64 [R_c] per cell,
    bit for bit each cell's own."""
    owner, selected = _starts(batch)
    _greedy_many_kernel(
        rule,
        np.zeros(int(batch.ue_off[-1])) if weight is None else np.ascontiguousarray(weight, np.float64),
        batch.utility,
        owner,
        batch.available,
        batch.eligible,
        selected,
        batch.cap,
        batch.buffer,
        batch.with_buffer,
        NEED_TOLERANCE,
        batch.num_ue,
        batch.num_res,
        batch.ue_off,
        batch.res_off,
        batch.mat_off,
    )
    return batch.split_res(owner)


def round_robin_many(batch: CellBatch, views: Sequence[HistoryView]) -> list[np.ndarray]:
    """``rr``'s decision of every cell in one compiled call (``assign.rr_order`` and
    ``assign.rr_kernel``'s turns, as ``assign.round_robin``). Returns one DCM int64 [R_c] per cell."""
    owner, selected = _starts(batch)
    order = np.concatenate([rr_order(s, v) for s, v in zip(batch.states, views, strict=True)])
    _rr_many_kernel(
        order,
        batch.utility,
        owner,
        batch.available,
        batch.eligible,
        selected,
        batch.cap,
        batch.buffer,
        batch.with_buffer,
        batch.num_ue,
        batch.num_res,
        batch.ue_off,
        batch.res_off,
        batch.mat_off,
    )
    return batch.split_res(owner)


def valid_many(states: Sequence[SlotState], owners: Sequence[np.ndarray]) -> np.ndarray:
    """bool [C]: the DCM of each cell (int64 [R_c]) passes every PAG rule (SPEC §4), in one
    compiled call; the rule of ``pag.checks.check_dcm``'s fast path. A cell with HARQ
    retransmissions pending (``retx_rbgs``) is reported False: the rule "retransmissions first"
    is checked by ``check`` alone. Only the masks and caps are laid end to end (no utilities)."""
    count = len(states)
    num_ue = np.fromiter((s.num_ue for s in states), np.int64, count)
    out = np.zeros(count, np.bool_)
    _valid_many_kernel(
        np.concatenate(owners).astype(np.int64, copy=False),
        np.concatenate([s.resource_available for s in states]).astype(np.bool_, copy=False),
        np.concatenate([s.user_eligible for s in states]).astype(np.bool_, copy=False),
        np.fromiter((s.max_resources_per_user for s in states), np.int64, count),
        np.fromiter((s.retx_rbgs is not None for s in states), np.bool_, count),
        num_ue,
        _offsets(num_ue),
        _offsets(np.fromiter((s.num_res for s in states), np.int64, count)),
        out,
    )
    return out


# ----------------------------------------------------------------------------- kernels


@kernel
def _greedy_many_kernel(
    rule: int,
    weight: np.ndarray,
    utility: np.ndarray,
    owner: np.ndarray,
    available: np.ndarray,
    eligible: np.ndarray,
    selected: np.ndarray,
    cap: np.ndarray,
    buffer: np.ndarray,
    with_buffer: np.ndarray,
    tolerance: float,
    num_ue: np.ndarray,
    num_res: np.ndarray,
    ue_off: np.ndarray,
    res_off: np.ndarray,
    mat_off: np.ndarray,
) -> None:
    """Per cell, the score of ``rule`` (in a scratch matrix) and ``_greedy_kernel`` on the cell's
    views, in place on ``owner`` [Σ R]."""
    scratch = np.empty(np.max(num_ue * num_res) if num_ue.shape[0] and rule != UTILITY else 0)
    for c in range(num_ue.shape[0]):
        n, r = num_ue[c], num_res[c]
        u0, u1, r0, r1, m0, m1 = ue_off[c], ue_off[c + 1], res_off[c], res_off[c + 1], mat_off[c], mat_off[c + 1]
        util = utility[m0:m1].reshape((n, r))
        if rule == UTILITY:
            score = util
        else:
            score = scratch[: n * r].reshape((n, r))
            if rule == PF:
                top = 0.0
                for u in range(n):
                    for k in range(r):
                        top = max(top, util[u, k])
                floor = 1e-9 * top if top > 0 else 1e-9
                for u in range(n):
                    avg = max(weight[u0 + u], floor)
                    for k in range(r):
                        score[u, k] = util[u, k] / avg
            else:
                for u in range(n):
                    for k in range(r):
                        score[u, k] = util[u, k] * weight[u0 + u]
        _greedy_kernel(
            score,
            util,
            owner[r0:r1],
            available[r0:r1],
            eligible[u0:u1],
            selected[u0:u1],
            cap[c],
            buffer[u0:u1],
            with_buffer[c],
            tolerance,
        )


@kernel
def _rr_many_kernel(
    order: np.ndarray,
    utility: np.ndarray,
    owner: np.ndarray,
    available: np.ndarray,
    eligible: np.ndarray,
    selected: np.ndarray,
    cap: np.ndarray,
    buffer: np.ndarray,
    with_buffer: np.ndarray,
    num_ue: np.ndarray,
    num_res: np.ndarray,
    ue_off: np.ndarray,
    res_off: np.ndarray,
    mat_off: np.ndarray,
) -> None:
    """``rr_kernel`` on each cell's views, in place on ``owner`` [Σ R]; ``order`` [Σ N]: each cell's
    users in round-robin order (indices within the cell)."""
    for c in range(num_ue.shape[0]):
        n, r = num_ue[c], num_res[c]
        u0, u1, r0, r1, m0, m1 = ue_off[c], ue_off[c + 1], res_off[c], res_off[c + 1], mat_off[c], mat_off[c + 1]
        rr_kernel(
            order[u0:u1],
            utility[m0:m1].reshape((n, r)),
            owner[r0:r1],
            available[r0:r1],
            eligible[u0:u1],
            selected[u0:u1],
            cap[c],
            buffer[u0:u1],
            with_buffer[c],
        )


@kernel
def _valid_many_kernel(
    owner: np.ndarray,
    available: np.ndarray,
    eligible: np.ndarray,
    cap: np.ndarray,
    retx: np.ndarray,
    num_ue: np.ndarray,
    ue_off: np.ndarray,
    res_off: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[c]: cell c's tokens are in {0..N_c}, grant only available resources to eligible users,
    none over its cap, and the cell has no retransmission rule to check."""
    counts = np.zeros(num_ue.max() if num_ue.shape[0] else 0, np.int64)
    for c in range(num_ue.shape[0]):
        if retx[c]:
            continue
        n = num_ue[c]
        counts[:n] = 0
        ok = True
        for k in range(res_off[c], res_off[c + 1]):
            t = owner[k]
            if t == 0:
                continue
            if t < 0 or t > n or not available[k] or not eligible[ue_off[c] + t - 1]:
                ok = False
                break
            counts[t - 1] += 1
            if counts[t - 1] > cap[c]:
                ok = False
                break
        out[c] = ok
