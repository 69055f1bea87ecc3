"""Tiny-budget runs of the real trainer scripts, end to end (CleanRL-style smoke tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from trainer import distill, grpo, ppo
from trainer.checkpoint import Checkpoint
from trainer.common import Logger
from trainer.data import read_jsonl, record_rows, write_jsonl
from trainer.export import Args as ExportArgs
from trainer.export import main as export_main
from trainer.teachers import make_teacher

from service.cli import main as gnbsched
from service.history import CellHistory
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.policies.student import StudentPolicy
from service.sim.mac import make_mac_env
from service.sim.spectrum import SpectrumConfig, SpectrumEnv


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _improved(rows: list[dict], key: str, k: int = 5) -> bool:
    """The mean of ``key`` over the last k logged steps is below its mean over the first k."""
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals[-k:])) < float(np.mean(vals[:k]))


def test_spectrum_distill_beats_random_then_grpo_and_export(tmp_path: Path):
    args = distill.Args(
        preset="spectrum",
        samples=400,
        steps=80,
        batch_size=16,
        max_ue=30,
        max_res=30,
        eval_slots=4,
        eval_every=0,
        out=str(tmp_path / "d"),
    )
    ckpt = distill.main(args, Logger(args.out, "distill", quiet=True))
    final = ckpt.stages[-1]["final"]
    # the network alone (plain PAG greedy decode, no exact assignment) beats a random valid assignment
    assert final["eval/greedy_ratio_km_min"] > final["eval/random_ratio_km_mean"] + 0.2
    logged = _metrics(tmp_path / "d")
    assert {"losses/nll", "losses/assignment_hinge", "charts/row_match"} <= set(logged[0])
    assert _improved(logged, "losses/nll")

    g = grpo.Args(
        init=str(tmp_path / "d"),
        iterations=2,
        states_per_iteration=4,
        group_size=4,
        max_ue=20,
        max_res=20,
        eval_slots=2,
        out=str(tmp_path / "g"),
    )
    tuned = grpo.main(g, Logger(g.out, "grpo", quiet=True))
    assert [s["script"] for s in tuned.stages] == ["distill", "grpo"]
    assert {"losses/policy", "losses/kl", "charts/reward_mean"} <= set(_metrics(tmp_path / "g")[0])

    target = export_main(ExportArgs(checkpoint=str(tmp_path / "g"), models_dir=str(tmp_path / "models"), version="v3"))
    card = json.loads((target / "model.json").read_text())
    assert card["version"] == "v3" and card["decode"]["kind"] == "assignment" and card["size_bytes"] < 5_000_000
    assert [s["script"] for s in card["training"]["stages"]] == ["distill", "grpo"]
    student = StudentPolicy(tmp_path / "models", presets=("spectrum",))
    pset = PolicySet(factories={"student": lambda: student})
    state = SpectrumEnv(SpectrumConfig(num_ue=9, num_channels=12, num_busy=3), seed=3).reset()
    d = decide(state, CellHistory.empty(), "student", policies=pset)
    assert d.valid_before_repair and d.policy_version == "spectrum=v3"


def test_mac_distill_from_a_recorded_dataset_then_ppo(tmp_path: Path):
    rows = list(record_rows("mac", make_teacher("max_weight"), scenarios=["fixed-5"], episodes=1, slots=120, seed=0))
    # a recorded LLM answer in the same format: one invalid (user 99 does not exist) -> repaired
    llm = dict(rows[5])
    llm.pop("owner")
    llm["completion"] = [{"role": "assistant", "content": json.dumps({"owner": [99, *rows[5]["owner"][1:]]})}]
    path = tmp_path / "data.jsonl"
    write_jsonl([*rows, llm], path)
    samples, stats = read_jsonl(path, preset="mac")
    assert stats.rows == 121 and stats.repaired >= 1 and len(samples) == 121
    _, strict = read_jsonl(path, preset="mac", drop_invalid=True)
    assert strict.dropped >= 1

    args = distill.Args(
        preset="mac", dataset=str(path), steps=60, batch_size=16, eval_slots=1, eval_every=0, out=str(tmp_path / "d")
    )
    ckpt = distill.main(args, Logger(args.out, "distill", quiet=True))
    logged = _metrics(tmp_path / "d")
    assert _improved(logged, "losses/nll")  # it learned the recorded decisions
    assert ckpt.stages[-1]["data"]["dataset"] == str(path)

    p = ppo.Args(
        init=str(tmp_path / "d"),
        total_steps=256,
        num_envs=4,
        num_steps=32,
        eval_ttis=50,
        eval_every=0,
        out=str(tmp_path / "p"),
    )
    tuned = ppo.main(p, Logger(p.out, "ppo", quiet=True))
    assert {"losses/policy", "losses/value", "losses/approx_kl", "charts/sps"} <= set(_metrics(tmp_path / "p")[0])
    assert Checkpoint.load(tmp_path / "p").stages[-1]["script"] == "ppo" == tuned.stages[-1]["script"]


def test_train_all_quick_reproduces_a_loadable_model(tmp_path: Path):
    code = gnbsched(
        [
            "train",
            "all",
            "--preset",
            "mac",
            "--quick",
            "--no-bench",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--models-dir",
            str(tmp_path / "models"),
            "--version",
            "v1",
        ]
    )
    assert code == 0
    card = json.loads((tmp_path / "models" / "student-mac" / "v1" / "model.json").read_text())
    assert card["training"]["command"] == "gnbsched train all --preset mac --quick"
    assert (tmp_path / "models" / "student-mac" / "latest").read_text().strip() == "v1"
    student = StudentPolicy(tmp_path / "models", presets=("mac",))
    pset = PolicySet(factories={"student": lambda: student})
    env = make_mac_env("standard", seed=1)
    state = env.reset()
    for _ in range(20):
        d = decide(state, CellHistory.empty(), "student", policies=pset)
        assert d.valid_before_repair
        state = env.step(d.owner).state
    assert np.isfinite(d.utility)


def test_mac_distill_on_the_world_families_records_them_and_serves(tmp_path: Path):
    """``--worlds families``: the data come from the training families only, the card names them
    and the held-out ones, its feature ranges cover every serialized feature, and the exported
    pf-anchored model serves valid decisions on a held-out world."""
    from service.serialize.tensors import (
        GLOBAL_FEATURES,
        PAIR_FEATURES,
        RESOURCE_FEATURES,
        USER_FEATURES,
    )
    from service.sim.worlds import HELD_OUT, WorldEnv, random_world, training_families

    args = distill.Args(
        preset="mac",
        teacher="pf",
        worlds="families",
        decode="pf_anchored",
        samples=300,
        steps=40,
        batch_size=16,
        eval_slots=1,
        eval_every=0,
        out=str(tmp_path / "d"),
    )
    ckpt = distill.main(args, Logger(args.out, "distill", quiet=True))
    assert ckpt.decode["kind"] == "pf_anchored" and 0 < ckpt.decode["bound"] < 1
    assert _improved(_metrics(tmp_path / "d"), "losses/nll")
    target = export_main(ExportArgs(checkpoint=str(tmp_path / "d"), models_dir=str(tmp_path / "models"), version="v1"))
    card = json.loads((target / "model.json").read_text())
    assert card["training"]["families"] == list(training_families("mac"))
    assert card["training"]["held_out_families"] == list(HELD_OUT["mac"])
    widths = {"global": GLOBAL_FEATURES, "user": USER_FEATURES, "resource": RESOURCE_FEATURES, "pair": PAIR_FEATURES}
    for block, names in widths.items():
        lo, hi = card["feature_ranges"][block]["min"], card["feature_ranges"][block]["max"]
        assert len(lo) == len(hi) == len(names) and all(a <= b for a, b in zip(lo, hi, strict=True))
    student = StudentPolicy(tmp_path / "models", presets=("mac",))
    pset = PolicySet(factories={"student": lambda: student})
    env = WorldEnv(random_world(HELD_OUT["mac"][0], np.random.default_rng(1), num_ue=12, num_rbg=9), seed=1)
    state, history = env.state(), CellHistory.empty()
    for _ in range(5):
        d = decide(state, history, "student", policies=pset)
        assert d.policy == "student" and d.valid_before_repair and d.policy_version == "mac=v1"
        state = env.step(d.owner).state
