"""Shared pieces of the trainer scripts: arguments, logging, batching, the action distribution.

The action distribution is the stochastic twin of the served decode
(``service.policies.student_decode.decode_capped``): **pass 1** visits the resources in order and
draws, from softmax(logits[r]), "unused" or a user still below its need; **pass 2** revisits the
resources left unused and draws, with the unused logit raised by ``surplus_margin``, "unused"
or a user still below the PAG cap. Greedy decoding of the same process is what the service runs,
so distillation (max-likelihood of teacher decisions), GRPO and PPO all train the served policy.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from service.serialize.tensors import StudentBatch, StudentInputs

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python and torch (numpy randomness goes through explicit, seeded Generators)."""
    random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- logging


class Logger:
    """Namespaced scalar metrics (``losses/…``, ``eval/…``, ``charts/…``) to ``metrics.jsonl`` in
    the run directory, and a progress line on stderr every ``print_every_s`` seconds."""

    def __init__(
        self, run_dir: str | Path | None, name: str, *, print_every_s: float = 5.0, quiet: bool = False
    ) -> None:
        self.name = name
        self.path = None
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.path = Path(run_dir) / "metrics.jsonl"
        self.print_every_s = print_every_s
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self._last_print = -1e9
        self.last: dict[str, float] = {}

    def log(self, step: int, metrics: dict[str, float], *, force_print: bool = False) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        self.last.update(clean)
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(
                    json.dumps({"script": self.name, "step": step, "time_s": round(self.elapsed(), 3), **clean}) + "\n"
                )
        now = time.perf_counter()
        if not self.quiet and (force_print or now - self._last_print >= self.print_every_s):
            self._last_print = now
            shown = " ".join(f"{k}={v:.4g}" for k, v in clean.items())
            print(f"[{self.name} {self.elapsed():6.0f}s step {step}] {shown}", file=sys.stderr, flush=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.name} {self.elapsed():6.0f}s] {message}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- batching


