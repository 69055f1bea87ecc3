"""``gnbsched finetune sft``: supervised cold start of the LLM teacher with TRL's ``SFTTrainer``.

The rows are prompt + KM answer (``service.finetune.dataset``, generated in process, or a JSONL of
``gnbsched dataset --kind sft``); the loss is on the answer only. Checkpoints go to ``--out``
every ``--save-steps``, ``--resume`` continues from the last one, and the final model (LoRA
adapters merged) and tokenizer are saved in ``--out``. Before and after training, the model
answers held-out prompts (seeds the training rows never use); the summary table and
``summary.json`` give the valid rate, utility / KM and mean reward of both.
"""

from __future__ import annotations

from typing import Any

from trainer.finetune import common
from trainer.finetune import summary as summary_mod
from trainer.finetune.args import SftArgs


def to_dataset(rows: list[dict[str, Any]]) -> Any:
    """A ``datasets.Dataset`` of the rows' ``prompt`` and ``completion`` (TRL's prompt-completion format)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def main(args: SftArgs) -> dict[str, Any]:
    """Run SFT as ``args`` says; return the summary (also written as ``summary.json`` in ``args.out``)."""
    common.offline()
    path = common.model_path(args.model)
    resumed = common.resume_from(args)
    from trl import SFTConfig, SFTTrainer

    from trainer.finetune.evaluate import evaluate

    common.seed_everything(args.seed)
    tokenizer = common.load_tokenizer(path)
    model = common.load_model(path, args.bf16)
    rows = common.training_rows(args, "sft")
    held_out = common.held_out_rows(args, args.eval_prompts)

    before = None
    if held_out:
        before, _ = evaluate(model, tokenizer, held_out, args.eval_max_new_tokens, args.eval_batch_size)
        print(f"before: valid rate {before.valid_rate:.3f} on {before.prompts} held-out prompts")

    config = SFTConfig(
        **common.trainer_kwargs(args),
        max_length=args.max_length,
        completion_only_loss=True,
    )
    counter = common.step_counter()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=to_dataset(rows),
        processing_class=tokenizer,
        peft_config=common.lora_config(args),
        callbacks=[counter],
    )
    _, after = common.train_and_evaluate(trainer, tokenizer, args, resumed, held_out)
    result = summary_mod.build(
        "sft",
        str(path),
        args.out,
        before,
        after,
        common.run_info(trainer, counter, resumed),
        {"train_rows": len(rows), "seed": args.seed, "lora": args.lora},
    )
    summary_mod.write(args.out, result)
    print(summary_mod.table(result))
    return result
