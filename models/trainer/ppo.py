"""PPO with GAE (seed 003 eq. 7–10) for the sequential mac setting.

The leader utility of a TTI (SPEC §3 eq. 5) includes the Jain index of the *cumulative* RBGs
used, so a decision's value shows up in every later TTI: per-slot rewards are not enough and
the student is trained on returns. E simulators run side by side (scenarios of
``trainer.data.MAC_TRAIN_SCENARIOS``, all with N <= 10, each with its own cell history as the
service keeps it); the actor is the student with its two-pass PAG action distribution (so every
sampled DCM is valid), the critic a separate equivariant encoder with a value head on its pooled
context. Rewards are scaled by (1 − γ) so returns are in utility units.

    python -m trainer.ppo --init runs/mac --total-steps 400000 --out runs/mac-ppo
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
from torch import nn

from service.history import CellHistory, apply_feedback, record_decision
from service.policies.student_decode import user_needs
from service.serialize.tensors import serialize
from trainer.args import PpoArgs as Args
from trainer.checkpoint import Checkpoint, TorchStudent
from trainer.common import (
    Batch,
    Logger,
    approx_kl,
    collate,
    row_logprobs,
    sample_tokens,
    seed_everything,
)
from trainer.data import MAC_TRAIN_SCENARIOS, make_mac_env
from trainer.evaluate import EVAL_SEED, baseline_utilities, evaluate_mac
from trainer.net import StudentNet


class Critic(nn.Module):
    """V(slot): an equivariant encoder (the student's) and a value head on its pooled context."""

    def __init__(self, net: StudentNet) -> None:
        super().__init__()
        self.encoder = StudentNet(net.config)
        self.encoder.load_state_dict(net.state_dict())
        h = net.config.hidden
        self.head = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, batch: Batch) -> torch.Tensor:
        _, _, ctx = self.encoder.encode(
            batch.global_feats, batch.user_feats, batch.res_feats, batch.user_mask, batch.res_mask
        )
        return self.head(ctx).squeeze(-1)