@dataclasses.dataclass
class Batch:
    """Padded student inputs of B slots (pads: mask 0, features 0) and their decode constraints.

    global_feats [B, G], user_feats [B, N, Fu], res_feats [B, R, Fr], pair_feats [B, Fp, R, N],
    user_mask [B, N], res_mask [B, R], needs [B, N] (pass-1 budget), caps [B] (PAG cap).
    """

    global_feats: torch.Tensor
    user_feats: torch.Tensor
    res_feats: torch.Tensor
    pair_feats: torch.Tensor
    user_mask: torch.Tensor
    res_mask: torch.Tensor
    needs: torch.Tensor
    caps: torch.Tensor

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.global_feats, self.user_feats, self.res_feats, self.pair_feats, self.user_mask, self.res_mask)

    def index(self, idx: torch.Tensor | slice) -> Batch:
        return Batch(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

    @property
    def size(self) -> int:
        return int(self.user_mask.shape[0])


def collate(
    inputs: Sequence[StudentInputs],
    needs: Sequence[np.ndarray],
    caps: Sequence[int],
    *,
    num_ue: int | None = None,
    num_res: int | None = None,
) -> Batch:
    """Pad a list of serialized slots to a common (N, R) (at least ``num_ue`` / ``num_res``)."""
    padded = StudentBatch.of(inputs, num_ue or 0, num_res or 0)
    nd = np.zeros((len(inputs), padded.capacity[1]), np.int64)
    for i, (x, need) in enumerate(zip(inputs, needs, strict=True)):
        nd[i, : x.shape[0]] = need
    g, uf, rf, pf, um, rm = (torch.from_numpy(a) for a in padded.arrays())
    return Batch(g, uf, rf, pf, um, rm, torch.from_numpy(nd), torch.as_tensor(np.asarray(caps, np.int64)))


def pad_tokens(tokens: Sequence[np.ndarray], num_res: int) -> torch.Tensor:
    """DCM vectors of varying R -> int64 [B, num_res] (pads = 0)."""
    out = np.zeros((len(tokens), num_res), np.int64)
    for i, t in enumerate(tokens):
        out[i, : t.size] = t
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- the action distribution


def _admissible(batch: Batch) -> torch.Tensor:
    """bool [B, R, N]: user eligible and resource available (pads excluded)."""
    return (batch.res_mask.unsqueeze(-1) > 0) & (batch.user_mask.unsqueeze(1) > 0)


def canonical_pass1(tokens: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The pass-1 draws of one trajectory that yields DCM ``tokens`` [B, R]: each user's first
    ``need`` rows (in resource order) are pass-1 draws, its later rows pass-2 (surplus) draws."""
    r = tokens.shape[1]
    n1 = batch.needs.shape[1] + 1
    one = torch.nn.functional.one_hot(tokens, n1)  # [B, R, N+1]
    occ_before = (one.cumsum(1) - one).gather(2, tokens.unsqueeze(-1)).squeeze(-1)  # [B, R]
    need_ext = torch.cat([torch.full_like(batch.needs[:, :1], r + 1), batch.needs], dim=1)  # [B, N+1]
    first = (tokens > 0) & (occ_before < need_ext.gather(1, tokens))
    return torch.where(first, tokens, torch.zeros_like(tokens))


def row_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, batch: Batch, surplus_margin: float, pass1: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of a trajectory of the two-pass process, per resource row.

    logits [B, R, N+1]; tokens [B, R] the final DCM; pass1 [B, R] the pass-1 draws (a user, or 0
    where the row was left for pass 2) — as ``sample_tokens`` returns them, or, when None, the
    canonical trajectory of ``tokens`` (``canonical_pass1``; for a teacher's DCM this is a lower
    bound of log p(DCM)). Returns (logp [B, R], pass-1 entropy [B, R]); pad rows and busy
    resources are 0.
    """
    b, n1 = logits.shape[0], logits.shape[2]
    valid = batch.res_mask > 0  # [B, R]
    adm = _admissible(batch)  # [B, R, N]
    tokens = torch.where(valid, tokens, torch.zeros_like(tokens))
    y1 = canonical_pass1(tokens, batch) if pass1 is None else torch.where(valid, pass1, torch.zeros_like(pass1))
    one1 = torch.nn.functional.one_hot(y1, n1).to(logits.dtype) * valid.unsqueeze(-1)
    count1_before = one1.cumsum(1) - one1  # [B, R, N+1]
    allowed1 = adm & (count1_before[..., 1:] < batch.needs.unsqueeze(1))
    allowed1 = torch.cat([torch.ones_like(allowed1[..., :1]), allowed1], dim=-1)
    lsm1 = torch.log_softmax(logits.masked_fill(~allowed1, float("-inf")), dim=-1)
    lp1 = lsm1.gather(2, y1.unsqueeze(-1)).squeeze(-1)
    p1 = lsm1.exp()
    ent = -(p1 * lsm1.masked_fill(~allowed1, 0.0)).sum(-1)

    rows2 = valid & (y1 == 0)
    y2 = torch.where(rows2, tokens, torch.zeros_like(tokens))
    one2 = torch.nn.functional.one_hot(y2, n1).to(logits.dtype) * rows2.unsqueeze(-1)
    count_before2 = one1.sum(1, keepdim=True) + one2.cumsum(1) - one2  # [B, R, N+1]
    allowed2 = adm & (count_before2[..., 1:] < batch.caps.view(b, 1, 1).to(logits.dtype))
    allowed2 = torch.cat([torch.ones_like(allowed2[..., :1]), allowed2], dim=-1)
    logits2 = torch.cat([logits[..., :1] + surplus_margin, logits[..., 1:]], dim=-1)
    lsm2 = torch.log_softmax(logits2.masked_fill(~allowed2, float("-inf")), dim=-1)
    lp2 = lsm2.gather(2, y2.unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, lp1 + torch.where(rows2, lp2, torch.zeros_like(lp2)), torch.zeros_like(lp1))
    ent = torch.where(valid, ent, torch.zeros_like(ent))
    return logp, ent


@torch.no_grad()
def sample_tokens(
    logits: torch.Tensor,
    batch: Batch,
    surplus_margin: float,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw trajectories of the two-pass process (``greedy``: argmax, the served decode).

    Returns (DCMs [B, R], pass-1 draws [B, R]) — pass both to ``row_logprobs``.
    """
    b, r, n1 = logits.shape
    valid = batch.res_mask > 0
    adm = _admissible(batch)
    tokens = torch.zeros(b, r, dtype=torch.long)
    counts = torch.zeros(b, n1, dtype=torch.long)
    ar = torch.arange(b)

    def draw(scores: torch.Tensor) -> torch.Tensor:
        if greedy:
            return scores.argmax(-1)
        u = torch.rand(scores.shape, generator=generator).clamp_(1e-12, 1.0 - 1e-7)
        return (scores - torch.log(-torch.log(u))).argmax(-1)

    for i in range(r):  # pass 1
        allowed = adm[:, i] & (counts[:, 1:] < batch.needs)
        scores = torch.cat([logits[:, i, :1], logits[:, i, 1:].masked_fill(~allowed, float("-inf"))], dim=-1)
        k = torch.where(valid[:, i], draw(scores), torch.zeros(b, dtype=torch.long))
        tokens[:, i] = k
        counts[ar, k] += (k > 0).long()
    pass1 = tokens.clone()
    for i in range(r):  # pass 2: surplus on rows left unused
        rows = valid[:, i] & (tokens[:, i] == 0)
        if not rows.any():
            continue
        allowed = adm[:, i] & (counts[:, 1:] < batch.caps.unsqueeze(1))
        scores = torch.cat(
            [logits[:, i, :1] + surplus_margin, logits[:, i, 1:].masked_fill(~allowed, float("-inf"))], dim=-1
        )
        if greedy:  # the served rule: a user only if it beats unused + margin
            k = scores.argmax(-1)
        else:
            k = draw(scores)
        k = torch.where(rows, k, torch.zeros_like(k))
        tokens[:, i] = torch.where(rows, k, tokens[:, i])
        counts[ar, k] += (k > 0).long()
    return tokens, pass1


def approx_kl(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π_new ‖ π_ref) per sample: exp(ref − new) − (ref − new) − 1 (≥ 0)."""
    d = logp_ref - logp_new
    return torch.exp(d) - d - 1.0
