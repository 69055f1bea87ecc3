"""One slot, one decision: serialize → policy → PAG check → repair (SPEC §4–§5).

``decide`` is the single entry point every transport and the closed-loop simulator call. It
is synchronous and free of I/O of its own (a teacher policy does its own HTTP); per-stage
times are measured with ``perf_counter_ns``. ``decide_many`` decides the slots of distinct
cells of one TTI: a policy that batches (``Policy.batches``: the student, one onnxruntime call;
the baselines, one compiled call) acts on all of them in one ``act_many`` call, the PAG check
of their DCMs runs in one compiled call (``batched.valid_many``), and each slot is then
repaired and, where it failed, decided again through its fallbacks exactly as ``decide`` alone
would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from service.batched import valid_many
from service.errors import DeadlineExceededError, GnbSchedError, PolicyError
from service.history import CellHistory, HistoryView
from service.pag.checks import CheckResult, RawAction, check, valid_result
from service.pag.repair import repair
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet
from service.rng import slot_rng
from service.types import STAGES, Decision, SlotState, served_bits

__all__ = ["STAGES", "Prepared", "decide", "decide_many"]


@dataclass(slots=True)
class Prepared:
    """The first policy's raw output of a slot, produced in a batch (``decide_many``)."""

    ctx: PolicyContext
    raw: RawAction
    serialize_us: float
    policy_us: float  # the slot's own work and its share of the batch's: its ``total`` counts these
    deadline: float | None  # absolute ``perf_counter()``, or None
    #: the PAG check of ``raw`` done in the batch (a valid DCM), None to check it alone
    checked: CheckResult | None = None
    check_us: float = 0.0  # its share of the batch's check


def _context(state: SlotState, view: HistoryView, seed: int, deadline: float | None) -> PolicyContext:
    """A policy's context for ``state``: its history view, the slot's seeded generator (built on
    first use) and the absolute deadline."""
    return PolicyContext(view, partial(slot_rng, seed, state.cell_id, state.slot), deadline)


def decide(
    state: SlotState,
    history: CellHistory,
    policy: str,
    *,
    policies: PolicySet,
    fallbacks: Sequence[str] = (),
    deadline_s: float | None = None,
    seed: int = 0,
    prepared: Prepared | None = None,
) -> Decision:
    """Decide one slot with ``policy``; on failure or deadline overrun, use ``fallbacks`` in order.

    The last policy of the chain is always accepted (it is the safety net). The returned
    decision is always PAG-valid; ``valid_before_repair`` and ``violations`` describe the raw
    output of the policy that served. ``prepared``: ``policy``'s raw output of this slot, already
    produced in a batch (``decide_many``), used in place of its serialize and act.
    """
    t0 = time.perf_counter_ns()
    if prepared is not None:
        t0 -= round((prepared.serialize_us + prepared.policy_us + prepared.check_us) * 1e3)
        deadline = prepared.deadline
    else:
        deadline = None if deadline_s is None else time.perf_counter() + deadline_s
    view = history.view(state) if prepared is None else prepared.ctx.history
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
            if i == 0 and prepared is not None:
                ctx, raw = prepared.ctx, prepared.raw
                timings["serialize"] += prepared.serialize_us
                timings["policy"] += prepared.policy_us
            else:
                ctx = _context(state, view, seed, deadline)
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
        checked, check_us = (prepared.checked, prepared.check_us) if i == 0 and prepared is not None else (None, 0.0)
        result = check(state, raw) if checked is None else checked
        t5 = time.perf_counter_ns()
        owner = repair(state, result)
        t6 = time.perf_counter_ns()
        timings["check"] = (t5 - t4) / 1e3 + check_us  # the batch's check counts, valid or not
        timings["repair"] = (t6 - t5) / 1e3
        timings["total"] = (t6 - t0) / 1e3
        served = served_bits(state, owner)
        served.flags.writeable = False  # shared with the cell's next history (``last_expected``)
        return Decision(
            owner=owner,
            policy=name,
            valid_before_repair=result.valid,
            violations=result.violations,
            utility=float(served.sum()),
            fallback="; ".join(reasons) if reasons else None,
            fallback_reason=kinds[0] if kinds else None,
            timings_us=timings,
            policy_version=pol.version,
            notes=ctx.info,
            served=served,
        )
    raise AssertionError("unreachable: the last policy of the chain either returns or raises")


