"""Fine-tuning datasets from the simulators (SPEC §6, LSA section IV-C).

* **SFT cold start** (``kind="sft"``): one row per slot, ``prompt`` = the teacher's serialized
  state (``service.serialize.prompt``), ``completion`` = the exact solver's decision (KM,
  ``service.policies.assignment``) written in the prompt's answer form.
* **GRPO** (``kind="grpo"``): prompts only; the reward functions (``service.finetune.rewards``)
  score sampled completions against the slot stored in the ``state`` column.
* **The code form** (``code_form=True``, ``gnbsched dataset --answer-form code``): the prompt asks
  for a program ``schedule(state)`` (``service.serialize.code_form``); the SFT completion is
  ``REFERENCE_PROGRAM``, and ``code_reward_func`` runs GRPO completions in the sandbox.

Rows are TRL's conversational format (``"prompt": [messages]``, ``"completion": [message]``) or
its standard format (``--format text``: strings). Every row also carries ``state`` (the slot as
a JSON string, ``slot_to_dict``) and ``meta`` (scenario, episode, slot, prompt tokens, answer
form, solver utility, random reference utility).

The closed loop: the solver's decision is played in the simulator and recorded in the cell's
history, so later prompts carry the history a deployed teacher would see (staleness, fairness).
Same seed ⇒ same file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.history import CellHistory, apply_feedback, record_decision
from service.policies.base import PolicyContext
from service.policies.registry import make
from service.rng import slot_rng
from service.serialize.answer import answer_text
from service.serialize.code_form import REFERENCE_PROGRAM, code_prompt, fenced
from service.serialize.prompt import serialize_prompt
from service.serialize.prompt_options import PromptOptions
from service.serialize.slot_codec import slot_to_dict
from service.sim.base import SlotEnv
from service.types import slot_utility

# ----------------------------------------------------------------------------- simulators


#: mac scenarios exported by default: the paper's standard setting, 5 fixed UEs, a mixed
#: agentic / legacy population (Table VII) and the full-buffer stress test (Table VIII)
DEFAULT_MAC_SCENARIOS: tuple[str, ...] = ("standard", "fixed-5", "mix-4a1l", "omega-stress")


def default_scenarios(preset: str) -> list[str]:
    """The LSA paper grid (Table III) for spectrum; ``DEFAULT_MAC_SCENARIOS`` for mac."""
    if preset == "spectrum":
        from service.sim.spectrum import PAPER_GRID

        return list(PAPER_GRID)
    from service.sim.mac_config import MAC_SCENARIOS

    return [s for s in DEFAULT_MAC_SCENARIOS if s in MAC_SCENARIOS] or list(MAC_SCENARIOS)[:1]


def make_env(preset: str, scenario: str, seed: int) -> SlotEnv:
    """The simulator of ``preset`` for a named scenario (``service.sim.spectrum`` / ``.mac``)."""
    if preset == "spectrum":
        from service.sim.spectrum import make_spectrum_env

        return make_spectrum_env(scenario, seed=seed)
    if preset == "mac":
        from service.sim.mac import make_mac_env

        return make_mac_env(scenario, seed=seed)
    raise ValueError(f"unknown preset {preset!r}")


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """What ``build_rows`` generates."""

    preset: str = "spectrum"
    #: "sft" (prompt + solver completion) or "grpo" (prompt only)
    kind: str = "sft"
    scenarios: tuple[str, ...] = ()
    episodes: int = 2
    slots: int = 32
    seed: int = 0
    #: registered policy whose decisions are the SFT targets (and are played in the loop)
    solver: str = "km"
    #: "chat" (TRL conversational) or "text" (TRL standard: strings)
    format: str = "chat"
    options: PromptOptions = field(default_factory=PromptOptions)
    #: ask for a program (the code answer form) instead of a JSON answer
    code_form: bool = False


def build_rows(spec: DatasetSpec) -> Iterator[dict[str, Any]]:
    """Rows of the dataset, scenario by scenario, episode by episode, slot by slot."""
    if spec.kind not in ("sft", "grpo"):
        raise ValueError(f"kind must be 'sft' or 'grpo', got {spec.kind!r}")
    if spec.format not in ("chat", "text"):
        raise ValueError(f"format must be 'chat' or 'text', got {spec.format!r}")
    from service.finetune.rewards import RewardConfig, random_reference

    solver = make(spec.solver)
    scenarios = list(spec.scenarios) or default_scenarios(spec.preset)
    for scenario in scenarios:
        for ep in range(spec.episodes):
            seed = spec.seed + 1000 * ep
            env = make_env(spec.preset, scenario, seed)
            state = env.reset(seed=seed)
            history = CellHistory.empty()
            feedback: dict[int, float] = {}
            for _ in range(spec.slots):
                if feedback:
                    history = apply_feedback(history, feedback)
                view = history.view(state)
                ctx = PolicyContext(view, slot_rng(spec.seed, state.cell_id, state.slot))
                owner = np.asarray(solver(state, ctx), np.int64)
                if spec.code_form:
                    messages, _, tokens = code_prompt(state, spec.options)
                    form = "code"
                else:
                    prompt = serialize_prompt(state, view, spec.options)
                    messages, tokens, form = prompt.messages, prompt.tokens, prompt.answer_form
                row: dict[str, Any] = {}
                if spec.format == "chat":
                    row["prompt"] = messages
                else:
                    row["prompt"] = "\n\n".join(m["content"] for m in messages)
                if spec.kind == "sft":
                    answer = fenced(REFERENCE_PROGRAM) if spec.code_form else answer_text(state, owner, prompt)
                    row["completion"] = [{"role": "assistant", "content": answer}] if spec.format == "chat" else answer
                row["state"] = json.dumps(slot_to_dict(state), separators=(",", ":"))
                row["meta"] = {
                    "preset": spec.preset,
                    "scenario": scenario,
                    "episode": ep,
                    "slot": state.slot,
                    "num_ue": state.num_ue,
                    "num_res": state.num_res,
                    "prompt_tokens": tokens,
                    "answer_form": form,
                    "solver": spec.solver,
                    "solver_utility": slot_utility(state, owner),
                    "random_utility": random_reference(state, RewardConfig(seed=spec.seed)),
                }
                yield row
                history = record_decision(history, state, owner)
                res = env.step(owner)
                state, feedback = res.state, res.feedback
                if res.done:
                    break


def write_jsonl(rows: Iterator[dict[str, Any]], path: str | Path) -> dict[str, float]:
    """Write rows to ``path`` (one JSON object per line); return a summary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tokens: list[int] = []
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
            tokens.append(int(row["meta"]["prompt_tokens"]))
    return {
        "rows": float(n),
        "prompt_tokens_mean": float(np.mean(tokens)) if tokens else 0.0,
        "prompt_tokens_max": float(max(tokens)) if tokens else 0.0,
    }
