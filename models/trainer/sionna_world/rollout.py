"""Training slots from the Sionna world: closed-loop episodes of a TR 38.901 drop, every cell's
slot labelled by a teacher, in the format of ``trainer.data`` (``Sample``).

Each episode draws a world (``random_world_options``): UMa or UMi, one site of 3 sectors, 2 to 24
UTs per sector (log-uniform; the drop decides how many each cell serves), 5 to 50 MHz at 15 or
30 kHz (7 to 17 RBGs of TS 38.214 Table 5.1.2.2.1-1, configuration 1 or 2), full buffers or
FTP packets at an offered load per UT from 0.5 to 16 Mbit/s (log-uniform), MCS table 1 or 2, and
the CSI delay and estimation error OLLA has to learn. Every cell is a scheduling slot of its own
per world slot; the teacher labels it with the cell's own history (``service.history``, as the
service keeps it), ``behaviour`` (default: the teacher) plays it, and the world's feedback goes
back into that history — the same order as ``trainer.data.labelled_episode`` and
``service.core``. The states carry ``rate_bps`` in bit/s and the HARQ fields (``retx_bits``,
``retx_rbgs``); a teacher's label that does not serve the retransmissions first is repaired
(``service.pag.repair``), so the targets obey the rule the service checks.

Needs the ``sionna`` extra; ``trainer.distill`` imports this module only when
``--sionna-samples`` asks for such slots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from service.history import CellHistory, apply_feedback, record_decision
from service.pag.checks import check
from service.pag.repair import repair
from trainer.data import Behaviour, Sample, make_sample
from trainer.sionna_world.traffic import TrafficSpec
from trainer.sionna_world.world import make_world
from trainer.teachers import Teacher

#: channel bandwidths (MHz) drawn per subcarrier spacing (kHz)
BANDWIDTHS_MHZ = {15: (5, 10, 20), 30: (20, 40, 50)}


def random_world_options(rng: np.random.Generator, *, slots: int) -> dict[str, Any]:
    """``make_world`` options of one random training world (module doc); ``slots``: its length."""
    scs = int(rng.choice((15, 30)))
    full = bool(rng.random() < 0.4)
    load_bps = float(np.exp(rng.uniform(np.log(0.5e6), np.log(16e6))))
    return {
        "scenario": str(rng.choice(("uma", "umi"))),
        "sites": 1,
        "ues_per_sector": int(np.exp(rng.uniform(np.log(2), np.log(25)))),
        "scs_khz": scs,
        "bandwidth_mhz": int(rng.choice(BANDWIDTHS_MHZ[scs])),
        "rbg_config": int(rng.choice((1, 2))),
        "slots": slots,
        "seed": int(rng.integers(2**31)),
        "traffic": TrafficSpec("full") if full else TrafficSpec("ftp", load_bps=load_bps),
        "mcs_table": int(rng.choice((1, 2))),
        "csi_delay_slots": int(rng.integers(1, 4)),
        "csi_error_db": float(rng.uniform(0.0, 2.0)),
        "cell_prefix": "train",
    }


def sionna_mac_rollout(
    teacher: Teacher,
    *,
    slots: int,
    seed: int,
    episode_slots: int = 60,
    behaviour: Behaviour | None = None,
    progress: Callable[[str], None] | None = None,
    keep_state: bool = False,
) -> list[Sample]:
    """``slots`` teacher-labelled ``trainer.data.Sample``s from closed-loop episodes of random
    Sionna worlds (module doc), ``episode_slots`` world slots each (every cell of a world slot
    with an eligible user gives one sample). ``progress``: called with a line per episode;
    ``keep_state``: each sample keeps its ``SlotState``."""
    if slots < 1 or episode_slots < 1:
        raise ValueError(f"slots and episode_slots must be >= 1, got {slots} and {episode_slots}")
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    episode = 0
    while len(out) < slots:
        options = random_world_options(rng, slots=episode_slots)
        world = make_world(**options)
        states = world.states
        histories = {s.cell_id: CellHistory.empty() for s in states}
        while not world.done and len(out) < slots:
            owners: dict[str, np.ndarray] = {}
            for state in states:
                view = histories[state.cell_id].view(state)
                target = repair(state, check(state, teacher(state, view, rng)))
                if state.user_eligible.any() and len(out) < slots:
                    out.append(make_sample(state, view, target, keep_state=keep_state))
                owner = target if behaviour is None else repair(state, check(state, behaviour(state, view, rng)))
                histories[state.cell_id] = record_decision(histories[state.cell_id], state, owner)
                owners[state.cell_id] = owner
            feedback = world.step(owners)
            for cell_id, delivered in feedback.items():
                histories[cell_id] = apply_feedback(histories[cell_id], delivered)
            states = world.states
        episode += 1
        if progress is not None:
            progress(
                f"sionna episode {episode}: {options['scenario']} {options['ues_per_sector']} UT/sector "
                f"{options['bandwidth_mhz']} MHz @ {options['scs_khz']} kHz, {options['traffic'].describe()}; "
                f"{len(out)}/{slots} slots"
            )
    return out
