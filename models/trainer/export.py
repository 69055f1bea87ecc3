"""Export a checkpoint to ONNX with dynamic batch, N and R, check it against PyTorch, write the model card.

Layout: ``<models>/student-<preset>/<version>/model.onnx`` + ``model.json``, and
``student-<preset>/latest`` (a one-line file naming the version) — what the ``student`` policy
serves. The served graph has a leading batch axis B (the cells of one TTI; one cell is B = 1):
inputs ``global_feats [B, G]``, ``user_feats [B, N, Fu]``, ``res_feats [B, R, Fr]``,
``pair_feats [B, Fp, R, N]``, ``user_mask [B, N]``, ``res_mask [B, R]``; output
``logits [B, R, N+1]``; cells smaller than the batch's largest N and R are padded with mask 0.
Export fails if onnxruntime and PyTorch differ by more than ``tolerance`` (relative to the
slot's largest logit, at least 1) on any admissible logit of the probe slots, or if a probe
slot's logits in a padded batch of all probe slots differ by one bit from its logits alone.

``rebatch`` re-exports a model whose graph has no batch axis (exported before the axis existed)
with one, from the weights in its own ``model.onnx``, and keeps it only when the new graph gives
bitwise the same logits as the old one on the probe slots.

    python -m trainer.export --checkpoint runs/spectrum --models-dir models --version v1
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.config import Settings
from service.policies.student_model import (
    CARD_FILE,
    MODEL_FILE,
    load_model,
    model_name,
    sha256_file,
)
from service.serialize.tensors import (
    FEATURE_VERSION,
    INPUT_NAMES,
    OUTPUT_NAME,
    feature_spec,
    serialize,
)
from service.sim.mac import MacEnv
from service.sim.mac_config import MacConfig
from service.sim.spectrum import SpectrumConfig, SpectrumEnv
from service.types import SlotState
from trainer.args import ExportArgs as Args
from trainer.checkpoint import Checkpoint
from trainer.net import count_parameters

OPSET = 17
#: the repository's models/ (this package lives in models/trainer)
REPO_MODELS = Path(__file__).resolve().parents[1]
DYNAMIC_AXES = {
    "global_feats": {0: "batch"},
    "user_feats": {0: "batch", 1: "num_ue"},
    "res_feats": {0: "batch", 1: "num_res"},
    "pair_feats": {0: "batch", 2: "num_res", 3: "num_ue"},
    "user_mask": {0: "batch", 1: "num_ue"},
    "res_mask": {0: "batch", 1: "num_res"},
    OUTPUT_NAME: {0: "batch", 1: "num_res", 2: "num_ue_plus_1"},
}


def probe_slots(preset: str, seed: int) -> list[SlotState]:
    """Slots of assorted shapes (N, R from 1 to 60, busy resources, ineligible users) for parity checks."""
    rng = np.random.default_rng(seed)
    out: list[SlotState] = []
    if preset == "spectrum":
        for n, r in ((1, 1), (3, 7), (12, 5), (40, 60), (60, 33)):
            env = SpectrumEnv(
                SpectrumConfig(num_ue=n, num_channels=r, num_busy=int(rng.integers(0, r))),
                seed=int(rng.integers(10**6)),
            )
            out.append(env.reset())
    else:
        for n, m in ((1, 1), (3, 8), (10, 4), (25, 17), (50, 8)):
            mac_env = MacEnv(
                MacConfig(num_ue=n, num_rbg=m, full_buffer=bool(rng.integers(2))), seed=int(rng.integers(10**6))
            )
            state = mac_env.reset()
            for _ in range(int(rng.integers(3, 20))):
                state = mac_env.step(np.zeros(state.num_res, np.int64)).state
            out.append(state)
    return out


def export_onnx(ckpt: Checkpoint, path: Path) -> None:
    """Trace the network on a batch of two slots and write ONNX (opset 17, dynamic batch, N and R)."""
    example = serialize(probe_slots(ckpt.preset, 0)[1])
    args = tuple(torch.from_numpy(np.stack([a, a])) for a in example.arrays())
    ckpt.net.train(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            ckpt.net,
            args,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def parity(ckpt: Checkpoint, onnx_path: Path, slots: list[SlotState]) -> float:
    """Largest |onnxruntime − PyTorch| over admissible logits (unused column + eligible × available),
    relative to max(1, the slot's largest |logit|): float32 rounding grows with the logits' size.
    Raises ``ValueError`` when a slot's logits in a padded batch of all ``slots`` are not bitwise
    its logits alone (``batch_identical``)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for state in slots:
        x = serialize(state)
        got = sess.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, x.batch_of_one(), strict=True)))[0][0]
        with torch.no_grad():
            ref = ckpt.net(*(torch.from_numpy(a) for a in x.arrays())).numpy()
        if got.shape != ref.shape:
            raise ValueError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
        adm = np.concatenate([np.ones((state.num_res, 1), bool), state.admissible().T], axis=1)
        scale = max(1.0, float(np.abs(ref[adm]).max()))
        worst = max(worst, float(np.abs(got - ref)[adm].max()) / scale)
    batch_identical(sess, slots)
    return worst


