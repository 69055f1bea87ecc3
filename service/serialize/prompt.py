"""Hierarchical state serialization into a text prompt for the LLM teacher (SPEC §5).

The prompt follows LSA section IV-B (three semantic blocks) and, for the mac preset, the
structured identity embedding (SIE) of LLM4MAC (``<Role>``, ``<Target>``, ``<Action candidate>``
markers, one ``<UE id>`` identity per user row):

1. **global statistics**: active users, available resources, cap, noise floor and the
   (max, min, mean, std) of received power / SNR / utility / bandwidth / buffer;
2. **local critical constraints**: the users and resources that matter most this slot (users by
   best utility — mac: by schedulable bits, then staleness —, resources by best utility), each
   with its best admissible partners, taken in priority order until the token budget is spent;
3. **output schema**: the PAG (length, token domain, what ``null`` means, caps) and the JSON
   schema of the answer, exact when it fits the budget.

Two answer forms, both parsed by ``service.pag.checks.parse_text``:
  * ``owner``: ``{"owner": [user_id | null, ...]}`` aligned with the slot's resources (needs every
    resource and eligible user in the prompt; used for small slots);
  * ``allocation``: ``{"allocation": {"<user_id>": [resource_id, ...]}}`` over the detailed
    users and resources (any N: users and resources left out of the prompt stay unassigned).

Everything here is pure (no I/O): token counts come from a ``count_tokens`` callable (the
endpoint's tokenizer, supplied by the teacher) or from ``estimate_tokens``, a conservative
estimate (every digit and punctuation mark one token, letters three per token).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from service.history import HistoryView
from service.types import SlotState

AnswerForm = Literal["auto", "owner", "allocation"]
ANSWER_FORMS: tuple[str, ...] = ("auto", "owner", "allocation")

_PIECE = re.compile(r"[A-Za-z]+|[0-9]|\n|[^\sA-Za-z0-9]")


def estimate_tokens(text: str) -> int:
    """Conservative token count of ``text`` for BPE / SentencePiece vocabularies.

    Digits and punctuation count one token each (Gemma, Qwen and Llama-2 split digits; Llama-3
    groups up to three), a run of ASCII letters ``ceil(len / 3)``, a newline one, a non-ASCII
    character two (byte fallback). Real tokenizers give fewer tokens on this kind of text.
    """
    n = 0
    for m in _PIECE.finditer(text):
        s = m.group()
        c = s[0]
        if c.isascii() and c.isalpha():
            n += -(-len(s) // 3)
        elif c.isascii():
            n += 1
        else:
            n += 2
    return n


@dataclass(frozen=True, slots=True)
class PromptOptions:
    """How a slot is serialized into a prompt (defaults: SPEC §5)."""

    #: prompt budget in tokens, chat-template overhead included (LSA Pareto point: 2048)
    budget_tokens: int = 2048
    #: answer form: "owner" (DCM over all resources), "allocation" (user -> resources over the
    #: detailed subset) or "auto" (owner when the whole slot fits and R <= owner_form_max_resources)
    answer_form: AnswerForm = "auto"
    #: largest R for which "auto" picks the owner form (its answer has R entries)
    owner_form_max_resources: int = 64
    #: best partners listed per user / resource row
    pairs_per_row: int = 3
    #: tokens reserved for the chat template (role markers, BOS, generation prompt)
    template_overhead_tokens: int = 32
    #: thermal noise density N0 (dBm/Hz) used for the noise floor and SNR statistics
    noise_density_dbm_hz: float = -174.0
    #: leader-utility weight ω of SPEC §3 eq. 5 (mac target text)
    omega: float = 0.5
    #: send a system message (False: its text is prepended to the user message, for chat
    #: templates that reject the system role)
    system_role: bool = True

    def __post_init__(self) -> None:
        if self.answer_form not in ANSWER_FORMS:
            raise ValueError(f"answer_form must be one of {ANSWER_FORMS}, got {self.answer_form!r}")
        if self.budget_tokens < 64:
            raise ValueError(f"budget_tokens must be >= 64, got {self.budget_tokens}")
        if self.pairs_per_row < 0:
            raise ValueError("pairs_per_row must be >= 0")


@dataclass(frozen=True, slots=True, eq=False)
class Prompt:
    """A serialized slot.

    messages: chat messages (system + user, or user only).
    schema: exact JSON schema of the answer (the decoding constraint sent to the endpoint).
    grammar: the same constraint as a GBNF grammar (llama.cpp ``grammar`` field).
    answer_form: "owner" or "allocation".
    tokens: prompt tokens including ``template_overhead_tokens``; ``token_source`` says whether
        they were counted by the endpoint's tokenizer ("endpoint") or estimated ("estimate").
    estimated_tokens: ``estimate_tokens`` of the same text (+ overhead), for calibration.
    users / resources: indices (into the slot) of the detailed users / resources, priority order.
    key: sha256 of messages + constraint: the cache key of this serialized state.
    """

    messages: list[dict[str, str]]
    schema: dict[str, Any]
    grammar: str
    answer_form: str
    tokens: int
    token_source: str
    estimated_tokens: int
    budget_tokens: int
    users: np.ndarray
    resources: np.ndarray
    exact_schema_in_prompt: bool
    key: str = field(default="")

    @property
    def text(self) -> str:
        return "\n\n".join(m["content"] for m in self.messages)


# ----------------------------------------------------------------------------- formatting


def _num(x: float) -> str:
    """Compact decimal with 3 significant digits (few digits = few tokens), no exponent."""
    if not math.isfinite(x):
        return "nan"
    ax = abs(x)
    if ax >= 100 or ax == 0:
        return str(round(x))
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _stats(values: np.ndarray) -> str:
    """'max a, min b, mean c, std d' of a 1-D array (empty: 'none')."""
    v = np.asarray(values, np.float64)
    if not np.isfinite(v).all():
        v = v[np.isfinite(v)]
    if v.size == 0:
        return "none"
    return f"max {_num(v.max())}, min {_num(v.min())}, mean {_num(v.mean())}, std {_num(v.std())}"


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _unit(state: SlotState) -> tuple[float, str]:
    """Scale and unit of utility values in the prompt: Mbit/s (spectrum), bits per RBG (mac)."""
    return (1e-6, "Mbit/s") if state.preset == "spectrum" else (1.0, "bit")


def _is_flat(state: SlotState) -> bool:
    """True when every user's utility is the same on every resource (mac with SE per user)."""
    u = state.utility
    return u.shape[1] <= 1 or bool(np.all(u.max(axis=1) - u.min(axis=1) <= 1e-9 * (1 + u.max(axis=1))))


