"""What a serialized prompt is: its options, its result and the token estimate that sizes it.

``PromptOptions`` holds the knobs of ``service.serialize.prompt.serialize_prompt`` (defaults:
SPEC §5: a 2048-token budget, the LSA Pareto point); ``Prompt`` is the serialized slot (chat
messages, the answer's JSON schema and GBNF grammar, the detailed user and resource indices,
int64 [U'] / [R']). ``estimate_tokens`` is a conservative token count for BPE / SentencePiece
vocabularies: every digit and punctuation mark one token, a run of ASCII letters one per three
letters, a newline one, a non-ASCII character two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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
