"""Training data: closed-loop rollouts of the simulators labelled by a teacher, and JSONL datasets.

A ``Sample`` is one slot as the student sees it (``service.serialize.tensors``, with the cell
history a deployed service would have), the decode constraints (per-user needs, PAG cap) and a
target DCM. Rollouts follow ``ServiceCore``'s order: decide → ``record_decision`` → step →
``apply_feedback``.

JSONL rows (one slot per line) — what ``gnbsched train record`` writes and ``read_jsonl`` reads:
``{"state": <slot_to_dict>, "history": {"avg_served": [...], "cum_resources": [...],
"last_served_slot": [...], "known": [...]}, "owner": [user_id | null, ...], "meta": {...}}``.
``state`` may also be the JSON string the ``gnbsched dataset`` rows carry; instead of ``owner``
a row may hold an LLM endpoint's recorded answer (``completion`` — text or chat messages — or
``answer``), which is parsed and PAG-checked (``service.pag.check``) and repaired or dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.history import CellHistory, HistoryView, apply_feedback, record_decision
from service.pag.checks import check
from service.pag.repair import repair
from service.policies.student_decode import user_needs
from service.serialize.slot_codec import slot_from_dict, slot_to_dict
from service.serialize.tensors import StudentInputs, serialize
from service.sim.base import SlotEnv
from service.sim.mac import MacEnv
from service.sim.mac_config import MAC_SCENARIOS
from service.sim.spectrum import SpectrumConfig, SpectrumEnv
from service.sim.worlds import WorldEnv, random_world, spectrum_instance, training_families
from service.types import SlotState
from trainer.teachers import Teacher

#: a behaviour policy for rollouts: (state, view, rng) -> DCM int64 [R]
Behaviour = Callable[[SlotState, HistoryView, np.random.Generator], np.ndarray]


@dataclass
class Sample:
    """One training slot: inputs (private copy), needs int64 [N], PAG cap, target DCM int64 [R]."""

    inputs: StudentInputs
    needs: np.ndarray
    cap: int
    tokens: np.ndarray
    state: SlotState | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.inputs.shape


def make_sample(state: SlotState, view: HistoryView | None, tokens: np.ndarray, *, keep_state: bool = False) -> Sample:
    return Sample(
        serialize(state, view),
        user_needs(state),
        int(state.max_resources_per_user),
        np.asarray(tokens, np.int64),
        state if keep_state else None,
    )


# ----------------------------------------------------------------------------- spectrum


def random_spectrum_config(
    rng: np.random.Generator,
    *,
    min_size: int = 2,
    max_ue: int = 120,
    max_res: int = 120,
    max_busy_fraction: float = 0.5,
    flat_fraction: float = 0.1,
) -> SpectrumConfig:
    """A random LSA scenario: N and R log-uniform, a busy fraction, Rayleigh fading (or flat)."""
    n = int(np.exp(rng.uniform(np.log(min_size), np.log(max_ue + 1))))
    r = int(np.exp(rng.uniform(np.log(min_size), np.log(max_res + 1))))
    busy = int(rng.uniform(0.0, max_busy_fraction) * r)
    return SpectrumConfig(
        num_ue=max(n, 1),
        num_channels=max(r, 1),
        num_busy=min(busy, r - 1),
        fading="flat" if rng.random() < flat_fraction else "rayleigh",
    )


def spectrum_rollout(
    teacher: Teacher,
    *,
    slots: int,
    seed: int,
    slots_per_episode: int = 4,
    max_ue: int = 120,
    max_res: int = 120,
    behaviour: Behaviour | None = None,
    keep_state: bool = False,
) -> list[Sample]:
    """``slots`` samples from random spectrum scenarios (a new topology every episode)."""
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    while len(out) < slots:
        cfg = random_spectrum_config(rng, max_ue=max_ue, max_res=max_res)
        env = SpectrumEnv(cfg, seed=int(rng.integers(2**31)))
        out += labelled_episode(
            env,
            env.reset(),
            teacher,
            behaviour,
            rng,
            min(slots_per_episode, slots - len(out)),
            usable_only=False,
            keep_state=keep_state,
        )
    return out


# ----------------------------------------------------------------------------- mac

#: training scenarios of the mac student (every one with N <= 10): the named scenarios of
#: ``service.sim.mac`` and load variants (fewer RBGs, full buffers) so high load is seen too
MAC_TRAIN_SCENARIOS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("standard", {}),
    ("standard", {"population_order": "random", "population_period_tti": 100}),
    ("fixed-5", {}),
    *((f"case{i}", {}) for i in range(1, 8)),
    *((f"case{i}", {"num_rbg": 4}) for i in range(1, 8)),
    ("mix-4a1l", {}),
    ("mix-3a2l", {}),
    ("dictator-5", {}),
    ("omega-stress", {}),
    ("standard", {"num_rbg": 4}),
    ("standard", {"num_rbg": 6}),
    ("standard", {"num_ue": 10}),
    ("standard", {"num_ue": 10, "num_rbg": 4}),
    ("standard", {"num_ue": 10, "num_rbg": 3}),
    ("standard", {"num_ue": 8, "full_buffer": True}),
)


def make_mac_env(scenario: str, overrides: dict[str, Any], seed: int, episode_tti: int | None = None) -> MacEnv:
    cfg = replace(MAC_SCENARIOS[scenario], **overrides)
    if episode_tti is not None:
        cfg = replace(cfg, episode_tti=episode_tti)
    return MacEnv(cfg, seed=seed)


def mac_rollout(
    teacher: Teacher,
    *,
    slots: int,
    seed: int,
    episode_tti: int = 400,
    scenarios: Sequence[tuple[str, dict[str, Any]]] = MAC_TRAIN_SCENARIOS,
    behaviour: Behaviour | None = None,
) -> list[Sample]:
    """``slots`` teacher-labelled samples from closed-loop mac episodes (scenarios in turn).

    ``behaviour`` (default: the teacher) plays the slots — DAgger passes the student here so the
    teacher labels the states the student visits.
    """
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    episode = 0
    while len(out) < slots:
        name, overrides = scenarios[episode % len(scenarios)]
        env = make_mac_env(name, overrides, seed=int(rng.integers(2**31)))
        out += labelled_episode(env, env.reset(), teacher, behaviour, rng, min(episode_tti, slots - len(out)))
        episode += 1
    return out


def labelled_episode(
    env: SlotEnv,
    state: SlotState,
    teacher: Teacher,
    behaviour: Behaviour | None,
    rng: np.random.Generator,
    slots: int,
    *,
    usable_only: bool = True,
    keep_state: bool = False,
) -> list[Sample]:
    """One closed-loop episode of ``slots`` slots from ``state``: the teacher labels every slot
    (with ``usable_only``, every slot some user can use: a slot nobody can use teaches nothing,
    and in mac a user without data is ineligible), ``behaviour`` (default: the teacher) plays
    it, and the history follows the service's order (decide, ``record_decision``, step,
    ``apply_feedback``)."""
    out: list[Sample] = []
    history = CellHistory.empty()
    for _ in range(slots):
        view = history.view(state)
        target = teacher(state, view, rng)
        if not usable_only or state.user_eligible.any():
            out.append(make_sample(state, view, target, keep_state=keep_state))
        owner = target if behaviour is None else behaviour(state, view, rng)
        history = record_decision(history, state, owner)
        res = env.step(owner)
        history = apply_feedback(history, res.feedback)
        state = res.state
    return out


# ----------------------------------------------------------------------------- world families


def world_mac_rollout(
    teacher: Teacher,
    *,
    slots: int,
    seed: int,
    episode_slots: int = 300,
    families: Sequence[str] | None = None,
    behaviour: Behaviour | None = None,
) -> list[Sample]:
    """``slots`` teacher-labelled samples from closed-loop episodes of mac worlds
    (``service.sim.worlds``): each episode a random world of the next training family (the
    held-out families are never drawn), N in [2, 128], R in [4, 69], load, numerology and unit
    scale drawn per episode."""
    fams = tuple(families or training_families("mac"))
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    episode = 0
    while len(out) < slots:
        cfg = random_world(fams[episode % len(fams)], rng)
        env = WorldEnv(cfg, seed=int(rng.integers(2**31)))
        out += labelled_episode(env, env.state(), teacher, behaviour, rng, min(episode_slots, slots - len(out)))
        episode += 1
    return out


def world_spectrum_rollout(
    teacher: Teacher,
    *,
    slots: int,
    seed: int,
    max_ue: int = 120,
    max_res: int = 120,
    families: Sequence[str] | None = None,
) -> list[Sample]:
    """``slots`` teacher-labelled single slots of the spectrum training families (N, R
    log-uniform in [2, max], busy share and unit scale drawn per slot)."""
    fams = tuple(families or training_families("spectrum"))
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    while len(out) < slots:
        n = int(np.exp(rng.uniform(np.log(2), np.log(max_ue + 1))))
        r = int(np.exp(rng.uniform(np.log(2), np.log(max_res + 1))))
        state = spectrum_instance(fams[len(out) % len(fams)], n, r, rng)
        view = CellHistory.empty().view(state)
        out.append(make_sample(state, view, teacher(state, view, rng)))
    return out


def feature_ranges(samples: Sequence[Sample]) -> dict[str, dict[str, list[float]]]:
    """Per block (global, user, resource, pair), the min and max of every feature over the
    training samples (users: eligible rows only), as the model card's ``feature_ranges``."""

    def block(rows: Iterable[np.ndarray]) -> dict[str, list[float]]:
        mats = [r for r in rows if r.size]
        if not mats:
            return {"min": [], "max": []}
        lo = np.min([m.min(axis=0) for m in mats], axis=0)
        hi = np.max([m.max(axis=0) for m in mats], axis=0)
        return {"min": lo.astype(float).tolist(), "max": hi.astype(float).tolist()}

    ins = [s.inputs for s in samples]
    return {
        "global": block(i.global_feats[None, :] for i in ins),
        "user": block(i.user_feats[i.user_mask > 0] for i in ins),
        "resource": block(i.res_feats for i in ins),
        "pair": block(i.pair_feats.reshape(i.pair_feats.shape[0], -1).T for i in ins),
    }