# ----------------------------------------------------------------------------- blocks


def _header(state: SlotState, opts: PromptOptions) -> str:
    """Objective (LSA) / SIE <Role> and <Target> (LLM4MAC)."""
    if state.preset == "mac":
        return (
            f"<Role> base station (leader) of cell {state.cell_id}, TTI {state.slot}: uplink scheduler "
            f"granting {state.num_res} RBGs to {state.num_ue} UEs (followers) with one DCM.\n"
            f"<Target> maximise delivered bits this TTI and long-run fairness: leader utility "
            f"U = {opts.omega:g}*throughput + {1 - opts.omega:g}*JFI(cumulative RBGs). A UE cannot send "
            f"more than its buffer: do not give it RBGs beyond its need.\n"
            "Answer with JSON only, no explanation."
        )
    return (
        f"Objective: assign channels to secondary users of cell {state.cell_id}, slot {state.slot}, "
        "to maximise the aggregate throughput (sum of Shannon rates B*log2(1+SNR)) and spectrum "
        "utilisation. Collision-free: one user per channel; a busy channel (primary user present) "
        "stays unused.\n"
        "Answer with JSON only, no explanation."
    )


def _statistics(state: SlotState, view: HistoryView | None, opts: PromptOptions) -> str:
    """Global statistics block (SPEC §5, LSA 'network statistical context')."""
    elig, avail = state.user_eligible, state.resource_available
    scale, unit = _unit(state)
    res_word = "channels" if state.preset == "spectrum" else "RBGs"
    lines = [
        "## Global statistics",
        f"users: {state.num_ue} registered, {int(elig.sum())} active (eligible); {res_word}: "
        f"{state.num_res} total, {int(avail.sum())} available, {int((~avail).sum())} busy; "
        f"max {res_word} per user: {min(state.max_resources_per_user, state.num_res)}",
    ]
    bw_avail = state.bandwidth_hz[avail] if avail.any() else state.bandwidth_hz
    n0 = opts.noise_density_dbm_hz
    noise_dbm = n0 + 10.0 * np.log10(bw_avail)
    lines.append(f"noise floor: N0 {_num(n0)} dBm/Hz; over available bandwidths {_stats(noise_dbm)} dBm")
    lines.append(f"bandwidth (MHz) of available {res_word}: {_stats(bw_avail / 1e6)}")
    if state.rx_power_dbm is not None:
        rx = state.rx_power_dbm[elig]
        lines.append(f"received power (dBm) of active users: {_stats(rx)}")
        # SNR[u,c] = rx[u] - noise[c] over the product set: moments in closed form, O(N + R)
        snr = "none" if rx.size == 0 else (f"max {_num(rx.max() - noise_dbm.min())}, min {_num(rx.min() - noise_dbm.max())}, "
               f"mean {_num(rx.mean() - noise_dbm.mean())}, std {_num(float(np.sqrt(rx.var() + noise_dbm.var())))}")
        lines.append(f"mean SNR (dB, before fading) over active pairs: {snr}")
    if state.spectral_efficiency is not None:
        se = state.spectral_efficiency
        se_u = se if se.ndim == 1 else se.mean(axis=1)
        lines.append(f"spectral efficiency (bit/s/Hz) of active users: {_stats(se_u[elig])}")
    if elig.any() and avail.any():
        sub = state.utility[np.ix_(elig, avail)]
        lines.append(f"utility ({unit} per {res_word[:-1]}) over admissible pairs: {_stats(sub.ravel() * scale)}")
    if state.buffer_bits is not None:
        lines.append(f"buffer (bit) of active users: {_stats(state.buffer_bits[elig])}")
    if view is not None and state.preset == "mac" and view.known.any():
        x = view.cum_resources
        jfi = float(x.sum() ** 2 / (x.size * (x**2).sum())) if (x**2).sum() > 0 else 1.0
        lines.append(f"history: JFI of cumulative RBGs {_num(jfi)}; cumulative RBGs per UE {_stats(x)}")
    return "\n".join(lines)


