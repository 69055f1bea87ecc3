"""The student network: a per-pair scorer with pooled context (permutation-equivariant).

Inputs are the tensors of ``service.serialize.tensors``, optionally with leading batch axes
(written ``...`` below; the served ONNX graph has one, ``batch``, and cells of other sizes are
padded to the batch's largest N and R with mask 0): global_feats [..., G], user_feats
[..., N, Fu], res_feats [..., R, Fr], pair_feats [..., Fp, R, N], user_mask [..., N], res_mask
[..., R]. Output: logits [..., R, N+1] (column 0 = leave the resource unused). Inadmissible tokens
(ineligible user, busy resource) are not masked in the graph: the decode applies the PAG mask.

Architecture (weights shared over users, over resources and over pairs, so permuting users or
resources permutes the output the same way, and one model serves any N and R)::

    h_u = MLP(user_feats)   [N, H]        h_r = MLP(res_feats)   [R, H]
    ctx = MLP(global, masked mean/max over users of h_u, over resources of h_r)   [H]
    g_u = A(h_u, ctx) [N, Fp]
    s[r, u] = a · pair[0, r, u] + Σ_k g_u[u, k] · pair[k, r, u] + b(h_r)[r]
              (a: one learned scalar on the relative utility; gated linear terms on every pair channel,
               the last channel being the admissible indicator, i.e. a per-user bias; b: per-resource bias)
            + w · relu(W_p · pair[:, r, u] + a(h_u, ctx)[u] + c(h_r)[r])              (P hidden units, optional)
    s ← s + MLP_3→h→1(s, s − best rival user on r, s − best rival resource of u)   (refine, optional)
    logits[r, 0] = MLP(h_r, ctx)[r];  logits[r, 1 + u] = s[r, u]

Cost per pair is O(Fp + P) (no P×P layer over the N·R pairs), which keeps the network at tens of
µs for N = 100, R = 69 on one core.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from service.serialize.tensors import NUM_GLOBAL, NUM_PAIR, NUM_RES, NUM_USER

_NEG_POOL = -1.0e9


@dataclass
class NetConfig:
    """Student architecture hyper-parameters (recorded in the model card)."""

    hidden: int = 32
    """width H of the user / resource / context embeddings"""
    pair_hidden: int = 0
    """width P of the optional per-pair hidden layer (0 = gated-linear pair scores only; cost per pair ∝ P)"""
    refine: bool = False
    """add the rival-aware refine stage on the pair scores (top-2 per resource and per user)"""
    refine_hidden: int = 8
    """hidden width of the refine MLP"""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


def masked_mean_max(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean and max over the set axis. h [..., S, H], mask [..., S] (1 = member) -> [..., 2H].

    An empty set pools to zeros (max ≥ mean for a non-empty set, so ``maximum(max, mean)`` is
    exact there and 0 for an empty one).

    The masked sum is a product ``mask^T @ h`` (one dot product over the set per batch item), not
    a reduction over the set axis: onnxruntime reduces ``[B, S, H]`` over S in an order that
    depends on B, while the product accumulates each item's set in order, so an item's output is
    bitwise the same alone or in a batch, and padded members (mask 0) add exact zeros.
    """
    m = mask.unsqueeze(-1)  # [..., S, 1]
    mean = torch.matmul(m.transpose(-1, -2), h).squeeze(-2) / m.sum(dim=-2).clamp(min=1.0)
    mx = torch.maximum((h + (m - 1.0) * -_NEG_POOL).amax(dim=-2), mean)
    return torch.cat([mean, mx], dim=-1)