# ----------------------------------------------------------------------------- JSONL


def history_to_dict(view: HistoryView) -> dict[str, list]:
    out = {
        "avg_served": view.avg_served.tolist(),
        "cum_resources": view.cum_resources.tolist(),
        "last_served_slot": view.last_served_slot.tolist(),
        "known": view.known.tolist(),
    }
    if view.first_seen_slot is not None:
        out["first_seen_slot"] = view.first_seen_slot.tolist()
    return out


def history_from_dict(d: dict[str, Any] | None, num_ue: int) -> HistoryView | None:
    if not d:
        return None
    view = HistoryView(
        np.asarray(d["avg_served"], np.float64),
        np.asarray(d["cum_resources"], np.float64),
        np.asarray(d["last_served_slot"], np.int64),
        np.asarray(d.get("known", [True] * num_ue), bool),
        None if d.get("first_seen_slot") is None else np.asarray(d["first_seen_slot"], np.int64),
    )
    arrays = (
        view.avg_served,
        view.cum_resources,
        view.last_served_slot,
        view.known,
        *(() if view.first_seen_slot is None else (view.first_seen_slot,)),
    )
    if any(a.shape != (num_ue,) for a in arrays):
        raise ValueError(f"history arrays must have {num_ue} entries")
    return view


def owner_to_ids(state: SlotState, owner: np.ndarray) -> list[int | None]:
    return [None if k == 0 else int(state.user_ids[k - 1]) for k in owner.tolist()]


