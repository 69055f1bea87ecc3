"""The student network: ONNX against PyTorch, and permutation equivariance (users, resources)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from testkit import held_history
from trainer.checkpoint import Checkpoint
from trainer.export import export_onnx, parity
from trainer.net import NetConfig, StudentNet

from service.assign import ShareTilt
from service.policies.base import PolicyContext
from service.policies.registry import make
from service.policies.student_decode import decode
from service.serialize.tensors import INPUT_NAMES, StudentInputs, serialize
from service.sim.mac import MacEnv
from service.sim.mac_config import MacConfig
from service.sim.spectrum import SpectrumConfig, SpectrumEnv
from service.types import SlotState, make_slot


def _slots() -> list[SlotState]:
    out = [
        SpectrumEnv(SpectrumConfig(num_ue=n, num_channels=r, num_busy=b), seed=s).reset()
        for n, r, b, s in ((1, 1, 0, 1), (7, 10, 2, 2), (33, 21, 5, 3), (64, 90, 18, 4))
    ]
    for n, m, s in ((1, 2, 5), (6, 8, 6), (40, 17, 7)):
        env = MacEnv(MacConfig(num_ue=n, num_rbg=m), seed=s)
        state = env.reset()
        for _ in range(5):
            state = env.step(np.zeros(state.num_res, np.int64)).state
        out.append(state)
    return out


def _torch(net: StudentNet, x: StudentInputs) -> np.ndarray:
    with torch.no_grad():
        return net(*(torch.from_numpy(a) for a in x.arrays())).numpy()


@pytest.mark.parametrize(
    "config",
    [NetConfig(hidden=16), NetConfig(hidden=24, pair_hidden=8, refine=True)],
    ids=["gated-linear", "pair-hidden+refine"],
)
def test_onnx_matches_pytorch(tmp_path: Path, config: NetConfig):
    torch.manual_seed(0)
    ckpt = Checkpoint.new("spectrum", config)
    for p in ckpt.net.parameters():  # larger than at initialisation: a harder parity check
        p.data.normal_(0.0, 0.3)
    path = tmp_path / "m.onnx"
    export_onnx(ckpt, path)
    assert parity(ckpt, path, _slots()) <= 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for state in _slots():  # every admissible logit, every shape (dynamic N and R)
        x = serialize(state)
        got = sess.run(None, dict(zip(INPUT_NAMES, x.batch_of_one(), strict=True)))[0][0]
        ref = _torch(ckpt.net, x)
        assert got.shape == (state.num_res, state.num_ue + 1)
        adm = np.concatenate([np.ones((state.num_res, 1), bool), state.admissible().T], axis=1)
        np.testing.assert_allclose(got[adm], ref[adm], atol=1e-4, rtol=0)


def _permute(x: StudentInputs, pu: np.ndarray, pr: np.ndarray) -> StudentInputs:
    return StudentInputs(
        x.global_feats.copy(),
        x.user_feats[pu],
        x.res_feats[pr],
        x.pair_feats[:, pr][:, :, pu],
        x.user_mask[pu],
        x.res_mask[pr],
    )


@pytest.mark.parametrize(
    "config",
    [NetConfig(hidden=16), NetConfig(hidden=16, pair_hidden=8, refine=True)],
    ids=["gated-linear", "pair-hidden+refine"],
)
def test_permuting_users_and_resources_permutes_the_logits(config: NetConfig):
    torch.manual_seed(1)
    net = StudentNet(config).train(False)
    rng = np.random.default_rng(0)
    for state in _slots():
        x = serialize(state)
        pu, pr = rng.permutation(state.num_ue), rng.permutation(state.num_res)
        ref = _torch(net, x)
        got = _torch(net, _permute(x, pu, pr))
        expected = ref[pr][:, np.r_[0, pu + 1]]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)


def test_onnx_model_is_equivariant_too(model_dir: Path):
    sess = ort.InferenceSession(
        str(model_dir / "student-mac" / "v1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(2)
    for state in _slots():
        x = serialize(state)
        pu, pr = rng.permutation(state.num_ue), rng.permutation(state.num_res)
        ref = sess.run(None, dict(zip(INPUT_NAMES, x.batch_of_one(), strict=True)))[0][0]
        got = sess.run(None, dict(zip(INPUT_NAMES, _permute(x, pu, pr).batch_of_one(), strict=True)))[0][0]
        np.testing.assert_allclose(got, ref[pr][:, np.r_[0, pu + 1]], atol=1e-4, rtol=1e-5)


def test_logits_are_finite_and_the_decode_never_picks_an_inadmissible_token():
    from service.pag.checks import is_valid
    from service.policies.student_decode import decode_assignment, decode_capped

    torch.manual_seed(2)
    net = StudentNet(NetConfig(hidden=16)).train(False)
    for p in net.parameters():
        p.data.normal_(0.0, 1.0)
    for state in _slots():
        logits = _torch(net, serialize(state))
        assert np.isfinite(logits).all()
        assert is_valid(state, decode_capped(state, logits))
        if state.max_resources_per_user == 1:
            assert is_valid(state, decode_assignment(state, logits))


def _legacy_export(ckpt: Checkpoint, path: Path) -> None:
    """The graph as exported before it had a batch axis (unbatched inputs, dynamic N and R)."""
    example = serialize(_slots()[5])
    axes = {
        "user_feats": {0: "num_ue"},
        "res_feats": {0: "num_res"},
        "pair_feats": {1: "num_res", 2: "num_ue"},
        "user_mask": {0: "num_ue"},
        "res_mask": {0: "num_res"},
        "logits": {0: "num_res", 1: "num_ue_plus_1"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            ckpt.net,
            tuple(torch.from_numpy(a) for a in example.arrays()),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
        )


def test_a_graph_without_batch_axis_is_served_per_cell_and_rebatch_gives_it_one(model_dir: Path, tmp_path: Path):
    """A model exported without the batch axis still serves (a batch runs it once per cell);
    ``gnbsched train rebatch`` rebuilds the network from its ONNX weights and re-exports it with
    the axis: bitwise the same logits alone, one call for a padded batch, the card updated."""
    import json
    import shutil

    from trainer.export import checkpoint_from_onnx, rebatch

    from service.policies.student_model import CARD_FILE, MODEL_FILE, load_model, sha256_file
    from service.serialize.tensors import StudentBatch

    version = tmp_path / "student-mac" / "v1"
    shutil.copytree(model_dir / "student-mac" / "v1", version)
    torch.manual_seed(3)
    ckpt = checkpoint_from_onnx(version)
    for p in ckpt.net.parameters():  # trained-like weights: folded initializers must map back exactly
        p.data.normal_(0.0, 0.3)
    _legacy_export(ckpt, version / MODEL_FILE)
    card = json.loads((version / CARD_FILE).read_text())
    card["sha256"] = sha256_file(version / MODEL_FILE)
    (version / CARD_FILE).write_text(json.dumps(card))
    legacy = load_model(version, "mac")
    assert not legacy.batched and legacy.describe()["batch_axis"] is False
    states = [s for s in _slots() if s.preset == "mac"]
    inputs = [serialize(s) for s in states]
    before = [legacy.logits(x) for x in inputs]
    batch = StudentBatch.empty(len(inputs), max(s.num_ue for s in states), max(s.num_res for s in states))
    for b, x in enumerate(inputs):
        batch.put(b, x)
    per_cell = legacy.logits_batch(batch)
    for b, (s, ref) in enumerate(zip(states, before, strict=True)):
        np.testing.assert_array_equal(per_cell[b, : s.num_res, : s.num_ue + 1], ref)

    rebuilt = checkpoint_from_onnx(version)
    for (name, a), b in zip(rebuilt.net.state_dict().items(), ckpt.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert rebatch(version) is True
    assert rebatch(version) is False  # already has the axis
    served = load_model(version, "mac")
    assert served.batched
    card = json.loads((version / CARD_FILE).read_text())
    assert card["sha256"] == sha256_file(version / MODEL_FILE) and card["onnx"]["batch_axis"] is True
    together = served.logits_batch(batch)
    for b, (s, x, ref) in enumerate(zip(states, inputs, before, strict=True)):
        np.testing.assert_array_equal(served.logits(x), ref)
        np.testing.assert_array_equal(together[b, : s.num_res, : s.num_ue + 1], ref)


def test_a_fresh_pf_anchored_checkpoint_carries_the_share_tilt_only_when_asked():
    plain = Checkpoint.new("mac", NetConfig(hidden=8), kind="pf_anchored")
    tilted = Checkpoint.new("mac", NetConfig(hidden=8), kind="pf_anchored", share_tilt=True)
    assert "share_tilt" not in plain.decode
    assert ShareTilt.from_dict(tilted.decode["share_tilt"]) == ShareTilt()
    with pytest.raises(ValueError, match="pf_anchored"):
        Checkpoint.new("mac", NetConfig(hidden=8), kind="capped", share_tilt=True)
    # the card's block is what the service decodes with: flat logits give pf_fair's decision
    state = make_slot("mac", [1, 2], [0], spectral_efficiency=[0.6016, 0.6016], slot=10)
    cum = np.array([10.0, 2.0])  # user 2 holds fewer RBGs
    view = held_history(np.full(2, 100.0), cum)
    flat = np.zeros((1, 3))
    want = make("pf_fair")(state, PolicyContext(view, np.random.default_rng(0)))
    assert decode(state, flat, tilted.decode, view).tolist() == list(want) == [2]
    assert decode(state, flat, plain.decode, view).tolist() == [1]  # pf: ties to the lower index


def test_a_fresh_pf_anchored_checkpoint_carries_the_idle_spread_only_when_asked():
    plain = Checkpoint.new("mac", NetConfig(hidden=8), kind="pf_anchored")
    spread = Checkpoint.new("mac", NetConfig(hidden=8), kind="pf_anchored", spread_idle=True)
    assert "spread_idle" not in plain.decode and spread.decode["spread_idle"] is True
    with pytest.raises(ValueError, match="pf_anchored"):
        Checkpoint.new("mac", NetConfig(hidden=8), kind="capped", spread_idle=True)
    # the card's flag is what the service decodes with: flat logits give pf_spread's decision.
    # User 2 holds fewer RBGs (share 2 against 10); pf serves its 300 bits on its best RBG (900
    # bits) and leaves two idle, pf_spread on those two (200 + 100 bits, both needed)
    state = make_slot(
        "mac",
        [1, 2],
        [0, 1, 2, 3],
        utility=[[100.0, 100.0, 900.0, 900.0], [900.0, 200.0, 200.0, 100.0]],
        buffer_bits=[500.0, 300.0],
        max_resources_per_user=3,
    )
    view = held_history(np.full(2, 100.0), np.array([10.0, 2.0]))
    flat = np.zeros((4, 3))
    want = make("pf_spread")(state, PolicyContext(view, np.random.default_rng(0)))
    assert decode(state, flat, spread.decode, view).tolist() == list(want) == [0, 2, 1, 2]
    assert decode(state, flat, plain.decode, view).tolist() == [2, 0, 1, 0]  # pf
