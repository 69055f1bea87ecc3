"""The ``code`` answer form (LSA's code-driven paradigm): the teacher writes a program
``schedule(state) -> owner`` once, and the program decides the slots (SPEC §5).

Pure: no I/O. ``code_prompt`` builds the chat messages; they describe the cell's *structure*
(preset, N, R, cap, units, objective) and the state object, never one slot's numbers, so the
prompt -- and its sha256 ``key``, the program cache's key -- stays the same from slot to slot of
a cell while its structure does. ``extract_program`` takes the program out of the model's
answer; ``program_state`` is the state object the program receives; ``owner_answer`` turns the
program's output into the ``owner`` answer form, so that it goes through the same PAG check and
repair as every text answer.

The state object (attribute access inside the sandbox; N users, R resources):

=====================  ============  ===================================================
name                   type          meaning
=====================  ============  ===================================================
``preset``             str           ``"spectrum"`` or ``"mac"``
``num_ue``             int           N
``num_res``            int           R
``user_ids``           int64 [N]     the users' ids
``eligible``           bool [N]      the user may own resources this slot
``resource_ids``       int64 [R]     the resources' ids (channels / RBGs)
``available``          bool [R]      the resource may be given (False: busy)
``utility``            float64 [N,R] spectrum: rate in bit/s; mac: bits per RBG this slot
``buffer_bits``        float64 [N]   queued bits (inf: full buffer)
``avg_served``         float64 [N]   EWMA of what the user was served per slot (utility unit)
``cum_resources``      float64 [N]   resources the user has held in this cell so far
``slots_since_served`` int64 [N]     slots since the user last got a resource (-1: never)
``max_per_user``       int           most resources one user may hold
``slot``               int           the slot number
=====================  ============  ===================================================

The program returns R entries: entry r is the id of the user that gets resource r, or -1
(unused). ``owner_answer`` writes -1 as ``null``; anything the PAG forbids (a busy resource, an
unknown or ineligible user, more than the cap) is a violation like in a text answer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from service.history import HistoryView
from service.serialize.answer import compact_json
from service.serialize.prompt_options import PromptOptions, estimate_tokens
from service.types import SlotState

#: name of the function the program defines
ENTRY = "schedule"
#: modules a program may import (the sandbox enforces the same list)
ALLOWED_MODULES = ("numpy", "math", "heapq", "itertools")

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


#: a correct program (the SFT target of the code form): each available resource, best first, to the
#: eligible user with the largest utility / (1 + avg_served) that is under its cap and, in mac,
#: still has bits to send
REFERENCE_PROGRAM = """\
import numpy as np


def schedule(state):
    owner = [-1] * state.num_res
    need = state.buffer_bits.copy()
    held = np.zeros(state.num_ue, dtype=np.int64)
    score = state.utility / (1.0 + state.avg_served[:, None])
    for r in np.argsort(-state.utility.max(axis=0), kind="stable"):
        if not state.available[r]:
            continue
        for u in np.argsort(-score[:, r], kind="stable"):
            if state.eligible[u] and held[u] < state.max_per_user and need[u] > 0 and state.utility[u, r] > 0:
                owner[r] = int(state.user_ids[u])
                held[u] += 1
                need[u] -= state.utility[u, r]
                break
    return owner