def record_rows(
    preset: str, teacher: Teacher, *, scenarios: Sequence[str], episodes: int, slots: int, seed: int
) -> Iterator[dict[str, Any]]:
    """JSONL rows of the teacher's closed-loop decisions on named scenarios of ``preset``."""
    from service.sim.spectrum import make_spectrum_env

    rng = np.random.default_rng(seed)
    for scenario in scenarios:
        for ep in range(episodes):
            env_seed = seed + 1000 * ep
            env = (
                make_spectrum_env(scenario, seed=env_seed)
                if preset == "spectrum"
                else make_mac_env(scenario, {}, env_seed)
            )
            state = env.reset(seed=env_seed)
            history = CellHistory.empty()
            for _ in range(slots):
                view = history.view(state)
                owner = teacher(state, view, rng)
                yield {
                    "state": slot_to_dict(state),
                    "history": history_to_dict(view),
                    "owner": owner_to_ids(state, owner),
                    "meta": {
                        "preset": preset,
                        "scenario": scenario,
                        "episode": ep,
                        "slot": state.slot,
                        "teacher": teacher.name,
                    },
                }
                history = record_decision(history, state, owner)
                res = env.step(owner)
                history = apply_feedback(history, res.feedback)
                state = res.state
                if res.done:
                    break


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
    return n


def _answer_text(row: dict[str, Any]) -> str | None:
    """The recorded LLM answer of a row: ``answer`` or ``completion`` (text or chat messages)."""
    value = row.get("answer", row.get("completion"))
    if value is None:
        return None
    if isinstance(value, list):  # chat: the last assistant message
        texts = [
            m.get("content", "") for m in value if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        ]
        return texts[-1] if texts else None
    return str(value)


@dataclass
class JsonlStats:
    rows: int = 0
    valid: int = 0
    repaired: int = 0
    dropped: int = 0


def read_jsonl(
    path: str | Path, *, preset: str | None = None, drop_invalid: bool = False, keep_state: bool = False
) -> tuple[list[Sample], JsonlStats]:
    """Samples from a JSONL file of (state, decision) rows (module doc).

    A decision that violates the PAG (typical of LLM answers) is repaired (SPEC §4) or, with
    ``drop_invalid``, skipped; rows of another preset are skipped.
    """
    samples: list[Sample] = []
    stats = JsonlStats()
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            doc = row["state"]
            state = slot_from_dict(json.loads(doc) if isinstance(doc, str) else doc)
            if preset is not None and state.preset != preset:
                continue
            stats.rows += 1
            view = history_from_dict(row.get("history"), state.num_ue)
            if "owner" in row:
                raw: Any = {"owner": row["owner"]}
                raw = json.dumps(raw)
            else:
                raw = _answer_text(row)
                if raw is None:
                    raise ValueError(f"{path}: row {stats.rows} has neither 'owner' nor an answer")
            result = check(state, raw)
            if result.valid:
                stats.valid += 1
            elif drop_invalid:
                stats.dropped += 1
                continue
            else:
                stats.repaired += 1
            samples.append(make_sample(state, view, repair(state, result), keep_state=keep_state))
    return samples, stats
