"""Teacher policy against a fake OpenAI-compatible server on loopback: dialects, tokenizer,
fallbacks (down, timeout, HTTP error, garbage), repair of invalid answers, cache, concurrency,
recording."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from testkit import free_port

from service.config import TeacherSettings
from service.errors import DeadlineExceededError, TeacherUnavailableError
from service.history import CellHistory
from service.pag.checks import check, is_valid
from service.pipeline import decide
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet, make
from service.policies.teacher import Teacher, TeacherAnswerError, request_body
from service.rng import slot_rng
from service.serialize.answer import answer_text
from service.serialize.slot_codec import slot_from_dict
from service.types import SlotState, make_slot

from .fake_llm import FakeLLM


def small_slot(slot: int = 0) -> SlotState:
    rng = np.random.default_rng(slot)
    return make_slot(
        "spectrum",
        [11, 12, 13, 14],
        [1, 2, 3, 4, 5],
        bandwidth_hz=rng.uniform(1e6, 1e7, 5),
        resource_available=[True, False, True, True, True],
        rx_power_dbm=[-80, -95, -100, -90],
        fading_gain=rng.exponential(1.0, (4, 5)),
        slot=slot,
    )


def km_answer(state: SlotState) -> str:
    ctx = PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot))
    owner = np.asarray(make("km")(state, ctx), np.int64)
    ids = [None if k == 0 else int(state.user_ids[k - 1]) for k in owner.tolist()]
    return json.dumps({"owner": ids})


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    srv = FakeLLM()
    yield srv
    srv.close()


def ctx_for(state: SlotState, deadline_s: float | None = None) -> PolicyContext:
    dl = None if deadline_s is None else time.perf_counter() + deadline_s
    return PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot), dl)


def teacher(fake: FakeLLM, **kw) -> Teacher:
    return Teacher(TeacherSettings(url=fake.url, model="gemma-test", **kw))


def serve(state: SlotState, pol: Teacher, deadline_s: float | None = None, fallbacks=("greedy",)):
    policies = PolicySet()
    policies.put("teacher", pol)
    return decide(
        state, CellHistory.empty(), "teacher", policies=policies, fallbacks=fallbacks, deadline_s=deadline_s, seed=0
    )


def test_registered_blocking_and_versioned_by_model() -> None:
    pol = make("teacher", config=TeacherSettings(url="http://127.0.0.1:1/v1", model="qwen2.5-7b"))
    assert isinstance(pol, Teacher) and pol.name == "teacher"
    assert Teacher.blocking_io is True
    assert pol.version == "qwen2.5-7b" and pol.metadata()["dialect"] == "llamacpp"


def test_valid_answer_served_by_teacher(fake: FakeLLM) -> None:
    state = small_slot()
    fake.reply = lambda body: km_answer(state)
    d = serve(state, teacher(fake))
    assert d.policy == "teacher" and d.fallback is None and d.valid_before_repair
    assert d.policy_version == "gemma-test"
    assert json.loads(km_answer(state))["owner"] == [None if k == 0 else int(state.user_ids[k - 1]) for k in d.owner]
    body = fake.chats()[0]
    assert body["model"] == "gemma-test" and body["temperature"] == 0.0 and body["max_tokens"] == 1024
    assert body["response_format"]["type"] == "json_object"
    assert body["response_format"]["schema"]["properties"]["owner"]["maxItems"] == 5
    assert d.notes["teacher_answer_form"] == "owner" and d.notes["teacher_completion_tokens"] == 5


@pytest.mark.parametrize(
    "dialect", ["llamacpp", "llamacpp_grammar", "json_schema", "vllm", "vllm_legacy", "ollama", "plain"]
)
def test_dialects_send_the_pag_their_way(fake: FakeLLM, dialect: str) -> None:
    state = small_slot()
    fake.reply = lambda body: km_answer(state)
    pol = teacher(fake, dialect=dialect)
    d = serve(state, pol)
    assert d.policy == "teacher" and d.valid_before_repair
    path, body, _ = next(r for r in fake.requests if r[0] in ("/v1/chat/completions", "/api/chat"))
    prompt = pol.serialize(state, ctx_for(state))
    constraint_keys = {"response_format", "grammar", "structured_outputs", "guided_json", "format"}
    present = constraint_keys & set(body)
    if dialect == "llamacpp":
        assert body["response_format"] == {"type": "json_object", "schema": prompt.schema}
    elif dialect == "llamacpp_grammar":
        assert body["grammar"] == prompt.grammar and body["grammar"].startswith("root ::=")
    elif dialect == "json_schema":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == prompt.schema
    elif dialect == "vllm":
        assert body["structured_outputs"] == {"json": prompt.schema}
    elif dialect == "vllm_legacy":
        assert body["guided_json"] == prompt.schema
    elif dialect == "ollama":
        assert path == "/api/chat" and body["format"] == prompt.schema and body["stream"] is False
        assert body["options"]["num_predict"] == 1024
    else:
        assert not present
    if dialect != "plain":
        assert len(present) == 1
    assert request_body(pol.config, prompt)["messages"] == prompt.messages


@pytest.mark.parametrize("kind", ["llama_cpp_python", "llama_cpp", None])
def test_prompt_tokens_from_the_endpoint_tokenizer(fake: FakeLLM, kind: str | None) -> None:
    fake.tokenizer = kind
    state = small_slot()
    fake.reply = lambda body: km_answer(state)
    pol = teacher(fake)
    d1 = serve(state, pol)
    d2 = serve(small_slot(1), pol)
    source = "estimate" if kind is None else "endpoint"
    assert d1.notes["teacher_token_source"] == source and d2.notes["teacher_token_source"] == source
    probes = [p for p, _, _ in fake.requests if p in ("/extras/tokenize/count", "/tokenize")]
    if kind is None:
        assert len(probes) == 3  # probed once (all candidates), then the estimate without asking again
    else:
        assert all(p == ("/extras/tokenize/count" if kind == "llama_cpp_python" else "/tokenize") for p in probes[1:])


def test_endpoint_down_falls_back() -> None:
    state = small_slot()
    pol = Teacher(TeacherSettings(url=f"http://127.0.0.1:{free_port()}/v1"))  # nobody listens there
    with pytest.raises(TeacherUnavailableError):
        pol(state, ctx_for(state))
    d = serve(state, pol, deadline_s=2.0)
    assert d.policy == "greedy" and d.fallback_reason == "unavailable" and is_valid(state, d.owner)


def test_no_endpoint_configured_falls_back() -> None:
    state = small_slot()
    d = serve(state, Teacher(TeacherSettings(url=None)))
    assert d.policy == "greedy" and d.fallback_reason == "unavailable"
    assert "GNBSCHED_TEACHER_URL" in (d.fallback or "")


def test_slow_teacher_cut_by_the_deadline(fake: FakeLLM) -> None:
    state = small_slot()
    fake.reply = lambda body: km_answer(state)
    fake.delay_s = 3.0
    pol = teacher(fake, tokenizer="estimate")
    with pytest.raises(DeadlineExceededError):
        pol(state, ctx_for(state, deadline_s=0.3))
    d = serve(state, pol, deadline_s=0.3)
    assert d.policy == "greedy" and d.fallback_reason == "deadline" and is_valid(state, d.owner)


def test_timeout_without_deadline_is_unavailable(fake: FakeLLM) -> None:
    state = small_slot()
    fake.delay_s = 2.0
    pol = teacher(fake, tokenizer="estimate", timeout_s=0.3)
    with pytest.raises(TeacherUnavailableError, match="timed out"):
        pol(state, ctx_for(state))


def test_http_error_is_unavailable(fake: FakeLLM) -> None:
    state = small_slot()
    fake.status = 503
    d = serve(state, teacher(fake))
    assert d.policy == "greedy" and d.fallback_reason == "unavailable" and "HTTP 503" in (d.fallback or "")


def test_garbage_answer_falls_back_or_is_repaired(fake: FakeLLM) -> None:
    state = small_slot()
    fake.reply = lambda body: "I think user 11 should get channel 3."
    with pytest.raises(TeacherAnswerError):
        teacher(fake)(state, ctx_for(state))
    d = serve(state, teacher(fake))
    assert d.policy == "greedy" and d.fallback_reason == "error"
    d2 = serve(state, teacher(fake, fallback_on_unparsable=False))
    assert d2.policy == "teacher" and not d2.valid_before_repair
    assert d2.violations[0].kind == "unparsable" and is_valid(state, d2.owner)


def test_invalid_answer_is_checked_and_repaired(fake: FakeLLM) -> None:
    state = small_slot()
    # channel 2 is busy, user 99 does not exist, user 11 twice (cap 1)
    fake.reply = lambda body: '{"owner": [11, 12, 99, 11, null]}'
    d = serve(state, teacher(fake))
    assert d.policy == "teacher" and not d.valid_before_repair
    kinds = {v.kind for v in d.violations}
    assert {"busy_resource", "out_of_domain", "cap_exceeded"} <= kinds
    assert is_valid(state, d.owner)


def test_answer_is_data_never_code(fake: FakeLLM, tmp_path) -> None:
    state = small_slot()
    marker = tmp_path / "pwned"
    fake.reply = lambda body: f'__import__("pathlib").Path("{marker}").touch() or {{"owner": [11]}}'
    d = serve(state, teacher(fake, fallback_on_unparsable=False))
    assert not marker.exists()
    assert is_valid(state, d.owner)


def test_cache_keyed_by_serialized_state(fake: FakeLLM) -> None:
    state = small_slot()
    fake.reply = lambda body: km_answer(state)
    cached = teacher(fake, cache_size=8)
    a, b = serve(state, cached), serve(state, cached)
    assert len(fake.chats()) == 1 and np.array_equal(a.owner, b.owner) and b.notes["teacher_cache"] == "hit"
    serve(small_slot(5), cached)
    assert len(fake.chats()) == 2
    uncached = teacher(fake)
    serve(state, uncached)
    serve(state, uncached)
    assert len(fake.chats()) == 4


def test_the_cache_evicts_the_least_recently_used_answer(fake: FakeLLM) -> None:
    a, b, c = small_slot(1), small_slot(2), small_slot(3)
    fake.reply = lambda body: '{"owner": [0, 0, 0, 0, 0]}'
    cached = teacher(fake, cache_size=2)
    for state in (a, b, a, c):  # a is used again after b: c evicts b
        serve(state, cached)
    assert len(fake.chats()) == 3
    assert serve(a, cached).notes["teacher_cache"] == "hit"
    assert len(fake.chats()) == 3
    serve(b, cached)
    assert len(fake.chats()) == 4


def test_concurrency_limit(fake: FakeLLM) -> None:
    state = small_slot()
    fake.reply = lambda body: km_answer(state)
    fake.delay_s = 0.2
    pol = teacher(fake, max_concurrency=1, tokenizer="estimate")
    errors: list[Exception] = []

    def one() -> None:
        try:
            pol(state, ctx_for(state, deadline_s=10))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and fake.max_in_flight == 1 and len(fake.chats()) == 3
    # a slot that cannot get a connection before its deadline gives up instead of queueing
    blocker = threading.Thread(target=one)
    blocker.start()
    time.sleep(0.05)
    with pytest.raises(TeacherUnavailableError, match="in flight"):
        pol(state, ctx_for(state, deadline_s=0.1))
    blocker.join()


def test_recording_for_distillation(fake: FakeLLM, tmp_path) -> None:
    state = small_slot()
    fake.reply = lambda body: '{"owner": [11, null, 13, 14, 12]}'
    path = tmp_path / "rec" / "teacher.jsonl"
    pol = teacher(fake, record_path=str(path))
    serve(state, pol)
    serve(small_slot(1), pol)
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert len(lines) == 2
    rec = lines[0]
    restored = slot_from_dict(rec["state"])
    assert np.array_equal(restored.utility, state.utility) and rec["valid_before_repair"]
    assert rec["owner"] == [1, 0, 3, 4, 2] and rec["answer"] == '{"owner": [11, null, 13, 14, 12]}'
    assert rec["model"] == "gemma-test" and rec["messages"][-1]["role"] == "user"


def test_api_key_sent_as_bearer(fake: FakeLLM) -> None:
    state = small_slot()
    fake.reply = lambda body: km_answer(state)
    serve(state, teacher(fake, api_key="s3cret"))
    headers = next(h for p, _, h in fake.requests if p == "/v1/chat/completions")
    assert headers.get("Authorization") == "Bearer s3cret"
    assert "s3cret" not in json.dumps(teacher(fake, api_key="s3cret").metadata())


def test_config_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("GNBSCHED_TEACHER_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("GNBSCHED_TEACHER_DIALECT", "vllm")
    monkeypatch.setenv("GNBSCHED_TEACHER_MODEL", "Qwen/Qwen2.5-7B-Instruct")
    monkeypatch.setenv("GNBSCHED_TEACHER_BUDGET_TOKENS", "1024")
    pol = make("teacher")
    assert pol.config.dialect == "vllm" and pol.version == "Qwen/Qwen2.5-7B-Instruct"
    assert pol.config.chat_url() == "http://127.0.0.1:9/v1/chat/completions"
    assert pol.options.budget_tokens == 1024


def test_allocation_form_answer_for_large_slot(fake: FakeLLM) -> None:
    rng = np.random.default_rng(1)
    n = 300
    state = make_slot(
        "spectrum",
        np.arange(n),
        np.arange(n),
        rx_power_dbm=rng.uniform(-110, -80, n),
        fading_gain=rng.exponential(1.0, (n, n)),
    )
    pol = teacher(fake)
    prompt = pol.serialize(state, ctx_for(state))
    assert prompt.answer_form == "allocation"
    ctx = PolicyContext(CellHistory.empty().view(state), slot_rng(0, state.cell_id, state.slot))
    owner = np.asarray(make("km")(state, ctx), np.int64)
    fake.reply = lambda body: answer_text(state, owner, prompt)
    d = serve(state, pol)
    assert d.policy == "teacher" and d.valid_before_repair
    assert check(state, answer_text(state, owner, prompt)).valid


def test_valid_partial_answer_is_completed_greedily(fake: FakeLLM) -> None:
    """A valid answer naming one user (as at large N, where the prompt details a few users): the
    model's pair is kept, the other available resources go greedily to the other users, and the
    answer still counts as valid before repair. With the completion off they stay unused."""
    state = small_slot()
    fake.reply = lambda body: json.dumps({"owner": [11, None, None, None, None]})
    d = serve(state, teacher(fake))
    assert d.policy == "teacher" and d.fallback is None and d.valid_before_repair
    assert d.owner[0] == 1  # the model's own pair: user 11 on resource 1
    assert d.owner[1] == 0  # resource 2 is busy
    assert sorted(d.owner[2:].tolist()) == [2, 3, 4]  # every other user got a free resource
    assert d.notes["teacher_filled"] == 3
    assert is_valid(state, d.owner)
    d = serve(state, teacher(fake, fill_unused=False))
    assert d.valid_before_repair and d.owner.tolist() == [1, 0, 0, 0, 0] and "teacher_filled" not in d.notes


def test_invalid_answer_is_not_completed_but_repaired(fake: FakeLLM) -> None:
    state = small_slot()
    fake.reply = lambda body: json.dumps({"owner": [11, 12, None, None, None]})  # resource 2 is busy
    d = serve(state, teacher(fake))
    assert d.policy == "teacher" and not d.valid_before_repair and "teacher_filled" not in d.notes
    assert is_valid(state, d.owner)


def test_bench_reports_valid_before_repair_rate(fake: FakeLLM, monkeypatch, tmp_path, capsys) -> None:
    import argparse

    from service.bench import teacher as bench_teacher

    args = argparse.Namespace(
        preset="spectrum", out=str(tmp_path), quick=True, seed=0, slots=3, policies=None, forms="text"
    )
    monkeypatch.delenv("GNBSCHED_TEACHER_URL", raising=False)
    assert not bench_teacher.configured()
    assert bench_teacher.run(args) == 0 and "skipped" in capsys.readouterr().out

    monkeypatch.setenv("GNBSCHED_TEACHER_URL", fake.url)
    monkeypatch.setenv("GNBSCHED_TEACHER_TOKENIZER", "estimate")
    # an all-null DCM of the right length is PAG-valid on u5-c5-b1 (R = 5), wrong elsewhere
    fake.reply = lambda body: '{"owner": [null, null, null, null, null]}'
    assert bench_teacher.run(args) == 0
    rows = {r["scenario"]: r for r in json.loads((tmp_path / "teacher" / "results.json").read_text())["rows"]}
    assert rows["u5-c5-b1"]["answered"] == 3 and rows["u5-c5-b1"]["valid_before_repair_rate"] == 1.0
    assert rows["u15-c20-b4"]["valid_before_repair_rate"] == 0.0
    assert "valid before repair" in capsys.readouterr().out
    fake.status = 503
    assert bench_teacher.run(args) == 0
    rows = json.loads((tmp_path / "teacher" / "results.json").read_text())["rows"]
    assert all(r["failed"] == 3 and r["answered"] == 0 for r in rows)
    assert "unavailable: 3" in rows[0]["failures"]


def test_budget_too_small_falls_back_without_a_request(fake: FakeLLM) -> None:
    state = small_slot()
    d = serve(state, teacher(fake, budget_tokens=100, tokenizer="estimate"))
    assert d.policy == "greedy" and d.fallback_reason == "error" and "cannot serialize" in (d.fallback or "")
    assert fake.chats() == []
