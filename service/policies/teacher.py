"""LLM teacher: a remote model behind an OpenAI-compatible API (vLLM, llama.cpp, Ollama).

``serialize`` turns the slot into a hierarchical prompt under a token budget
(``service.serialize.prompt``, SPEC §5); ``act`` sends it as a chat completion with the PAG as
a decoding constraint in the endpoint's dialect and returns the answer *text*. The text is data:
the pipeline parses it as JSON (``service.pag.checks.parse_text``), checks it against the PAG
and repairs it; nothing in it is ever executed.

Failure modes, each mapped so that ``pipeline.decide`` falls back (``Settings.fallbacks``,
typically teacher → student → greedy):
  * endpoint down, refused, HTTP error, timeout, concurrency limit → ``TeacherUnavailableError``;
  * the slot's deadline cut the request → ``DeadlineExceededError``;
  * an answer without any JSON document (garbage, truncated) → ``TeacherAnswerError``
    (unless ``fallback_on_unparsable`` is off: then the garbage goes to check/repair).

Constraint dialects (``GNBSCHED_TEACHER_DIALECT``):
  * ``llamacpp``: ``response_format = {"type": "json_object", "schema": S}`` (llama.cpp server and
    llama-cpp-python; the latter rejects ``"type": "json_schema"``);
  * ``llamacpp_grammar``: ``grammar = <GBNF>`` (same servers);
  * ``json_schema``: ``response_format = {"type": "json_schema", "json_schema": {...}}`` (OpenAI,
    llama.cpp server, vLLM);
  * ``vllm``: ``structured_outputs = {"json": S}`` (vLLM >= 0.12);
  * ``vllm_legacy``: ``guided_json = S`` (vLLM < 0.12);
  * ``ollama``: Ollama's native ``/api/chat`` with ``format = S``;
  * ``plain``: no constraint (the prompt alone asks for the schema).

Partial answers (``GNBSCHED_TEACHER_FILL_UNUSED``, default on): at large N the prompt details
only the users that matter most (SPEC §5), and the model answers for those. A valid answer that
leaves available resources unused is completed by ``assign.greedy_fill`` (highest utility first,
under caps and, in mac, buffers) and returned as a DCM: repair never changes a valid output, so
without this the resources would stay idle. The validity of the model's own answer is kept (a
valid answer stays valid; an invalid one is returned as text, checked and repaired as before),
and ``notes["teacher_filled"]`` counts the resources the completion added.

The code form (``answer_form = "code"``, LSA's code-driven paradigm): the prompt
(``service.serialize.code_form``) asks for a program ``schedule(state) -> owner`` over the
cell's state object. The program runs only in ``service.sandbox`` (a confined process; a
machine where the sandbox cannot be set up refuses the form when the teacher is built). Its
output becomes an ``owner`` answer and goes through the same PAG check and repair as a text
answer. A failure is a fallback with its reason: ``code_error`` (no program in the answer, a
syntax error, an exception, a wrong output), ``code_timeout`` (CPU or wall limit, or the slot's
deadline), ``code_limit`` (memory or output size). Programs are kept ready, one sandbox each,
keyed by the prompt's sha256 (the prompt holds the cell id and its structure, never one slot's
numbers): a program decides the following slots of its cell until ``code_reuse_slots`` slots
have passed since it was written, the cell's structure (N, R, cap) changes, the cell's slot
numbering starts again, or it fails once; then the teacher is asked again.
``notes["teacher_program"]`` says ``written`` or ``reused``.
"""

from __future__ import annotations

import functools
import json
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
from cachetools import LRUCache

from service.assign import greedy_fill
from service.config import Settings, TeacherSettings
from service.errors import (
    DeadlineExceededError,
    ErrorKind,
    PolicyError,
    TeacherCodeError,
    TeacherUnavailableError,
)
from service.pag.checks import UNPARSABLE, CheckResult, check
from service.pag.repair import repair
from service.policies.base import Policy, PolicyContext
from service.policies.registry import register
from service.serialize.code_form import ProgramNotFound, code_prompt, extract_program, owner_answer, program_state
from service.serialize.prompt import serialize_prompt
from service.serialize.prompt_options import Prompt
from service.serialize.slot_codec import slot_to_dict
from service.types import SlotState


class TeacherAnswerError(PolicyError):
    """The teacher answered, but with no JSON document in the text (garbage or truncated)."""