def batch_identical(sess: Any, slots: list[SlotState]) -> None:
    """Check that every slot's logits in one padded batch of all ``slots`` are bitwise its
    logits alone (B = 1); ``ValueError`` naming the first slot that differs."""
    from service.serialize.tensors import StudentBatch

    inputs = [serialize(s) for s in slots]
    batch = StudentBatch.of(inputs)
    out = sess.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, batch.arrays(), strict=True)))[0]
    for b, x in enumerate(inputs):
        alone = sess.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, x.batch_of_one(), strict=True)))[0][0]
        n, r = x.shape
        if not np.array_equal(out[b, :r, : n + 1], alone):
            raise ValueError(
                f"probe slot {b} (N={n}, R={r}): its logits in a padded batch differ from its logits alone "
                f"(largest difference {float(np.abs(out[b, :r, : n + 1] - alone).max()):.1e})"
            )


def default_models_dir() -> Path:
    """Where ``export`` writes without ``--models-dir``: the service's ``model_dir`` setting
    (``GNBSCHED_MODEL_DIR``), else the repository's ``models/``."""
    return Path(Settings().model_dir or REPO_MODELS)


def next_version(root: Path) -> str:
    nums = [int(m.group(1)) for p in root.glob("v*") if p.is_dir() and (m := re.fullmatch(r"v(\d+)", p.name))]
    return f"v{max(nums, default=0) + 1}"


def model_card(ckpt: Checkpoint, version: str, onnx_path: Path, max_diff: float, command: str) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(onnx_path))
    data = [s.get("data", {}) for s in ckpt.stages]
    held_out = next((d["held_out_families"] for d in data if "held_out_families" in d), None)
    families = next((d["families"] for d in data if "families" in d), None)
    card: dict[str, Any] = {
        "name": model_name(ckpt.preset),
        "version": version,
        "preset": ckpt.preset,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "feature_version": FEATURE_VERSION,
        "features": feature_spec(),
        "architecture": {
            "class": "trainer.net.StudentNet",
            **ckpt.net.config.as_dict(),
            "parameters": count_parameters(ckpt.net),
        },
        "decode": dict(ckpt.decode),
        "training": {"command": command, "families": families, "held_out_families": held_out, "stages": ckpt.stages},
        "data": data,
        "evaluation": {},
        "onnx": {
            "opset": OPSET,
            "ir_version": int(proto.ir_version),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "parity_max_rel_diff": max_diff,
            "batch_axis": True,
        },
        "size_bytes": onnx_path.stat().st_size,
        "sha256": sha256_file(onnx_path),
    }
    if ckpt.feature_ranges is not None:
        card["feature_ranges"] = ckpt.feature_ranges
    return card


def main(args: Args) -> Path:
    ckpt = Checkpoint.load(args.checkpoint)
    root = Path(args.models_dir or default_models_dir()) / model_name(ckpt.preset)
    version = args.version or next_version(root)
    target = root / version
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        export_onnx(ckpt, onnx_path)
        max_diff = parity(ckpt, onnx_path, probe_slots(ckpt.preset, args.seed))
        if max_diff > args.tolerance:
            raise ValueError(f"ONNX/PyTorch parity {max_diff:.2e} exceeds the tolerance {args.tolerance:.0e}")
        card = model_card(ckpt, version, onnx_path, max_diff, args.command)
        (Path(tmp) / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        load_model(tmp, ckpt.preset)  # the serving loader must accept it
        if target.exists():
            for f in (MODEL_FILE, CARD_FILE):
                (target / f).unlink(missing_ok=True)
            target.rmdir()
        os.replace(tmp, target)
        target.chmod(0o755)
        Path(tmp).mkdir()  # TemporaryDirectory cleans up its (now empty) path
    if args.set_latest:
        tmp_latest = root / ".latest.tmp"
        tmp_latest.write_text(version + "\n")
        os.replace(tmp_latest, root / "latest")
    print(
        f"exported {ckpt.preset} student {version} -> {target} ({card['size_bytes']} bytes, "
        f"{card['architecture']['parameters']} parameters, parity {max_diff:.1e})"
    )
    return target


def update_evaluation(version_dir: str | Path, evaluation: dict[str, Any]) -> None:
    """Write bench KPIs into a model card (the card's sha256 covers model.onnx only)."""
    path = Path(version_dir) / CARD_FILE
    card = json.loads(path.read_text())
    card["evaluation"] = evaluation
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(card, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)) + "\n"
    )
    os.replace(tmp, path)