def _user_priority(state: SlotState, view: HistoryView | None) -> np.ndarray:
    """Eligible user indices, most critical first.

    spectrum: best admissible utility; mac: schedulable bits min(buffer, sum of the user's best
    ``cap`` utilities), then staleness (slots since last served; never served first).
    """
    users = np.flatnonzero(state.user_eligible)
    if users.size == 0:
        return users
    util = np.where(state.resource_available[None, :], state.utility[users], -np.inf)
    best = util.max(axis=1) if util.shape[1] else np.zeros(users.size)
    best = np.where(np.isfinite(best), best, 0.0)
    if state.preset == "mac":
        cap = min(state.max_resources_per_user, max(int(state.resource_available.sum()), 1))
        top = -np.sort(-np.where(np.isfinite(util), util, 0.0), axis=1)[:, :cap].sum(axis=1)
        key = top if state.buffer_bits is None else np.minimum(state.buffer_bits[users], top)
        stale = np.zeros(users.size) if view is None else np.where(
            view.last_served_slot[users] < 0, np.inf, state.slot - view.last_served_slot[users])
        order = np.lexsort((users, -stale, -key))
    else:
        order = np.lexsort((users, -best))
    return users[order]


def _resource_priority(state: SlotState) -> np.ndarray:
    """Available resource indices by best utility over eligible users (then index)."""
    res = np.flatnonzero(state.resource_available)
    if res.size == 0 or not state.user_eligible.any():
        return res
    best = state.utility[np.ix_(state.user_eligible, res)].max(axis=0)
    return res[np.lexsort((res, -best))]