def request_body(cfg: TeacherSettings, prompt: Prompt, seed: int | None = None) -> dict[str, Any]:
    """The JSON body of one chat request in ``cfg.dialect`` (pure; exposed for tests). The code
    form asks for a program: no JSON constraint is sent."""
    constrained = prompt.answer_form != "code"
    if cfg.dialect == "ollama":
        options: dict[str, Any] = {"temperature": cfg.temperature, "num_predict": cfg.max_tokens}
        if seed is not None:
            options["seed"] = seed
        out = {"model": cfg.model, "messages": prompt.messages, "stream": False, "options": options}
        if constrained:
            out["format"] = prompt.schema
        return out
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": prompt.messages,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "stream": False,
    }
    if seed is not None:
        body["seed"] = seed
    d = cfg.dialect if constrained else "plain"
    if d == "llamacpp":
        body["response_format"] = {"type": "json_object", "schema": prompt.schema}
    elif d == "llamacpp_grammar":
        body["grammar"] = prompt.grammar
    elif d == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "dcm", "schema": prompt.schema, "strict": True},
        }
    elif d == "vllm":
        body["structured_outputs"] = {"json": prompt.schema}
    elif d == "vllm_legacy":
        body["guided_json"] = prompt.schema
    return body


def answer_of(cfg: TeacherSettings, payload: Any) -> tuple[str, dict[str, Any]]:
    """(answer text, usage) from a response payload of ``cfg.dialect``; raises TeacherAnswerError."""
    try:
        if cfg.dialect == "ollama":
            text = payload["message"]["content"]
            usage = {"prompt_tokens": payload.get("prompt_eval_count"), "completion_tokens": payload.get("eval_count")}
        else:
            choice = payload["choices"][0]
            text = choice["message"]["content"]
            usage = dict(payload.get("usage") or {})
            usage["finish_reason"] = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError) as exc:
        raise TeacherAnswerError(f"teacher response has no answer text ({type(exc).__name__}: {exc})") from None
    if not isinstance(text, str):
        raise TeacherAnswerError(f"teacher answer is {type(text).__name__}, not text")
    return text, usage


_CODE_KIND = {
    "code_error": ErrorKind.CODE_ERROR,
    "code_timeout": ErrorKind.CODE_TIMEOUT,
    "code_limit": ErrorKind.CODE_LIMIT,
}


class _Ready:
    """A program kept ready: its sandboxed worker, the slot it was written for, a lock for its calls."""

    __slots__ = ("first_slot", "lock", "program")

    def __init__(self, program: Any, first_slot: int) -> None:
        self.program = program
        self.first_slot = first_slot
        self.lock = threading.Lock()


