"""GRPO fine-tuning on the simulator's utility (SPEC §6, LSA eq. 10–11), spectrum preset.

For each of B slots, sample a group of G DCMs from the student's two-pass PAG distribution
(valid by construction, no repair), reward each by its sum-rate relative to the KM optimum of
the slot, and use group-relative advantages ``A_i = (r_i − mean(r)) / (std(r) + ε)``. The loss
is the clipped surrogate per resource row (token) plus ``β · KL(π ‖ π_ref)`` (k3 estimator) to
the distilled reference, which stays frozen. No critic. (The mac preset's reward depends on the
cumulative fairness of whole episodes: use ``trainer.ppo`` there.)

    python -m trainer.grpo --init runs/spectrum --iterations 200 --out runs/spectrum-grpo
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch

from service.types import slot_utility
from trainer.args import GrpoArgs as Args
from trainer.checkpoint import Checkpoint, TorchStudent
from trainer.common import (
    Logger,
    approx_kl,
    collate,
    row_logprobs,
    sample_tokens,
    seed_everything,
)
from trainer.data import spectrum_rollout
from trainer.evaluate import EVAL_SEED, evaluate_spectrum
from trainer.teachers import PolicyTeacher


def main(args: Args, logger: Logger | None = None) -> Checkpoint:
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    logger = logger or Logger(args.out, "grpo")
    ckpt = Checkpoint.load(args.init)
    if ckpt.preset != "spectrum":
        raise ValueError("GRPO here rewards one slot's utility (spectrum); use trainer.ppo for the mac preset")
    reference = copy.deepcopy(ckpt.net).train(False)
    for p in reference.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(ckpt.net.parameters(), lr=args.learning_rate)
    km = PolicyTeacher("km")
    gen = torch.Generator().manual_seed(args.seed)
    student = TorchStudent(ckpt)
    t0 = time.perf_counter()
    b, g = args.states_per_iteration, args.group_size
    for it in range(1, args.iterations + 1):
        slots = spectrum_rollout(
            km,
            slots=b,
            seed=args.seed * 100_003 + it,
            slots_per_episode=1,
            max_ue=args.max_ue,
            max_res=args.max_res,
            keep_state=True,
        )
        # one shape per group batch: pad all B slots together, repeat each G times
        batch = collate([s.inputs for s in slots], [s.needs for s in slots], [s.cap for s in slots])
        rep = torch.arange(b).repeat_interleave(g)
        big = batch.index(rep)
        ckpt.net.train(False)
        with torch.no_grad():
            logits = ckpt.net(*big.inputs())
            tokens, pass1 = sample_tokens(logits, big, ckpt.surplus_margin, gen)
            old_logp, _ = row_logprobs(logits, tokens, big, ckpt.surplus_margin, pass1)
            ref_logp, _ = row_logprobs(reference(*big.inputs()), tokens, big, ckpt.surplus_margin, pass1)
        rewards = np.empty(b * g)
        for i in range(b * g):
            s = slots[i // g]
            assert s.state is not None
            owner = tokens[i, : s.state.num_res].numpy()
            rewards[i] = slot_utility(s.state, owner) / max(slot_utility(s.state, s.tokens), 1e-12)
        r = rewards.reshape(b, g)
        adv = torch.as_tensor(
            ((r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + args.adv_eps)).reshape(-1), dtype=torch.float32
        )
        valid = (big.res_mask > 0).float()
        ckpt.net.train(True)
        for _ in range(args.update_epochs):
            new_logp, entropy = row_logprobs(ckpt.net(*big.inputs()), tokens, big, ckpt.surplus_margin, pass1)
            ratio = torch.exp(new_logp - old_logp)
            a = adv.unsqueeze(1)
            surrogate = torch.min(ratio * a, ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef) * a)
            kl = approx_kl(new_logp, ref_logp)
            rows = valid.sum().clamp(min=1)
            pg_loss = -(surrogate * valid).sum() / rows
            kl_loss = (kl * valid).sum() / rows
            loss = pg_loss + args.kl_coef * kl_loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ckpt.net.parameters(), 1.0)
            opt.step()
        clipped = ((ratio - 1).abs() > args.clip_coef).float()
        logger.log(
            it,
            {
                "losses/policy": pg_loss.item(),
                "losses/kl": kl_loss.item(),
                "losses/total": loss.item(),
                "charts/reward_mean": float(rewards.mean()),
                "charts/reward_max": float(r.max(1).mean()),
                "charts/entropy": float((entropy.detach() * valid).sum() / valid.sum()),
                "charts/clip_fraction": float((clipped * valid).sum() / valid.sum()),
            },
        )
        if args.eval_every and it % args.eval_every == 0 and it < args.iterations:
            ckpt.net.train(False)
            logger.log(it, evaluate_spectrum(student, slots=args.eval_slots, seed=EVAL_SEED), force_print=True)
    ckpt.net.train(False)
    metrics = evaluate_spectrum(student, slots=args.eval_slots, seed=EVAL_SEED)
    logger.log(args.iterations, metrics, force_print=True)
    ckpt.stages.append(
        {
            "script": "grpo",
            "args": dataclasses.asdict(args),
            "data": {"slots": args.iterations * b, "group_size": g, "reward": "sum-rate / KM sum-rate"},
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "final": metrics,
        }
    )
    ckpt.save(args.out)
    logger.info(f"saved {args.out}")
    return ckpt


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args, description=__doc__.splitlines()[0]))