def checkpoint_from_onnx(version_dir: str | Path) -> Checkpoint:
    """The network of a served model, rebuilt from the weights in its ``model.onnx`` (the card
    gives the architecture, preset and decode). Initializers keep their PyTorch names, except the
    few the exporter folded: a transposed Linear weight (named by the MatMul that consumes it,
    ``/<module>/MatMul``) and ``utility_skip · e_0`` (the [Fp, 1] addend of the gates)."""
    import onnx
    from onnx import numpy_helper

    from trainer.net import NetConfig, StudentNet

    path = Path(version_dir)
    card = json.loads((path / CARD_FILE).read_text())
    arch = {k: v for k, v in card["architecture"].items() if k in NetConfig.__dataclass_fields__}
    net = StudentNet(NetConfig(**arch))
    proto = onnx.load(str(path / MODEL_FILE))
    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    state = net.state_dict()
    found: dict[str, torch.Tensor] = {k: torch.from_numpy(values[k].copy()) for k in state if k in values}
    for node in proto.graph.node:
        for name in node.input:
            if name not in values or name in state:
                continue
            value = values[name]
            parts = node.name.strip("/").split("/")
            if node.op_type == "MatMul" and len(parts) >= 2 and f"{parts[-2]}.weight" in state:
                found[f"{parts[-2]}.weight"] = torch.from_numpy(value.T.copy())
            elif node.op_type == "Add" and value.shape == (len(net.skip_channel), 1):
                if np.count_nonzero(value[1:]):
                    raise ValueError(f"{path}: initializer {name} is not utility_skip · e_0")
                found["utility_skip"] = torch.tensor(float(value[0, 0]))
    missing = sorted(set(state) - set(found))
    if missing:
        raise ValueError(f"{path}: no weights found in model.onnx for {missing}")
    net.load_state_dict({k: found[k].reshape(state[k].shape) for k in state})
    net.train(False)
    decode = dict(card.get("decode", {}))
    return Checkpoint(
        net, card["preset"], decode, list(card.get("training", {}).get("stages", [])), card.get("feature_ranges")
    )


def graph_is_batched(onnx_path: str | Path) -> bool:
    """Does the graph take a leading batch axis (the serving loader's rule, ``has_batch_axis``)?"""
    import onnxruntime as ort

    from service.policies.student_model import has_batch_axis

    return has_batch_axis(ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]))


def rebatch(version_dir: str | Path, *, seed: int = 0) -> bool:
    """Re-export the model in ``version_dir`` with a batch axis, in place (False: it has one).

    The weights come from its own ``model.onnx`` (``checkpoint_from_onnx``). The new graph
    replaces the old one only when, on the probe slots of seeds ``seed`` .. ``seed + 3``, its
    logits (B = 1) are bitwise the old graph's and a padded batch gives every slot its logits alone; the card gets the new
    sha256, size and ``onnx.batch_axis`` and keeps everything else (training record, evaluation:
    the decisions are the same). Raises ``ValueError`` otherwise.
    """
    import onnxruntime as ort

    path = Path(version_dir)
    old = path / MODEL_FILE
    if graph_is_batched(old):
        return False
    ckpt = checkpoint_from_onnx(path)
    slots = [s for k in range(4) for s in probe_slots(ckpt.preset, seed + k)]
    before = ort.InferenceSession(str(old), providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(dir=path) as tmp:
        new = Path(tmp) / MODEL_FILE
        export_onnx(ckpt, new)
        after = ort.InferenceSession(str(new), providers=["CPUExecutionProvider"])
        for state in slots:
            x = serialize(state)
            a = before.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, x.arrays(), strict=True)))[0]
            b = after.run([OUTPUT_NAME], dict(zip(INPUT_NAMES, x.batch_of_one(), strict=True)))[0][0]
            if not np.array_equal(a, b):
                raise ValueError(
                    f"{path}: the batched graph's logits differ from the old graph's on a probe slot "
                    f"(N={state.num_ue}, R={state.num_res}; largest difference {float(np.abs(a - b).max()):.1e})"
                )
        batch_identical(after, slots)
        card = json.loads((path / CARD_FILE).read_text())
        card["size_bytes"] = new.stat().st_size
        card["sha256"] = sha256_file(new)
        card.setdefault("onnx", {})["batch_axis"] = True
        card["onnx"]["rebatched_with"] = {"torch": torch.__version__, "onnxruntime": ort.__version__}
        (Path(tmp) / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        load_model(tmp, ckpt.preset)  # the serving loader must accept it
        os.replace(new, old)
        os.replace(Path(tmp) / CARD_FILE, path / CARD_FILE)
    return True


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args, description=__doc__.splitlines()[0]))


def export_initialised(models_dir: str | Path, preset: str, version: str, *, seed: int = 0, hidden: int = 16) -> Path:
    """Export an untrained, seeded student (wiring and reload tests, smoke deployments)."""
    from trainer.net import NetConfig

    torch.manual_seed(seed)
    ckpt = Checkpoint.new(preset, NetConfig(hidden=hidden))
    ckpt.stages.append({"script": "export_initialised", "args": {"seed": seed, "hidden": hidden}})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt.save(tmp)
        return main(Args(checkpoint=tmp, models_dir=str(models_dir), version=version))
