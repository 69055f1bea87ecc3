"""The code form in the fine-tuning kit: code prompts with the reference program as SFT target,
and the execution-feedback reward (programs run in the real sandbox)."""

from __future__ import annotations

import json

import pytest

from service.finetune.dataset import DatasetSpec, build_rows
from service.finetune.rewards import RewardConfig, code_reward_func, program_answer
from service.pag.checks import check
from service.sandbox import Sandbox
from service.serialize.code_form import REFERENCE_PROGRAM, fenced
from service.serialize.slot_codec import slot_from_dict


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    Sandbox.check()
    spec = DatasetSpec(preset="mac", kind="sft", scenarios=("fixed-5",), episodes=1, slots=4, code_form=True)
    return list(build_rows(spec))


def test_code_rows_ask_for_a_program_and_the_reference_program_is_valid(rows: list[dict]) -> None:
    assert len(rows) == 4
    for row in rows:
        assert row["meta"]["answer_form"] == "code"
        assert "def schedule(state)" in row["prompt"][-1]["content"]
        answer = row["completion"][0]["content"]
        assert answer == fenced(REFERENCE_PROGRAM)
        state = slot_from_dict(json.loads(row["state"]))
        owner = program_answer(state, answer)
        assert owner is not None and check(state, owner).valid, owner


def test_the_code_reward_runs_programs_and_ranks_them(rows: list[dict]) -> None:
    cfg = RewardConfig()
    reward = code_reward_func(cfg)
    idle = fenced("def schedule(state):\n    return [-1] * state.num_res\n")
    broken = fenced("def schedule(state):\n    return 1 / 0\n")
    escape = fenced("def schedule(state):\n    open('/etc/passwd').read()\n    return [-1] * state.num_res\n")
    completions = [fenced(REFERENCE_PROGRAM), idle, broken, escape, "no program here"]
    state = [rows[1]["state"]] * len(completions)
    scores = reward(completions=completions, state=state)
    failed = cfg.lambda_struct * cfg.malformed_penalty - cfg.lambda_perf * cfg.kappa
    assert scores[2] == scores[3] == scores[4] == failed
    assert scores[0] > scores[1] > failed, scores
