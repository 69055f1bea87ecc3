"""Evaluation used during training (``eval/…`` metrics): the served decode on held-out slots.

* spectrum: sum-rate ratio to the KM optimum on the same slots, for the served decode (exact
  assignment on the student's margins) and for the plain PAG greedy decode (the network alone),
  with a random valid assignment for scale;
* mac: closed-loop leader utility (SPEC §3 eq. 5) over episodes, against the best of the
  pf / max_weight / rr baselines on the same seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from service.history import CellHistory, HistoryView, apply_feedback, record_decision
from service.policies.assignment import random_valid
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet
from service.policies.student_decode import decode_capped
from service.rng import slot_rng
from service.sim.spectrum import SpectrumConfig, SpectrumEnv
from service.types import SlotState, slot_utility
from trainer.checkpoint import TorchStudent
from trainer.data import make_mac_env

#: one seed for every held-out evaluation, so the stages of a recipe are compared on the same slots
EVAL_SEED = 12345

Decider = Callable[[SlotState, HistoryView, np.random.Generator], np.ndarray]

#: held-out spectrum scenarios of the training evaluation (N, R, busy)
SPECTRUM_EVAL: tuple[tuple[int, int, int], ...] = (
    (5, 5, 1),
    (7, 10, 2),
    (10, 15, 3),
    (15, 20, 4),
    (5, 5, 2),
    (8, 10, 4),
    (12, 15, 6),
    (15, 20, 8),
    (50, 50, 10),
    (100, 100, 20),
)


def evaluate_spectrum(
    student: TorchStudent,
    *,
    slots: int = 20,
    seed: int = 12345,
    scenarios: Sequence[tuple[int, int, int]] = SPECTRUM_EVAL,
) -> dict[str, float]:
    """Ratios to KM per scenario and their minimum: ``eval/ratio_km_min`` (served decode),
    ``eval/greedy_ratio_km_min`` (PAG greedy decode), ``eval/random_ratio_km_mean``."""
    out: dict[str, float] = {}
    served, greedy, rand = [], [], []
    km = PolicySet().get("km")
    for n, r, b in scenarios:
        env = SpectrumEnv(SpectrumConfig(num_ue=n, num_channels=r, num_busy=b), seed=seed + n * 1000 + r)
        state = env.reset()
        history = CellHistory.empty()
        tot = np.zeros(4)
        rng = np.random.default_rng(seed)
        for _ in range(slots):
            view = history.view(state)
            opt = np.asarray(km(state, PolicyContext(view, rng)), np.int64)
            logits = student.logits(state, view)
            own = student(state, view)
            tot += [
                slot_utility(state, opt),
                slot_utility(state, own),
                slot_utility(state, decode_capped(state, logits, surplus_margin=student.ckpt.surplus_margin)),
                slot_utility(state, random_valid(state, rng)),
            ]
            history = record_decision(history, state, own)
            res = env.step(own)
            history = apply_feedback(history, res.feedback)
            state = res.state
        ratio = tot / max(tot[0], 1e-12)
        out[f"eval/ratio_km/u{n}-c{r}-b{b}"] = ratio[1]
        out[f"eval/greedy_ratio_km/u{n}-c{r}-b{b}"] = ratio[2]
        served.append(ratio[1])
        greedy.append(ratio[2])
        rand.append(ratio[3])
    out["eval/ratio_km_min"] = float(min(served))
    out["eval/greedy_ratio_km_min"] = float(min(greedy))
    out["eval/random_ratio_km_mean"] = float(np.mean(rand))
    return out


def mac_episode(
    decider: Decider | str,
    scenario: str,
    overrides: dict[str, Any],
    *,
    seed: int,
    ttis: int,
    policies: PolicySet | None = None,
) -> dict[str, float]:
    """One closed-loop mac episode: KPIs of ``decider`` (a callable, or a registered policy name)."""
    env = make_mac_env(scenario, overrides, seed)
    state = env.reset()
    history = CellHistory.empty()
    rng = np.random.default_rng(seed)
    pol = None
    if isinstance(decider, str):
        pol = (policies or PolicySet()).get(decider)
    for _ in range(ttis):
        view = history.view(state)
        if pol is not None:
            owner = np.asarray(pol(state, PolicyContext(view, slot_rng(seed, state.cell_id, state.slot))), np.int64)
        else:
            owner = decider(state, view, rng)  # type: ignore[operator]
        history = record_decision(history, state, owner)
        res = env.step(owner)
        history = apply_feedback(history, res.feedback)
        state = res.state
    return env.kpis()


#: scenarios of the training-time mac evaluation (N <= 10 except the two generalisation runs)
MAC_EVAL: tuple[tuple[str, dict[str, Any]], ...] = (
    ("standard", {}),
    ("standard", {"num_ue": 10, "num_rbg": 4}),
    ("case4", {"num_rbg": 4}),
    ("standard", {"num_ue": 20}),
    ("standard", {"num_ue": 50}),
)
BASELINES = ("pf", "max_weight", "rr")


def baseline_utilities(
    *, ttis: int, seed: int, scenarios: Sequence[tuple[str, dict[str, Any]]] = MAC_EVAL
) -> list[float]:
    """Best baseline leader utility per scenario (computed once per training run)."""
    pset = PolicySet()
    return [
        max(mac_episode(b, s, o, seed=seed, ttis=ttis, policies=pset)["leader_utility"] for b in BASELINES)
        for s, o in scenarios
    ]


def evaluate_mac(
    student: Decider,
    best_baseline: Sequence[float],
    *,
    ttis: int,
    seed: int,
    scenarios: Sequence[tuple[str, dict[str, Any]]] = MAC_EVAL,
) -> dict[str, float]:
    """Leader-utility ratio to the best baseline per scenario, the minimum and the mean Jain."""
    out: dict[str, float] = {}
    ratios, jain = [], []
    for (s, o), base in zip(scenarios, best_baseline, strict=True):
        k = mac_episode(student, s, o, seed=seed, ttis=ttis)
        label = s + "".join(f"-{key}{val}" for key, val in o.items())
        ratios.append(k["leader_utility"] / base)
        jain.append(k["fairness_jfi"])
        out[f"eval/utility_ratio/{label}"] = ratios[-1]
    out["eval/utility_ratio_min"] = float(min(ratios))
    out["eval/utility_ratio_mean"] = float(np.mean(ratios))
    out["eval/jain_mean"] = float(np.mean(jain))
    return out
