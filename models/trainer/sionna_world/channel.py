"""Pathloss, shadowing and fading per PRB and per slot from Sionna's TR 38.901 system-level channel.

The UMa / UMi model (``sionna.phy.channel.tr38901``) on the drop's topology gives the channel
impulse response of every (UT, sector) link — pathloss, shadow fading, O2I loss, the 38.901
sector antenna pattern (one vertically polarised element, 8 dBi, at the sector, an omni element
at the UT) and the clusters and rays of the small-scale fading with each UT's Doppler.
``GenerateOFDMChannel`` turns it into frequency responses on a grid whose "subcarriers" are the
centres of the carrier's PRBs (spacing 12 · SCS) and whose "OFDM symbols" are channel samples
``update_slots`` slots apart: ``h[u, b, k, p]`` is the response of link (u, b) on PRB p at slot
``k · update_slots``. The world keeps the power gains ``|h|²`` (float32 [U, B, K, n_prb]) and
holds each sample for ``update_slots`` slots (1 by default: a new sample every slot).

Memory: Sionna materialises the rays of every link and sample at once (about 10 kB per link and
sample in UMa: 7.3 GB peak for 84 UTs × 21 sectors × 400 samples on the project's machine).
``max_link_samples`` bounds links × samples (default 250 000, about 2.5 GB), and a run that needs
more raises a ValueError naming the remedy (a larger ``update_slots``: at 3 km/h and 3.5 GHz the
coherence time is about 40 ms, 80 slots of 0.5 ms, so a few slots between samples still resolve
the fading).

The large-scale parameters (pathloss, shadowing, LoS state) are drawn once per drop; all
randomness comes from ``sionna.phy.config.seed`` set by the caller (``ChannelTrace.generate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.sionna_world.carrier import Carrier
from trainer.sionna_world.topology import Drop

#: default bound on links (UT × sector) × channel samples of one drop (memory, module doc)
MAX_LINK_SAMPLES = 250_000


@dataclass(frozen=True)
class _SampleGrid:
    """The duck-typed resource grid ``GenerateOFDMChannel`` reads: one "subcarrier" per PRB centre,
    one "OFDM symbol" per channel sample (``ofdm_symbol_duration`` = the time between samples)."""

    num_ofdm_symbols: int
    fft_size: int
    subcarrier_spacing: float
    ofdm_symbol_duration: float


@dataclass(frozen=True)
class ChannelTrace:
    """Power gains of every (UT, sector) link per PRB and channel sample.

    Attributes:
        gain: float32 [U, B, K, n_prb], linear power gain (pathloss, shadowing, antennas, fading).
        update_slots: slots between two samples (each sample is held that long).
    """

    gain: np.ndarray
    update_slots: int

    @property
    def num_samples(self) -> int:
        return int(self.gain.shape[2])

    def sample_of(self, slot: int) -> int:
        """The channel sample in force at ``slot`` (the last one past the end)."""
        return min(slot // self.update_slots, self.num_samples - 1)

    def at(self, slot: int) -> np.ndarray:
        """float32 [U, B, n_prb]: the gains in force at ``slot``."""
        return self.gain[:, :, self.sample_of(slot), :]

    def serving(self) -> np.ndarray:
        """int64 [U]: each UT's serving sector, the strongest average gain (minimum coupling loss,
        TR 38.901 §7.8 association)."""
        return np.argmax(self.gain.mean(axis=(2, 3)), axis=1).astype(np.int64)

    @staticmethod
    def generate(
        drop: Drop,
        carrier: Carrier,
        slots: int,
        *,
        seed: int,
        update_slots: int = 1,
        o2i_model: str = "low",
        max_link_samples: int = MAX_LINK_SAMPLES,
    ) -> ChannelTrace:
        """Sample the drop's channel for ``slots`` slots (module doc)."""
        import torch
        from sionna.phy import config
        from sionna.phy.channel import GenerateOFDMChannel
        from sionna.phy.channel.tr38901 import PanelArray, UMa, UMi

        if update_slots < 1:
            raise ValueError(f"update_slots must be >= 1, got {update_slots}")
        samples = max(1, math.ceil(slots / update_slots))
        links = drop.num_ut * drop.num_bs
        if links * samples > max_link_samples:
            fewest = math.ceil(slots / max(max_link_samples // links, 1))
            raise ValueError(
                f"{slots} slots at one channel sample every {update_slots} slot(s) need {samples} samples of "
                f"{links} links, more than max_link_samples={max_link_samples} (memory); sample less often "
                f"(update_slots >= {fewest}), drop fewer UTs or play fewer slots"
            )
        config.seed = int(seed) + 7919  # the channel's own stream, distinct from the drop's
        fc = carrier.carrier_hz
        bs_array = PanelArray(
            num_rows_per_panel=1, num_cols_per_panel=1, polarization="single", polarization_type="V",
            antenna_pattern="38.901", carrier_frequency=fc,
        )  # fmt: skip
        ut_array = PanelArray(
            num_rows_per_panel=1, num_cols_per_panel=1, polarization="single", polarization_type="V",
            antenna_pattern="omni", carrier_frequency=fc,
        )  # fmt: skip
        model_cls = UMa if drop.scenario == "uma" else UMi
        model = model_cls(
            carrier_frequency=fc, o2i_model=o2i_model, ut_array=ut_array, bs_array=bs_array, direction="downlink"
        )
        model.set_topology(*drop.topology)
        grid = _SampleGrid(
            num_ofdm_symbols=samples,
            fft_size=carrier.n_prb,
            subcarrier_spacing=carrier.prb_hz,
            ofdm_symbol_duration=update_slots * carrier.slot_s,
        )
        with torch.no_grad():
            # [1, U, 1, B, 1, K, n_prb] complex
            h = GenerateOFDMChannel(model, grid)(1)
            gain = (h[0, :, 0, :, 0].abs() ** 2).to(torch.float32).numpy()  # [U, B, K, n_prb]
        del h, model
        return ChannelTrace(gain=np.ascontiguousarray(gain), update_slots=int(update_slots))
