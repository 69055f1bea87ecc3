"""``gnbsched finetune`` trains for real with TRL on a tiny local model (CPU, nothing downloaded).

One module-wide run: ``tiny-model`` builds a Qwen2 model (hidden 64, 2 layers) and its tokenizer,
``sft`` trains it on KM answers of the mac simulator and must raise the valid rate of its greedy
answers to held-out prompts (they parse and pass the PAG check) and their utility / KM well above
the untrained model's;
``grpo`` then runs from the SFT model with the project's reward functions and logs a finite mean
reward at every step; ``--resume`` continues both trainers from their last checkpoint (the step
counter goes on from the checkpoint's step).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.cli import main as gnbsched

pytestmark = pytest.mark.slow

#: the rows of the test: the mac simulator's standard scenario (2 UEs, 8 RBGs), 256 SFT rows
DATA = ["--preset", "mac", "--scenarios", "standard", "--slots", "32", "--max-length", "512"]
SFT = ["--episodes", "8", "--epochs", "4", "--batch-size", "16", "--lr", "3e-3", "--save-steps", "32"]
SFT_STEPS = 64  # 256 rows / 16 per batch x 4 epochs
GRPO = [
    "--episodes",
    "1",
    "--batch-size",
    "8",
    "--num-generations",
    "4",
    "--max-completion-length",
    "32",
    "--lr",
    "1e-4",
    "--save-steps",
    "2",
    "--logging-steps",
    "1",
    "--eval-prompts",
    "0",
]


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """The Hugging Face libraries never reach the hub in these tests."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def finetune(*argv: str) -> dict[str, Any]:
    """Run ``gnbsched finetune ...`` in process; return the summary.json it wrote."""
    assert gnbsched(["finetune", *argv]) == 0
    out = argv[argv.index("--out") + 1]
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    assert gnbsched(["finetune", "tiny-model", "--out", str(out), "--preset", "mac", "--scenarios", "standard"]) == 0
    return out


@pytest.fixture(scope="module")
def sft(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sft")
    summary = finetune("sft", "--model", str(tiny), "--out", str(out), *DATA, *SFT, "--eval-prompts", "50")
    return out, summary


def test_tiny_model_is_local_and_seeded(tiny: Path, tmp_path: Path) -> None:
    """The tokenizer reloads as saved (not as Qwen2's own class) and the same seed rebuilds the same model."""
    from trainer.finetune.common import load_tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = load_tokenizer(tiny)
    assert isinstance(tok, PreTrainedTokenizerFast)
    text = '{"owner":[2,2,null,null,null,null,null,1]}'
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    again = tmp_path / "again"
    assert gnbsched(["finetune", "tiny-model", "--out", str(again), "--preset", "mac", "--scenarios", "standard"]) == 0
    for name in ("tokenizer.json", "model.safetensors"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes(), name


def test_sft_raises_the_held_out_valid_rate(sft: tuple[Path, dict[str, Any]]) -> None:
    out, summary = sft
    before, after = summary["before"], summary["after"]
    assert before["prompts"] == after["prompts"] == 50
    assert after["valid_rate"] >= before["valid_rate"] + 0.3, (before, after)
    # an answer leaving every RBG unused is valid: the model must also schedule the UEs the KM optimum serves
    assert after["utility_ratio"] >= before["utility_ratio"] + 0.3, (before, after)
    assert after["parsable_rate"] >= 0.9, after
    assert after["mean_reward"] > before["mean_reward"], (before, after)
    assert summary["global_step"] == summary["steps_run"] == SFT_STEPS
    assert summary["resumed_from"] is None
    losses = [e["loss"] for e in summary["log_history"] if "loss" in e]
    assert losses and losses[-1] < losses[0], losses
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / f"checkpoint-{SFT_STEPS}").is_dir()


def test_sft_resume_continues_from_the_last_checkpoint(sft: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    src, _ = sft
    out = tmp_path / "sft"
    shutil.copytree(src, out)
    extra = 4
    summary = finetune(
        "sft", "--model", str(src), "--out", str(out), *DATA, *SFT, "--max-steps", str(SFT_STEPS + extra),
        "--eval-prompts", "0", "--resume",
    )  # fmt: skip
    assert summary["resumed_from"] == str(out / f"checkpoint-{SFT_STEPS}")
    assert summary["start_step"] == SFT_STEPS
    assert summary["steps_run"] == extra
    assert summary["global_step"] == SFT_STEPS + extra


def test_grpo_from_the_sft_model_logs_finite_rewards_and_resumes(
    sft: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    model, _ = sft
    out = tmp_path / "grpo"
    first = finetune("grpo", "--model", str(model), "--out", str(out), *DATA, *GRPO, "--max-steps", "4")
    assert first["global_step"] == first["steps_run"] == 4
    assert [step for step, _ in first["reward_log"]] == [1, 2, 3, 4]
    assert first["rewards_finite"] and all(math.isfinite(r) for _, r in first["reward_log"])
    assert set(first["rewards"]) == {"struct", "perf", "depth"}
    assert (out / "checkpoint-4").is_dir()

    resumed = finetune("grpo", "--model", str(model), "--out", str(out), *DATA, *GRPO, "--max-steps", "6", "--resume")
    assert resumed["resumed_from"] == str(out / "checkpoint-4")
    assert (resumed["start_step"], resumed["steps_run"], resumed["global_step"]) == (4, 2, 6)
    assert [step for step, _ in resumed["reward_log"]] == [1, 2, 3, 4, 5, 6]
    assert resumed["reward_log"][:4] == first["reward_log"]  # the first four steps are the checkpoint's history
    assert all(math.isfinite(r) for _, r in resumed["reward_log"])


def test_a_missing_model_path_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="does not exist"):
        gnbsched(["finetune", "sft", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])


def test_grpo_on_code_prompts_scores_programs_by_running_them(tiny: Path, tmp_path: Path) -> None:
    """The code form end to end: code prompts, the execution-feedback reward (each completion's
    program run in the sandbox), finite rewards logged."""
    out = tmp_path / "grpo-code"
    summary = finetune(
        "grpo",
        "--model",
        str(tiny),
        "--out",
        str(out),
        "--preset",
        "mac",
        "--scenarios",
        "standard",
        "--slots",
        "8",
        "--max-length",
        "1536",
        *GRPO,
        "--code-form",
        "--rewards",
        "code",
        "--max-steps",
        "2",
    )
    assert summary["global_step"] == 2 and set(summary["rewards"]) == {"code"}
    assert summary["rewards_finite"] and all(math.isfinite(r) for _, r in summary["reward_log"])
