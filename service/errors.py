"""Errors, their kinds, and the one table that maps a kind to an HTTP status and a gRPC code.

Kernels and policies raise these; every error carries a ``kind`` (``ErrorKind``). The
transports never look at exception classes: they answer ``HTTP_STATUS[kind]`` (REST) or
``GRPC_CODE[kind]`` (gRPC, a ``grpc.StatusCode`` name, so this module does not import grpc),
and the pipeline labels a fallback with ``kind.fallback_reason``.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Why a request or a policy failed. The value is the ``error`` field of a REST rejection."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    LIMIT_EXCEEDED = "limit_exceeded"
    BODY_TOO_LARGE = "body_too_large"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_POLICY = "unknown_policy"
    DEADLINE = "deadline"
    UNAVAILABLE = "unavailable"
    MODEL_INVALID = "model_invalid"
    TOO_LARGE = "too_large"
    POLICY_FAILED = "policy_failed"
    CODE_ERROR = "code_error"
    CODE_TIMEOUT = "code_timeout"
    CODE_LIMIT = "code_limit"
    SLOT_CONFLICT = "slot_conflict"
    CONTENTION = "contention"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_FAILED = "store_failed"
    INTERNAL = "internal"

    @property
    def fallback_reason(self) -> str:
        """The bounded label of a replaced policy (``Decision.fallback_reason``, metrics)."""
        return _FALLBACK_REASON.get(self, "error")


#: kinds a client may retry unchanged (REST answers them with ``Retry-After``)
RETRYABLE = frozenset({ErrorKind.CONTENTION, ErrorKind.STORE_UNAVAILABLE})

#: kind -> (HTTP status, gRPC status code name): the one mapping both transports use
ERROR_TABLE: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_JSON: (400, "INVALID_ARGUMENT"),
    ErrorKind.INVALID_REQUEST: (422, "INVALID_ARGUMENT"),
    ErrorKind.LIMIT_EXCEEDED: (413, "INVALID_ARGUMENT"),
    ErrorKind.BODY_TOO_LARGE: (413, "RESOURCE_EXHAUSTED"),
    ErrorKind.UNAUTHORIZED: (401, "UNAUTHENTICATED"),
    ErrorKind.UNKNOWN_POLICY: (422, "INVALID_ARGUMENT"),
    ErrorKind.DEADLINE: (500, "DEADLINE_EXCEEDED"),
    ErrorKind.UNAVAILABLE: (500, "UNAVAILABLE"),
    ErrorKind.MODEL_INVALID: (500, "UNAVAILABLE"),
    ErrorKind.TOO_LARGE: (500, "UNAVAILABLE"),
    ErrorKind.POLICY_FAILED: (500, "UNAVAILABLE"),
    ErrorKind.CODE_ERROR: (500, "UNAVAILABLE"),
    ErrorKind.CODE_TIMEOUT: (500, "UNAVAILABLE"),
    ErrorKind.CODE_LIMIT: (500, "UNAVAILABLE"),
    ErrorKind.SLOT_CONFLICT: (409, "FAILED_PRECONDITION"),
    ErrorKind.CONTENTION: (503, "ABORTED"),
    ErrorKind.STORE_UNAVAILABLE: (503, "UNAVAILABLE"),
    ErrorKind.STORE_FAILED: (500, "FAILED_PRECONDITION"),
    ErrorKind.INTERNAL: (500, "INTERNAL"),
}
HTTP_STATUS: dict[ErrorKind, int] = {k: v[0] for k, v in ERROR_TABLE.items()}
GRPC_CODE: dict[ErrorKind, str] = {k: v[1] for k, v in ERROR_TABLE.items()}

_FALLBACK_REASON: dict[ErrorKind, str] = {
    ErrorKind.DEADLINE: "deadline",
    ErrorKind.UNAVAILABLE: "unavailable",
    ErrorKind.MODEL_INVALID: "model_invalid",
    ErrorKind.TOO_LARGE: "too_large",
    ErrorKind.UNKNOWN_POLICY: "unknown_policy",
    ErrorKind.CODE_ERROR: "code_error",
    ErrorKind.CODE_TIMEOUT: "code_timeout",
    ErrorKind.CODE_LIMIT: "code_limit",
}


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of any exception: its own for ours, ``INTERNAL`` for anything else (a bug)."""
    return exc.kind if isinstance(exc, GnbSchedError) else ErrorKind.INTERNAL


class GnbSchedError(Exception):
    """Root of every error this package raises on purpose."""

    kind: ErrorKind = ErrorKind.INTERNAL


class InvalidSlotError(GnbSchedError, ValueError):
    """A slot's input is malformed. ``field`` names the offending field (dotted path)."""

    kind = ErrorKind.INVALID_REQUEST

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidJsonError(InvalidSlotError):
    """A request body that is not JSON (or not the JSON object expected)."""

    kind = ErrorKind.INVALID_JSON


class SlotConflictError(InvalidSlotError):
    """The request's slot (or epoch) does not follow the cell's state: older than the last applied
    slot, an applied slot sent again with other content, or an older epoch (``field`` says which)."""

    kind = ErrorKind.SLOT_CONFLICT


class LimitExceededError(InvalidSlotError):
    """The slot is larger than a configured limit (number of users, resources, body size)."""

    kind = ErrorKind.LIMIT_EXCEEDED


class UnknownPolicyError(GnbSchedError, KeyError):
    """No policy is registered under that name."""

    kind = ErrorKind.UNKNOWN_POLICY

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown policy {self.name!r}; registered: {', '.join(self.known)}"


class PolicyError(GnbSchedError):
    """A policy could not produce an output for this slot."""

    kind = ErrorKind.POLICY_FAILED


class ProblemTooLargeError(PolicyError):
    """A policy refuses an instance beyond its size limit (e.g. exhaustive search)."""

    kind = ErrorKind.TOO_LARGE


class DeadlineExceededError(PolicyError):
    """A policy did not answer within the slot's deadline."""

    kind = ErrorKind.DEADLINE


class PolicyUnavailableError(PolicyError):
    """A policy's backing resource (model file, remote endpoint) is not usable right now."""

    kind = ErrorKind.UNAVAILABLE


class TeacherUnavailableError(PolicyUnavailableError):
    """The remote LLM teacher did not answer (down, timed out, refused)."""


class TeacherCodeError(PolicyError):
    """The teacher's program (code answer form) failed: no program in the answer or a crash
    (``code_error``), a time limit (``code_timeout``), a memory or output limit (``code_limit``)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ModelInvalidError(PolicyUnavailableError):
    """A model artifact is corrupt or does not match the expected interface."""

    kind = ErrorKind.MODEL_INVALID


class StateStoreError(GnbSchedError):
    """The per-cell state store (e.g. Redis) failed."""

    kind = ErrorKind.STORE_FAILED


class StateStoreUnavailableError(StateStoreError):
    """The per-cell state store cannot be reached: the slot is refused (retry it)."""

    kind = ErrorKind.STORE_UNAVAILABLE


class StateCorruptError(StateStoreError):
    """A cell's stored record could not be read; the store set it aside (quarantined) and the
    cell continues from this process's copy, or afresh."""


class StateContentionError(GnbSchedError):
    """Concurrent writers of one cell kept winning the compare-and-set: retry the slot."""

    kind = ErrorKind.CONTENTION
