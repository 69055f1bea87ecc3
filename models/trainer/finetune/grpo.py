"""``gnbsched finetune grpo``: GRPO of the LLM teacher with TRL's ``GRPOTrainer`` and the
project's reward functions (``service.finetune.rewards``).

The rows are prompts with the slot in their ``state`` column (``service.finetune.dataset``
``kind="grpo"``, generated in process, or a JSONL of ``gnbsched dataset --kind grpo``); TRL
passes that column to every reward function, which scores the raw completion against the slot.

The reward functions are a table, ``REWARDS``: name -> factory building a TRL reward function
(``(prompts, completions, **columns) -> list[float]``) from the reward configuration and the
policy's tokenizer. ``--rewards struct,perf:1,depth:0.5`` picks entries and their weights;
``code`` is the code form's execution feedback (each completion's program run in the sandbox on
the row's slot, ``service.finetune.rewards.code_reward_func``), for datasets of code prompts
(``--answer-form code``).

Checkpoints, ``--resume``, the final model and the before / after summary work as in
``trainer.finetune.sft``; the summary also records the mean reward TRL logged at each logging step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from service.finetune.rewards import RewardConfig, code_reward_func, composite_reward_func, reward_funcs
from trainer.finetune import common
from trainer.finetune import summary as summary_mod
from trainer.finetune.args import GrpoArgs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RewardFunc = Callable[..., list[float]]
#: builds one TRL reward function from the reward configuration and the policy's tokenizer
RewardFactory = Callable[[RewardConfig, "PreTrainedTokenizerBase | None"], RewardFunc]


def _counter(tokenizer: PreTrainedTokenizerBase | None) -> Callable[[str], int] | None:
    if tokenizer is None:
        return None

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def _term(index: int) -> RewardFactory:
    """The factory of term ``index`` of ``service.finetune.rewards.reward_funcs`` (struct, perf, depth)."""

    def factory(config: RewardConfig, tokenizer: PreTrainedTokenizerBase | None) -> RewardFunc:
        return reward_funcs(config, _counter(tokenizer))[index]

    return factory


def _composite(config: RewardConfig, tokenizer: PreTrainedTokenizerBase | None) -> RewardFunc:
    return composite_reward_func(config, _counter(tokenizer))


def _code(config: RewardConfig, tokenizer: PreTrainedTokenizerBase | None) -> RewardFunc:
    return code_reward_func(config)


#: reward name -> factory; the weight of a name given without one is DEFAULT_WEIGHTS[name](config)
REWARDS: dict[str, RewardFactory] = {
    "struct": _term(0),
    "perf": _term(1),
    "depth": _term(2),
    "composite": _composite,
    "code": _code,
}
DEFAULT_WEIGHTS: dict[str, Callable[[RewardConfig], float]] = {
    "struct": lambda c: c.lambda_struct,
    "perf": lambda c: c.lambda_perf,
    "depth": lambda c: c.lambda_depth,
}


def parse_rewards(spec: str) -> list[tuple[str, float | None]]:
    """``"struct,perf:0.5"`` -> [("struct", None), ("perf", 0.5)]; exits on an unknown name."""
    out: list[tuple[str, float | None]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, weight = item.partition(":")
        if name not in REWARDS:
            raise SystemExit(f"--rewards: unknown reward {name!r} (known: {', '.join(REWARDS)})")
        try:
            out.append((name, float(weight) if weight else None))
        except ValueError:
            raise SystemExit(f"--rewards: weight of {name!r} is not a number: {weight!r}") from None
    if not out:
        raise SystemExit("--rewards: name at least one reward function")
    return out


def build_rewards(
    spec: str, config: RewardConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions and weights ``--rewards`` names (``REWARDS``)."""
    funcs, weights = [], []
    for name, weight in parse_rewards(spec):
        funcs.append(REWARDS[name](config, tokenizer))
        default = DEFAULT_WEIGHTS.get(name)
        weights.append(weight if weight is not None else default(config) if default else 1.0)
    return funcs, weights


def to_dataset(rows: list[dict[str, Any]]) -> Any:
    """A ``datasets.Dataset`` of the rows' ``prompt`` and ``state`` (what the reward functions read)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "state": r["state"]} for r in rows])


def logged_rewards(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, mean reward) of every log entry of a GRPO run that has one."""
    return [(int(e.get("step", 0)), float(e["reward"])) for e in log_history if "reward" in e]


def main(args: GrpoArgs) -> dict[str, Any]:
    """Run GRPO as ``args`` says; return the summary (also written as ``summary.json`` in ``args.out``)."""
    common.offline()
    path = common.model_path(args.model)
    resumed = common.resume_from(args)
    if (args.batch_size * args.grad_accum) % args.num_generations:
        raise SystemExit(
            f"--batch-size x --grad-accum ({args.batch_size * args.grad_accum}) must be a multiple of "
            f"--num-generations ({args.num_generations})"
        )
    config = replace(RewardConfig(), min_tokens=args.min_tokens, seed=args.seed)
    parse_rewards(args.rewards)  # fail on a bad --rewards before loading anything
    from trl import GRPOConfig, GRPOTrainer

    from trainer.finetune.evaluate import evaluate, prompt_text

    common.seed_everything(args.seed)
    tokenizer = common.load_tokenizer(path)
    model = common.load_model(path, args.bf16)
    funcs, weights = build_rewards(args.rewards, config, tokenizer)
    rows = common.training_rows(args, "grpo")
    too_long = sum(
        1
        for r in rows
        if len(tokenizer(prompt_text(r, tokenizer), add_special_tokens=False)["input_ids"]) > args.max_length
    )
    if too_long:
        raise SystemExit(f"{too_long} prompts are longer than --max-length {args.max_length} tokens")
    held_out = common.held_out_rows(args, args.eval_prompts)

    before = None
    if held_out:
        before, _ = evaluate(model, tokenizer, held_out, args.eval_max_new_tokens, args.eval_batch_size)
        print(f"before: valid rate {before.valid_rate:.3f} on {before.prompts} held-out prompts")

    grpo_config = GRPOConfig(
        **common.trainer_kwargs(args),
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        beta=args.beta,
        epsilon=args.epsilon,
        reward_weights=weights,
    )
    counter = common.step_counter()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=cast(list[Any], funcs),
        args=grpo_config,
        train_dataset=to_dataset(rows),
        processing_class=tokenizer,
        peft_config=common.lora_config(args),
        callbacks=[counter],
    )
    _, after = common.train_and_evaluate(trainer, tokenizer, args, resumed, held_out)
    run = common.run_info(trainer, counter, resumed)
    rewards = logged_rewards(run["log_history"])
    extra: dict[str, Any] = {
        "train_rows": len(rows),
        "seed": args.seed,
        "lora": args.lora,
        "rewards": dict(zip([n for n, _ in parse_rewards(args.rewards)], weights, strict=True)),
        "reward_log": rewards,
        "rewards_finite": bool(rewards) and all(math.isfinite(r) for _, r in rewards),
    }
    if rewards:
        extra["reward_mean_first"], extra["reward_mean_last"] = rewards[0][1], rewards[-1][1]
    result = summary_mod.build("grpo", str(path), args.out, before, after, run, extra)
    summary_mod.write(args.out, result)
    print(summary_mod.table(result))
    return result
