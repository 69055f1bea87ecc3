"""The teacher's code answer form: the prompt, the program taken out of the answer, the program run
in the sandbox on every slot, reused within its window, and every failure a fallback with its
reason (fake OpenAI-compatible server on loopback; the real sandbox)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest

from service.config import TeacherSettings
from service.history import CellHistory, record_decision
from service.metrics import Metrics
from service.pag.checks import check, is_valid
from service.pipeline import decide
from service.policies.registry import PolicySet
from service.policies.teacher import Teacher, request_body
from service.sandbox import Sandbox
from service.serialize.code_form import (
    ProgramNotFound,
    code_prompt,
    extract_program,
    owner_answer,
    program_state,
)
from service.types import SlotState, make_slot

from .fake_llm import FakeLLM

#: a correct program: each available resource to the eligible user with the highest
#: utility / (1 + avg_served) (proportional fair), at most max_per_user each
PF_PROGRAM = """\
import numpy as np

def schedule(state):
    owner = [-1] * state.num_res
    held = {}
    score = state.utility / (1.0 + state.avg_served[:, None])
    for r in range(state.num_res):
        if not state.available[r]:
            continue
        for u in np.argsort(-score[:, r], kind="stable"):
            uid = int(state.user_ids[u])
            if state.eligible[u] and held.get(uid, 0) < state.max_per_user:
                owner[r] = uid
                held[uid] = held.get(uid, 0) + 1
                break
    return owner