class _Programs(LRUCache[str, _Ready]):
    """Programs kept ready, least recently used evicted; an evicted program's sandbox is closed."""

    def popitem(self) -> tuple[str, _Ready]:
        key, ready = super().popitem()
        ready.program.close()
        return key, ready


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process (loading the CA bundle costs ~100 ms per client otherwise)."""
    return httpx.create_ssl_context()


@register("teacher")
class Teacher(Policy):
    """LLM teacher over an OpenAI-compatible endpoint (module doc). Thread-safe; blocking I/O."""

    name = "teacher"
    #: act() does network I/O: transports run it in a worker thread
    blocking_io: ClassVar[bool] = True

    def __init__(
        self, config: TeacherSettings | None = None, *, transport: httpx.BaseTransport | None = None, **overrides: Any
    ) -> None:
        cfg = config or Settings().teacher
        self.config = cfg.model_copy(update=overrides) if overrides else cfg
        if self.config.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.version = self.config.model
        self.options = self.config.prompt_options()
        self._transport = transport
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.config.max_concurrency)
        self._cache: LRUCache[str, str] = LRUCache(maxsize=max(self.config.cache_size, 0))  # used when > 0
        self._cache_lock = threading.Lock()
        self._record_lock = threading.Lock()
        self._tokenize: tuple[str, str] | bool | None = False  # False = not probed, None = none offered
        self._scale = 1.0  # calibration: endpoint tokens / estimated tokens (EWMA)
        self.stats = {"requests": 0, "cache_hits": 0, "errors": 0, "programs_written": 0, "program_calls": 0}
        self._sandbox: Any = None
        self._programs = _Programs(maxsize=self.config.code_cache_size)
        self._programs_lock = threading.Lock()
        #: code form: the prompt of each (cell, preset, N, R, cap) seen lately
        self._code_prompts: LRUCache[tuple[str, str, int, int, int], Prompt] = LRUCache(
            maxsize=4 * self.config.code_cache_size
        )
        if self.config.answer_form == "code":
            from service.sandbox import Sandbox, SandboxLimits

            Sandbox.check()  # SandboxUnavailable: the code form is refused here, never run unconfined
            self._sandbox = Sandbox(
                SandboxLimits(
                    cpu_s=self.config.code_cpu_s,
                    wall_s=self.config.code_wall_s,
                    memory_bytes=self.config.code_memory_bytes,
                    output_bytes=self.config.code_output_bytes,
                )
            )

    # -- plumbing -----------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                headers = {}
                if self.config.api_key is not None:
                    headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
                n = self.config.max_concurrency
                self._client = httpx.Client(
                    headers=headers,
                    transport=self._transport,
                    verify=_ssl_context(),
                    limits=httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1),
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        with self._programs_lock:
            for ready in self._programs.values():
                ready.program.close()
            self._programs.clear()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            endpoint=self.config.url,
            dialect=self.config.dialect,
            model=self.config.model,
            budget_tokens=self.config.budget_tokens,
        )
        return meta

    def _timeout(self, ctx: PolicyContext | None) -> tuple[float, bool]:
        """(seconds, bound_by_deadline) for the next request."""
        left = ctx.time_left_s() if ctx is not None else float("inf")
        t = min(self.config.timeout_s, left)
        if t <= 0:
            raise DeadlineExceededError("teacher: no time left before the slot's deadline")
        return t, left < self.config.timeout_s

    # -- tokenizer ----------------------------------------------------------------------
    def _token_counter(self, ctx: PolicyContext | None) -> Callable[[str], int] | None:
        """A callable counting tokens with the endpoint's tokenizer, or None (estimate)."""
        cfg = self.config
        if cfg.tokenizer == "estimate" or not cfg.url or cfg.dialect in ("ollama", "plain"):
            return None
        if self._tokenize is None:
            return None
        root = cfg.api_root()

        def post(path: str, body: dict[str, Any]) -> Any:
            t, _ = self._timeout(ctx)
            r = self._http().post(
                root + path, json=body, timeout=httpx.Timeout(t, connect=min(cfg.connect_timeout_s, t))
            )
            r.raise_for_status()
            return r.json()

        def llama_cpp_python(text: str) -> int:
            return int(post("/extras/tokenize/count", {"input": text, "model": cfg.model})["count"])

        def llama_cpp(text: str) -> int:
            return len(post("/tokenize", {"content": text})["tokens"])

        def vllm(text: str) -> int:
            return int(post("/tokenize", {"model": cfg.model, "prompt": text, "add_special_tokens": True})["count"])

        kinds = {"llama_cpp_python": llama_cpp_python, "llama_cpp": llama_cpp, "vllm": vllm}
        if isinstance(self._tokenize, tuple):
            return kinds[self._tokenize[0]]
        candidates = ["vllm"] if cfg.dialect.startswith("vllm") else ["llama_cpp_python", "llama_cpp", "vllm"]
        for kind in candidates:
            try:
                kinds[kind]("probe")
            except httpx.HTTPStatusError:
                continue
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                return None  # endpoint down or odd: estimate this time, probe again next slot
            self._tokenize = (kind, root)
            return kinds[kind]
        self._tokenize = None
        return None

    # -- policy -------------------------------------------------------------------------
    def serialize(self, state: SlotState, ctx: PolicyContext) -> Prompt:
        if self.config.answer_form == "code":
            return self._code_prompt(state)
        count = self._token_counter(ctx)

        def safe_count(text: str) -> int:
            assert count is not None
            try:
                return count(text)
            except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
                raise _TokenizerFailed from exc

        try:
            try:
                prompt = serialize_prompt(
                    state, ctx.history, self.options, count_tokens=safe_count if count else None, scale=self._scale
                )
            except _TokenizerFailed:
                prompt = serialize_prompt(state, ctx.history, self.options, scale=1.0)
        except ValueError as exc:  # the budget cannot hold the fixed blocks
            raise PolicyError(f"teacher: cannot serialize the slot: {exc}") from exc
        if prompt.token_source == "endpoint" and prompt.estimated_tokens > 0:
            ratio = prompt.tokens / prompt.estimated_tokens
            self._scale = min(1.0, 0.8 * self._scale + 0.2 * ratio)
        return prompt

    def act(self, state: SlotState, ctx: PolicyContext, obs: Any) -> str | np.ndarray:
        cfg = self.config
        if not cfg.url:
            raise TeacherUnavailableError("teacher: no endpoint configured (set GNBSCHED_TEACHER_URL)")
        prompt: Prompt = obs if isinstance(obs, Prompt) else self.serialize(state, ctx)
        ctx.info.update(
            teacher_prompt_tokens=prompt.tokens,
            teacher_token_source=prompt.token_source,
            teacher_answer_form=prompt.answer_form,
        )
        if prompt.answer_form == "code":
            return self._run_program(state, ctx, prompt)
        if cfg.cache_size > 0:
            with self._cache_lock:
                hit = self._cache.get(prompt.key)  # a hit counts as a use
                if hit is not None:
                    self.stats["cache_hits"] += 1
            if hit is not None:
                ctx.info["teacher_cache"] = "hit"
                return self._fill(state, hit, check(state, hit), ctx) if cfg.fill_unused else hit
        text = self._complete(prompt, ctx)
        # one parse of the answer serves the unparsable test and the completion
        result = check(state, text) if cfg.fallback_on_unparsable or cfg.fill_unused else None
        if (
            cfg.fallback_on_unparsable
            and result is not None
            and result.violations
            and result.violations[0].kind == UNPARSABLE
        ):
            raise TeacherAnswerError(f"teacher answer is not JSON ({result.violations[0].message}): {text[:120]!r}")
        if cfg.cache_size > 0:
            with self._cache_lock:
                self._cache[prompt.key] = text  # evicts the least recently used answer when full
        if cfg.record_path:
            self._record(state, prompt, text)
        return self._fill(state, text, result, ctx) if result is not None and cfg.fill_unused else text

    def _code_prompt(self, state: SlotState) -> Prompt:
        """The code form's prompt of ``state``'s cell. It depends on the cell's structure only, so it
        is built once per (cell, structure) and kept (``code_prompt`` costs ~150 µs a slot)."""
        cap = min(state.max_resources_per_user, state.num_res)
        shape = (state.cell_id, state.preset, state.num_ue, state.num_res, cap)
        with self._programs_lock:
            prompt = self._code_prompts.get(shape)
        if prompt is None:
            messages, key, tokens = code_prompt(state, self.options)
            empty = np.zeros(0, np.int64)
            budget = self.options.budget_tokens
            prompt = Prompt(messages, {}, "", "code", tokens, "estimate", tokens, budget, empty, empty, False, key)
            with self._programs_lock:
                self._code_prompts[shape] = prompt
        return prompt

    def _run_program(self, state: SlotState, ctx: PolicyContext, prompt: Prompt) -> str:
        """The code form (module doc): the cell's program, written now or reused, run on this slot;
        its output as an ``owner`` answer. ``TeacherCodeError`` with the failure's kind."""
        from service.sandbox import CodeFailure

        cfg = self.config
        with self._programs_lock:
            ready = self._programs.get(prompt.key)
            if ready is not None and not 0 <= state.slot - ready.first_slot < cfg.code_reuse_slots:
                self._programs.pop(prompt.key, None)
                ready.program.close()
                ready = None
        if ready is None:
            text = self._complete(prompt, ctx)
            try:
                code = extract_program(text)
            except ProgramNotFound as exc:
                raise TeacherCodeError(ErrorKind.CODE_ERROR, f"teacher: {exc}: {text[:120]!r}") from None
            try:
                program = self._sandbox.compile(code)
            except CodeFailure as exc:
                raise TeacherCodeError(_CODE_KIND[exc.reason], f"teacher program: {exc.reason}: {exc.detail}") from None
            ready = _Ready(program, state.slot)
            with self._programs_lock:
                old = self._programs.pop(prompt.key, None)
                if old is not None:
                    old.program.close()
                self._programs[prompt.key] = ready
            self.stats["programs_written"] += 1
            ctx.info["teacher_program"] = "written"
            if cfg.record_path:
                self._record_program(state, prompt, text)
        else:
            ctx.info["teacher_program"] = "reused"
        ctx.info["teacher_program_digest"] = ready.program.digest[:16]
        left = ctx.time_left_s()
        if left <= 0:
            raise DeadlineExceededError("teacher: no time left before the slot's deadline to run the program")
        try:
            with ready.lock:
                self.stats["program_calls"] += 1
                owner_ids = ready.program(program_state(state, ctx.history), state.num_res, min(cfg.code_wall_s, left))
        except CodeFailure as exc:
            with self._programs_lock:
                if self._programs.get(prompt.key) is ready:
                    self._programs.pop(prompt.key, None)
            ready.program.close()
            bound = "the slot's deadline" if left < cfg.code_wall_s else "code_wall_s"
            if exc.reason == "code_timeout":
                exc.detail = f"{exc.detail} (bound: {bound}, {min(cfg.code_wall_s, left) * 1e3:.0f} ms)"
            raise TeacherCodeError(_CODE_KIND[exc.reason], f"teacher program: {exc.reason}: {exc.detail}") from None
        return owner_answer(owner_ids)

    def _record_program(self, state: SlotState, prompt: Prompt, text: str) -> None:
        """Append the teacher's program for ``state``'s cell (one JSONL line, ``record_path``)."""
        line = {
            "kind": "teacher_program",
            "model": self.config.model,
            "time": time.time(),
            "state": slot_to_dict(state),
            "messages": prompt.messages,
            "answer_form": "code",
            "answer": text,
        }
        self._append(line)

    @staticmethod
    def _fill(state: SlotState, text: str, result: CheckResult, ctx: PolicyContext) -> str | np.ndarray:
        """A PAG-valid answer (``text``, checked as ``result``) as its DCM, completed on the resources
        it leaves unused (module doc); any other answer as the text itself, for the pipeline to
        check and repair."""
        if not result.valid or result.dcm is None:
            return text
        owner = greedy_fill(state, state.utility, result.dcm)
        added = int(np.count_nonzero(owner != result.dcm))
        if added:
            ctx.info["teacher_filled"] = added
        return owner

    def _complete(self, prompt: Prompt, ctx: PolicyContext) -> str:
        cfg = self.config
        t, by_deadline = self._timeout(ctx)
        t0 = time.perf_counter()
        if not self._slots.acquire(timeout=t):
            raise TeacherUnavailableError(f"teacher: {cfg.max_concurrency} requests already in flight")
        try:
            t, by_deadline = self._timeout(ctx)
            body = request_body(cfg, prompt, seed=int(ctx.rng.integers(2**31)))
            self.stats["requests"] += 1
            try:
                resp = self._http().post(
                    cfg.chat_url(), json=body, timeout=httpx.Timeout(t, connect=min(cfg.connect_timeout_s, t))
                )
            except httpx.TimeoutException as exc:
                self.stats["errors"] += 1
                if by_deadline:
                    raise DeadlineExceededError(
                        f"teacher: no answer within the slot's deadline ({t * 1e3:.0f} ms)"
                    ) from exc
                raise TeacherUnavailableError(f"teacher: timed out after {t:.1f} s ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                self.stats["errors"] += 1
                raise TeacherUnavailableError(
                    f"teacher: {cfg.chat_url()} unreachable ({type(exc).__name__}: {exc})"
                ) from exc
        finally:
            self._slots.release()
        if resp.status_code != 200:
            self.stats["errors"] += 1
            raise TeacherUnavailableError(f"teacher: HTTP {resp.status_code} from {cfg.chat_url()}: {resp.text[:300]}")
        try:
            payload = resp.json()
        except ValueError:
            raise TeacherAnswerError(f"teacher response is not JSON: {resp.text[:120]!r}") from None
        text, usage = answer_of(cfg, payload)
        ctx.info["teacher_latency_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        for k in ("prompt_tokens", "completion_tokens", "finish_reason"):
            if usage.get(k) is not None:
                ctx.info[f"teacher_{k}"] = usage[k]
        return text

    def _record(self, state: SlotState, prompt: Prompt, text: str) -> None:
        """Append one (state, teacher decision) line for distillation (``service.serialize.slot_codec``)."""
        result = check(state, text)
        owner = repair(state, result)
        line = {
            "kind": "teacher",
            "model": self.config.model,
            "time": time.time(),
            "state": slot_to_dict(state),
            "messages": prompt.messages,
            "answer_form": prompt.answer_form,
            "answer": text,
            "valid_before_repair": result.valid,
            "violations": [v.kind for v in result.violations],
            "owner": np.asarray(owner, np.int64).tolist(),
        }
        self._append(line)

    def _append(self, line: dict[str, Any]) -> None:
        data = json.dumps(line, separators=(",", ":")) + "\n"
        path = Path(self.config.record_path or "")
        with self._record_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(data)


class _TokenizerFailed(Exception):
    """The endpoint's tokenizer failed mid-serialization: fall back to the estimate."""
