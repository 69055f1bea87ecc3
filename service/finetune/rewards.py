"""Composite reward for LLM fine-tuning (SPEC §6, LSA section IV-D, eq. 12–14).

``R = λ1·R_struct + λ2·R_perf + λ3·R_depth``, computed on the *raw* completion (repair off):

* ``R_struct`` (hierarchical structural compliance, at most 1.2): accumulates
  0.3 parsable (a JSON answer in the ``owner`` or ``allocation`` form), 0.3 typed (integer ids or
  null, one entry per resource in the owner form), 0.2 in domain (known users / resources, no busy
  resource, no ineligible user), 0.2 feasible (no cap exceeded, no contention), and up to 0.2 for
  using the given state (share of the assignable resources it assigns). A malformed answer gets
  ``malformed_penalty`` instead (severe structural penalty).
* ``R_perf = κ·(T(a) − T(a_rand)) / T(a_rand)`` (eq. 13): ``T(a)`` the slot utility of the raw
  answer — legal pairs only, a resource claimed by several users carries nothing (collision), a
  user beyond its cap keeps its first pairs —, ``T(a_rand)`` that of a random valid assignment of
  the same slot (``service.policies.assignment.random_valid``, seeded by the slot so every
  completion of a GRPO group sees the same reference); clipped to ``[-κ, perf_clip·κ]``.
* ``R_depth = −η·min(1, (L_min − L) / L_min)`` when the completion is shorter than ``L_min``
  tokens, else 0 (eq. 14).

The code form (``code_reward_func``) is scored by execution: the completion's program runs in the
sandbox (``service.sandbox``) on the row's slot, and its output, as an ``owner`` answer, gets
``λ1·R_struct + λ2·R_perf`` like a text answer; a completion without a program, or whose program
fails (error, time, memory or output limit), gets ``λ1·malformed_penalty − λ2·κ``.

Every function but ``code_reward_func`` is pure. ``reward_funcs`` returns callables with TRL's ``reward_funcs`` signature
``(prompts, completions, **kwargs) -> list[float]`` reading the slot from the dataset's ``state``
column (``gnbsched dataset --kind grpo``); TRL is not imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.pag.checks import (
    BUSY_RESOURCE,
    CAP_EXCEEDED,
    CONTENTION,
    INELIGIBLE_USER,
    OUT_OF_DOMAIN,
    UNPARSABLE,
    WRONG_LENGTH,
    CheckResult,
    check,
    extract_json,
)
from service.policies.assignment import random_valid
from service.rng import slot_rng
from service.serialize.prompt_options import estimate_tokens
from service.serialize.slot_codec import slot_from_dict
from service.types import SlotState, served_bits

STRUCT_MAX = 1.2


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Weights and constants of the composite reward (the LSA paper's values were lost in the
    text; these defaults keep the three terms in a comparable range)."""

    #: λ1, λ2, λ3 of eq. 12
    lambda_struct: float = 1.0
    lambda_perf: float = 1.0
    lambda_depth: float = 1.0
    #: κ of eq. 13 (gain scale of the relative throughput)
    kappa: float = 1.0
    #: upper clip of (T(a) − T(a_rand)) / T(a_rand) (random can be tiny in sparse slots)
    perf_clip: float = 3.0
    #: η of eq. 14 (largest depth penalty)
    eta: float = 0.5
    #: L_min of eq. 14 (tokens)
    min_tokens: int = 16
    #: R_struct of an unparsable answer
    malformed_penalty: float = -1.0
    #: random valid assignments averaged for T(a_rand)
    rand_draws: int = 4
    #: seed of the reference assignments (with the slot's cell id and slot number)
    seed: int = 0


# ----------------------------------------------------------------------------- parsing


def _extract_doc(text: str) -> Any:
    """The first JSON value of ``text``, as ``parse_text`` finds it; None if there is none."""
    try:
        return extract_json(text)
    except ValueError:
        return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _typed(state: SlotState, doc: Any) -> bool:
    """Strict typing: owner = list of R integers / nulls; allocation = {digit string: [int, ...]}."""
    if isinstance(doc, dict) and isinstance(doc.get("owner"), list):
        doc = doc["owner"]
    if isinstance(doc, list):
        return len(doc) == state.num_res and all(v is None or _is_int(v) for v in doc)
    if isinstance(doc, dict):
        mapping = doc["allocation"] if isinstance(doc.get("allocation"), dict) else doc
        for k, v in mapping.items():
            if not (isinstance(k, str) and k.lstrip("-").isdigit()):
                return False
            vals = v if isinstance(v, list) else [v]
            if not all(_is_int(x) for x in vals):
                return False
        return True
    return False


