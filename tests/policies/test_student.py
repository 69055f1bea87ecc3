"""The ``student`` policy: PAG decode, pipeline validity, model location and hot reload."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from testkit import held_history, light_mac_slot
from trainer.export import export_initialised

from service.assign import ShareTilt
from service.errors import ModelInvalidError, PolicyUnavailableError
from service.history import CellHistory, apply_feedback, record_decision
from service.pag.checks import is_valid
from service.pag.mask import pag_mask
from service.pipeline import decide
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet, make
from service.policies.student import StudentPolicy
from service.policies.student_decode import (
    decode,
    decode_anchored,
    decode_assignment,
    decode_capped,
    decode_pf_anchored,
    user_needs,
)
from service.policies.student_model import CARD_FILE, MODEL_FILE, locate_model, sha256_file
from service.serialize.tensors import INPUT_NAMES, NUM_GLOBAL, NUM_PAIR, NUM_RES, NUM_USER
from service.sim.mac import make_mac_env
from service.sim.spectrum import SpectrumConfig, SpectrumEnv
from service.types import make_slot, served_bits, slot_utility

# ----------------------------------------------------------------------------- decode (pure)


def _random_slot(rng: np.random.Generator):
    n, r = int(rng.integers(1, 12)), int(rng.integers(1, 10))
    mac = rng.random() < 0.7
    flat = rng.random() < 0.5
    util = np.repeat(rng.random((n, 1)), r, 1) if flat else rng.random((n, r))
    return make_slot(
        "mac" if mac else "spectrum",
        np.arange(n),
        np.arange(r),
        utility=util * 1e3,
        resource_available=rng.random(r) < 0.8,
        user_eligible=rng.random(n) < 0.8,
        buffer_bits=rng.integers(0, 6, n) * 300.0 if mac else None,
        max_resources_per_user=int(rng.integers(1, 5)) if mac else None,
    )


def _sequential_reference(state, logits, margin):
    """The two-pass decode written as the obvious loop over positions."""
    m = np.where(pag_mask(state), logits, -np.inf)
    need = user_needs(state)
    owner = np.zeros(state.num_res, np.int64)
    count = np.zeros(state.num_ue + 1, np.int64)
    for r in np.flatnonzero(state.resource_available):
        row = m[r].copy()
        row[1:][count[1:] >= need] = -np.inf
        k = int(row.argmax())
        owner[r] = k
        count[k] += 1
    cap = np.where(state.user_eligible, state.max_resources_per_user, 0)
    for r in np.flatnonzero(state.resource_available & (owner == 0)):
        row = m[r, 1:].copy()
        row[count[1:] >= cap] = -np.inf
        k = int(row.argmax())
        if row[k] > m[r, 0] + margin:
            owner[r] = k + 1
            count[k + 1] += 1
    return owner


def test_capped_decode_equals_the_sequential_rule_and_is_valid():
    rng = np.random.default_rng(7)
    for _ in range(1500):
        state = _random_slot(rng)
        shape = (state.num_res, state.num_ue + 1)
        logits = (
            np.repeat(rng.normal(size=(1, shape[1])) * 3, shape[0], 0)
            if rng.random() < 0.5
            else rng.normal(size=shape) * 3
        )
        if rng.random() < 0.3:
            logits = np.round(logits)  # ties
        owner = decode_capped(state, logits, surplus_margin=2.0)
        assert is_valid(state, owner)
        np.testing.assert_array_equal(owner, _sequential_reference(state, logits, 2.0))


def test_needs_are_the_assignment_kernels_copies_per_user():
    from service.assign import copies_per_user

    rng = np.random.default_rng(11)
    for _ in range(500):
        state = _random_slot(rng)
        np.testing.assert_array_equal(user_needs(state), copies_per_user(state))


def test_capped_decode_is_valid_whatever_the_logits():
    rng = np.random.default_rng(3)
    for _ in range(300):
        state = _random_slot(rng)
        logits = rng.choice([-1e9, 1e9, 0.0, 5.0], size=(state.num_res, state.num_ue + 1))
        assert is_valid(state, decode_capped(state, logits))


def test_anchored_decode_keeps_its_bound_of_the_optimum_whatever_the_logits():
    """Adversarial logits (the network's worst case: +big on bad pairs, -big on good ones) cannot
    push the anchored decode below (1 - b) / (1 + b) of the optimum, and zero-rate pairs stay
    unused; with flat margins it is the exact optimum."""
    from service.assign import linear_assignment

    rng = np.random.default_rng(7)
    for bound in (0.005, 0.05, 0.3):
        for _ in range(150):
            n, r = int(rng.integers(1, 25)), int(rng.integers(1, 25))
            util = rng.exponential(1.0, (n, r)) * (rng.random((n, r)) < 0.8) * 10 ** rng.uniform(-6, 9)
            state = make_slot(
                "spectrum",
                np.arange(n),
                np.arange(r),
                utility=util,
                resource_available=rng.random(r) < 0.85,
                user_eligible=rng.random(n) < 0.9,
            )
            best = slot_utility(state, linear_assignment(state, state.utility))
            adversarial = np.zeros((r, n + 1))
            adversarial[:, 1:] = np.where(util.T > np.median(util), -50.0, 50.0)
            for logits in (adversarial, rng.normal(0, 20, (r, n + 1)), np.zeros((r, n + 1))):
                owner = decode_anchored(state, logits, bound)
                assert is_valid(state, owner)
                got = slot_utility(state, owner)
                assert got >= (1 - bound) / (1 + bound) * best - 1e-9 * max(best, 1.0), (bound, got, best)
                granted = owner > 0
                assert (util[owner[granted] - 1, np.flatnonzero(granted)] > 0).all()
            assert slot_utility(state, decode_anchored(state, np.zeros((r, n + 1)), bound)) == pytest.approx(best)


def test_pf_anchored_decode_is_pf_with_flat_margins_and_valid_for_any_logits():
    rng = np.random.default_rng(11)
    pf = make("pf")
    for _ in range(200):
        state = _random_slot(rng)
        if state.preset != "mac":
            continue
        view = replace(CellHistory.empty().view(state), avg_served=rng.exponential(300.0, state.num_ue))
        want = np.asarray(pf(state, PolicyContext(view, np.random.default_rng(0))), np.int64)
        got = decode_pf_anchored(state, np.zeros((state.num_res, state.num_ue + 1)), view)
        assert np.array_equal(got, want)
        wild = rng.normal(0, 30, (state.num_res, state.num_ue + 1))
        assert is_valid(state, decode_pf_anchored(state, wild, view, 0.3))


def test_pf_anchored_decode_with_the_share_tilt_is_pf_fair_with_flat_margins():
    """The card's ``share_tilt`` block makes the anchor pf_fair's rule: flat margins give pf_fair's
    decision on any history, and any logits keep the decision valid and at least the tilt's share
    of the bits of pf's own decision."""
    rng = np.random.default_rng(12)
    tilt = ShareTilt()
    pf_fair = make("pf_fair")
    spec = {"kind": "pf_anchored", "bound": 0.05, "share_tilt": tilt.as_dict()}
    below = 0
    for _ in range(200):
        state = _random_slot(rng)
        if state.preset != "mac":
            continue
        n = state.num_ue
        view = held_history(rng.exponential(300.0, n), rng.integers(0, 50, n))
        flat = np.zeros((state.num_res, n + 1))
        want = np.asarray(pf_fair(state, PolicyContext(view, np.random.default_rng(0))), np.int64)
        assert np.array_equal(decode(state, flat, spec, view), want)
        wild = rng.normal(0, 30, (state.num_res, n + 1))
        got = decode(state, wild, spec, view)
        assert is_valid(state, got)
        pf = np.asarray(make("pf")(state, PolicyContext(view, np.random.default_rng(0))), np.int64)
        floor = tilt.min_bits_ratio * slot_utility(state, pf)
        assert slot_utility(state, got) >= floor - 1e-9 * max(floor, 1.0)
        below += slot_utility(state, decode_pf_anchored(state, wild, view, 0.05)) < tilt.min_bits_ratio * slot_utility(
            state, pf
        )
    assert below > 0  # the network's tilt alone would have scheduled below the floor on some slots


def test_pf_anchored_decode_with_the_idle_spread_is_pf_spread_with_flat_margins():
    """The card's ``spread_idle: true`` makes the anchor pf_spread's rule: flat margins give
    pf_spread's decision on any history; any logits keep the decision valid, every user served
    the bits of the decode without the spread, and change only slots that leave an RBG idle."""
    rng = np.random.default_rng(13)
    pf_spread = make("pf_spread")
    spec = {"kind": "pf_anchored", "bound": 0.05, "spread_idle": True}
    changed = 0
    for _ in range(300):
        state = light_mac_slot(rng)
        n = state.num_ue
        view = held_history(rng.exponential(300.0, n), rng.integers(0, 50, n), rng.integers(0, 10, n))
        flat = np.zeros((state.num_res, n + 1))
        want = np.asarray(pf_spread(state, PolicyContext(view, np.random.default_rng(0))), np.int64)
        assert np.array_equal(decode(state, flat, spec, view), want)
        wild = rng.normal(0, 30, (state.num_res, n + 1))
        got, plain = decode(state, wild, spec, view), decode_pf_anchored(state, wild, view, 0.05)
        assert is_valid(state, got)
        tol = 1e-9 * state.utility.max(axis=1)
        assert np.all(np.abs(served_bits(state, got) - served_bits(state, plain)) <= tol)
        if not np.array_equal(got, plain):
            changed += 1
            assert (state.resource_available & (plain == 0)).any()  # only a slot with an idle RBG
    assert changed > 5


def test_assignment_decode_maximises_the_margins():
    rng = np.random.default_rng(5)
    for _ in range(50):
        n, r = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        state = make_slot(
            "spectrum",
            np.arange(n),
            np.arange(r),
            rate_bps=rng.random((n, r)) + 0.1,
            resource_available=rng.random(r) < 0.8,
            user_eligible=rng.random(n) < 0.9,
        )
        logits = rng.normal(size=(r, n + 1))
        owner = decode_assignment(state, logits)
        assert is_valid(state, owner)
        margin = logits[:, 1:] - logits[:, :1]
        value = sum(margin[i, k - 1] for i, k in enumerate(owner) if k)
        # brute force over every valid cap-1 assignment
        from service.policies.assignment import Exhaustive
        from service.policies.base import PolicyContext

        fake = make_slot(
            "spectrum",
            np.arange(n),
            np.arange(r),
            rate_bps=np.clip(margin.T, 0, None) + 1e-12,
            resource_available=state.resource_available,
            user_eligible=state.user_eligible,
        )
        best = Exhaustive()(fake, PolicyContext(CellHistory.empty().view(fake), rng))
        best_value = sum(margin[i, k - 1] for i, k in enumerate(best) if k and margin[i, k - 1] > 0)
        assert value >= best_value - 1e-9


def test_assignment_decode_reaches_the_general_kernels_optimum_on_large_slots():
    """The cap-1 fast path (no transpose, direct solver call) against ``assign.linear_assignment``."""
    from service.assign import linear_assignment

    rng = np.random.default_rng(9)
    for _ in range(40):
        n, r = int(rng.integers(20, 120)), int(rng.integers(20, 90))
        state = make_slot(
            "spectrum",
            np.arange(n),
            np.arange(r),
            rate_bps=rng.random((n, r)) + 0.1,
            resource_available=rng.random(r) < rng.uniform(0.5, 1.0),
            user_eligible=rng.random(n) < rng.uniform(0.3, 1.0),
        )
        logits = rng.normal(size=(r, n + 1)).astype(np.float32)
        owner = decode_assignment(state, logits)
        assert is_valid(state, owner)
        score = np.maximum((logits[:, 1:] - logits[:, :1]).T.astype(np.float64), 0.0)
        general = linear_assignment(state, score)
        value = sum(score[k - 1, i] for i, k in enumerate(owner) if k)
        assert value == pytest.approx(sum(score[k - 1, i] for i, k in enumerate(general) if k), rel=1e-9)
        assert all(score[k - 1, i] > 0 for i, k in enumerate(owner) if k)


# ----------------------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("student-models")
    for preset in ("spectrum", "mac"):
        export_initialised(tmp, preset, "v1", seed=1)
    return tmp


def _copy_models(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_student_through_the_pipeline_is_valid_before_repair(models: Path):
    student = StudentPolicy(models)
    pset = PolicySet(factories={"student": lambda: student})
    env = SpectrumEnv(SpectrumConfig(num_ue=12, num_channels=9, num_busy=2), seed=4)
    state, history = env.reset(), CellHistory.empty()
    for _ in range(20):
        d = decide(state, history, "student", policies=pset, seed=1)
        assert d.valid_before_repair and d.violations == [] and d.fallback is None
        assert d.policy_version == "mac=v1,spectrum=v1"
        history = record_decision(history, state, d.owner)
        res = env.step(d.owner)
        history, state = apply_feedback(history, res.feedback), res.state
    env = make_mac_env("standard", seed=2)
    state, history = env.reset(), CellHistory.empty()
    for _ in range(150):
        d = decide(state, history, "student", policies=pset, seed=1)
        assert d.valid_before_repair, d.violations
        assert d.notes["model_version"] == "v1"
        history = record_decision(history, state, d.owner)
        res = env.step(d.owner)
        history, state = apply_feedback(history, res.feedback), res.state


def test_same_slot_same_decision(models: Path):
    student = StudentPolicy(models)
    pset = PolicySet(factories={"student": lambda: student})
    state = SpectrumEnv(SpectrumConfig(num_ue=30, num_channels=20, num_busy=3), seed=9).reset()
    a = decide(state, CellHistory.empty(), "student", policies=pset).owner
    b = decide(state, CellHistory.empty(), "student", policies=pset).owner
    np.testing.assert_array_equal(a, b)
    assert slot_utility(state, a) > 0


def test_locate_latest_file_else_highest_version(models: Path, tmp_path: Path):
    root = _copy_models(models, tmp_path / "m")
    shutil.copytree(root / "student-mac" / "v1", root / "student-mac" / "v10")
    shutil.copytree(root / "student-mac" / "v1", root / "student-mac" / "v9")
    (root / "student-mac" / "latest").unlink()
    assert locate_model(root, "mac").name == "v10"  # natural order, not lexicographic
    (root / "student-mac" / "latest").write_text("v9\n")
    assert locate_model(root, "mac").name == "v9"
    assert locate_model(root, "mac", "v1").name == "v1"
    assert locate_model(tmp_path / "nowhere", "mac") is None


def test_model_dir_from_the_environment(models: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GNBSCHED_MODEL_DIR", str(models))
    student = StudentPolicy()
    assert student.model_dir == models
    assert student.model("spectrum") is not None and student.model("mac") is not None
    meta = student.metadata()
    assert meta["models"]["mac"]["version"] == "v1" and meta["models"]["mac"]["sha256"] == sha256_file(
        models / "student-mac" / "v1" / MODEL_FILE
    )


def test_missing_preset_is_unavailable_and_the_pipeline_falls_back(models: Path, tmp_path: Path):
    root = _copy_models(models, tmp_path / "m")
    shutil.rmtree(root / "student-mac")
    student = StudentPolicy(root)
    pset = PolicySet(factories={"student": lambda: student})
    state = make_mac_env("fixed-5", seed=1).reset()
    with pytest.raises(PolicyUnavailableError):
        student(state, _ctx(state))
    d = decide(state, CellHistory.empty(), "student", policies=pset, fallbacks=["pf"])
    assert d.policy == "pf" and d.fallback_reason == "unavailable"


def _ctx(state):
    from service.policies.base import PolicyContext

    return PolicyContext(CellHistory.empty().view(state), np.random.default_rng(0))


# ----------------------------------------------------------------------------- hot reload


def test_reload_swaps_to_a_new_version(models: Path, tmp_path: Path):
    root = _copy_models(models, tmp_path / "m")
    student = StudentPolicy(root)
    state = SpectrumEnv(SpectrumConfig(num_ue=8, num_channels=8, num_busy=1), seed=2).reset()
    before = student.model("spectrum").logits(student.serialize(state, _ctx(state)))
    export_initialised(root, "spectrum", "v2", seed=2)  # also points latest at v2
    assert student.refresh() == {"spectrum": "v2"}
    assert student.model("spectrum").version == "v2"
    assert student.version == "mac=v1,spectrum=v2"
    after = student.model("spectrum").logits(student.serialize(state, _ctx(state)))
    assert not np.allclose(before, after)
    assert student.refresh() == {}  # nothing new


def test_corrupt_file_is_refused_and_the_old_model_keeps_serving(models: Path, tmp_path: Path):
    root = _copy_models(models, tmp_path / "m")
    student = StudentPolicy(root)
    shutil.copytree(root / "student-mac" / "v1", root / "student-mac" / "v2")
    (root / "student-mac" / "latest").write_text("v2\n")
    raw = (root / "student-mac" / "v2" / MODEL_FILE).read_bytes()
    (root / "student-mac" / "v2" / MODEL_FILE).write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ModelInvalidError, match="sha256"):
        student.reload("mac")
    # a corrupt file whose card checksum was updated too: onnxruntime refuses it
    card = json.loads((root / "student-mac" / "v2" / CARD_FILE).read_text())
    card["sha256"] = sha256_file(root / "student-mac" / "v2" / MODEL_FILE)
    (root / "student-mac" / "v2" / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelInvalidError, match="onnxruntime"):
        student.reload("mac")
    assert "mac:error" in student.refresh()
    assert student.model("mac").version == "v1"
    state = make_mac_env("fixed-5", seed=3).reset()
    assert is_valid(state, np.asarray(student(state, _ctx(state))))


def _wrong_width_model(path: Path) -> None:
    """A valid ONNX graph whose user features are one column wider than the serializer's."""
    dims = {
        "global_feats": [NUM_GLOBAL],
        "user_feats": ["N", NUM_USER + 1],
        "res_feats": ["R", NUM_RES],
        "pair_feats": [NUM_PAIR, "R", "N"],
        "user_mask": ["N"],
        "res_mask": ["R"],
    }
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims[n]) for n in INPUT_NAMES]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["R", "N1"])
    node = helper.make_node("Identity", ["res_feats"], ["logits"])
    model = helper.make_model(
        helper.make_graph([node], "wrong", inputs, [out]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def test_mismatched_inputs_and_feature_version_are_refused(models: Path, tmp_path: Path):
    root = _copy_models(models, tmp_path / "m")
    student = StudentPolicy(root)
    v2 = root / "student-spectrum" / "v2"
    shutil.copytree(root / "student-spectrum" / "v1", v2)
    _wrong_width_model(v2 / MODEL_FILE)
    card = json.loads((v2 / CARD_FILE).read_text())
    card["sha256"] = sha256_file(v2 / MODEL_FILE)
    (v2 / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelInvalidError, match="feature width"):
        student.reload("spectrum", v2)
    card["feature_version"] = "tensors-v0"
    (v2 / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelInvalidError, match="feature version"):
        student.reload("spectrum", v2)
    with pytest.raises(ModelInvalidError, match="preset"):
        student.reload("mac", root / "student-spectrum" / "v1")  # a spectrum model offered as mac
    assert student.model("spectrum").version == "v1" and student.model("mac").version == "v1"


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        (
            "share_tilt",
            [{"kind": "pf_anchored", "bound": 0.05, "share_tilt": {"bounds": [-1.0]}}],
            {"kind": "pf_anchored", "bound": 0.05, "share_tilt": ShareTilt().as_dict()},
        ),
        (
            "spread_idle",  # a boolean, and true only with the pf_anchored decode
            [{"kind": "pf_anchored", "spread_idle": "yes"}, {"kind": "capped", "spread_idle": True}],
            {"kind": "pf_anchored", "bound": 0.05, "spread_idle": True},
        ),
    ],
)
def test_a_malformed_decode_block_is_refused_at_load(models: Path, tmp_path: Path, field: str, bad, good):
    """The card's ``decode.share_tilt`` and ``decode.spread_idle`` are checked when the model
    loads (not at every slot): a malformed one is refused and the served version stays; a
    well-formed one loads and serves."""
    root = _copy_models(models, tmp_path / "m")
    student = StudentPolicy(root)
    v2 = root / "student-mac" / "v2"
    shutil.copytree(root / "student-mac" / "v1", v2)
    card = json.loads((v2 / CARD_FILE).read_text())
    card["version"] = "v2"
    for block in bad:
        card["decode"] = block
        (v2 / CARD_FILE).write_text(json.dumps(card))
        with pytest.raises(ModelInvalidError, match=field):
            student.reload("mac", v2)
        assert student.model("mac").version == "v1"
    card["decode"] = good
    (v2 / CARD_FILE).write_text(json.dumps(card))
    student.reload("mac", v2)
    state = make_mac_env("fixed-5", seed=3).reset()
    assert student.model("mac").version == "v2" and is_valid(state, np.asarray(student(state, _ctx(state))))


def test_reload_while_serving_never_breaks_a_decision(models: Path, tmp_path: Path):
    root = _copy_models(models, tmp_path / "m")
    student = StudentPolicy(root)
    export_initialised(root, "mac", "v2", seed=5, hidden=16)
    state = make_mac_env("fixed-5", seed=4).reset()
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                assert is_valid(state, np.asarray(student(state, _ctx(state))))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve) for _ in range(2)]
    for t in threads:
        t.start()
    for version in ("v2", "v1", "v2"):
        student.reload("mac", version=version)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and student.model("mac").version == "v2"
