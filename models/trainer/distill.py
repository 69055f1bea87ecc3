"""Distillation (seed 003 C-C): the student imitates a teacher by maximum likelihood.

The teacher is the exact solver ``km`` (spectrum), a look-ahead leader or any registered policy
(mac), or a recorded JSONL dataset of (state, decision) rows — which may be an LLM endpoint's
recorded answers, PAG-checked and repaired. The loss is the negative log-likelihood of the
teacher's DCM under the student's two-pass PAG action distribution (``trainer.common``), i.e.
the served decode's own distribution. Optional DAgger rounds relabel the states the student
itself visits.

    python -m trainer.distill --preset spectrum --steps 1500 --out runs/spectrum
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch

from service.sim.worlds import HELD_OUT, training_families
from trainer.args import DistillArgs as Args
from trainer.checkpoint import Checkpoint, TorchStudent
from trainer.common import (
    Batch,
    Logger,
    collate,
    pad_tokens,
    row_logprobs,
    seed_everything,
)
from trainer.data import (
    Sample,
    feature_ranges,
    mac_rollout,
    read_jsonl,
    spectrum_rollout,
    world_mac_rollout,
    world_spectrum_rollout,
)
from trainer.evaluate import EVAL_SEED, baseline_utilities, evaluate_mac, evaluate_spectrum
from trainer.net import NetConfig
from trainer.teachers import make_teacher


def make_batches(samples: list[Sample], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Index batches of similar (N, R) (little padding), in random order."""
    order = sorted(range(len(samples)), key=lambda i: (samples[i].shape[0] * samples[i].shape[1], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def to_batch(samples: list[Sample], idx: list[int]) -> tuple[Batch, torch.Tensor]:
    chosen = [samples[i] for i in idx]
    batch = collate([s.inputs for s in chosen], [s.needs for s in chosen], [s.cap for s in chosen])
    return batch, pad_tokens([s.tokens for s in chosen], batch.res_mask.shape[1])


def nll_loss(
    ckpt: Checkpoint, batch: Batch, tokens: torch.Tensor, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood per resource row, and the rate of rows whose target has p > 1/2."""
    logp, _ = row_logprobs(logits, tokens, batch, ckpt.surplus_margin)
    valid = batch.res_mask > 0
    rows = valid.sum().clamp(min=1)
    return -logp.sum() / rows, ((logp > np.log(0.5)) & valid).float().sum() / rows


def assignment_hinge(logits: torch.Tensor, tokens: torch.Tensor, batch: Batch, floor: float = 0.1) -> torch.Tensor:
    """Structured hinge loss of the served assignment decode (cap 1), per resource row.

    With pair margins ``m[r, u] = logit[r, 1+u] − logit[r, 0]`` and S(y) = Σ_r m[r, y_r] (0 for
    unused), the loss is ``max_y [S(y) + Δ(y, y*)] − S(y*)`` over assignments y, where the task
    loss Δ sums, per row, ``floor`` plus the relative utility lost against the teacher's pair
    (utility = pair feature 0) — mistakes on nearly-equivalent users cost little, as they do in
    the sum-rate. The loss-augmented maximisation is an exact linear assignment (pairs with a
    non-positive augmented margin are left out, i.e. unused). It is 0 iff the teacher's
    assignment wins the served decode by Δ.
    """
    from scipy.optimize import linear_sum_assignment

    m = logits[..., 1:] - logits[..., :1]  # [B, R, N]
    adm = (batch.res_mask.unsqueeze(-1) > 0) & (batch.user_mask.unsqueeze(1) > 0)
    target = torch.nn.functional.one_hot(tokens, m.shape[-1] + 1)[..., 1:].bool() & adm  # [B, R, N]
    util = batch.pair_feats[:, 0]  # [B, R, N] utility / slot max
    u_star = (util * target).sum(-1, keepdim=True)  # [B, R, 1] the teacher's pair on each row
    used = target.any(-1, keepdim=True)
    rel_loss = ((u_star - util).clamp(min=0.0) / u_star.clamp(min=1e-6)) * used
    delta = torch.where(target, torch.zeros_like(m), floor + rel_loss)  # [B, R, N]
    unused_delta = (floor + 1.0) * used.squeeze(-1).float()  # leaving a teacher-used row empty loses it all
    aug = (m + delta).detach().numpy()
    ok_all = adm.numpy()
    total = logits.new_zeros(())
    for i in range(m.shape[0]):
        score = np.maximum(np.where(ok_all[i], aug[i] - unused_delta[i].numpy()[:, None], 0.0), 0.0)
        rows, cols = linear_sum_assignment(score, maximize=True)
        keep = score[rows, cols] > 0
        pred = torch.zeros_like(target[i])
        pred[torch.as_tensor(rows[keep]), torch.as_tensor(cols[keep])] = True
        empty = ~pred.any(-1)
        s_pred = (m[i] * pred).sum() + (delta[i] * pred).sum() + (unused_delta[i] * empty).sum()
        s_star = (m[i] * target[i]).sum()
        total = total + (s_pred - s_star).clamp(min=0.0)
    return total / (batch.res_mask > 0).sum().clamp(min=1)


def collect(args: Args, teacher, round_index: int, behaviour, progress=None) -> list[Sample]:
    """One round of teacher-labelled slots from ``args.worlds`` (project, families or both) and,
    with ``args.sionna_samples``, from the Sionna world; ``progress``: a line per Sionna episode."""
    if args.worlds not in ("project", "families", "both"):
        raise ValueError(f"worlds must be project, families or both, got {args.worlds!r}")
    if args.sionna_samples and args.preset != "mac":
        raise ValueError("sionna_samples: the Sionna world is a mac world; use it with --preset mac")
    seed = args.seed * 7919 + round_index
    n_fam = {"project": 0, "families": args.samples, "both": args.samples // 2}[args.worlds]
    out: list[Sample] = []
    if args.samples - n_fam:
        if args.preset == "spectrum":
            out += spectrum_rollout(
                teacher,
                slots=args.samples - n_fam,
                seed=seed,
                max_ue=args.max_ue,
                max_res=args.max_res,
                behaviour=behaviour,
            )
        else:
            out += mac_rollout(teacher, slots=args.samples - n_fam, seed=seed, behaviour=behaviour)
    if n_fam:
        if args.preset == "spectrum":
            out += world_spectrum_rollout(teacher, slots=n_fam, seed=seed + 1, max_ue=args.max_ue, max_res=args.max_res)
        else:
            out += world_mac_rollout(teacher, slots=n_fam, seed=seed + 1, behaviour=behaviour)
    if args.sionna_samples:
        from trainer.sionna_world.rollout import sionna_mac_rollout  # the sionna extra, only when asked

        out += sionna_mac_rollout(
            teacher, slots=args.sionna_samples, seed=seed + 2, behaviour=behaviour, progress=progress
        )
    return out


def main(args: Args, logger: Logger | None = None) -> Checkpoint:
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    logger = logger or Logger(args.out, "distill")
    if args.preset not in ("spectrum", "mac"):
        raise ValueError(f"unknown preset {args.preset!r}")
    ckpt = (
        Checkpoint.load(args.init)
        if args.init
        else Checkpoint.new(
            args.preset,
            NetConfig(hidden=args.hidden, pair_hidden=args.pair_hidden, refine=args.refine),
            args.surplus_margin,
            args.decode,
            args.share_tilt,
            args.spread_idle,
        )
    )
    student = TorchStudent(ckpt)
    teacher_name = args.teacher or ("km" if args.preset == "spectrum" else "deficit")
    teacher = None if args.dataset else make_teacher(teacher_name)
    rng = np.random.default_rng(args.seed)
    mac_base = baseline_utilities(ttis=100 * args.eval_slots, seed=EVAL_SEED) if args.preset == "mac" else None
    t0 = time.perf_counter()
    data_info: dict[str, object] = {}
    samples: list[Sample] = []
    global_step = 0
    best: tuple[float, dict, int, dict[str, float]] | None = None
    for rnd in range(1 + args.dagger_rounds):
        if args.dataset:
            if rnd == 0:
                samples, stats = read_jsonl(args.dataset, preset=args.preset, drop_invalid=args.drop_invalid)
                data_info = {"dataset": args.dataset, **dataclasses.asdict(stats)}
                logger.info(f"dataset {args.dataset}: {stats}")
        else:
            behaviour = None if rnd == 0 else student
            samples += collect(args, teacher, rnd, behaviour, progress=logger.info)
            data_info = {"teacher": teacher_name, "slots": len(samples), "dagger_rounds": args.dagger_rounds}
            logger.info(f"round {rnd}: {len(samples)} teacher-labelled slots ({teacher_name})")
        if not samples:
            raise ValueError("no training samples")
        skip = [p for n, p in ckpt.net.named_parameters() if n == "utility_skip"]
        rest = [p for n, p in ckpt.net.named_parameters() if n != "utility_skip"]
        opt = torch.optim.AdamW(
            [{"params": rest, "weight_decay": args.weight_decay}, {"params": skip, "weight_decay": 0.0}],
            lr=args.learning_rate,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s / max(args.steps, 1), 1.0)))
        )
        batches: list[list[int]] = []
        ckpt.net.train()
        for step in range(args.steps):
            if not batches:
                batches = make_batches(samples, args.batch_size, rng)
            batch, tokens = to_batch(samples, batches.pop())
            logits = ckpt.net(*batch.inputs())
            nll, match = nll_loss(ckpt, batch, tokens, logits)
            loss = args.nll_coef * nll
            metrics = {"losses/nll": nll.item()}
            if ckpt.decode["kind"] in ("assignment", "anchored") and args.hinge_coef > 0:
                hinge = assignment_hinge(logits, tokens, batch)
                loss = loss + args.hinge_coef * hinge
                metrics["losses/assignment_hinge"] = hinge.item()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ckpt.net.parameters(), 1.0)
            opt.step()
            sched.step()
            global_step += 1
            logger.log(
                global_step,
                {
                    **metrics,
                    "losses/total": loss.item(),
                    "charts/row_match": match.item(),
                    "charts/learning_rate": float(sched.get_last_lr()[0]),
                },
            )
            if args.eval_every and global_step % args.eval_every == 0 and step + 1 < args.steps:
                metrics = evaluate(args, student, mac_base)
                logger.log(global_step, metrics, force_print=True)
                best = keep_best(best, metrics, ckpt, global_step)
        ckpt.net.train(False)
    metrics = evaluate(args, student, mac_base)
    logger.log(global_step, metrics, force_print=True)
    best = keep_best(best, metrics, ckpt, global_step)
    if best is not None and best[2] != global_step:  # an earlier evaluation was better: restore it
        ckpt.net.load_state_dict(best[1])
        metrics = best[3]
        logger.info(f"restored the weights of step {best[2]} ({SELECTION[args.preset]} {best[0]:.4f})")
    ckpt.feature_ranges = feature_ranges(samples)
    if args.worlds != "project":
        data_info["families"] = list(training_families(args.preset))
        data_info["held_out_families"] = list(HELD_OUT[args.preset])
    if args.sionna_samples:
        data_info["sionna_world_slots_per_round"] = args.sionna_samples
    ckpt.stages.append(
        {
            "script": "distill",
            "args": dataclasses.asdict(args),
            "data": data_info,
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "final": metrics,
        }
    )
    ckpt.save(args.out)
    logger.info(f"saved {args.out}")
    return ckpt


#: held-out metric that selects the kept weights (higher is better)
SELECTION = {"spectrum": "eval/ratio_km_min", "mac": "eval/utility_ratio_mean"}


def keep_best(best, metrics: dict[str, float], ckpt: Checkpoint, step: int):
    """(score, weights, step, metrics) of the best evaluation so far."""
    score = metrics[SELECTION[ckpt.preset]]
    if best is None or score >= best[0]:  # a tie goes to the later, more trained weights
        return score, copy.deepcopy(ckpt.net.state_dict()), step, metrics
    return best


def evaluate(args: Args, student: TorchStudent, mac_base: list[float] | None) -> dict[str, float]:
    student.ckpt.net.train(False)
    if args.preset == "spectrum":
        out = evaluate_spectrum(student, slots=args.eval_slots, seed=EVAL_SEED)
    else:
        assert mac_base is not None
        out = evaluate_mac(student, mac_base, ttis=100 * args.eval_slots, seed=EVAL_SEED)
    student.ckpt.net.train(True)
    return out


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args, description=__doc__.splitlines()[0]))
