"""One slot, one decision: serialize → policy → PAG check → repair (SPEC §4–§5).

``decide`` is the single entry point every transport and the closed-loop simulator call. It
is synchronous and free of I/O of its own (a teacher policy does its own HTTP); per-stage
times are measured with ``perf_counter_ns``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

from service.errors import DeadlineExceededError, GnbSchedError, PolicyError
from service.history import CellHistory
from service.pag.checks import check
from service.pag.repair import repair
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet
from service.rng import slot_rng
from service.types import Decision, SlotState, slot_utility

STAGES = ("serialize", "policy", "check", "repair", "total")


def decide(
    state: SlotState,
    history: CellHistory,
    policy: str,
    *,
    policies: PolicySet,
    fallbacks: Sequence[str] = (),
    deadline_s: float | None = None,
    seed: int = 0,
) -> Decision:
    """Decide one slot with ``policy``; on failure or deadline overrun, use ``fallbacks`` in order.

    The last policy of the chain is always accepted (it is the safety net). The returned
    decision is always PAG-valid; ``valid_before_repair`` and ``violations`` describe the raw
    output of the policy that served.
    """
    t0 = time.perf_counter_ns()
    deadline = None if deadline_s is None else time.perf_counter() + deadline_s
    view = history.view(state)
    chain = [policy, *[f for f in fallbacks if f != policy]]
    reasons: list[str] = []
    kinds: list[str] = []
    timings: dict[str, float] = {"serialize": 0.0, "policy": 0.0}
    for i, name in enumerate(chain):
        last = i == len(chain) - 1
        try:
            pol = policies.get(name)
            if state.preset not in pol.presets:
                raise PolicyError(f"policy {name!r} does not serve the {state.preset} preset")
            ctx = PolicyContext(view, partial(slot_rng, seed, state.cell_id, state.slot), deadline)
            t1 = time.perf_counter_ns()
            obs = pol.serialize(state, ctx)
            t2 = time.perf_counter_ns()
            raw = pol.act(state, ctx, obs)
            t3 = time.perf_counter_ns()
            timings["serialize"] += (t2 - t1) / 1e3
            timings["policy"] += (t3 - t2) / 1e3
            if deadline is not None and not last and time.perf_counter() > deadline:
                raise DeadlineExceededError(f"{name} answered after the {(deadline_s or 0.0) * 1e3:.3f} ms deadline")
        except GnbSchedError as exc:
            if last:
                raise
            kinds.append(exc.kind.fallback_reason)
            reasons.append(f"{name}: {kinds[-1]}: {exc}")
            continue
        except Exception as exc:  # a broken policy must not take the slot down
            if last:
                raise PolicyError(f"{name} failed: {exc!r}") from exc
            kinds.append("error")
            reasons.append(f"{name}: error: {type(exc).__name__}: {exc}")
            continue
        t4 = time.perf_counter_ns()
        result = check(state, raw)
        t5 = time.perf_counter_ns()
        owner = repair(state, result)
        t6 = time.perf_counter_ns()
        timings["check"] = (t5 - t4) / 1e3
        timings["repair"] = (t6 - t5) / 1e3
        timings["total"] = (t6 - t0) / 1e3
        return Decision(
            owner=owner,
            policy=name,
            valid_before_repair=result.valid,
            violations=result.violations,
            utility=slot_utility(state, owner),
            fallback="; ".join(reasons) if reasons else None,
            fallback_reason=kinds[0] if kinds else None,
            timings_us=timings,
            policy_version=pol.version,
            notes=ctx.info,
        )
    raise AssertionError("unreachable: the last policy of the chain either returns or raises")