def decide_many(
    states: Sequence[SlotState],
    histories: Sequence[CellHistory],
    policy: str,
    *,
    policies: PolicySet,
    fallbacks: Sequence[str] = (),
    deadline_s: float | None = None,
    seed: int = 0,
) -> list[Decision | Exception]:
    """``decide`` for the slots of distinct cells of one TTI, answers in order.

    A policy that batches (``Policy.batches``) gets one ``act_many`` call for every slot of a
    preset it serves; each slot is then checked and repaired on its own (a batch that ends past
    the deadline sends every slot to its fallbacks, as a late answer alone would), and a slot
    whose raw output failed goes through ``decide`` alone, fallbacks included. Any other policy,
    or a single slot: ``decide`` per slot. A decision is the one
    ``decide`` gives the slot alone (``act_many`` returns each slot's own raw output); a slot's
    failure is its entry (the exception ``decide`` would raise).
    """

    def alone(i: int, prepared: Prepared | None = None) -> Decision | Exception:
        try:
            return decide(
                states[i],
                histories[i],
                policy,
                policies=policies,
                fallbacks=fallbacks,
                deadline_s=deadline_s,
                seed=seed,
                prepared=prepared,
            )
        except Exception as exc:
            return exc

    try:
        pol = policies.get(policy)
    except Exception:  # unknown or broken: each slot falls back on its own
        pol = None
    batch = [] if pol is None or not pol.batches else [i for i, s in enumerate(states) if s.preset in pol.presets]
    if len(batch) < 2:
        return [alone(i) for i in range(len(states))]
    assert pol is not None
    deadline = None if deadline_s is None else time.perf_counter() + deadline_s
    ctxs = [_context(states[i], histories[i].view(states[i]), seed, deadline) for i in batch]
    try:
        raws = pol.act_many([states[i] for i in batch], ctxs)  # type: ignore[attr-defined]
    except Exception:  # a broken batch path: every slot is decided alone (and fails or falls back there)
        return [alone(i) for i in range(len(states))]
    prepared: dict[int, Prepared] = {}
    for i, ctx, (raw, serialize_us, policy_us) in zip(batch, ctxs, raws, strict=True):
        if not isinstance(raw, Exception):
            prepared[i] = Prepared(ctx, raw, serialize_us, policy_us, deadline)
    _check_batch(states, prepared)
    return [alone(i, prepared.get(i)) for i in range(len(states))]


def _check_batch(states: Sequence[SlotState], prepared: dict[int, Prepared]) -> None:
    """The PAG check of the batch's DCMs in one compiled call (``batched.valid_many``); a valid
    one's result is kept in its ``Prepared`` with an equal share of the call's time. Any other
    raw output (invalid, not a DCM, a slot with retransmissions) is checked by ``decide`` alone,
    as are the slots of a batch whose check fails."""
    dcms = [
        i
        for i, p in prepared.items()
        if isinstance(p.raw, np.ndarray) and p.raw.dtype == np.int64 and p.raw.shape == (states[i].num_res,)
    ]
    if not dcms:
        return
    t0 = time.perf_counter_ns()
    try:
        valid = valid_many([states[i] for i in dcms], [prepared[i].raw for i in dcms])  # type: ignore[misc]
    except Exception:  # a broken batch check: every slot is checked alone
        return
    for i, ok in zip(dcms, valid.tolist(), strict=True):
        if ok:
            prepared[i].checked = valid_result(prepared[i].raw)  # type: ignore[arg-type]
    share_us = (time.perf_counter_ns() - t0) / 1e3 / len(dcms)
    for i in dcms:
        prepared[i].check_us = share_us