"""


def fenced(code: str) -> str:
    """``code`` as the answer the prompt asks for: one fenced Python block."""
    return "```python\n" + code.rstrip("\n") + "\n```"


class ProgramNotFound(ValueError):
    """The answer holds no program defining ``schedule``."""


STATE_DOC = """\
`state` has these attributes (numpy arrays; N users, R resources):
- preset (str), num_ue (int N), num_res (int R), slot (int), max_per_user (int)
- user_ids int64[N]; eligible bool[N] (False: may get nothing this slot)
- resource_ids int64[R]; available bool[R] (False: busy, must stay unused)
- utility float64[N,R]: {utility}
- buffer_bits float64[N]: queued bits (inf = full buffer)
- avg_served float64[N]: moving average of what each user was served per slot (same unit as utility)
- cum_resources float64[N]: resources each user has held so far
- slots_since_served int64[N]: slots since the user was last served (-1 = never)"""

CONTRACT = """\
Write a Python function `def {entry}(state):` that returns a list of exactly state.num_res entries: \
entry r is the user id (from state.user_ids) that gets resource r, or -1 to leave it unused. \
Rules: a resource with available[r] False must be -1; only users with eligible True; a user gets at most \
state.max_per_user resources. You may import only {modules}. No I/O, no printing. The same function \
decides every following slot of this cell, so read all numbers from `state`.
Answer with one ```python code block and nothing else."""


def _objective(state: SlotState, opts: PromptOptions) -> str:
    if state.preset == "mac":
        return (
            f"You write the uplink scheduler of base station cell {state.cell_id}: each TTI it grants "
            f"{state.num_res} RBGs to up to {state.num_ue} UEs. Target: maximise delivered bits per TTI and "
            f"long-run fairness: leader utility U = {opts.omega:g}*throughput + {1 - opts.omega:g}*JFI"
            "(cumulative RBGs). A UE cannot send more than its buffer: RBGs beyond its need are wasted."
        )
    return (
        f"You write the channel assignment of cell {state.cell_id}: each slot it assigns {state.num_res} "
        f"channels to up to {state.num_ue} secondary users, one user per channel, to maximise the aggregate "
        "throughput (sum of Shannon rates) and spectrum utilisation; a busy channel stays unused."
    )


def code_prompt(state: SlotState, opts: PromptOptions | None = None) -> tuple[list[dict[str, str]], str, int]:
    """Chat messages asking for the program of ``state``'s cell, their cache key (sha256 hex of the
    messages) and their estimated tokens (``estimate_tokens`` + template overhead).

    The text depends on the cell's structure only (preset, N, R, cap, cell id), not on the slot.
    """
    opts = opts or PromptOptions()
    utility = (
        "bits user u would send on RBG r this TTI" if state.preset == "mac" else "rate in bit/s of user u on channel r"
    )
    cap = min(state.max_resources_per_user, state.num_res)
    system = _objective(state, opts)
    user = "\n\n".join(
        [
            f"Cell structure: {state.num_ue} users, {state.num_res} "
            f"{'RBGs' if state.preset == 'mac' else 'channels'}, at most {cap} per user.",
            STATE_DOC.format(utility=utility),
            CONTRACT.format(entry=ENTRY, modules=", ".join(ALLOWED_MODULES)),
        ]
    )
    if opts.system_role:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    else:
        messages = [{"role": "user", "content": system + "\n\n" + user}]
    key = hashlib.sha256(("code\x00" + compact_json(messages)).encode()).hexdigest()
    tokens = estimate_tokens("\n\n".join(m["content"] for m in messages)) + opts.template_overhead_tokens
    return messages, key, tokens


def extract_program(text: str) -> str:
    """The program in a model's answer: the first fenced code block that defines ``schedule``, or
    the whole answer when it is bare code. ``ProgramNotFound`` otherwise."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    for block in [*blocks, text]:
        if re.search(rf"^\s*def\s+{ENTRY}\s*\(", block, re.MULTILINE):
            return block.strip("\n") + "\n"
    raise ProgramNotFound(f"no function {ENTRY}(state) in the answer ({len(text)} characters)")


def program_state(state: SlotState, view: HistoryView | None) -> dict[str, Any]:
    """The state object of one slot (module table), as plain numpy arrays and scalars."""
    n = state.num_ue
    buffer = state.buffer_bits if state.buffer_bits is not None else np.full(n, np.inf)
    if view is None:
        avg = np.zeros(n)
        cum = np.zeros(n)
        since = np.full(n, -1, np.int64)
    else:
        avg = view.avg_served
        cum = view.cum_resources
        last = view.last_served_slot
        since = np.where(last >= 0, state.slot - last, -1).astype(np.int64)
    return {
        "preset": state.preset,
        "num_ue": n,
        "num_res": state.num_res,
        "slot": int(state.slot),
        "max_per_user": int(min(state.max_resources_per_user, state.num_res)),
        "user_ids": np.ascontiguousarray(state.user_ids, np.int64),
        "eligible": np.ascontiguousarray(state.user_eligible, np.bool_),
        "resource_ids": np.ascontiguousarray(state.resource_ids, np.int64),
        "available": np.ascontiguousarray(state.resource_available, np.bool_),
        "utility": np.ascontiguousarray(state.utility, np.float64),
        "buffer_bits": np.ascontiguousarray(buffer, np.float64),
        "avg_served": np.ascontiguousarray(avg, np.float64),
        "cum_resources": np.ascontiguousarray(cum, np.float64),
        "slots_since_served": since,
    }


def owner_answer(owner_ids: np.ndarray) -> str:
    """The program's output (user id or -1 per resource, int64 [R]) as an ``owner`` form answer."""
    return compact_json({"owner": [None if u == -1 else int(u) for u in np.asarray(owner_ids).tolist()]})
