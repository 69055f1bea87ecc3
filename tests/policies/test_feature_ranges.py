"""The student's feature-range check at serving (model card ``feature_ranges``): the kernel
(eligible users only, tolerance), the counts in ``ctx.info`` / the policy / Prometheus, and
``GET /models``, on a temporary copy of the shipped mac model whose card is edited (the card's
sha256 covers ``model.onnx`` only)."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.rest.app import create_app
from service.config import Settings
from service.core import ServiceCore
from service.errors import ModelInvalidError
from service.metrics import Metrics
from service.policies.registry import PolicySet
from service.policies.student import StudentPolicy
from service.policies.student_model import CARD_FILE, default_model_dir, locate_model, sha256_file
from service.policies.student_ranges import MAX_RANGE_NAMES, RANGE_BLOCKS, FeatureRanges
from service.serialize.tensors import NUM_GLOBAL, StudentBatch, StudentInputs, serialize, serialize_many
from service.sim.mac import MacEnv
from service.sim.mac_config import MAC_SCENARIOS
from service.sim.worlds import HELD_OUT
from service.state import MemoryStore

SLOTS = 25
TOKEN = "feature-ranges-test-token-0123456789"


def _ranges(lo: float, hi: float) -> dict[str, dict[str, list[float]]]:
    return {b: {"min": [lo] * len(n), "max": [hi] * len(n)} for b, n in RANGE_BLOCKS.items()}


def _model_copy(tmp_path: Path, ranges: dict | None, **card: Any) -> Path:
    """``<tmp>/models/student-mac/<version>``: the shipped mac model with an edited card."""
    src = locate_model(default_model_dir(), "mac")
    if src is None:
        pytest.fail("no shipped mac student under models/")
    root = tmp_path / "models"
    dst = root / "student-mac" / src.name
    shutil.copytree(src, dst)
    data = json.loads((dst / CARD_FILE).read_text())
    data.pop("feature_ranges", None)
    if ranges is not None:
        data["feature_ranges"] = ranges
    data.update(card)
    (dst / CARD_FILE).write_text(json.dumps(data))
    return root


def _serve(root: Path, slots: int = SLOTS, **settings: Any) -> tuple[ServiceCore, Metrics, list]:
    metrics = Metrics()
    student = StudentPolicy(root, presets=("mac",))
    core = ServiceCore(
        Settings(grpc_port=0, rest_port=0, fallbacks=[], **settings),
        store=MemoryStore(),
        policies=PolicySet(factories={"student": lambda: student}),
        observer=metrics,
    )
    env = MacEnv(replace(MAC_SCENARIOS["standard"], num_ue=10, num_rbg=4), seed=1)
    state, feedback, out = env.reset(), {}, []
    for _ in range(slots):
        d = core.schedule(state, policy="student", feedback=feedback)
        assert d.policy == "student", d.fallback
        out.append(d)
        res = env.step(d.owner, raw_valid=d.valid_before_repair)
        state, feedback = res.state, res.feedback
    return core, metrics, out


def _counter(metrics: Metrics, **labels: str) -> float | None:
    text = metrics.exposition()[0].decode()
    vals = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "gnbsched_student_out_of_range_total" and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(vals) if vals else None


def _models(core: ServiceCore, headers: dict[str, str] | None = None) -> httpx.Response:
    """``GET /models`` of the REST app over ``core``, in process (ASGI, no lifespan)."""

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(core))
        async with httpx.AsyncClient(transport=transport, base_url="http://gnbsched") as client:
            return await client.get("/models", headers=headers or {})

    return asyncio.run(get())


# ----------------------------------------------------------------------------- kernel


def test_check_eligible_users_only_and_the_tolerance() -> None:
    spec = _ranges(-1.0, 1.0)
    spec["user"]["max"][4] = 2.0  # user.buffer_log
    fr = FeatureRanges.from_card(spec, "card")
    inputs = StudentInputs.empty(3, 2)
    inputs.user_mask[:] = [1, 1, 0]
    inputs.res_mask[:] = 1
    assert fr.check(inputs) == []
    inputs.user_feats[2, 4] = 50.0  # an ineligible user: not checked
    assert fr.check(inputs) == []
    inputs.user_mask[2] = 1
    assert fr.check(inputs) == ["user.buffer_log"]
    inputs.user_feats[2, 4] = 2.0 * (1 + 5e-7)  # within the 1e-6 relative tolerance
    assert fr.check(inputs) == []
    inputs.user_feats[2, 4] = 2.0 * (1 + 5e-6)
    assert fr.check(inputs) == ["user.buffer_log"]
    inputs.global_feats[NUM_GLOBAL - 1] = -1.5
    inputs.pair_feats[0, 1, 2] = 3.0
    inputs.res_feats[0, 1] = -7.0
    assert fr.check(inputs) == [
        "global.log_mean_cum_resources",
        "user.buffer_log",
        "resource.bandwidth_rel",
        "pair.utility",
    ]


def test_malformed_ranges_refuse_the_model(tmp_path: Path) -> None:
    bad = _ranges(0.0, 1.0)
    bad["pair"]["min"] = bad["pair"]["min"][:-1]
    with pytest.raises(ModelInvalidError, match=r"feature_ranges\.pair"):
        StudentPolicy(_model_copy(tmp_path / "a", bad), presets=("mac",))
    inverted = _ranges(1.0, 0.0)
    with pytest.raises(ModelInvalidError, match="min <= max"):
        StudentPolicy(_model_copy(tmp_path / "b", inverted), presets=("mac",))


# ----------------------------------------------------------------------------- serving


def test_tight_ranges_count_every_slot_and_models_reports_them(tmp_path: Path) -> None:
    root = _model_copy(tmp_path, _ranges(0.0, 0.0), training={"held_out_families": ["case7", "n50"]})
    core, metrics, decisions = _serve(root, auth_token=TOKEN)
    for d in decisions:
        names = d.notes["out_of_range_features"]
        assert 0 < len(names) <= MAX_RANGE_NAMES and all(n.split(".")[0] in RANGE_BLOCKS for n in names)
    version = decisions[0].notes["model_version"]
    assert _counter(metrics, preset="mac", model_version=version) == SLOTS
    assert _models(core).status_code == 401  # the bearer token rule of /v1/policies
    r = _models(core, {"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    mac = r.json()["models"]["mac"]
    path = locate_model(root, "mac")
    assert path is not None
    assert (
        mac["policy"] == "student" and mac["version"] == version and mac["sha256"] == sha256_file(path / "model.onnx")
    )
    assert mac["feature_version"] == json.loads((path / CARD_FILE).read_text())["feature_version"]
    assert mac["held_out_families"] == ["case7", "n50"] and mac["feature_ranges"] is True
    counts = mac["out_of_range"]
    assert counts["slots_checked"] == SLOTS and counts["slots_out_of_range"] == SLOTS
    assert counts["features"] and all(0 < v <= SLOTS for v in counts["features"].values())
    assert "global.preset_mac" in counts["features"]  # 1 on every mac slot, outside [0, 0]


def test_one_tight_feature_is_named(tmp_path: Path) -> None:
    spec = _ranges(-1e6, 1e6)
    spec["global"]["max"][RANGE_BLOCKS["global"].index("preset_mac")] = 0.5
    core, _, decisions = _serve(_model_copy(tmp_path, spec), slots=5)
    assert all(d.notes["out_of_range_features"] == ["global.preset_mac"] for d in decisions)
    counts = _models(core).json()["models"]["mac"]["out_of_range"]
    assert counts == {"slots_checked": 5, "slots_out_of_range": 5, "features": {"global.preset_mac": 5}}


def test_wide_ranges_count_nothing(tmp_path: Path) -> None:
    core, metrics, decisions = _serve(_model_copy(tmp_path, _ranges(-1e6, 1e6)))
    assert all("out_of_range_features" not in d.notes for d in decisions)
    assert _counter(metrics) is None
    mac = _models(core).json()["models"]["mac"]
    assert mac["feature_ranges"] is True and mac["held_out_families"] == list(HELD_OUT["mac"])
    assert mac["out_of_range"] == {"slots_checked": SLOTS, "slots_out_of_range": 0, "features": {}}


def test_a_card_without_ranges_skips_the_check(tmp_path: Path) -> None:
    core, _, decisions = _serve(_model_copy(tmp_path, None), slots=5)
    assert all("out_of_range_features" not in d.notes for d in decisions)
    mac = _models(core).json()["models"]["mac"]
    assert mac["feature_ranges"] is False and mac["out_of_range"]["slots_checked"] == 0


def test_models_lists_nothing_before_the_student_is_loaded() -> None:
    core = ServiceCore(Settings(grpc_port=0, rest_port=0), store=MemoryStore())
    body = _models(core).json()
    assert body["models"] == {} and "note" in body
    assert np.isfinite(body["pid"])


def test_a_batch_is_checked_item_by_item_as_each_slot_alone() -> None:
    """``check_many`` on a padded batch names, per item, exactly what ``check`` names for the slot
    alone: the padding is never looked at (zero padding would be below a lower bound above 0)."""
    env = MacEnv(MAC_SCENARIOS["standard"], seed=4)
    states = [env.reset()]
    for _ in range(5):
        states.append(env.step(np.zeros(states[-1].num_res, np.int64)).state)
    states = [
        replace(s, user_eligible=s.user_eligible & (np.arange(s.num_ue) % (k + 2) > 0)) for k, s in enumerate(states)
    ]
    alone = [serialize(s) for s in states]
    ref = max(alone, key=lambda x: int(x.user_mask.sum()))
    assert ref.user_mask.sum() > 0
    # ranges of one slot's own features, lower bounds lifted above 0: the others fall outside
    spec = {}
    for block, arrays in (
        ("global", [ref.global_feats[None]]),
        ("user", [ref.user_feats[ref.user_mask > 0]]),
        ("resource", [ref.res_feats]),
        ("pair", [ref.pair_feats.reshape(len(RANGE_BLOCKS["pair"]), -1).T]),
    ):
        v = np.concatenate(arrays).astype(np.float64)
        lo, hi = v.min(axis=0), v.max(axis=0)
        spec[block] = {"min": np.minimum(np.maximum(lo, 1e-3), hi).tolist(), "max": hi.tolist()}
    ranges = FeatureRanges.from_card(spec, "test")
    batch = serialize_many(states, [None] * len(states), StudentBatch.empty(len(states), 120, 80))
    many = ranges.check_many(batch)
    assert many == [ranges.check(x) for x in alone]
    assert any(many) and any(m != many[0] for m in many)