class StudentNet(nn.Module):
    """Permutation-equivariant pair scorer. See the module docstring for shapes."""

    skip_channel: torch.Tensor  # non-persistent buffer registered in __init__

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NetConfig()
        h, p = cfg.hidden, cfg.pair_hidden
        self.user_enc = _mlp(NUM_USER, h, h)
        self.res_enc = _mlp(NUM_RES, h, h)
        self.ctx_enc = _mlp(NUM_GLOBAL + 4 * h, h, h)
        # gates of the gated-linear pair score: per user (with the context) on every pair channel,
        # and a per-resource bias
        self.user_gate = nn.Linear(h, NUM_PAIR)
        self.ctx_gate = nn.Linear(h, NUM_PAIR, bias=False)
        self.res_bias = nn.Linear(h, 1, bias=False)
        # s += a · utility / slot max, a learned scalar shared by every pair: the exact optimum of a
        # sum-rate assignment is this term alone, so the gates only learn corrections to it
        self.utility_skip = nn.Parameter(torch.tensor(4.0))
        self.register_buffer(
            "skip_channel",
            torch.nn.functional.one_hot(torch.tensor(0), NUM_PAIR).float().unsqueeze(-1),
            persistent=False,
        )  # [Fp, 1]: e_0
        if p > 0:
            self.user_to_pair = nn.Linear(h, p)
            self.ctx_to_pair = nn.Linear(h, p, bias=False)
            self.res_to_pair = nn.Linear(h, p, bias=False)
            self.pair_in = nn.Conv2d(NUM_PAIR, p, 1, bias=False)  # W_p, a 1x1 convolution over the grid
            self.pair_out = nn.Conv2d(p, 1, 1, bias=False)  # w
        self.unused_res = nn.Linear(h, h)
        self.unused_ctx = nn.Linear(h, h, bias=False)
        self.unused_out = nn.Linear(h, 1)
        if cfg.refine:
            self.refine = _mlp(3, cfg.refine_hidden, 1)

    # ------------------------------------------------------------------ pieces

    def encode(
        self,
        global_feats: torch.Tensor,
        user_feats: torch.Tensor,
        res_feats: torch.Tensor,
        user_mask: torch.Tensor,
        res_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings h_u [..., N, H], h_r [..., R, H] and the pooled context ctx [..., H]."""
        h_u = self.user_enc(user_feats)
        h_r = self.res_enc(res_feats)
        pooled = torch.cat([global_feats, masked_mean_max(h_u, user_mask), masked_mean_max(h_r, res_mask)], dim=-1)
        ctx = self.ctx_enc(pooled)
        return h_u, h_r, ctx

    def pair_scores(
        self,
        pair_feats: torch.Tensor,
        h_u: torch.Tensor,
        h_r: torch.Tensor,
        ctx: torch.Tensor,
        user_mask: torch.Tensor,
        res_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Scores s [..., R, N] of every (resource, user) pair."""
        g_u = (self.user_gate(h_u) + self.ctx_gate(ctx).unsqueeze(-2)).transpose(-1, -2)  # [..., Fp, N]
        g_u = g_u + self.utility_skip * self.skip_channel  # a on the utility channel
        # Σ_k g_u[k, u] · pair[k, r, u], unrolled over the Fp (= 5) channels: in the exported graph
        # a few [R, N] multiply-adds instead of a [Fp, R, N] product reduced over its outer axis,
        # which onnxruntime runs several times slower (same values, same weights)
        s = self.res_bias(h_r)  # [..., R, 1]
        for k in range(NUM_PAIR):
            s = s + pair_feats[..., k, :, :] * g_u[..., k : k + 1, :]  # [..., R, N]
        if self.config.pair_hidden > 0:
            a = (self.user_to_pair(h_u) + self.ctx_to_pair(ctx).unsqueeze(-2)).transpose(-1, -2)  # [..., P, N]
            c = self.res_to_pair(h_r).transpose(-1, -2)  # [..., P, R]
            pre = self.pair_in(pair_feats) + a.unsqueeze(-2) + c.unsqueeze(-1)  # [..., P, R, N]
            s = s + self.pair_out(torch.relu(pre)).squeeze(-3)
        if self.config.refine:
            s = s + self._refine(s, user_mask, res_mask)
        return s

    def _refine(self, s: torch.Tensor, user_mask: torch.Tensor, res_mask: torch.Tensor) -> torch.Tensor:
        """Rival-aware correction: per pair, its margin over the best other user on the same
        resource and over the same user's best other resource (top-2 trick). s [..., R, N] -> [..., R, N]."""
        adm = res_mask.unsqueeze(-1) * user_mask.unsqueeze(-2)  # [..., R, N]
        sm = s * adm + (adm - 1.0) * 1.0e4  # inadmissible pairs far below
        pad_u = torch.full_like(sm[..., :1], -1.0e4)
        pad_r = torch.full_like(sm[..., :1, :], -1.0e4)
        top_u = torch.topk(torch.cat([sm, pad_u], dim=-1), 2, dim=-1).values  # [..., R, 2] best users of r
        top_r = torch.topk(torch.cat([sm, pad_r], dim=-2), 2, dim=-2).values  # [..., 2, N] best resources of u
        rival_u = torch.where(sm >= top_u[..., :1], top_u[..., 1:2], top_u[..., :1])
        rival_r = torch.where(sm >= top_r[..., :1, :], top_r[..., 1:2, :], top_r[..., :1, :])
        feats = torch.stack([sm, (sm - rival_u).clamp(-10.0, 10.0), (sm - rival_r).clamp(-10.0, 10.0)], dim=-1)
        return self.refine(feats * adm.unsqueeze(-1)).squeeze(-1) * adm

    # ------------------------------------------------------------------ forward

    def forward_with_context(
        self,
        global_feats: torch.Tensor,
        user_feats: torch.Tensor,
        res_feats: torch.Tensor,
        pair_feats: torch.Tensor,
        user_mask: torch.Tensor,
        res_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [..., R, N+1], ctx [..., H]) — the context feeds a critic in PPO."""
        h_u, h_r, ctx = self.encode(global_feats, user_feats, res_feats, user_mask, res_mask)
        s = self.pair_scores(pair_feats, h_u, h_r, ctx, user_mask, res_mask)  # [..., R, N]
        hidden = torch.relu(self.unused_res(h_r) + self.unused_ctx(ctx).unsqueeze(-2))
        unused = self.unused_out(hidden)  # [..., R, 1]
        # no PAG mask in the graph: every consumer (the served decode, the trainer's distribution)
        # applies the mask itself, and the graph stays a few operations shorter
        return torch.cat([unused, s], dim=-1), ctx  # [..., R, N+1]

    def forward(
        self,
        global_feats: torch.Tensor,
        user_feats: torch.Tensor,
        res_feats: torch.Tensor,
        pair_feats: torch.Tensor,
        user_mask: torch.Tensor,
        res_mask: torch.Tensor,
    ) -> torch.Tensor:
        """logits [..., R, N+1]."""
        return self.forward_with_context(global_feats, user_feats, res_feats, pair_feats, user_mask, res_mask)[0]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
