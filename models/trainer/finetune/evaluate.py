"""Held-out evaluation of a fine-tuned teacher: greedy answers to prompts the training never saw,
scored with the service's own functions.

* **valid rate**: share of answers that parse and pass every PAG rule (``service.pag.check`` on
  the raw text, no repair): the teacher's valid-before-repair rate;
* **utility / KM**: mean, over the prompts whose slot admits a positive utility, of the slot
  utility the raw answer would play without repair (``service.finetune.rewards.raw_owner``:
  legal pairs only, collided resources carry nothing) over the exact optimum (KM) of the slot;
  an unparsable answer plays nothing (0);
* **mean reward**: mean composite GRPO reward (``service.finetune.rewards.reward_terms`` with the
  default ``RewardConfig``, answer lengths counted by the model's tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from service.finetune.rewards import RewardConfig, program_answer, raw_owner, reward_terms
from service.pag import check
from service.serialize.slot_codec import slot_from_dict
from service.types import slot_utility

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class Scores:
    """Held-out figures of one model (module doc)."""

    prompts: int
    valid_rate: float
    parsable_rate: float
    utility_ratio: float
    #: prompts whose slot admits a positive utility (those utility_ratio averages over)
    utility_prompts: int
    mean_reward: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def answer_budget(rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, margin: int = 16) -> int:
    """Tokens enough for the longest KM answer of ``rows`` plus ``margin``."""
    longest = max((len(tokenizer(_completion(r))["input_ids"]) for r in rows), default=0)
    return longest + margin


def _completion(row: dict[str, Any]) -> str:
    c = row.get("completion", "")
    return c if isinstance(c, str) else str(c[-1]["content"]) if c else ""


def prompt_text(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
    """The row's prompt as the model reads it: the chat template with the generation prompt."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return prompt
    return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers of ``model`` to the prompts of ``rows`` (special tokens removed)."""
    import torch

    texts = [prompt_text(r, tokenizer) for r in rows]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    try:
        for i in range(0, len(texts), max(batch_size, 1)):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                out = cast(Any, model).generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def score(
    rows: Sequence[dict[str, Any]],
    answers: Sequence[str],
    count_tokens: Any = None,
    config: RewardConfig | None = None,
) -> Scores:
    """The held-out figures of ``answers`` to ``rows`` (each row has ``state`` and ``meta.solver_utility``,
    the KM optimum of its slot)."""
    cfg = config or RewardConfig()
    valid: list[bool] = []
    parsable: list[bool] = []
    ratio: list[float] = []
    reward: list[float] = []
    for row, text in zip(rows, answers, strict=True):
        state = slot_from_dict(json.loads(row["state"]) if isinstance(row["state"], str) else row["state"])
        if row["meta"].get("answer_form") == "code":  # the program's output, run in the sandbox, is the answer
            text = program_answer(state, text) or ""
        result = check(state, text)
        valid.append(result.valid)
        parsable.append(not any(v.kind == "unparsable" for v in result.violations))
        optimum = float(row["meta"]["solver_utility"])
        if optimum > 0:
            ratio.append(slot_utility(state, raw_owner(state, result)) / optimum)
        n_tokens = count_tokens(text) if count_tokens is not None else None
        reward.append(reward_terms(state, text, cfg, n_tokens)["total"])
    n = len(valid)
    if n == 0:
        return Scores(0, float("nan"), float("nan"), float("nan"), 0, float("nan"))
    return Scores(
        prompts=n,
        valid_rate=float(np.mean(valid)),
        parsable_rate=float(np.mean(parsable)),
        utility_ratio=float(np.mean(ratio)) if ratio else float("nan"),
        utility_prompts=len(ratio),
        mean_reward=float(np.mean(reward)),
    )


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int = 0,
    batch_size: int = 16,
) -> tuple[Scores, list[str]]:
    """Generate greedy answers to ``rows`` and score them; ``max_new_tokens`` 0 sizes the answer
    budget from the rows' KM answers."""
    budget = max_new_tokens or answer_budget(rows, tokenizer)
    answers = generate(model, tokenizer, rows, budget, batch_size)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return score(rows, answers, count), answers