def _user_row(state: SlotState, u: int, view: HistoryView | None, opts: PromptOptions, flat: bool) -> str:
    scale, _ = _unit(state)
    uid = int(state.user_ids[u])
    parts: list[str] = []
    if state.preset == "mac":
        head = f"<UE {uid}>"
        if state.buffer_bits is not None:
            parts.append(f"buf {round(float(state.buffer_bits[u]))}")
        best = float(state.utility[u][state.resource_available].max()) if state.resource_available.any() else 0.0
        if flat:
            parts.append(f"bit/RBG {round(best)}")
        if state.buffer_bits is not None and best > 0:
            parts.append(f"need {math.ceil(float(state.buffer_bits[u]) / best)} RBG")
        if view is not None:
            last = int(view.last_served_slot[u])
            parts.append("stale never" if last < 0 else f"stale {state.slot - last}")
    else:
        head = f"{uid}:"
        if state.rx_power_dbm is not None:
            parts.append(f"rx {_num(float(state.rx_power_dbm[u]))} dBm")
    if not flat and opts.pairs_per_row:
        row = np.where(state.resource_available, state.utility[u], -np.inf)
        k = min(opts.pairs_per_row, int(np.isfinite(row).sum()))
        if k:
            idx = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
            idx = idx[np.lexsort((idx, -row[idx]))][:k]
            parts.append("best " + " ".join(f"{int(state.resource_ids[r])}={_num(float(row[r]) * scale)}" for r in idx))
    return head + " " + "; ".join(parts) if parts else head


def _resource_row(state: SlotState, r: int, opts: PromptOptions) -> str:
    scale, _ = _unit(state)
    rid = int(state.resource_ids[r])
    parts = [f"bw {_num(float(state.bandwidth_hz[r]) / 1e6)} MHz"]
    if opts.pairs_per_row:
        col = np.where(state.user_eligible, state.utility[:, r], -np.inf)
        k = min(opts.pairs_per_row, int(np.isfinite(col).sum()))
        if k:
            idx = np.argpartition(-col, k - 1)[:k] if k < col.size else np.arange(col.size)
            idx = idx[np.lexsort((idx, -col[idx]))][:k]
            parts.append("best " + " ".join(f"{int(state.user_ids[u])}={_num(float(col[u]) * scale)}" for u in idx))
    return f"{rid}: " + "; ".join(parts)


def _rows(state: SlotState, view: HistoryView | None, opts: PromptOptions,
          users: np.ndarray, resources: np.ndarray, flat: bool) -> Iterator[tuple[str, int, str]]:
    """Detail rows in priority order: ("u"|"r", index, text) interleaved so that both lists
    advance in proportion to their lengths. In the flat case resources need no row of their own
    (their ids are listed in chunks)."""
    if flat:
        chunk = 16
        for i in range(max(users.size, 1)):
            if i < users.size:
                yield "u", int(users[i]), _user_row(state, int(users[i]), view, opts, flat)
            lo = i * chunk
            if lo < resources.size:
                ids = resources[lo:lo + chunk]
                yield "R", lo, " ".join(str(int(state.resource_ids[r])) for r in ids)
        for lo in range((max(users.size, 1)) * chunk, resources.size, chunk):
            ids = resources[lo:lo + chunk]
            yield "R", lo, " ".join(str(int(state.resource_ids[r])) for r in ids)
        return
    nu, nr = users.size, resources.size
    iu = ir = 0
    while iu < nu or ir < nr:
        take_user = ir >= nr or (iu < nu and (iu + 1) / nu <= (ir + 1) / nr)
        if take_user:
            u = int(users[iu])
            iu += 1
            yield "u", u, _user_row(state, u, view, opts, flat)
        else:
            r = int(resources[ir])
            ir += 1
            yield "r", r, _resource_row(state, r, opts)


