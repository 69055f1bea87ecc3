"""Real-LLM integration: llama-cpp-python's OpenAI-compatible server with Gemma 3 270M, the
service over REST (real uvicorn) with policy ``teacher``; then the server is stopped and the
fallback chain serves within the deadline. The model is tiny: validity and paths, not quality."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from service.api.rest.app import create_app
from service.config import Settings, TeacherSettings
from service.core import ServiceCore
from service.history import CellHistory
from service.pag.checks import check, is_valid
from service.pipeline import decide
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet, names
from service.policies.teacher import Teacher
from service.rng import slot_rng
from service.serialize.prompt import serialize_prompt
from service.serialize.prompt_options import PromptOptions
from service.types import SlotState, make_slot

from .conftest import MODEL_ALIAS

USERS = [
    {"id": 11, "rx_power_dbm": -80.0},
    {"id": 12, "rx_power_dbm": -95.0},
    {"id": 13, "rx_power_dbm": -100.0},
    {"id": 14, "rx_power_dbm": -90.0},
]
RESOURCES = [
    {"id": 1, "bandwidth_hz": 5e6},
    {"id": 2, "bandwidth_hz": 2e6, "available": False},
    {"id": 3, "bandwidth_hz": 10e6},
    {"id": 4, "bandwidth_hz": 1e6},
    {"id": 5, "bandwidth_hz": 3e6},
]


def request(slot: int, deadline_ms: float) -> dict:
    return {
        "cell_id": "cell-llm",
        "slot": slot,
        "preset": "spectrum",
        "policy": "teacher",
        "deadline_ms": deadline_ms,
        "users": USERS,
        "resources": RESOURCES,
    }


def slot_state(slot: int) -> SlotState:
    return make_slot(
        "spectrum",
        [u["id"] for u in USERS],
        [r["id"] for r in RESOURCES],
        bandwidth_hz=[r["bandwidth_hz"] for r in RESOURCES],
        resource_available=[r.get("available", True) for r in RESOURCES],
        rx_power_dbm=[u["rx_power_dbm"] for u in USERS],
        cell_id="cell-llm",
        slot=slot,
    )


def owner_tokens(state: SlotState, owner_ids: list[int | None]) -> np.ndarray:
    index = {int(u): k + 1 for k, u in enumerate(state.user_ids)}
    return np.array([0 if u is None else index[u] for u in owner_ids], np.int64)


@pytest.mark.slow
def test_teacher_over_rest_with_real_llm_then_fallback(llama_server, uvicorn_server) -> None:
    llm = llama_server()
    # Gemma's chat format has no system role: the system block goes into the user turn
    teacher = Teacher(
        TeacherSettings(
            url=llm.url, model=MODEL_ALIAS, dialect="llamacpp", system_role=False, max_tokens=96, timeout_s=120.0
        )
    )
    fallbacks = ["student", "greedy"] if "student" in names() else ["greedy"]
    core = ServiceCore(
        Settings(fallbacks=fallbacks, grpc_port=0), policies=PolicySet(factories={"teacher": lambda: teacher})
    )
    rest = uvicorn_server(create_app(core))

    # 1. the real LLM answers under a PAG constraint (llama.cpp json_object + schema)
    r = httpx.post(rest.url + "/schedule", json=request(0, 60_000), timeout=90)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["policy"] == "teacher" and doc["fallback"] is None, doc
    assert doc["policy_version"] == MODEL_ALIAS
    assert doc["notes"]["teacher_token_source"] == "endpoint"  # llama-cpp-python's tokenizer counted the prompt
    assert doc["notes"]["teacher_prompt_tokens"] <= 2048
    assert "unparsable" not in {v["kind"] for v in doc["violations"]}
    state = slot_state(0)
    assert is_valid(state, owner_tokens(state, doc["owner"]))
    assert doc["owner"][1] is None  # channel 2 is busy

    # 2. the GBNF dialect on the same server, straight through the policy: parsable, checkable
    gbnf = Teacher(
        TeacherSettings(
            url=llm.url,
            model=MODEL_ALIAS,
            dialect="llamacpp_grammar",
            system_role=False,
            max_tokens=96,
            timeout_s=120.0,
        )
    )
    ctx = PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot))
    raw = gbnf(state, ctx)
    result = check(state, raw)
    assert "unparsable" not in {v.kind for v in result.violations}, raw

    # 3. the prompt of an ultra-dense slot fits the budget by the endpoint's own tokenizer
    rng = np.random.default_rng(0)
    n = 2000
    big = make_slot(
        "spectrum",
        np.arange(n),
        np.arange(n),
        rx_power_dbm=rng.uniform(-115, -85, n),
        fading_gain=rng.exponential(1.0, (n, n)),
        resource_available=rng.random(n) > 0.2,
    )
    prompt = teacher.serialize(big, PolicyContext(CellHistory.empty().view(big), slot_rng(0, big.cell_id, 0)))
    assert prompt.token_source == "endpoint" and prompt.tokens <= 2048 and prompt.answer_form == "allocation"

    # 4. the code form with the real model: its program runs in the sandbox and decides, or its
    # failure is a code_* fallback; either way the decision is valid
    coder = Teacher(
        TeacherSettings(
            url=llm.url,
            model=MODEL_ALIAS,
            answer_form="code",
            system_role=False,
            max_tokens=320,
            timeout_s=120.0,
        )
    )
    coded = PolicySet()
    coded.put("teacher", coder)
    try:
        d = decide(state, CellHistory.empty(), "teacher", policies=coded, fallbacks=("greedy",), seed=0)
    finally:
        coder.close()
    assert d.policy == "teacher" or d.fallback_reason in {"code_error", "code_timeout", "code_limit"}, d.fallback
    assert coder.stats["requests"] == 1 and is_valid(state, d.owner)

    # 5. the LLM goes away: the fallback chain serves, within the deadline
    llm.stop()
    t0 = time.perf_counter()
    r = httpx.post(rest.url + "/schedule", json=request(1, 5_000), timeout=30)
    elapsed_s = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["policy"] in fallbacks and doc["fallback_reason"] == "unavailable", doc
    assert doc["fallback"].startswith("teacher: unavailable")
    state = slot_state(1)
    assert is_valid(state, owner_tokens(state, doc["owner"]))
    assert elapsed_s < 5.0


def test_gbnf_grammars_compile_in_llama_cpp(gemma_gguf) -> None:
    """Every grammar the serializer emits is accepted by llama.cpp's GBNF parser (vocab only)."""
    import llama_cpp

    from .test_prompt import mac_slot, spectrum_slot

    model = llama_cpp.Llama(str(gemma_gguf), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(model.model)

    def compiles(grammar: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not sampler:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    assert not compiles("root ::= undefined-rule")  # the check can fail
    nobody = mac_slot(4, 8, seed=0)
    nobody = make_slot(
        "mac",
        nobody.user_ids,
        nobody.resource_ids,
        spectral_efficiency=nobody.spectral_efficiency,
        buffer_bits=np.zeros(4),
    )
    cases = [
        (spectrum_slot(5), "auto"),
        (spectrum_slot(300), "auto"),
        (mac_slot(30, 8), "allocation"),
        (mac_slot(30, 40, per_rbg=True), "allocation"),
        (mac_slot(6, 8), "owner"),
        (nobody, "owner"),
        (nobody, "allocation"),
    ]
    for state, form in cases:
        prompt = serialize_prompt(state, options=PromptOptions(answer_form=form))
        assert compiles(prompt.grammar), prompt.grammar
