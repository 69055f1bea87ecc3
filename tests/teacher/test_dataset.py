"""``gnbsched dataset``: SFT / GRPO rows from the simulators with the exact solver's decisions."""

from __future__ import annotations

import json

import numpy as np

from service.cli import main
from service.finetune.dataset import DatasetSpec, build_rows
from service.finetune.rewards import STRUCT_MAX, struct_reward
from service.history import CellHistory
from service.pag.checks import check
from service.policies.base import PolicyContext
from service.policies.registry import make
from service.rng import slot_rng
from service.serialize.prompt_options import PromptOptions
from service.serialize.slot_codec import slot_from_dict, slot_to_dict
from service.sim.mac import make_mac_env
from service.sim.spectrum import make_spectrum_env
from service.types import SlotState, slot_utility


def assert_same_slot(a: SlotState, b: SlotState) -> None:
    for f in ("user_ids", "resource_ids", "utility", "resource_available", "user_eligible", "bandwidth_hz"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    for f in ("buffer_bits", "rx_power_dbm", "spectral_efficiency"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None and y is None) or np.array_equal(x, y), f
    assert (a.preset, a.cell_id, a.slot, a.max_resources_per_user, a.tti_s) == (
        b.preset,
        b.cell_id,
        b.slot,
        b.max_resources_per_user,
        b.tti_s,
    )


def test_slot_record_round_trip_is_exact() -> None:
    spectrum = make_spectrum_env("u15-c20-b4", seed=3).reset(seed=3)
    mac = make_mac_env("standard", seed=3).reset(seed=3)
    for state in (spectrum, mac):
        back = slot_from_dict(json.loads(json.dumps(slot_to_dict(state))))
        assert_same_slot(state, back)


def test_slot_record_keeps_the_utility_of_a_mac_slot_built_from_bit_per_second() -> None:
    """A mac slot from ``rate_bps`` (bit/s → · tti_s bits per RBG) or from ``utility`` records its
    utility itself: the record reads back, and rebuilds through ``make_slot(utility=...)``, to the
    same matrix — never multiplied by ``tti_s`` a second time."""
    from service.types import make_slot

    rate = np.array([[1.6932e6, 0.8664e6], [0.3375e6, 2.2e6]])
    from_rate = make_slot("mac", [1, 2], [0, 1], rate_bps=rate, buffer_bits=[2048.0, 512.0], tti_s=0.001)
    np.testing.assert_array_equal(from_rate.utility, rate * 0.001)
    from_weights = make_slot("mac", [1, 2], [0, 1], utility=[[3.0, 0.5], [0.0, 9.0]], buffer_bits=[1.0, 2.0])
    for state in (from_rate, from_weights):
        record = json.loads(json.dumps(slot_to_dict(state)))
        back = slot_from_dict(record)
        assert_same_slot(state, back)
        rebuilt = make_slot(
            "mac",
            record["user_ids"],
            record["resource_ids"],
            utility=back.utility,
            buffer_bits=back.buffer_bits,
            tti_s=record["tti_s"],
        )
        np.testing.assert_array_equal(rebuilt.utility, state.utility)


def test_sft_rows_carry_the_exact_solver_decision() -> None:
    spec = DatasetSpec(
        preset="spectrum",
        kind="sft",
        scenarios=("u7-c10-b2", "scale-I"),
        episodes=1,
        slots=2,
        options=PromptOptions(budget_tokens=2048),
    )
    rows = list(build_rows(spec))
    assert len(rows) == 4
    for row in rows:
        state = slot_from_dict(json.loads(row["state"]))
        answer = row["completion"][0]["content"]
        assert row["completion"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"
        result = check(state, answer)
        assert result.valid, result.violations
        assert struct_reward(state, answer) > 0.9
        assert row["meta"]["prompt_tokens"] <= 2048
        ctx = PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot))
        km_owner = np.asarray(make("km")(state, ctx), np.int64)
        assert row["meta"]["solver_utility"] == slot_utility(state, km_owner)
        if row["meta"]["answer_form"] == "owner":  # the small grid: the full KM decision
            assert np.array_equal(result.dcm, km_owner)
            assert struct_reward(state, answer) == STRUCT_MAX
    assert {r["meta"]["answer_form"] for r in rows} == {"owner", "allocation"}


def test_grpo_rows_are_prompt_only_and_deterministic() -> None:
    spec = DatasetSpec(preset="mac", kind="grpo", scenarios=("fixed-5",), episodes=2, slots=3, seed=7)
    a, b = list(build_rows(spec)), list(build_rows(spec))
    assert a == b and len(a) == 6
    assert all("completion" not in r for r in a)
    assert "<Role>" in a[0]["prompt"][0]["content"]
    assert slot_from_dict(json.loads(a[0]["state"])).preset == "mac"
    c = list(build_rows(DatasetSpec(preset="mac", kind="grpo", scenarios=("fixed-5",), episodes=2, slots=3, seed=8)))
    assert [r["state"] for r in c] != [r["state"] for r in a]


def test_cli_writes_jsonl(tmp_path, capsys) -> None:
    out = tmp_path / "sft.jsonl"
    rc = main(
        [
            "dataset",
            "--preset",
            "spectrum",
            "--kind",
            "sft",
            "--scenarios",
            "u5-c5-b1",
            "--episodes",
            "1",
            "--slots",
            "3",
            "--format",
            "text",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 3 and isinstance(rows[0]["prompt"], str) and isinstance(rows[0]["completion"], str)
    assert json.loads(rows[0]["completion"])["owner"]
    assert "3 sft rows" in capsys.readouterr().out
