"""Arguments of ``gnbsched finetune``: one documented dataclass per command (the docstring under
each field is its ``--help``; tyro builds the command line from them).

Kept free of torch, TRL and tyro so ``gnbsched`` builds its command line without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- tiny-model


@dataclass
class TinyModelArgs:
    out: str = "runs/tiny-model"
    """directory for the tokenizer and the untrained model (config.json, model.safetensors, tokenizer.json)"""
    preset: str = "spectrum"
    """simulator preset whose prompts and answers train the tokenizer: spectrum | mac"""
    scenarios: str = ""
    """comma-separated scenarios of the tokenizer corpus (empty: the preset's default grid)"""
    corpus_rows: int = 256
    """dataset rows (prompt + answer) the tokenizer is trained on"""
    vocab_size: int = 1024
    """largest vocabulary of the byte-level BPE tokenizer (fewer when the corpus has fewer merges)"""
    hidden: int = 64
    """hidden size of the Qwen2 model"""
    layers: int = 2
    """decoder layers"""
    heads: int = 4
    """attention heads (and key/value heads)"""
    intermediate: int = 128
    """width of the MLP of each layer"""
    max_positions: int = 2048
    """largest sequence length (prompt + answer, in tokens)"""
    seed: int = 0
    """seed of the corpus and of the weight initialisation"""


# ----------------------------------------------------------------------------- sft / grpo (shared)


@dataclass
class TrainArgs:
    """What SFT and GRPO share: the model, the data, the optimiser, checkpoints, evaluation."""

    model: str = ""
    """local path of a Hugging Face causal LM (a directory with config.json and the tokenizer); never downloaded"""
    out: str = "runs/finetune"
    """output directory: checkpoints (checkpoint-N), the final model and tokenizer, summary.json"""
    preset: str = "spectrum"
    """simulator preset of the generated rows: spectrum | mac"""
    scenarios: str = ""
    """comma-separated scenarios of the generated rows (empty: the preset's default grid)"""
    episodes: int = 2
    """episodes per scenario of the generated training rows (seeds seed, seed+1000, ...)"""
    slots: int = 32
    """slots per episode of the generated training rows"""
    data: str | None = None
    """JSONL of rows written by gnbsched dataset to train on instead of generating them"""
    budget: int = 2048
    """prompt token budget of the generated rows and of the held-out prompts"""
    code_form: bool = False
    """ask for programs schedule(state) (the code answer form): SFT learns the reference program, the held-out answers are run in the sandbox; with grpo use --rewards code"""
    epochs: float = 1.0
    """passes over the training rows"""
    max_steps: int = -1
    """optimiser steps to run (overrides --epochs when > 0)"""
    batch_size: int = 8
    """rows per device batch"""
    grad_accum: int = 1
    """gradient accumulation steps (batch = batch-size x grad-accum)"""
    lr: float = 1e-5
    """peak learning rate (cosine schedule)"""
    warmup_ratio: float = 0.0
    """share of the steps with a linear warm-up"""
    max_length: int = 2304
    """longest tokenized row (SFT: prompt + answer; GRPO: prompt); longer rows are truncated (SFT) or rejected"""
    lora: bool = False
    """train LoRA adapters (peft) instead of every weight"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA scaling alpha"""
    save_steps: int = 50
    """optimiser steps between checkpoints in --out"""
    save_total_limit: int = 2
    """checkpoints kept (the oldest are deleted)"""
    resume: bool = False
    """continue from the last checkpoint in --out (its optimiser, scheduler, step and data order)"""
    logging_steps: int = 5
    """optimiser steps between logged losses / rewards"""
    eval_prompts: int = 50
    """held-out prompts (seeds never used by the training rows) evaluated before and after training (0: none)"""
    eval_max_new_tokens: int = 0
    """largest answer length in the evaluation (0: the longest answer of the KM solver + 16)"""
    eval_batch_size: int = 16
    """prompts per generation batch of the evaluation"""
    bf16: bool = False
    """bfloat16 mixed precision (accelerators)"""
    device: str = "cpu"
    """cpu (always the CPU) or auto (the accelerator Accelerate finds, if any)"""
    seed: int = 0
    """seed of the rows, the held-out prompts, the initialisation of adapters, sampling and data order"""


@dataclass
class SftArgs(TrainArgs):
    out: str = "runs/sft"
    """output directory: checkpoints (checkpoint-N), the final model and tokenizer, summary.json"""
    lr: float = 2e-5
    """peak learning rate (cosine schedule)"""


@dataclass
class GrpoArgs(TrainArgs):
    out: str = "runs/grpo"
    """output directory: checkpoints (checkpoint-N), the final model and tokenizer, summary.json"""
    lr: float = 1e-6
    """peak learning rate (cosine schedule)"""
    rewards: str = "struct,perf,depth"
    """comma-separated reward functions, each NAME or NAME:WEIGHT (names: see trainer.finetune.grpo.REWARDS)"""
    num_generations: int = 8
    """completions sampled per prompt (the group of GRPO); batch-size x grad-accum must be a multiple of it"""
    max_completion_length: int = 512
    """longest sampled completion, in tokens"""
    temperature: float = 1.0
    """sampling temperature of the completions"""
    beta: float = 0.0
    """KL coefficient to the reference model (0: no reference model is loaded)"""
    epsilon: float = 0.2
    """clipping range of the policy ratio"""
    min_tokens: int = 16
    """L_min of the depth reward (tokens)"""
