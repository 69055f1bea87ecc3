"""A sandbox for untrusted scheduling programs (LLM-generated `def schedule(state): ...`).

`Sandbox(limits).compile(code)` starts a confined worker holding the program; the returned
`Program` maps a state (numpy arrays and scalars) to an int64 owner vector [R] per call and
raises `CodeFailure` (reason code_error, code_timeout or code_limit) when the program fails.
`Sandbox.check()` says which mechanism is in force or raises `SandboxUnavailable`; a program
never runs unconfined. docs/sandbox.md describes the layers and what they do not cover.
"""

from service.sandbox.runner import CodeFailure, Program, Sandbox, SandboxLimits, SandboxUnavailable

__all__ = ["CodeFailure", "Program", "Sandbox", "SandboxLimits", "SandboxUnavailable"]