def parsable(result: CheckResult) -> bool:
    return not any(v.kind == UNPARSABLE for v in result.violations)


# ----------------------------------------------------------------------------- terms


def assignable_resources(state: SlotState) -> int:
    """How many resources a complete valid decision can use: min(available, Σ_u min(cap, ·))
    over eligible users."""
    avail = int(state.resource_available.sum())
    users = int(state.user_eligible.sum())
    return min(avail, users * state.max_resources_per_user)


def raw_owner(state: SlotState, result: CheckResult) -> np.ndarray:
    """DCM int64 [R] that the raw answer would *play* without repair: legal pairs only, resources
    claimed by several users carry nobody (collision), a user keeps its first ``cap`` pairs."""
    pu, pr = result.pair_user[result.legal], result.pair_res[result.legal]
    owner = np.zeros(state.num_res, np.int64)
    if pu.size == 0:
        return owner
    claims = np.bincount(pr, minlength=state.num_res)
    keep = claims[pr] == 1
    pu, pr = pu[keep], pr[keep]
    # per-user cap in output order
    order = np.argsort(pu, kind="stable")
    pu_s = pu[order]
    starts = np.flatnonzero(np.r_[True, pu_s[1:] != pu_s[:-1]])
    rank = np.empty(pu.size, np.int64)
    rank[order] = np.arange(pu.size) - np.repeat(starts, np.diff(np.r_[starts, pu.size]))
    keep = rank < state.max_resources_per_user
    owner[pr[keep]] = pu[keep] + 1
    return owner


def struct_reward(
    state: SlotState, text: str, config: RewardConfig | None = None, result: CheckResult | None = None
) -> float:
    """R_struct in ``[malformed_penalty, 1.2]`` (module doc)."""
    cfg = config or RewardConfig()
    result = result if result is not None else check(state, text)
    if not parsable(result):
        return cfg.malformed_penalty
    doc = _extract_doc(text)
    kinds = {v.kind for v in result.violations}
    r = 0.3
    if _typed(state, doc) and WRONG_LENGTH not in kinds:
        r += 0.3
    if not kinds & {OUT_OF_DOMAIN, BUSY_RESOURCE, INELIGIBLE_USER}:
        r += 0.2
        if not kinds & {CAP_EXCEEDED, CONTENTION, WRONG_LENGTH}:
            r += 0.2
    need = assignable_resources(state)
    used = int((raw_owner(state, result) > 0).sum())
    r += 0.2 * (min(used, need) / need if need else 1.0)
    return min(r, STRUCT_MAX)


def random_reference(state: SlotState, config: RewardConfig | None = None) -> float:
    """T(a_rand): mean slot utility of ``rand_draws`` random valid assignments, seeded by the slot."""
    cfg = config or RewardConfig()
    rng = slot_rng(cfg.seed, state.cell_id, state.slot)
    draws = [float(served_bits(state, random_valid(state, rng)).sum()) for _ in range(max(cfg.rand_draws, 1))]
    return float(np.mean(draws))


def perf_reward(
    state: SlotState,
    text: str,
    config: RewardConfig | None = None,
    result: CheckResult | None = None,
    t_rand: float | None = None,
) -> float:
    """R_perf = κ·(T(a) − T(a_rand)) / T(a_rand), clipped to [−κ, perf_clip·κ]; 0 when the slot
    admits no pair at all."""
    cfg = config or RewardConfig()
    result = result if result is not None else check(state, text)
    t_rand = random_reference(state, cfg) if t_rand is None else t_rand
    t_a = float(served_bits(state, raw_owner(state, result)).sum())
    if t_rand <= 0:
        return 0.0 if t_a <= 0 else cfg.kappa * cfg.perf_clip
    gain = (t_a - t_rand) / t_rand
    return cfg.kappa * float(np.clip(gain, -1.0, cfg.perf_clip))


