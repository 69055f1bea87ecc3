"""Error hierarchy. Kernels raise these; only the transports map them to HTTP / gRPC codes."""

from __future__ import annotations


class GnbSchedError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidSlotError(GnbSchedError, ValueError):
    """A slot's input is malformed. ``field`` names the offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class LimitExceededError(InvalidSlotError):
    """The slot is larger than a configured limit (number of users, resources, body size)."""


class UnknownPolicyError(GnbSchedError, KeyError):
    """No policy is registered under that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown policy {self.name!r}; registered: {', '.join(self.known)}"


class PolicyError(GnbSchedError):
    """A policy could not produce an output for this slot."""


class ProblemTooLargeError(PolicyError):
    """A policy refuses an instance beyond its size limit (e.g. exhaustive search)."""


class DeadlineExceededError(PolicyError):
    """A policy did not answer within the slot's deadline."""


class PolicyUnavailableError(PolicyError):
    """A policy's backing resource (model file, remote endpoint) is not usable right now."""


class TeacherUnavailableError(PolicyUnavailableError):
    """The remote LLM teacher did not answer (down, timed out, refused)."""


class ModelInvalidError(PolicyUnavailableError):
    """A model artifact is corrupt or does not match the expected interface."""


class GrammarViolationError(GnbSchedError):
    """A decision violates the protocol action grammar where no repair is allowed."""


class StateStoreError(GnbSchedError):
    """The per-cell state store (e.g. Redis) failed."""


class StateStoreUnavailableError(StateStoreError):
    """The per-cell state store cannot be reached."""
