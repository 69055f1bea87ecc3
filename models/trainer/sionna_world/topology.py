"""TR 38.901 hexagonal multicell drop (Sionna SYS ``gen_tr38901_multicell_topology``).

Sites on the calibration spiral of TR 38.901 Table 7.8-1 (UMa: ISD 500 m, BS height 25 m; UMi:
ISD 200 m, BS height 10 m; 80 % of UTs indoor), three sectors per site (boresights 30°, 150°,
270°), ``ues_per_sector`` UTs dropped uniformly in each sector's part of its site's hexagon
(Sionna's stratified drop, minimum BS–UT distance 35 m UMa / 10 m UMi).

Edge treatment:

* 7 sites (one ring) or 19 sites (two rings): **wrap-around**. Sionna's generator gives every UT
  the nearest image of each site among the wrap-around translations of TR 38.901 / ITU-R M.2412,
  and the channel model measures pathloss and angles to that image: every sector of the layout
  sees a full ring of interferers, so edge sites are no better off than the centre one.
* 1 site: **no wrap-around** (the translation set is the identity). The three sectors of the one
  site interfere with each other through their antenna patterns and nothing else; this is the
  tiny configuration of the tests, not a calibrated interference level.

UT velocities: Sionna's calibration drop leaves them at 0; the world gives every UT
``speed_kmh`` (3 km/h, TR 38.901 Table 7.8-1 for UTs) in a uniform random horizontal direction,
so that the small-scale fading of the channel evolves from slot to slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: sites of the supported layouts -> rings of the hexagonal spiral
RINGS = {1: 0, 7: 1, 19: 2}
SECTORS_PER_SITE = 3
SCENARIOS = ("uma", "umi")


@dataclass(frozen=True)
class Drop:
    """One drop: the arguments of ``SystemLevelChannel.set_topology`` and what the world needs.

    Attributes:
        scenario: ``"uma"`` or ``"umi"``.
        sites: 1, 7 or 19.
        ues_per_sector: UTs dropped per sector.
        topology: the tuple ``set_topology(*topology)`` takes (torch tensors, batch size 1).
        ut_xy: float64 [U, 2] UT positions [m]; bs_xy: float64 [B, 2] sector positions [m].
        indoor: bool [U].
        wraparound: whether images of the sites wrap around the layout (7 and 19 sites).
    """

    scenario: str
    sites: int
    ues_per_sector: int
    topology: tuple[Any, ...]
    ut_xy: np.ndarray
    bs_xy: np.ndarray
    indoor: np.ndarray
    wraparound: bool

    @property
    def num_ut(self) -> int:
        return int(self.ut_xy.shape[0])

    @property
    def num_bs(self) -> int:
        return int(self.bs_xy.shape[0])


def make_drop(
    scenario: str, sites: int, ues_per_sector: int, carrier_hz: float, *, seed: int, speed_kmh: float = 3.0
) -> Drop:
    """A seeded TR 38.901 multicell drop (module doc). The same arguments give the same drop:
    Sionna's generator draws from ``sionna.phy.config`` (seeded here with ``seed``), the UT
    directions from ``numpy.random.default_rng([seed, 1])``."""
    import torch
    from sionna.phy import config
    from sionna.sys import gen_tr38901_multicell_topology

    scenario = scenario.lower()
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}")
    if sites not in RINGS:
        raise ValueError(f"sites must be one of {sorted(RINGS)}, got {sites}")
    if ues_per_sector < 1:
        raise ValueError(f"ues_per_sector must be >= 1, got {ues_per_sector}")
    config.seed = int(seed)
    topo = list(
        gen_tr38901_multicell_topology(
            scenario, batch_size=1, num_ut_per_sector=int(ues_per_sector), carrier_frequency=float(carrier_hz),
            num_rings=RINGS[sites],
        )
    )  # fmt: skip
    # [1, U, 3] velocities: speed_kmh in a uniform random horizontal direction
    num_ut = topo[0].shape[1]
    heading = np.random.default_rng([seed, 1]).uniform(0.0, 2.0 * math.pi, num_ut)
    speed = speed_kmh / 3.6
    vel = np.zeros((1, num_ut, 3))
    vel[0, :, 0], vel[0, :, 1] = speed * np.cos(heading), speed * np.sin(heading)
    topo[4] = torch.as_tensor(vel, dtype=topo[4].dtype)
    return Drop(
        scenario=scenario,
        sites=sites,
        ues_per_sector=int(ues_per_sector),
        topology=tuple(topo),
        ut_xy=topo[0][0, :, :2].double().numpy(),
        bs_xy=topo[1][0, :, :2].double().numpy(),
        indoor=topo[5][0].numpy().astype(bool),
        wraparound=RINGS[sites] > 0,
    )
