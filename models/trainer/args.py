"""Arguments of the trainer scripts: one documented dataclass per script (CleanRL style — the
docstring under each field is its ``--help``). ``tyro`` turns them into command lines
(``gnbsched train <script>`` and each script's ``python -m trainer.<script>``).

Kept free of torch (and of tyro) so ``gnbsched`` builds its command line without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- trainer.distill


@dataclass
class DistillArgs:
    preset: str = "spectrum"
    """student preset: spectrum | mac"""
    teacher: str = ""
    """teacher: a registered policy (km, pf, max_weight, rr, ...) or a mac leader ('deficit', 'stackelberg', 'fair_efficient'); empty = km for spectrum, deficit for mac"""
    dataset: str | None = None
    """JSONL file of (state, decision) rows or recorded LLM answers to learn from instead of running a teacher"""
    drop_invalid: bool = False
    """skip dataset rows whose decision violates the PAG (default: repair them)"""
    samples: int = 6000
    """teacher-labelled slots collected per round"""
    dagger_rounds: int = 0
    """extra rounds in which the student plays and the teacher labels (DAgger)"""
    steps: int = 1500
    """gradient steps per round"""
    batch_size: int = 32
    """slots per gradient step"""
    learning_rate: float = 3e-3
    """Adam learning rate (cosine-decayed to 10% over each round)"""
    weight_decay: float = 0.0
    """AdamW weight decay of every weight but the utility skip (pulls the student towards score ∝ utility)"""
    hidden: int = 32
    """width of the user / resource / context embeddings"""
    pair_hidden: int = 0
    """per-pair hidden units (0 = gated-linear pair scores)"""
    refine: bool = False
    """rival-aware refine stage on the pair scores"""
    surplus_margin: float = 4.0
    """pass-2 surplus margin of the decode (logit units)"""
    decode: str = ""
    """served decode of a fresh network: capped | assignment | anchored | pf_anchored (empty = assignment for spectrum, capped for mac)"""
    share_tilt: bool = False
    """pf_anchored: the decode also carries pf_fair's resource-share tilt (service.assign.ShareTilt defaults)"""
    spread_idle: bool = False
    """pf_anchored: the decode spreads the RBGs a slot leaves idle over the users below the mean resource share (service.assign.spread_idle; flat margins give pf_spread)"""
    hinge_coef: float = 1.0
    """weight of the structured hinge loss of the exact-assignment decode (spectrum; 0 = likelihood only)"""
    nll_coef: float = 1.0
    """weight of the likelihood of the teacher's DCM under the two-pass PAG distribution"""
    worlds: str = "project"
    """where teacher slots come from: project (the project's simulators), families (the training world families of service.sim.worlds, held-out families never drawn) or both (half each)"""
    sionna_samples: int = 0
    """mac: teacher-labelled slots per round drawn, in addition, from closed-loop episodes of random Sionna worlds (trainer.sionna_world.rollout: TR 38.901 UMa/UMi drops, PHY abstraction, OLLA, HARQ; needs the sionna extra)"""
    max_ue: int = 120
    """largest N of the random spectrum training scenarios"""
    max_res: int = 120
    """largest R of the random spectrum training scenarios"""
    init: str | None = None
    """checkpoint (directory or file) to start from instead of a fresh network"""
    eval_every: int = 500
    """steps between evaluations (0 = only at the end)"""
    eval_slots: int = 10
    """slots per spectrum evaluation scenario / (x100) TTIs per mac evaluation episode"""
    seed: int = 1
    """seed of data, initialisation and evaluation"""
    threads: int = 1
    """torch intra-op threads"""
    out: str = "runs/distill"
    """directory for checkpoint.pt and metrics.jsonl"""


# ----------------------------------------------------------------------------- trainer.grpo


@dataclass
class GrpoArgs:
    init: str = "runs/distill"
    """distilled checkpoint to fine-tune; it is also the frozen KL reference"""
    iterations: int = 200
    """GRPO iterations (each: sample groups, then update)"""
    states_per_iteration: int = 16
    """slots per iteration (B)"""
    group_size: int = 8
    """sampled decisions per slot (G)"""
    update_epochs: int = 2
    """gradient steps per iteration on the same groups"""
    clip_coef: float = 0.2
    """surrogate clipping ε"""
    kl_coef: float = 0.05
    """β of the KL penalty to the reference policy"""
    learning_rate: float = 3e-4
    """Adam learning rate"""
    adv_eps: float = 1e-6
    """ε of the group-relative advantage"""
    max_ue: int = 100
    """largest N of the random training slots"""
    max_res: int = 100
    """largest R of the random training slots"""
    eval_every: int = 50
    """iterations between evaluations (0 = only at the end)"""
    eval_slots: int = 10
    """slots per evaluation scenario"""
    seed: int = 2
    """seed of slots, sampling and evaluation"""
    threads: int = 1
    """torch intra-op threads"""
    out: str = "runs/grpo"
    """directory for checkpoint.pt and metrics.jsonl"""


# ----------------------------------------------------------------------------- trainer.ppo


@dataclass
class PpoArgs:
    init: str = "runs/distill"
    """distilled mac checkpoint to start from (and the KL reference when kl_coef > 0)"""
    total_steps: int = 400_000
    """environment steps (TTIs summed over all simulators)"""
    time_budget_s: float = 0.0
    """stop after this many seconds of wall time (0 = no limit)"""
    num_envs: int = 16
    """simulators stepped side by side"""
    num_steps: int = 128
    """TTIs per simulator per rollout"""
    episode_tti: int = 1000
    """TTIs per episode before a simulator restarts on the next scenario"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE λ"""
    update_epochs: int = 4
    """passes over each rollout"""
    num_minibatches: int = 4
    """minibatches per pass"""
    clip_coef: float = 0.2
    """surrogate clipping ε"""
    vf_coef: float = 0.5
    """value-loss weight"""
    ent_coef: float = 0.0
    """entropy bonus weight"""
    kl_coef: float = 0.02
    """weight of KL(π ‖ π_init) (keeps the policy near the distilled one; 0 = off)"""
    learning_rate: float = 2e-4
    """Adam learning rate (linearly annealed)"""
    critic_learning_rate: float = 1e-3
    """critic learning rate"""
    max_grad_norm: float = 0.5
    """gradient clipping"""
    max_ue: int = 10
    """users padded per slot (the largest N of the training scenarios)"""
    max_res: int = 8
    """resources padded per slot"""
    eval_every: int = 50
    """iterations between evaluations (0 = only at the end)"""
    eval_ttis: int = 1000
    """TTIs per evaluation episode"""
    seed: int = 3
    """seed of simulators, sampling and evaluation"""
    threads: int = 1
    """torch intra-op threads"""
    out: str = "runs/ppo"
    """directory for checkpoint.pt and metrics.jsonl"""


# ----------------------------------------------------------------------------- trainer.export


@dataclass
class ExportArgs:
    checkpoint: str = "runs/distill"
    """checkpoint directory or file to export"""
    models_dir: str = ""
    """model directory (default: the service's model_dir setting, i.e. $GNBSCHED_MODEL_DIR, or the repository's models/)"""
    version: str = ""
    """version directory name (default: the next vK)"""
    tolerance: float = 1e-4
    """largest accepted |onnxruntime − PyTorch| on admissible logits, relative to max(1, the slot's largest |logit|)"""
    set_latest: bool = True
    """point student-<preset>/latest at the new version"""
    command: str = ""
    """the command that reproduces this model (recorded in the card)"""
    seed: int = 0
    """seed of the parity probe slots"""