# ----------------------------------------------------------------------------- answer schema


def owner_schema(state: SlotState) -> dict[str, Any]:
    """Exact JSON schema of the owner form: R positions, a busy one is null, an available one an
    eligible user id or null (per-user caps cannot be expressed: PAG check / repair catch them)."""
    uids = [int(state.user_ids[u]) for u in np.flatnonzero(state.user_eligible)]
    items = [{"$ref": "#/$defs/user"} if a else {"type": "null"} for a in state.resource_available.tolist()]
    r = state.num_res
    return {
        "type": "object",
        "properties": {"owner": {"type": "array", "prefixItems": items, "items": False,
                                 "minItems": r, "maxItems": r}},
        "required": ["owner"],
        "additionalProperties": False,
        "$defs": {"user": {"enum": [*uids, None]}},
    }


def allocation_schema(state: SlotState, users: np.ndarray, resources: np.ndarray) -> dict[str, Any]:
    """Exact JSON schema of the allocation form over detailed eligible ``users`` and available
    ``resources`` (indices): keys are user ids, values arrays of distinct resource ids, at most
    ``max_resources_per_user`` each. Users may be omitted (they get nothing)."""
    uids = sorted(int(state.user_ids[u]) for u in users if state.user_eligible[u])
    rids = sorted(int(state.resource_ids[r]) for r in resources if state.resource_available[r])
    cap = min(state.max_resources_per_user, max(len(rids), 1))
    res_def: dict[str, Any] = {"type": "array", "items": {"enum": rids}, "maxItems": cap, "uniqueItems": True}
    return {
        "type": "object",
        "properties": {"allocation": {"type": "object",
                                      "properties": {str(u): {"$ref": "#/$defs/resources"} for u in uids},
                                      "additionalProperties": False}},
        "required": ["allocation"],
        "additionalProperties": False,
        "$defs": {"resources": res_def},
    }


def _compact_schema(state: SlotState, form: str) -> dict[str, Any]:
    """Structure of the answer without the id enumerations (shown when the exact one does not fit)."""
    if form == "owner":
        r = state.num_res
        return {"type": "object", "properties": {"owner": {"type": "array", "minItems": r, "maxItems": r,
                                                          "items": {"type": ["integer", "null"]}}},
                "required": ["owner"]}
    return {"type": "object", "properties": {"allocation": {
        "type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"},
                                                   "maxItems": state.max_resources_per_user}}},
            "required": ["allocation"]}


def _gbnf_alt(values: list[str]) -> str:
    return " | ".join(f'"{v}"' for v in values) if values else '"null"'


