"""Deterministic repair (SPEC §4, LSA theorem 1). Pure, O(N·R) plus a sort.

1. Drop illegal pairs (unknown ids, busy resources, ineligible users).
2. Contention: a resource claimed by several users goes to the one with the highest utility
   on it (ties: lowest user index).
3. Cap: a user over ``max_resources_per_user`` keeps its highest-utility resources
   (ties: lowest resource index).
4. Retransmissions first (mac slots with ``retx_rbgs``; ``assign.serve_retx``): the users of P
   (eligible, ``retx_rbgs > 0``), larger ``retx_bits`` first and ties by user id, get RBGs up to
   ``min(retx_rbgs, max_resources_per_user)`` (a cap below ``retx_rbgs`` wins), taken first from
   unused available RBGs (the user's highest utility first), then from users outside P (their
   lowest-utility RBGs first), then from users of P beyond their own need; never from a user of
   P at or below its need. The other RBGs keep their owners.
5. Fill: eligible users below their cap are greedily given free available resources,
   highest utility first (mac: only while the user still has unscheduled data; users with a
   retransmission pending send only it and are not filled). Skipped when the output broke no
   rule but "retransmissions first": step 4 then moves only the RBGs the retransmissions need.

A PAG-valid output is returned unchanged (steps 1–4 are no-ops and step 5 runs only when the
output violated the grammar), so repair is idempotent.
"""

from __future__ import annotations

import numpy as np

from service.assign import greedy_fill, serve_retx
from service.pag.checks import RETX_NOT_FIRST, CheckResult
from service.types import SlotState


def repair(state: SlotState, result: CheckResult) -> np.ndarray:
    """Repaired DCM tokens int64 [R] for the checked raw output ``result``."""
    if result.valid and result.dcm is not None:
        return result.dcm.copy()
    util = state.utility
    pu, pr = result.pair_user[result.legal], result.pair_res[result.legal]

    # 2. contention: order pairs by (resource, -utility, user); the first per resource wins
    if pu.size:
        order = np.lexsort((pu, -util[pu, pr], pr))
        pu, pr = pu[order], pr[order]
        first = np.ones(pu.size, bool)
        first[1:] = pr[1:] != pr[:-1]
        pu, pr = pu[first], pr[first]

    # 3. cap: order by (user, -utility, resource); keep the first `cap` per user
    cap = state.max_resources_per_user
    if pu.size:
        order = np.lexsort((pr, -util[pu, pr], pu))
        pu, pr = pu[order], pr[order]
        new_user = np.ones(pu.size, bool)
        new_user[1:] = pu[1:] != pu[:-1]
        starts = np.flatnonzero(new_user)
        rank = np.arange(pu.size) - np.repeat(starts, np.diff(starts, append=pu.size))
        keep = rank < cap
        pu, pr = pu[keep], pr[keep]

    owner = np.zeros(state.num_res, np.int64)
    owner[pr] = pu + 1
    if result.valid:
        return owner

    # 4. retransmissions first
    need = state.retx_need()
    if need is not None:
        owner = serve_retx(state, owner)
        if all(v.kind == RETX_NOT_FIRST for v in result.violations):
            return owner  # only the rule was broken: the RBGs it needed moved, nothing else
    users = None if need is None or not need.any() else np.flatnonzero(need == 0)
    return greedy_fill(state, state.utility, owner, users)
