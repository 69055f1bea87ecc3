"""What one ``gnbsched bench perf`` run measures (``FULL``, ``QUICK``), and what its parts share:
the slot generators, percentiles and the progress log."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.sim.mac import make_mac_env
from service.sim.spectrum import PAPER_GRID, SPECTRUM_SCENARIOS, make_spectrum_env
from service.types import SlotState

SCALE_POLICIES = ("auction", "grouped_km", "greedy", "student", "random")
STAGE_POLICIES = {"mac": ("pf", "greedy", "km"), "spectrum": ("pf", "greedy", "km", "auction")}
E2E_POLICY = {"mac": "pf", "spectrum": "km"}
NUM_RBG = 69  # NR 100 MHz carrier at 30 kHz: 273 PRBs in RBGs of 4 (TS 38.214 table 5.1.2.2.1-1)
#: the batched-TTI measurements: mac cells of R = 68 RBGs, these policies
TTI_RBG = 68
TTI_POLICIES = ("pf", "student")


@dataclass(frozen=True)
class Plan:
    """How much of each measurement a run does."""

    scale_slots: dict[str, int]  # scenario -> slots played
    anytime_deadlines_ms: tuple[float, ...]
    anytime_slots: int
    stage_slots: int
    e2e_sizes: tuple[int, ...]
    e2e_requests: dict[int, int]  # N -> timed requests per transport
    e2e_warmup: int
    load_clients: int
    load_seconds: float
    tti_shapes: tuple[tuple[int, int, int], ...]  # (cells C, users N, RBGs R) per batched TTI
    tti_count: dict[tuple[int, int, int], int]  # shape -> timed TTIs per transport and policy
    tti_warmup: int  # TTIs (or single-cell requests) sent first, not timed
    tti_single_shapes: tuple[tuple[int, int, int], ...]  # shapes also sent as C single-cell calls
    single_requests: int  # timed single-cell requests at N = 100, R = NUM_RBG (against the echo floor)
    inference_cells: tuple[int, ...]  # cells per TTI of the student's batched inference (in process)
    inference_ttis: int  # timed TTIs at 8 cells (scaled down for more cells, at least 3)


FULL = Plan(
    scale_slots={**{s: 5 for s in PAPER_GRID}, "scale-I": 5, "scale-II": 5, "scale-III": 5, "scale-III-all-active": 3},
    anytime_deadlines_ms=(2.0, 5.0, 10.0, 20.0, 30.0, 50.0),
    anytime_slots=3,
    stage_slots=300,
    e2e_sizes=(10, 100, 1000),
    e2e_requests={10: 2000, 100: 2000, 1000: 200},
    e2e_warmup=200,
    load_clients=8,
    load_seconds=5.0,
    tti_shapes=((8, 32, TTI_RBG), (20, 100, TTI_RBG)),
    tti_count={(8, 32, TTI_RBG): 400, (20, 100, TTI_RBG): 300},
    tti_warmup=30,
    tti_single_shapes=((8, 32, TTI_RBG),),
    single_requests=1000,
    inference_cells=(1, 8, 20, 100, 1000),
    inference_ttis=200,
)
QUICK = Plan(
    scale_slots={"u5-c5-b1": 2, "u15-c20-b8": 2, "scale-I": 1},
    anytime_deadlines_ms=(5.0, 20.0),
    anytime_slots=1,
    stage_slots=30,
    e2e_sizes=(10, 100),
    e2e_requests={10: 40, 100: 40},
    e2e_warmup=10,
    load_clients=2,
    load_seconds=0.5,
    tti_shapes=((8, 32, TTI_RBG),),
    tti_count={(8, 32, TTI_RBG): 20},
    tti_warmup=5,
    tti_single_shapes=((8, 32, TTI_RBG),),
    single_requests=40,
    inference_cells=(1, 8),
    inference_ttis=10,
)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the summary)."""
    print(f"[perf] {msg}", file=sys.stderr, flush=True)


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile, NaN for no values."""
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else math.nan


def spectrum_env(scenario: str, seed: int):
    """The simulator of a scale scenario (``scale-III-all-active``: Scale III with every user requesting)."""
    if scenario == "scale-III-all-active":  # every registered user requests: 2000 users, 1600 free channels
        return make_spectrum_env("scale-III", seed=seed, bursty=False)
    return make_spectrum_env(scenario, seed=seed)


def scenario_shape(scenario: str) -> tuple[int, int, int]:
    """(users, channels, busy channels) of a scale scenario."""
    cfg = SPECTRUM_SCENARIOS["scale-III" if scenario == "scale-III-all-active" else scenario]
    return int(cfg.num_ue or 0), cfg.num_channels, int(cfg.num_busy or 0)


def mac_states(num_ue: int, slots: int, seed: int, num_rbg: int = NUM_RBG) -> list[SlotState]:
    """``slots`` consecutive mac slots (standard traffic) of ``num_ue`` users on ``num_rbg`` RBGs."""
    env = make_mac_env("standard", seed=seed, num_ue=num_ue, num_rbg=num_rbg)
    states = [env.reset()]
    for _ in range(slots - 1):
        states.append(env.step(np.zeros(states[-1].num_res, np.int64)).state)
    return states


def spectrum_states(num_ue: int, slots: int, seed: int) -> list[SlotState]:
    """``slots`` consecutive spectrum slots (Poisson arrivals) of ``num_ue`` users on ``NUM_RBG`` channels."""
    env = make_spectrum_env("poisson", seed=seed, num_ue=num_ue, num_channels=NUM_RBG)
    states = [env.reset()]
    for _ in range(slots - 1):
        states.append(env.step(np.zeros(states[-1].num_res, np.int64)).state)
    return states


def slot_states(preset: str, num_ue: int, slots: int, seed: int) -> list[SlotState]:
    return (mac_states if preset == "mac" else spectrum_states)(num_ue, slots, seed)