def gbnf_grammar(state: SlotState, form: str, users: np.ndarray, resources: np.ndarray) -> str:
    """The answer constraint as a GBNF grammar (llama.cpp / llama-cpp-python ``grammar`` field).

    owner: exactly R positions, busy ones ``null``; allocation: an object whose keys are the
    detailed eligible user ids and whose values are arrays of at most ``cap`` detailed available
    resource ids. Whitespace is limited to one optional space so tokens go to content.
    """
    lines: list[str] = []
    if form == "owner":
        uids = [str(int(state.user_ids[u])) for u in np.flatnonzero(state.user_eligible)]
        cells = ['item' if a else '"null"' for a in state.resource_available.tolist()]
        body = ' "," ws '.join(cells)
        lines.append(f'root ::= "{{" ws "\\"owner\\"" ws ":" ws "[" ws {body} ws "]" ws "}}"')
        lines.append(f"item ::= {_gbnf_alt([*uids, 'null'])}")
    else:
        uid_list = sorted(int(state.user_ids[u]) for u in users if state.user_eligible[u])
        rid_list = sorted(int(state.resource_ids[r]) for r in resources if state.resource_available[r])
        uids, rids = [str(u) for u in uid_list], [str(r) for r in rid_list]
        cap = min(state.max_resources_per_user, max(len(rids), 1))
        more = "" if cap <= 1 else ' ("," ws rid)*' if cap >= len(rids) else f' ("," ws rid){{0,{cap - 1}}}'
        if not uids or not rids:  # nothing assignable: only the empty allocation
            lines.append('root ::= "{" ws "\\"allocation\\"" ws ":" ws "{" ws "}" ws "}"')
        else:
            lines.append('root ::= "{" ws "\\"allocation\\"" ws ":" ws "{" ws ( pair ( "," ws pair )* )? "}" ws "}"')
            lines.append(f'pair ::= "\\"" uid "\\"" ws ":" ws "[" ws ( rid ws{more} )? "]" ws')
            lines.append(f"uid ::= {_gbnf_alt(uids)}")
            lines.append(f"rid ::= {_gbnf_alt(rids)}")
    lines.append('ws ::= " "?')
    return "\n".join(lines) + "\n"


def _output_block(state: SlotState, form: str, schema: dict[str, Any], exact: bool) -> str:
    """Output schema block: the PAG in words, then the JSON schema."""
    res_word = "channel" if state.preset == "spectrum" else "RBG"
    cap = min(state.max_resources_per_user, state.num_res)
    marker = "<Action candidate> " if state.preset == "mac" else ""
    if form == "owner":
        order = " ".join(str(int(r)) for r in state.resource_ids)
        busy = [str(int(r)) for r in state.resource_ids[~state.resource_available]]
        pag = (
            f"{marker}DCM: a list \"owner\" of exactly {state.num_res} entries, entry i for {res_word} id "
            f"number i of: {order}. Each entry is the id of an active user (the most critical are "
            f"listed above) or null "
            f"(null = {res_word} unused). Busy {res_word}s must be null"
            + (f" (busy: {' '.join(busy)})" if busy else "")
            + f". A user appears at most {cap} time{'s' if cap > 1 else ''}."
        )
    else:
        pag = (
            f"{marker}DCM as a mapping \"allocation\": user id (string key) -> list of {res_word} ids. "
            f"Use only active users and available {res_word}s listed above; each {res_word} at most "
            f"once over all users; at most {cap} {res_word}{'s' if cap > 1 else ''} per user; users "
            f"left out get nothing."
        )
    note = "" if exact else " (id enumerations omitted; ids are those listed above)"
    return f"## Output schema\n{pag}\nJSON schema of the answer{note}:\n{_dump(schema)}"


# ----------------------------------------------------------------------------- assembly


def _messages(system: str, user: str, opts: PromptOptions) -> list[dict[str, str]]:
    if opts.system_role:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return [{"role": "user", "content": system + "\n\n" + user}]


@dataclass(slots=True)
class _Layout:
    """Everything but the detail rows, for one answer form."""

    system: str
    stats: str
    form: str


def _render(layout: _Layout, rows: list[tuple[str, int, str]], state: SlotState, output: str,
            opts: PromptOptions) -> list[dict[str, str]]:
    users = [t for kind, _, t in rows if kind == "u"]
    res = [t for kind, _, t in rows if kind == "r"]
    flat_ids = [t for kind, _, t in rows if kind == "R"]
    res_word = "channels" if state.preset == "spectrum" else "RBGs"
    n_elig, n_avail = int(state.user_eligible.sum()), int(state.resource_available.sum())
    parts = [layout.stats, "## Critical constraints"]
    if state.preset == "mac":
        head = f"UEs ({len(users)} of {n_elig} active, most critical first): <UE id> buf bits; "
        head += "bit/RBG" if flat_ids else "best RBG=bits"
        parts.append(head + "; RBGs needed to empty the buffer; TTIs since last served")
    else:
        parts.append(f"users ({len(users)} of {n_elig} active, strongest first): "
                     f"id: rx power; best channel=Mbit/s")
    parts.extend(users)
    if flat_ids:
        n_ids = sum(len(t.split()) for t in flat_ids)
        parts.append(f"available {res_word} ({n_ids} of {n_avail}; same rate on every {res_word[:-1]}):")
        parts.extend(flat_ids)
    else:
        parts.append(f"available {res_word} ({len(res)} of {n_avail}, best first): id: bandwidth; "
                     f"best user={'Mbit/s' if state.preset == 'spectrum' else 'bits'}")
        parts.extend(res)
    parts.append(output)
    return _messages(layout.system, "\n".join(parts), opts)