"""


def fenced(code: str) -> str:
    return "Here is the scheduler:\n```python\n" + code + "```\nIt is proportional fair."


def mac_slot(slot: int = 0, num_ue: int = 6, num_res: int = 8, cell: str = "c1") -> SlotState:
    rng = np.random.default_rng(slot)
    return make_slot(
        "mac",
        list(range(1, num_ue + 1)),
        list(range(num_res)),
        bandwidth_hz=np.full(num_res, 1.44e6),
        rate_bps=rng.uniform(1e6, 2e7, (num_ue, num_res)),
        buffer_bits=rng.uniform(1e3, 1e5, num_ue),
        resource_available=np.arange(num_res) != 3,
        cell_id=cell,
        slot=slot,
    )


@pytest.fixture(scope="module", autouse=True)
def _sandbox_here() -> None:
    Sandbox.check()  # the suite installs bubblewrap: a machine without a sandbox fails here, loudly


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    srv = FakeLLM()
    yield srv
    srv.close()


def code_teacher(fake: FakeLLM, **kw: object) -> Teacher:
    return Teacher(TeacherSettings(url=fake.url, model="coder", answer_form="code", tokenizer="estimate", **kw))


def serve(state: SlotState, pol: Teacher, history: CellHistory | None = None, deadline_s: float | None = None):
    policies = PolicySet()
    policies.put("teacher", pol)
    return decide(
        state,
        history or CellHistory.empty(),
        "teacher",
        policies=policies,
        fallbacks=("greedy",),
        deadline_s=deadline_s,
        seed=0,
    )


# -- pure parts ---------------------------------------------------------------------------


def test_prompt_depends_on_the_cell_structure_not_on_the_slot() -> None:
    a, key_a, tokens = code_prompt(mac_slot(0))
    _, key_b, _ = code_prompt(mac_slot(7))  # other numbers, same structure
    _, key_n, _ = code_prompt(mac_slot(0, num_ue=7))
    _, key_c, _ = code_prompt(mac_slot(0, cell="c2"))
    assert key_a == key_b and len({key_a, key_n, key_c}) == 3
    text = "\n".join(m["content"] for m in a)
    assert "def schedule(state)" in text and "```python" in text and tokens > 100
    for name in ("utility", "available", "eligible", "buffer_bits", "avg_served", "max_per_user"):
        assert name in text


def test_extract_program_takes_the_fenced_function_or_bare_code() -> None:
    assert extract_program(fenced(PF_PROGRAM)) == PF_PROGRAM
    assert extract_program(PF_PROGRAM) == PF_PROGRAM
    other = "```python\nx = 1\n```\n```py\ndef schedule(s):\n    return []\n```"
    assert extract_program(other).startswith("def schedule(s)")
    with pytest.raises(ProgramNotFound):
        extract_program('{"owner": [1, 2]}')


def test_program_state_and_owner_answer() -> None:
    state = mac_slot(5)
    owner = np.array([1, 2, 0, 0, 3, 0, 0, 1])
    history = record_decision(CellHistory.empty(), state, owner)
    view = history.view(mac_slot(6))
    obj = program_state(mac_slot(6), view)
    assert obj["utility"].shape == (6, 8) and obj["available"].dtype == np.bool_
    assert obj["slots_since_served"].tolist() == [1, 1, 1, -1, -1, -1]
    assert owner_answer(np.array([3, -1, 2])) == '{"owner":[3,null,2]}'
    assert not check(mac_slot(0), owner_answer(np.full(8, -5))).valid  # not -1: a violation, not "unused"


def test_code_requests_carry_no_json_constraint(fake: FakeLLM) -> None:
    pol = code_teacher(fake)
    prompt = pol.serialize(mac_slot(0), None)  # type: ignore[arg-type]
    for dialect in ("llamacpp", "json_schema", "vllm", "ollama"):
        body = request_body(pol.config.model_copy(update={"dialect": dialect}), prompt)
        assert not {"response_format", "grammar", "structured_outputs", "guided_json", "format"} & set(body)
    pol.close()


# -- served through the sandbox -----------------------------------------------------------


def test_a_program_decides_slots_and_is_reused_within_its_window(fake: FakeLLM) -> None:
    fake.reply = lambda body: fenced(PF_PROGRAM)
    pol = code_teacher(fake, code_reuse_slots=4)
    metrics = Metrics()
    history = CellHistory.empty()
    events = []
    try:
        for slot in range(6):
            state = mac_slot(slot)
            d = serve(state, pol, history)
            metrics.decision("test", state, "teacher", d)
            assert d.policy == "teacher" and d.fallback is None and d.valid_before_repair, d
            assert is_valid(state, d.owner)
            events.append(d.notes["teacher_program"])
            history = record_decision(history, state, d.owner)
    finally:
        pol.close()
    assert events == ["written", "reused", "reused", "reused", "written", "reused"]
    assert len([r for r in fake.requests if r[0].endswith("/chat/completions")]) == 2
    scrape = metrics.exposition()[0].decode()
    assert re.search(r'gnbsched_teacher_programs_total\{event="reused"\} 4\.0', scrape)


def test_a_new_structure_asks_for_a_new_program(fake: FakeLLM) -> None:
    fake.reply = lambda body: fenced(PF_PROGRAM)
    pol = code_teacher(fake)
    try:
        assert serve(mac_slot(0), pol).notes["teacher_program"] == "written"
        assert serve(mac_slot(1, num_ue=9), pol).notes["teacher_program"] == "written"
        assert serve(mac_slot(2), pol).notes["teacher_program"] == "reused"
    finally:
        pol.close()


BROKEN = {
    "code_error": [
        "I cannot write code today.",
        "```python\ndef schedule(state)\n    return []\n```",  # syntax error
        "```python\ndef schedule(state):\n    return [1, 2]\n```",  # wrong length
        "```python\ndef schedule(state):\n    raise RuntimeError('boom')\n```",
        "```python\nimport os\ndef schedule(state):\n    return [-1] * state.num_res\n```",
    ],
    "code_timeout": ["```python\ndef schedule(state):\n    while True:\n        pass\n```"],
    "code_limit": [
        "```python\ndef schedule(state):\n    x = bytearray(4 * 2**30)\n    return [-1] * state.num_res\n```",
        "```python\ndef schedule(state):\n    return ['x' * 50_000_000] * state.num_res\n```",
    ],
}


@pytest.mark.parametrize(
    ("reason", "answer"), [(reason, a) for reason, answers in BROKEN.items() for a in answers], ids=lambda v: v[:24]
)
def test_a_failing_program_is_a_fallback_with_its_reason(fake: FakeLLM, reason: str, answer: str) -> None:
    fake.reply = lambda body: answer
    pol = code_teacher(fake, code_wall_s=0.5)
    metrics = Metrics()
    try:
        state = mac_slot(0)
        d = serve(state, pol)
        metrics.decision("test", state, "teacher", d)
        assert d.policy == "greedy" and d.fallback_reason == reason, (d.fallback, d.fallback_reason)
        assert is_valid(state, d.owner)
        scrape = metrics.exposition()[0].decode()
        assert f'reason="{reason}"' in scrape
        # a failed program is dropped: the next slot asks the teacher again
        fake.reply = lambda body: fenced(PF_PROGRAM)
        d2 = serve(mac_slot(1), pol)
        assert d2.policy == "teacher" and d2.notes["teacher_program"] == "written"
    finally:
        pol.close()


def test_the_slot_deadline_bounds_the_program(fake: FakeLLM) -> None:
    fake.reply = lambda body: fenced("import math\ndef schedule(state):\n    while True:\n        math.sqrt(2.0)\n")
    pol = code_teacher(fake, code_wall_s=5.0)
    try:
        d = serve(mac_slot(0), pol, deadline_s=1.5)
        assert d.policy == "greedy" and d.fallback_reason in {"code_timeout", "deadline"}, d.fallback
        assert d.timings_us["total"] < 3.0e6  # cut near the deadline, not at code_wall_s
    finally:
        pol.close()


# -- escapes through a real service --------------------------------------------------------

ESCAPES = {
    "open a host file": ("code_error", "def schedule(state):\n    return open('/etc/passwd').read()\n"),
    "socket": (
        "code_error",
        "import socket\ndef schedule(state):\n    socket.create_connection(('127.0.0.1', 6379))\n",
    ),
    "subprocess": ("code_error", "import subprocess\ndef schedule(state):\n    subprocess.run(['id'])\n"),
    "environment": ("code_error", "import os\ndef schedule(state):\n    return [os.environ['SECRET']]\n"),
    "forbidden import": ("code_error", "import ctypes\ndef schedule(state):\n    return [-1] * state.num_res\n"),
    "class walk": (
        "code_error",
        "def schedule(state):\n    s = ().__class__.__base__.__subclasses__()\n    return [-1] * state.num_res\n",
    ),
    "unbounded memory": ("code_limit", "def schedule(state):\n    x = [0] * (2**34)\n    return x\n"),
    "endless loop": ("code_timeout", "def schedule(state):\n    while True:\n        pass\n"),
    "huge output": (
        "code_limit",
        "def schedule(state):\n    print('x' * 100_000_000)\n    return [-1] * state.num_res\n",
    ),
}


def test_escaping_programs_are_stopped_counted_and_the_service_keeps_serving(serve_process, fake: FakeLLM) -> None:
    """A real ``gnbsched serve`` with the code form: each hostile program is stopped with its
    reason, the slot is served by the fallback, the metric counts it, and a correct program then
    serves the cell."""
    import httpx

    from service.trace import rest_request

    answers = iter([fenced(code) for _, code in ESCAPES.values()] + [fenced(PF_PROGRAM)])
    fake.reply = lambda body: next(answers)
    env = {
        "GNBSCHED_TEACHER_URL": fake.url,
        "GNBSCHED_TEACHER_ANSWER_FORM": "code",
        "GNBSCHED_TEACHER_TOKENIZER": "estimate",
        "GNBSCHED_TEACHER_CODE_WALL_S": "0.5",
        "SECRET": "do-not-leak",
    }
    svc = serve_process("--fallbacks", "greedy", env=env).wait_ready()
    assert "teacher programs run in the sandbox" in svc.output()

    def post(slot: int) -> dict:
        doc = rest_request(mac_slot(slot, cell="escape"), policy="teacher")
        r = httpx.post(svc.url + "/schedule", json=doc, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    for slot, (name, (reason, _)) in enumerate(ESCAPES.items()):
        doc = post(slot)
        assert doc["policy"] == "greedy" and doc["fallback_reason"] == reason, (name, doc["fallback"])
        assert "do-not-leak" not in (doc["fallback"] or "")
    doc = post(len(ESCAPES))
    assert doc["policy"] == "teacher" and doc["notes"]["teacher_program"] == "written", doc
    assert post(len(ESCAPES) + 1)["notes"]["teacher_program"] == "reused"
    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    for reason in ("code_error", "code_timeout", "code_limit"):
        expected = sum(r == reason for r, _ in ESCAPES.values())
        line = next(x for x in metrics.splitlines() if x.startswith("gnbsched_fallbacks_total{") and reason in x)
        assert float(line.rsplit(" ", 1)[1]) == expected, line
    assert httpx.get(svc.url + "/healthz", timeout=5).status_code == 200