def depth_reward(num_tokens: int, config: RewardConfig | None = None) -> float:
    """R_depth = −η·min(1, (L_min − L)/L_min) for L < L_min, else 0 (eq. 14)."""
    cfg = config or RewardConfig()
    if cfg.min_tokens <= 0 or num_tokens >= cfg.min_tokens:
        return 0.0
    return -cfg.eta * min(1.0, (cfg.min_tokens - num_tokens) / cfg.min_tokens)


def reward_terms(
    state: SlotState, text: str, config: RewardConfig | None = None, num_tokens: int | None = None
) -> dict[str, float]:
    """All terms and the composite: {"struct", "perf", "depth", "total"}."""
    cfg = config or RewardConfig()
    result = check(state, text)
    s = struct_reward(state, text, cfg, result)
    p = perf_reward(state, text, cfg, result)
    d = depth_reward(estimate_tokens(text) if num_tokens is None else num_tokens, cfg)
    total = cfg.lambda_struct * s + cfg.lambda_perf * p + cfg.lambda_depth * d
    return {"struct": s, "perf": p, "depth": d, "total": total}


def composite_reward(
    state: SlotState, text: str, config: RewardConfig | None = None, num_tokens: int | None = None
) -> float:
    """R = λ1·R_struct + λ2·R_perf + λ3·R_depth of one completion."""
    return reward_terms(state, text, config, num_tokens)["total"]


# ----------------------------------------------------------------------------- TRL adapters