def _subset(rows: list[tuple[str, int, str]], state: SlotState, resources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    users = np.array([i for kind, i, _ in rows if kind == "u"], np.int64)
    res: list[int] = [i for kind, i, _ in rows if kind == "r"]
    for kind, lo, text in rows:
        if kind == "R":
            res.extend(int(r) for r in resources[lo:lo + len(text.split())])
    return users, np.array(res, np.int64)


def _fit(state: SlotState, layout: _Layout, all_rows: Iterator[tuple[str, int, str]],
         resources: np.ndarray, opts: PromptOptions, row_budget: float, scale: float
         ) -> tuple[list[tuple[str, int, str]], bool]:
    """Take rows in priority order while their (scaled) estimated cost fits ``row_budget``.
    Returns (rows, complete) where complete = every row was taken."""
    taken: list[tuple[str, int, str]] = []
    spent = 0.0
    for row in all_rows:
        cost = (estimate_tokens(row[2]) + 1) * scale
        if spent + cost > row_budget:
            return taken, False
        spent += cost
        taken.append(row)
    return taken, True


def serialize_prompt(
    state: SlotState,
    view: HistoryView | None = None,
    options: PromptOptions | None = None,
    count_tokens: Callable[[str], int] | None = None,
    scale: float = 1.0,
) -> Prompt:
    """Serialize ``state`` into a prompt of at most ``options.budget_tokens`` tokens.

    Detail rows are chosen with ``estimate_tokens`` (scaled by ``scale``, a calibration of the
    estimate to the endpoint's tokenizer, <= 1 when the estimate is conservative). When
    ``count_tokens`` (the endpoint's tokenizer) is given, the final prompt is counted with it
    (at most three calls): rows are dropped while it is over budget and, when rows were cut,
    added once with the measured calibration. Raises ``ValueError`` when even the prompt
    without any detail row exceeds the budget.
    """
    opts = options or PromptOptions()
    if count_tokens is None:
        scale = max(scale, 1.0)  # without a count to verify it, never trust a shrinking calibration
    budget = opts.budget_tokens
    overhead = opts.template_overhead_tokens
    flat = _is_flat(state)
    users = _user_priority(state, view)
    resources = _resource_priority(state)
    layout = _Layout(_header(state, opts), _statistics(state, view, opts), "")

    def text_of(msgs: list[dict[str, str]]) -> str:
        return "\n\n".join(m["content"] for m in msgs)

    def est(msgs: list[dict[str, str]]) -> int:
        return estimate_tokens(text_of(msgs)) + overhead

    def build(form: str, rows: list[tuple[str, int, str]]) -> tuple[list[dict[str, str]], dict, bool, np.ndarray, np.ndarray]:
        u_sel, r_sel = _subset(rows, state, resources)
        exact = owner_schema(state) if form == "owner" else allocation_schema(state, u_sel, r_sel)
        msgs = _render(layout, rows, state, _output_block(state, form, exact, True), opts)
        if est(msgs) * scale <= budget:
            return msgs, exact, True, u_sel, r_sel
        msgs = _render(layout, rows, state, _output_block(state, form, _compact_schema(state, form), False), opts)
        return msgs, exact, False, u_sel, r_sel

    def fitted(form: str, sc: float) -> list[tuple[str, int, str]]:
        base = est(_render(layout, [], state, _output_block(state, form, _compact_schema(state, form), False), opts))
        if base * sc > budget:
            raise ValueError(f"the fixed prompt blocks need ~{base} tokens, over the budget of {budget}")
        rows, _ = _fit(state, layout, _rows(state, view, opts, users, resources, flat), resources, opts,
                       budget - base * sc, sc)
        return rows

    # answer form: the owner form lists every resource position; its answer has R entries
    form = opts.answer_form
    if form == "auto":
        form = "owner" if state.num_res <= opts.owner_form_max_resources else "allocation"
    rows: list[tuple[str, int, str]]
    rows = fitted(form, scale)
    msgs, schema, exact, u_sel, r_sel = build(form, rows)
    estimated = est(msgs)
    tokens, source = math.ceil(estimated * scale), "estimate"

    if count_tokens is not None:
        source = "endpoint"
        tokens = count_tokens(text_of(msgs)) + overhead
        if tokens <= budget and len(rows) < _count_rows(state, users, resources, flat):
            # the estimate was conservative: refit once with the measured calibration
            sc = max(tokens / max(estimated, 1), 0.05) * 1.02
            try:
                rows2 = fitted(form, sc)
            except ValueError:
                rows2 = rows
            if len(rows2) > len(rows):
                m2 = build(form, rows2)
                t2 = count_tokens(text_of(m2[0])) + overhead
                if t2 <= budget:
                    rows, (msgs, schema, exact, u_sel, r_sel), tokens = rows2, m2, t2
        for _ in range(2):
            if tokens <= budget:
                break
            keep = int(len(rows) * budget / tokens * 0.9)
            rows = rows[:keep]
            msgs, schema, exact, u_sel, r_sel = build(form, rows)
            tokens = count_tokens(text_of(msgs)) + overhead
        if tokens > budget:
            rows = []
            msgs, schema, exact, u_sel, r_sel = build(form, rows)
            tokens = count_tokens(text_of(msgs)) + overhead
            if tokens > budget:
                raise ValueError(f"the fixed prompt blocks need {tokens} tokens, over the budget of {budget}")
        estimated = est(msgs)

    grammar = gbnf_grammar(state, form, u_sel, r_sel)
    key = hashlib.sha256((_dump(msgs) + "\x00" + _dump(schema)).encode()).hexdigest()
    return Prompt(messages=msgs, schema=schema, grammar=grammar, answer_form=form, tokens=tokens,
                  token_source=source, estimated_tokens=estimated, budget_tokens=budget, users=u_sel,
                  resources=r_sel, exact_schema_in_prompt=exact, key=key)


def _count_rows(state: SlotState, users: np.ndarray, resources: np.ndarray, flat: bool) -> int:
    if flat:
        chunks = -(-resources.size // 16)
        return users.size + chunks
    return users.size + resources.size


# ----------------------------------------------------------------------------- answers


def answer_text(state: SlotState, owner: np.ndarray, prompt: Prompt) -> str:
    """The JSON answer a perfect teacher would give for DCM ``owner`` [R] under ``prompt``'s
    answer form (SFT targets). In the allocation form only pairs between detailed users and
    detailed resources can be expressed; the others are left out."""
    owner = np.asarray(owner, np.int64)
    if prompt.answer_form == "owner":
        ids = [None if k == 0 else int(state.user_ids[k - 1]) for k in owner.tolist()]
        return _dump({"owner": ids})
    users = set(prompt.users.tolist())
    res = set(prompt.resources.tolist())
    alloc: dict[str, list[int]] = {}
    for r, k in enumerate(owner.tolist()):
        if k and (k - 1) in users and r in res:
            alloc.setdefault(str(int(state.user_ids[k - 1])), []).append(int(state.resource_ids[r]))
    # keys in increasing id order: the order of the schema's properties (constrained decoding)
    return _dump({"allocation": dict(sorted(alloc.items(), key=lambda kv: int(kv[0])))})
