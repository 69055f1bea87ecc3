"""Prompt serializer (SPEC §5): budget for any N, blocks, answer forms, endpoint token counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.history import CellHistory, record_decision
from service.pag.checks import check
from service.policies.base import PolicyContext
from service.policies.registry import make
from service.rng import slot_rng
from service.serialize.answer import answer_text
from service.serialize.prompt import serialize_prompt
from service.serialize.prompt_options import PromptOptions, estimate_tokens
from service.types import SlotState, make_slot


def spectrum_slot(n: int, r: int | None = None, busy_frac: float = 0.2, seed: int = 0) -> SlotState:
    """A spectrum slot with Rayleigh fading, some busy channels and some inactive users."""
    r = n if r is None else r
    rng = np.random.default_rng(seed)
    busy = np.zeros(r, bool)
    busy[rng.choice(r, int(busy_frac * r), replace=False)] = True
    return make_slot(
        "spectrum",
        np.arange(100, 100 + n),
        np.arange(1, r + 1),
        bandwidth_hz=rng.uniform(1e6, 10e6, r),
        resource_available=~busy,
        user_eligible=rng.random(n) < 0.85,
        rx_power_dbm=rng.uniform(-115, -85, n),
        fading_gain=rng.exponential(1.0, (n, r)),
        slot=7,
    )


def mac_slot(n: int, r: int = 8, seed: int = 0, per_rbg: bool = False) -> SlotState:
    rng = np.random.default_rng(seed)
    se_levels = np.array([0.2344, 0.6016, 1.1758])
    se = rng.choice(se_levels, (n, r) if per_rbg else n)
    return make_slot(
        "mac",
        np.arange(1, n + 1),
        np.arange(r),
        spectral_efficiency=se,
        buffer_bits=rng.integers(0, 12, n) * 256.0,
        slot=3,
    )


def km_owner(state: SlotState) -> np.ndarray:
    ctx = PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot))
    return np.asarray(make("km")(state, ctx), np.int64)


@pytest.mark.parametrize("n", [5, 7, 15, 60, 200, 700, 2000])
def test_spectrum_prompt_stays_under_budget_for_any_n(n: int) -> None:
    state = spectrum_slot(n)
    prompt = serialize_prompt(state, CellHistory.empty().view(state))
    assert prompt.tokens <= 2048
    assert estimate_tokens(prompt.text) + PromptOptions().template_overhead_tokens <= 2048
    assert prompt.token_source == "estimate"
    assert len(prompt.users) >= 1 and len(prompt.resources) >= 1


@pytest.mark.parametrize(("n", "r"), [(5, 8), (50, 8), (2000, 8), (300, 100), (2000, 2000)])
def test_mac_prompt_stays_under_budget(n: int, r: int) -> None:
    state = mac_slot(n, r, per_rbg=r == 100)
    prompt = serialize_prompt(state, CellHistory.empty().view(state), PromptOptions(budget_tokens=1024))
    assert prompt.tokens <= 1024
    assert estimate_tokens(prompt.text) + 32 <= 1024


def test_blocks_and_small_slot_details_everything() -> None:
    state = spectrum_slot(5, 5, busy_frac=0.4, seed=3)
    prompt = serialize_prompt(state)
    text = prompt.text
    assert "## Global statistics" in text and "## Critical constraints" in text and "## Output schema" in text
    assert prompt.answer_form == "owner" and prompt.exact_schema_in_prompt
    # every eligible user and every available channel is detailed, ids as the caller sent them
    assert sorted(prompt.users.tolist()) == np.flatnonzero(state.user_eligible).tolist()
    assert sorted(prompt.resources.tolist()) == np.flatnonzero(state.resource_available).tolist()
    for u in np.flatnonzero(state.user_eligible):
        assert f"\n{int(state.user_ids[u])}: rx " in text
    # the PAG names the busy channels and the exact schema is the one sent as the constraint
    busy_listed = text.split("(busy: ")[1].split(")")[0].split()
    assert busy_listed == [str(int(r)) for r in state.resource_ids[~state.resource_available]]
    assert json.dumps(prompt.schema, separators=(",", ":")) in text
    items = prompt.schema["properties"]["owner"]["prefixItems"]
    assert [it == {"type": "null"} for it in items] == (~state.resource_available).tolist()
    assert prompt.schema["$defs"]["user"]["enum"] == [*state.user_ids[state.user_eligible].tolist(), None]


def test_statistics_block_values() -> None:
    state = spectrum_slot(40, 30, seed=5)
    text = serialize_prompt(state).text
    elig = state.user_eligible
    rx = state.rx_power_dbm[elig]
    line = next(ln for ln in text.splitlines() if ln.startswith("received power (dBm)"))
    assert f"max {rx.max():.1f}" in line or f"max {round(rx.max())}" in line
    assert f"{int(elig.sum())} active" in text
    assert f"{int(state.resource_available.sum())} available" in text


def test_critical_users_are_the_strongest() -> None:
    state = spectrum_slot(400, 400, seed=1)
    prompt = serialize_prompt(state)
    assert prompt.answer_form == "allocation"
    assert 0 < len(prompt.users) < int(state.user_eligible.sum())
    best = np.where(state.admissible(), state.utility, -np.inf).max(axis=1)
    shown = best[prompt.users]
    hidden = np.setdiff1d(np.flatnonzero(state.user_eligible), prompt.users)
    assert shown.min() >= best[hidden].max()  # top-k by best utility
    # the allocation schema enumerates exactly the detailed ids
    props = prompt.schema["properties"]["allocation"]["properties"]
    assert sorted(int(k) for k in props) == sorted(state.user_ids[prompt.users].tolist())
    assert sorted(prompt.schema["$defs"]["resources"]["items"]["enum"]) == sorted(
        state.resource_ids[prompt.resources].tolist()
    )


def test_km_answer_in_either_form_is_pag_valid() -> None:
    for state, opts in [
        (spectrum_slot(8, 10, seed=2), PromptOptions()),
        (spectrum_slot(300, 300, seed=2), PromptOptions()),
        (mac_slot(30, 8, seed=2), PromptOptions(answer_form="allocation")),
        (mac_slot(6, 8, seed=4), PromptOptions()),
    ]:
        owner = km_owner(state)
        prompt = serialize_prompt(state, options=opts)
        result = check(state, answer_text(state, owner, prompt))
        assert result.valid, result.violations
        if prompt.answer_form == "owner":
            assert np.array_equal(result.dcm, owner)


def test_mac_prompt_has_sie_markers_and_history() -> None:
    state = mac_slot(6, 8, seed=1)
    history = record_decision(CellHistory.empty(), state, km_owner(state))
    nxt = mac_slot(6, 8, seed=2)
    nxt = make_slot(
        "mac",
        nxt.user_ids,
        nxt.resource_ids,
        spectral_efficiency=nxt.spectral_efficiency,
        buffer_bits=nxt.buffer_bits,
        slot=state.slot + 4,
    )
    text = serialize_prompt(nxt, history.view(nxt)).text
    assert "<Role>" in text and "<Target>" in text and "<Action candidate>" in text
    assert "<UE " in text and "stale " in text and "JFI" in text
    spectrum_text = serialize_prompt(spectrum_slot(5)).text
    assert "<Role>" not in spectrum_text


def test_endpoint_token_counts_bound_the_prompt() -> None:
    state = spectrum_slot(500, 500, seed=4)
    calls: list[int] = []

    def pessimistic(text: str) -> int:  # a tokenizer that needs more tokens than the estimate
        calls.append(1)
        return int(estimate_tokens(text) * 1.6)

    p = serialize_prompt(state, options=PromptOptions(budget_tokens=1500), count_tokens=pessimistic)
    assert p.token_source == "endpoint" and p.tokens <= 1500 and len(calls) <= 4
    assert p.tokens == pessimistic(p.text) + 32

    calls.clear()

    def optimistic(text: str) -> int:  # a real tokenizer: far fewer tokens than the estimate
        calls.append(1)
        return int(estimate_tokens(text) * 0.45)

    base = serialize_prompt(state, options=PromptOptions(budget_tokens=1500))
    p2 = serialize_prompt(state, options=PromptOptions(budget_tokens=1500), count_tokens=optimistic)
    assert p2.tokens <= 1500 and len(calls) <= 4
    assert len(p2.users) + len(p2.resources) > len(base.users) + len(base.resources)


def test_budget_too_small_for_fixed_blocks_raises() -> None:
    with pytest.raises(ValueError, match="budget"):
        serialize_prompt(spectrum_slot(10), options=PromptOptions(budget_tokens=100))


def test_same_state_same_key_and_text() -> None:
    a, b = serialize_prompt(spectrum_slot(20, seed=9)), serialize_prompt(spectrum_slot(20, seed=9))
    c = serialize_prompt(spectrum_slot(20, seed=10))
    assert a.key == b.key and a.text == b.text
    assert a.key != c.key


def test_grammar_encodes_the_pag() -> None:
    state = spectrum_slot(6, 5, busy_frac=0.4, seed=6)
    g = serialize_prompt(state).grammar
    root = next(ln for ln in g.splitlines() if ln.startswith("root ::="))
    cells = root.split('"[" ws ')[1].split(' ws "]"')[0].split(' "," ws ')
    assert cells == ['"null"' if not a else "item" for a in state.resource_available]
    item = next(ln for ln in g.splitlines() if ln.startswith("item ::="))
    assert sorted(item.split("::=")[1].replace('"', "").replace("|", " ").split()) == sorted(
        [*map(str, state.user_ids[state.user_eligible].tolist()), "null"]
    )
    g2 = serialize_prompt(spectrum_slot(300, seed=6)).grammar
    assert "pair ::=" in g2 and "{0," not in g2  # cap 1: exactly one resource per pair


def test_system_role_off_merges_messages() -> None:
    p = serialize_prompt(spectrum_slot(5), options=PromptOptions(system_role=False))
    assert [m["role"] for m in p.messages] == ["user"]
    assert p.messages[0]["content"].startswith("Objective:")


def test_estimate_is_conservative_on_digits() -> None:
    assert estimate_tokens("12345") == 5
    assert estimate_tokens("abc def") == 2
    assert estimate_tokens('{"owner":[1,null]}') >= 10