def completion_text(completion: Any) -> str:
    """Text of a TRL completion: a string (standard format) or a list of messages (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        last = completion[-1]
        if isinstance(last, Mapping):
            content = last.get("content", "")
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
            return str(content)
    return str(completion)


class _StateCache:
    """Parsed slots and their random references by the dataset's ``state`` value: the G
    completions of a GRPO group share one prompt, so each slot is decoded and drawn once."""

    def __init__(self, config: RewardConfig, size: int = 1024) -> None:
        self.config = config
        self.size = size
        self._items: dict[str, tuple[SlotState, float | None]] = {}

    def _key(self, s: Any) -> str:
        if isinstance(s, bytes):
            return s.decode()
        return s if isinstance(s, str) else json.dumps(s, sort_keys=True)

    def states(self, state: Sequence[Any] | None, n: int) -> list[SlotState]:

        if state is None:
            raise ValueError("reward functions need the dataset's 'state' column (gnbsched dataset --kind grpo)")
        if len(state) != n:
            raise ValueError(f"got {len(state)} states for {n} completions")
        out = []
        for s in state:
            if isinstance(s, SlotState):
                out.append(s)
                continue
            key = self._key(s)
            hit = self._items.get(key)
            if hit is None:
                if len(self._items) >= self.size:
                    self._items.pop(next(iter(self._items)))
                hit = (slot_from_dict(json.loads(key)), None)
                self._items[key] = hit
            out.append(hit[0])
        return out

    def reference(self, state: Sequence[Any], states: list[SlotState]) -> list[float]:
        refs = []
        for s, st in zip(state, states, strict=True):
            key = None if isinstance(s, SlotState) else self._key(s)
            hit = self._items.get(key) if key is not None else None
            if hit is not None and hit[1] is not None:
                refs.append(hit[1])
                continue
            t = random_reference(st, self.config)
            if key is not None and key in self._items:
                self._items[key] = (st, t)
            refs.append(t)
        return refs


def reward_funcs(
    config: RewardConfig | None = None, count_tokens: Callable[[str], int] | None = None
) -> list[Callable[..., list[float]]]:
    """[struct, perf, depth] as TRL reward functions; pass ``reward_weights=[λ1, λ2, λ3]`` to
    ``GRPOConfig`` (or use ``composite_reward_func``). Lengths come from TRL's ``completion_ids``
    when given, else ``count_tokens`` (e.g. the policy's tokenizer), else ``estimate_tokens``."""
    cfg = config or RewardConfig()
    cache = _StateCache(cfg)

    def r_struct(
        prompts: Any = None, completions: Sequence[Any] = (), state: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float]:
        states = cache.states(state, len(completions))
        return [struct_reward(st, completion_text(c), cfg) for st, c in zip(states, completions, strict=True)]

    def r_perf(
        prompts: Any = None, completions: Sequence[Any] = (), state: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float]:
        states = cache.states(state, len(completions))
        refs = cache.reference(state or [], states)
        return [
            perf_reward(st, completion_text(c), cfg, t_rand=t)
            for st, c, t in zip(states, completions, refs, strict=True)
        ]

    def r_depth(
        prompts: Any = None, completions: Sequence[Any] = (), completion_ids: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float]:
        if completion_ids is not None:
            lengths = [len(ids) for ids in completion_ids]
        else:
            counter = count_tokens or estimate_tokens
            lengths = [counter(completion_text(c)) for c in completions]
        return [depth_reward(n, cfg) for n in lengths]

    r_struct.__name__, r_perf.__name__, r_depth.__name__ = "r_struct", "r_perf", "r_depth"
    return [r_struct, r_perf, r_depth]


def composite_reward_func(
    config: RewardConfig | None = None, count_tokens: Callable[[str], int] | None = None
) -> Callable[..., list[float]]:
    """One TRL reward function returning λ1·R_struct + λ2·R_perf + λ3·R_depth per completion."""
    cfg = config or RewardConfig()
    fs, fp, fd = reward_funcs(cfg, count_tokens)

    def r_composite(prompts: Any = None, completions: Sequence[Any] = (), **kwargs: Any) -> list[float]:
        s, p, d = (
            fs(prompts, completions, **kwargs),
            fp(prompts, completions, **kwargs),
            fd(prompts, completions, **kwargs),
        )
        return [
            cfg.lambda_struct * a + cfg.lambda_perf * b + cfg.lambda_depth * c for a, b, c in zip(s, p, d, strict=True)
        ]

    r_composite.__name__ = "r_composite"
    return r_composite


_SANDBOX: list[Any] = []


def default_sandbox() -> Any:
    """This process's sandbox with default limits (checked once: ``SandboxUnavailable`` where none
    can be set up; a program is never run unconfined)."""
    if not _SANDBOX:
        from service.sandbox import Sandbox

        Sandbox.check()
        _SANDBOX.append(Sandbox())
    return _SANDBOX[0]


def program_answer(state: SlotState, text: str, sandbox: Any = None, timeout_s: float = 1.0) -> str | None:
    """The ``owner`` answer of the program in ``text`` run in the sandbox on ``state`` (no
    history), or None when ``text`` holds no program or the program fails."""
    from service.sandbox import CodeFailure
    from service.serialize.code_form import ProgramNotFound, extract_program, owner_answer, program_state

    try:
        code = extract_program(text)
        owner_ids = (sandbox or default_sandbox()).run(code, program_state(state, None), state.num_res, timeout_s)
    except (ProgramNotFound, CodeFailure):
        return None
    return owner_answer(owner_ids)


def code_reward_func(
    config: RewardConfig | None = None, sandbox: Any = None, timeout_s: float = 1.0
) -> Callable[..., list[float]]:
    """A TRL reward function for the code form (execution feedback, module doc). ``sandbox``: a
    ``service.sandbox.Sandbox`` (default: ``default_sandbox``)."""
    cfg = config or RewardConfig()
    cache = _StateCache(cfg)
    failed = cfg.lambda_struct * cfg.malformed_penalty - cfg.lambda_perf * cfg.kappa

    def r_code(
        prompts: Any = None, completions: Sequence[Any] = (), state: Sequence[Any] | None = None, **kwargs: Any
    ) -> list[float]:
        states = cache.states(state, len(completions))
        refs = cache.reference(state or [], states)
        out = []
        for st, c, t in zip(states, completions, refs, strict=True):
            answer = program_answer(st, completion_text(c), sandbox, timeout_s)
            if answer is None:
                out.append(failed)
                continue
            result = check(st, answer)
            out.append(
                cfg.lambda_struct * struct_reward(st, answer, cfg, result)
                + cfg.lambda_perf * perf_reward(st, answer, cfg, result, t_rand=t)
            )
        return out

    r_code.__name__ = "r_code"
    return r_code
