"""Uplink RBG scheduling simulator (UDTS): the MAC preset of SPEC §3 (Stackelberg paper III, B).

``MacEnv`` is one cell as a ``SlotEnv``: TTIs of 0.5 ms, ``M`` RBGs, a population of UEs that
arrive and depart. ``reset`` / ``step`` observe the cell and play one TTI under the policy's DCM
``owner`` [M] (``service.sim.mac_cell``: arrivals, followers, air interface, leader utility of
eq. 5 as the reward); ``kpis`` reports the SPEC §3 KPIs (``service.sim.mac_stats``).
``make_mac_env`` builds one for a named scenario of ``service.sim.mac_config.MAC_SCENARIOS``.

Population: with ``num_ue=None`` the number of UEs steps through ``num_ue_cycle`` every
``population_period_tti`` TTIs (default 2, 3, ..., 10 every 100 ms); arriving UEs get fresh ids
and the next traffic spec / follower kind in arrival order, departing UEs (drawn uniformly) leave
with their buffer (counted as ``departed_dpdus``, not as drops).

Randomness: one ``SeedSequence(seed)`` with one child stream per (process, UE id) — channel,
traffic, erasure, S-ALOHA, phase — and one for the population (``service.sim.mac_ue``). The
exogenous processes (channels, arrivals, population) are therefore identical for every policy
run with one seed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from service.sim.base import SlotEnv, StepResult
from service.sim.channel import UeChannel, UniformStream, stream
from service.sim.mac_cell import observe_cell, play_cell_tti
from service.sim.mac_config import MAC_SCENARIOS, MacConfig
from service.sim.mac_stats import MacStats
from service.sim.mac_ue import STREAM_CHANNEL, STREAM_POPULATION, MacUe
from service.types import SlotState


class MacEnv(SlotEnv):
    """Single-cell UDTS environment (``SlotEnv``). See the module doc for one TTI."""

    preset = "mac"

    def __init__(self, config: MacConfig | None = None, *, seed: int = 0) -> None:
        self.cfg = config or MacConfig()
        self.seed = seed
        self._pool = np.ones(self.cfg.num_rbg, bool)
        self._reset_state(seed)

    # -- population ----------------------------------------------------------------------
    def _reset_state(self, seed: int) -> None:
        self.seed = seed
        self.tti = 0
        self.stats = MacStats()
        self._next_index = 0  # arrival counter: assigns traffic / follower kind / id
        self._ues: list[MacUe] = []
        self._u_pop: UniformStream = stream(seed, STREAM_POPULATION, 0)
        self._done = False

    def _new_ue(self) -> MacUe:
        cfg = self.cfg
        k = self._next_index
        self._next_index += 1
        ue_id = k + 1
        fixed = (
            None if cfg.fixed_channel_states is None else cfg.fixed_channel_states[k % len(cfg.fixed_channel_states)]
        )
        ch = UeChannel(cfg.channel, stream(self.seed, STREAM_CHANNEL, ue_id), self.tti * cfg.tti_s, fixed_state=fixed)
        return MacUe(
            ue_id,
            cfg.followers[k % len(cfg.followers)],
            cfg.traffic[k % len(cfg.traffic)],
            ch,
            seed=self.seed,
            joined_tti=self.tti,
            initial_dpdu=cfg.buffer_dpdu if cfg.full_buffer else 0,
        )

    def _target_num_ue(self) -> int:
        cfg = self.cfg
        if cfg.num_ue is not None:
            return cfg.num_ue
        period = self.tti // cfg.population_period_tti
        if cfg.population_order == "cycle":
            return cfg.num_ue_cycle[period % len(cfg.num_ue_cycle)]
        return cfg.num_ue_cycle[min(int(self._u_pop.next() * len(cfg.num_ue_cycle)), len(cfg.num_ue_cycle) - 1)]

    def _update_population(self) -> None:
        """Arrivals / departures at a population boundary so that N reaches its target."""
        if self.cfg.num_ue is not None and self._ues:
            return
        if self._ues and self.tti % self.cfg.population_period_tti != 0:
            return
        target = self._target_num_ue()
        while len(self._ues) > target:  # a uniformly drawn UE departs with its buffer
            i = min(int(self._u_pop.next() * len(self._ues)), len(self._ues) - 1)
            self.stats.departed_dpdus += len(self._ues.pop(i).fifo)
        while len(self._ues) < target:
            self._ues.append(self._new_ue())

    # -- SlotEnv ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> SlotState:
        """Start over at TTI 0; ``seed=None`` reuses the current seed (the same rollout again)."""
        self._reset_state(self.seed if seed is None else seed)
        self._update_population()
        self._state = observe_cell(self.cfg, self._ues, self._pool, self.tti, self.cfg.cell_id)
        return self._state

    @property
    def state(self) -> SlotState:
        """The slot the base station currently sees."""
        return self._state

    @property
    def ues(self) -> list[MacUe]:
        """The UEs present (aligned with ``state.user_ids``)."""
        return list(self._ues)

    def step(self, owner: np.ndarray, *, raw_valid: bool | None = None) -> StepResult:
        """Play the current TTI under DCM ``owner`` [M]; ``raw_valid`` (optional) records whether
        the policy's raw output passed PAG before repair (valid action rate KPI)."""
        if self._done:
            raise RuntimeError("the episode is over; call reset()")
        if raw_valid is not None:
            self.stats.valid.append(bool(raw_valid))
        feedback, info, utility = play_cell_tti(self.cfg, self._ues, owner, self._pool, self.tti, self.stats)
        self.tti += 1
        self._update_population()
        self._state = observe_cell(self.cfg, self._ues, self._pool, self.tti, self.cfg.cell_id)
        self._done = self.cfg.episode_tti is not None and self.tti >= self.cfg.episode_tti
        return StepResult(self._state, feedback, utility, self._done, info)

    def kpis(self) -> dict[str, float]:
        return self.stats.kpis(self.cfg.tti_s, self.cfg.dpdu_bits)


def make_mac_env(scenario: str = "standard", *, seed: int = 0, **overrides: Any) -> MacEnv:
    """A ``MacEnv`` for a named scenario, with any ``MacConfig`` field overridden."""
    try:
        cfg = MAC_SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown MAC scenario {scenario!r}; known: {', '.join(MAC_SCENARIOS)}") from None
    return MacEnv(replace(cfg, **overrides) if overrides else cfg, seed=seed)
