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

This module assembles the blocks (``service.serialize.prompt_blocks``) and the answer
constraint (``service.serialize.answer``: the ``owner`` form for small slots, the
``allocation`` form for any N) into chat messages within the budget of
``service.serialize.prompt_options.PromptOptions``. Everything here is pure (no I/O): token
counts come from a ``count_tokens`` callable (the endpoint's tokenizer, supplied by the teacher)
or from ``estimate_tokens``, a conservative estimate.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from service.history import HistoryView
from service.serialize.answer import (
    allocation_schema,
    compact_json,
    compact_schema,
    gbnf_grammar,
    output_block,
    owner_schema,
)
from service.serialize.prompt_blocks import (
    count_detail_rows,
    detail_rows,
    header_block,
    is_flat,
    resource_priority,
    statistics_block,
    user_priority,
)
from service.serialize.prompt_options import Prompt, PromptOptions, estimate_tokens
from service.types import SlotState


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


def _render(
    layout: _Layout, rows: list[tuple[str, int, str]], state: SlotState, output: str, opts: PromptOptions
) -> list[dict[str, str]]:
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
        parts.append(f"users ({len(users)} of {n_elig} active, strongest first): id: rx power; best channel=Mbit/s")
    parts.extend(users)
    if flat_ids:
        n_ids = sum(len(t.split()) for t in flat_ids)
        parts.append(f"available {res_word} ({n_ids} of {n_avail}; same rate on every {res_word[:-1]}):")
        parts.extend(flat_ids)
    else:
        parts.append(
            f"available {res_word} ({len(res)} of {n_avail}, best first): id: bandwidth; "
            f"best user={'Mbit/s' if state.preset == 'spectrum' else 'bits'}"
        )
        parts.extend(res)
    parts.append(output)
    return _messages(layout.system, "\n".join(parts), opts)


def _subset(rows: list[tuple[str, int, str]], state: SlotState, resources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    users = np.array([i for kind, i, _ in rows if kind == "u"], np.int64)
    res: list[int] = [i for kind, i, _ in rows if kind == "r"]
    for kind, lo, text in rows:
        if kind == "R":
            res.extend(int(r) for r in resources[lo : lo + len(text.split())])
    return users, np.array(res, np.int64)


def _fit(
    state: SlotState,
    layout: _Layout,
    all_rows: Iterator[tuple[str, int, str]],
    resources: np.ndarray,
    opts: PromptOptions,
    row_budget: float,
    scale: float,
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
    flat = is_flat(state)
    users = user_priority(state, view)
    resources = resource_priority(state)
    layout = _Layout(header_block(state, opts), statistics_block(state, view, opts), "")

    def text_of(msgs: list[dict[str, str]]) -> str:
        return "\n\n".join(m["content"] for m in msgs)

    def est(msgs: list[dict[str, str]]) -> int:
        return estimate_tokens(text_of(msgs)) + overhead

    def build(
        form: str, rows: list[tuple[str, int, str]]
    ) -> tuple[list[dict[str, str]], dict, bool, np.ndarray, np.ndarray]:
        u_sel, r_sel = _subset(rows, state, resources)
        exact = owner_schema(state) if form == "owner" else allocation_schema(state, u_sel, r_sel)
        msgs = _render(layout, rows, state, output_block(state, form, exact, True), opts)
        if est(msgs) * scale <= budget:
            return msgs, exact, True, u_sel, r_sel
        msgs = _render(layout, rows, state, output_block(state, form, compact_schema(state, form), False), opts)
        return msgs, exact, False, u_sel, r_sel

    def fitted(form: str, sc: float) -> list[tuple[str, int, str]]:
        base = est(_render(layout, [], state, output_block(state, form, compact_schema(state, form), False), opts))
        if base * sc > budget:
            raise ValueError(f"the fixed prompt blocks need ~{base} tokens, over the budget of {budget}")
        rows, _ = _fit(
            state,
            layout,
            detail_rows(state, view, opts, users, resources, flat),
            resources,
            opts,
            budget - base * sc,
            sc,
        )
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
        if tokens <= budget and len(rows) < count_detail_rows(users, resources, flat):
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
    key = hashlib.sha256((compact_json(msgs) + "\x00" + compact_json(schema)).encode()).hexdigest()
    return Prompt(
        messages=msgs,
        schema=schema,
        grammar=grammar,
        answer_form=form,
        tokens=tokens,
        token_source=source,
        estimated_tokens=estimated,
        budget_tokens=budget,
        users=u_sel,
        resources=r_sel,
        exact_schema_in_prompt=exact,
        key=key,
    )