class VecMac:
    """E mac simulators with their cell histories, restarted on the next scenario when done."""

    def __init__(self, num_envs: int, episode_tti: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.episode_tti = episode_tti
        self.next_scenario = int(self.rng.integers(len(MAC_TRAIN_SCENARIOS)))
        self.envs = [self._new_env() for _ in range(num_envs)]
        self.states = [env.reset() for env in self.envs]
        self.histories = [CellHistory.empty() for _ in self.envs]
        self.episode_returns = np.zeros(num_envs)
        self.finished: list[tuple[str, float]] = []

    def _new_env(self):
        name, overrides = MAC_TRAIN_SCENARIOS[self.next_scenario % len(MAC_TRAIN_SCENARIOS)]
        self.next_scenario += 1
        env = make_mac_env(name, overrides, seed=int(self.rng.integers(2**31)), episode_tti=self.episode_tti)
        env.label = name  # type: ignore[attr-defined]
        return env

    def observe(self, max_ue: int, max_res: int) -> Batch:
        xs, needs, caps = [], [], []
        for state, history in zip(self.states, self.histories, strict=True):
            xs.append(serialize(state, history.view(state)))
            needs.append(user_needs(state))
            caps.append(state.max_resources_per_user)
        return collate(xs, needs, caps, num_ue=max_ue, num_res=max_res)

    def step(self, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        rewards = np.zeros(len(self.envs))
        dones = np.zeros(len(self.envs))
        for i, env in enumerate(self.envs):
            state = self.states[i]
            owner = tokens[i, : state.num_res].numpy().astype(np.int64)
            owner[owner > state.num_ue] = 0  # pads cannot be drawn; kept as a guard
            self.histories[i] = record_decision(self.histories[i], state, owner)
            res = env.step(owner)
            self.histories[i] = apply_feedback(self.histories[i], res.feedback)
            rewards[i] = res.reward
            self.episode_returns[i] += res.reward
            if res.done:
                self.finished.append((env.label, self.episode_returns[i] / env.tti))
                self.episode_returns[i] = 0.0
                self.envs[i] = self._new_env()
                self.states[i] = self.envs[i].reset()
                self.histories[i] = CellHistory.empty()
                dones[i] = 1.0
            else:
                self.states[i] = res.state
        return rewards, dones


def main(args: Args, logger: Logger | None = None) -> Checkpoint:
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    logger = logger or Logger(args.out, "ppo")
    ckpt = Checkpoint.load(args.init)
    if ckpt.preset != "mac":
        raise ValueError("PPO here trains the mac student (sequential leader utility)")
    actor = ckpt.net
    reference = copy.deepcopy(actor).train(False)
    for p in reference.parameters():
        p.requires_grad_(False)
    critic = Critic(actor)
    opt = torch.optim.Adam(
        [
            {"params": actor.parameters(), "lr": args.learning_rate},
            {"params": critic.parameters(), "lr": args.critic_learning_rate},
        ],
        eps=1e-5,
    )
    gen = torch.Generator().manual_seed(args.seed)
    envs = VecMac(args.num_envs, args.episode_tti, args.seed)
    student = TorchStudent(ckpt)
    base = baseline_utilities(ttis=args.eval_ttis, seed=EVAL_SEED)
    e, t_len, margin = args.num_envs, args.num_steps, ckpt.surplus_margin
    iterations = max(args.total_steps // (e * t_len), 1)
    t0 = time.perf_counter()
    global_step = 0
    it = 0
    for it in range(1, iterations + 1):
        frac = 1.0 - (it - 1) / iterations
        opt.param_groups[0]["lr"] = frac * args.learning_rate
        obs: list[Batch] = []
        tokens_t = torch.zeros(t_len, e, args.max_res, dtype=torch.long)
        pass1_t = torch.zeros(t_len, e, args.max_res, dtype=torch.long)
        logp_t = torch.zeros(t_len, e)
        values_t = torch.zeros(t_len + 1, e)
        rewards_t = torch.zeros(t_len, e)
        dones_t = torch.zeros(t_len, e)
        actor.train(False)
        for t in range(t_len):
            batch = envs.observe(args.max_ue, args.max_res)
            with torch.no_grad():
                logits = actor(*batch.inputs())
                tokens, pass1 = sample_tokens(logits, batch, margin, gen)
                lp, _ = row_logprobs(logits, tokens, batch, margin, pass1)
                values_t[t] = critic(batch)
            obs.append(batch)
            tokens_t[t] = tokens
            pass1_t[t] = pass1
            logp_t[t] = lp.sum(1)
            r, d = envs.step(tokens)
            rewards_t[t] = torch.as_tensor(r * (1.0 - args.gamma), dtype=torch.float32)
            dones_t[t] = torch.as_tensor(d, dtype=torch.float32)
            global_step += e
        with torch.no_grad():
            values_t[t_len] = critic(envs.observe(args.max_ue, args.max_res))
        # GAE (seed 003 eq. 9): δ_t = r_t + γ V(s_{t+1}) (1 − done_t) − V(s_t)
        adv = torch.zeros(t_len, e)
        last = torch.zeros(e)
        for t in reversed(range(t_len)):
            nonterminal = 1.0 - dones_t[t]
            delta = rewards_t[t] + args.gamma * values_t[t + 1] * nonterminal - values_t[t]
            last = delta + args.gamma * args.gae_lambda * nonterminal * last
            adv[t] = last
        returns = adv + values_t[:t_len]

        flat = Batch(*(torch.cat([getattr(b, f.name) for b in obs]) for f in dataclasses.fields(Batch)))
        b_tokens = tokens_t.reshape(-1, args.max_res)
        b_pass1 = pass1_t.reshape(-1, args.max_res)
        b_logp, b_adv, b_ret = logp_t.reshape(-1), adv.reshape(-1), returns.reshape(-1)
        n = b_logp.shape[0]
        mb = max(n // args.num_minibatches, 1)
        actor.train(True)
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "v", "ent", "kl_ref", "approx_kl", "clip")}
        for _ in range(args.update_epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, mb):
                idx = perm[start : start + mb]
                sub = flat.index(idx)
                logits = actor(*sub.inputs())
                rows_lp, rows_ent = row_logprobs(logits, b_tokens[idx], sub, margin, b_pass1[idx])
                new_logp = rows_lp.sum(1)
                log_ratio = new_logp - b_logp[idx]
                ratio = log_ratio.exp()
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v = 0.5 * (critic(sub) - b_ret[idx]).pow(2).mean()
                ent = rows_ent.sum(1).mean()
                loss = pg + args.vf_coef * v - args.ent_coef * ent
                kl_ref = torch.zeros(())
                if args.kl_coef > 0:
                    with torch.no_grad():
                        ref_lp, _ = row_logprobs(reference(*sub.inputs()), b_tokens[idx], sub, margin, b_pass1[idx])
                    kl_ref = approx_kl(rows_lp, ref_lp).sum(1).mean()
                    loss = loss + args.kl_coef * kl_ref
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(list(actor.parameters()) + list(critic.parameters()), args.max_grad_norm)
                opt.step()
                with torch.no_grad():
                    stats["approx_kl"].append(float(((ratio - 1) - log_ratio).mean()))
                    stats["clip"].append(float(((ratio - 1).abs() > args.clip_coef).float().mean()))
                stats["pg"].append(pg.item())
                stats["v"].append(v.item())
                stats["ent"].append(ent.item())
                stats["kl_ref"].append(kl_ref.item())
        metrics: dict[str, float] = {
            "losses/policy": float(np.mean(stats["pg"])),
            "losses/value": float(np.mean(stats["v"])),
            "losses/entropy": float(np.mean(stats["ent"])),
            "losses/kl_ref": float(np.mean(stats["kl_ref"])),
            "losses/approx_kl": float(np.mean(stats["approx_kl"])),
            "charts/clip_fraction": float(np.mean(stats["clip"])),
            "charts/reward_mean": float(rewards_t.mean() / (1 - args.gamma)),
            "charts/sps": global_step / (time.perf_counter() - t0),
        }
        if envs.finished:
            metrics["charts/episode_utility"] = float(np.mean([u for _, u in envs.finished]))
            envs.finished.clear()
        logger.log(global_step, metrics)
        if args.eval_every and it % args.eval_every == 0:
            actor.train(False)
            logger.log(global_step, evaluate_mac(student, base, ttis=args.eval_ttis, seed=EVAL_SEED), force_print=True)
        if args.time_budget_s and time.perf_counter() - t0 > args.time_budget_s:
            logger.info(f"time budget reached after {it} iterations")
            break
    actor.train(False)
    final = evaluate_mac(student, base, ttis=args.eval_ttis, seed=EVAL_SEED)
    logger.log(global_step, final, force_print=True)
    ckpt.stages.append(
        {
            "script": "ppo",
            "args": dataclasses.asdict(args),
            "data": {
                "env_steps": global_step,
                "iterations": it,
                "scenarios": [f"{s}{o or ''}" for s, o in MAC_TRAIN_SCENARIOS],
            },
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "final": final,
        }
    )
    ckpt.save(args.out)
    logger.info(f"saved {args.out}")
    return ckpt


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args, description=__doc__.splitlines()[0]))
