"""The parent side of the sandbox: starts confined workers and talks to them.

`Sandbox.compile` starts one worker (`child.py`) inside bubblewrap and hands it the program; the
returned `Program` sends it one state per call and reads back the owner vector. The parent
enforces what the worker cannot be trusted to enforce on itself: the wall-clock limit of every
call (it kills the worker's process tree), the output limit (answer size and whatever the worker
writes to its stderr), and the strict parsing of every answer (a JSON header of at most 64 KiB and
an int64 payload of exactly the expected length; nothing from the worker is ever unpickled).

Framing, both ways: `<II` (header length, payload length), a UTF-8 JSON header, then the payload.
A request carries the state as raw little-endian buffers (int64, float64 or bool, 8-byte aligned)
described in its header by name, dtype, shape and offset; the worker maps them as read-only numpy
arrays without copying.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["CodeFailure", "Program", "Sandbox", "SandboxLimits", "SandboxUnavailable"]

REASONS = ("code_error", "code_timeout", "code_limit")
Reason = Literal["code_error", "code_timeout", "code_limit"]

_FRAME = struct.Struct("<II")
_ANSWER_HEADER_MAX = 64 * 1024
_CODE_MAX = 1 << 20  # characters of program source
_DETAIL_MAX = 500
_SANDBOX_UID = 65534  # nobody, inside the user namespace
_HERE = os.path.dirname(os.path.abspath(__file__))
_CHILD_LIB = "/sandbox/lib"
_CHILD_SITE = "/sandbox/site"
_PROBE_CODE = "def schedule(state):\n    return [state.k] * 3\n"


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up on this machine; the message says why and what to install."""


class CodeFailure(Exception):
    """An untrusted program failed: `reason` is code_error, code_timeout or code_limit; `detail` says how."""

    def __init__(self, reason: Reason, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        detail = str(detail)[:_DETAIL_MAX].encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
        super().__init__(f"{reason}: {detail}")
        self.reason: str = reason
        self.detail: str = detail


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed program (seconds, bytes)."""

    cpu_s: float = 1.0  # CPU time of one call (ITIMER_PROF, RLIMIT_CPU one second later), re-armed per call
    wall_s: float = 2.0  # wall-clock limit of one call; a call may pass a smaller timeout_s
    memory_bytes: int = 512 * 2**20  # RLIMIT_AS of the worker process
    output_bytes: int = 1 * 2**20  # printed characters + returned bytes + raw stderr bytes of one call
    compile_timeout_s: float = 5.0  # worker start + compile + the program's top level

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_bytes", "output_bytes", "compile_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")


class _ProbeTimeout(SandboxUnavailable):
    """The probe worker did not answer in time (not cached: it may pass on the next check)."""


# ---------------------------------------------------------------------------------------------
# mechanism: bubblewrap command line, seccomp filter, the check


@dataclass(frozen=True)
class _Mechanism:
    bwrap: str
    bwrap_version: str
    argv: tuple[str, ...]  # bwrap ... python ... child.py SITE LIBDIR
    bpf: bytes
    seccomp_nr: int | None


_mechanisms: dict[str, _Mechanism | SandboxUnavailable] = {}
_checked: dict[str, str | SandboxUnavailable] = {}
_lock = threading.Lock()


def _resolve_bwrap(bwrap: str | None) -> str:
    path = bwrap if bwrap is not None else shutil.which("bwrap")
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        where = f"at {bwrap!r}" if bwrap is not None else "on PATH"
        raise SandboxUnavailable(
            f"bubblewrap (bwrap) is not installed {where}; install it (Debian/Ubuntu: apt-get install bubblewrap). "
            "Untrusted programs are never run without it."
        )
    return os.path.realpath(path)


def _mechanism(bwrap: str | None) -> _Mechanism:
    path = _resolve_bwrap(bwrap)
    with _lock:
        found = _mechanisms.get(path)
        if found is None:
            try:
                found = _build_mechanism(path)
            except SandboxUnavailable as exc:
                found = exc
            _mechanisms[path] = found
    if isinstance(found, SandboxUnavailable):
        raise SandboxUnavailable(str(found))
    return found


def _build_mechanism(bwrap: str) -> _Mechanism:
    try:
        from service.sandbox import seccomp_filter
    except ImportError as exc:  # pragma: no cover - the package is importable wherever this module is
        raise SandboxUnavailable(f"cannot import the seccomp filter module: {exc}") from exc
    try:
        bpf = seccomp_filter.build_filter()
    except ImportError as exc:
        raise SandboxUnavailable(f"pyseccomp is not installed ({exc}); pip install pyseccomp") from exc
    except (OSError, RuntimeError) as exc:
        raise SandboxUnavailable(
            f"cannot build the seccomp filter ({exc}); install libseccomp (Debian/Ubuntu: apt-get install libseccomp2)"
        ) from exc
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10, check=False)
        helptext = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run {bwrap}: {exc}") from exc
    options = helptext.stdout + helptext.stderr
    return _Mechanism(
        bwrap=bwrap,
        bwrap_version=version.stdout.strip() or "bubblewrap (unknown version)",
        argv=tuple(_bwrap_argv(bwrap, options)),
        bpf=bpf,
        seccomp_nr=seccomp_filter.seccomp_syscall_number(),
    )


def _bwrap_argv(bwrap: str, options: str) -> list[str]:
    """The bubblewrap command line: namespaces, a read-only view of the interpreter and numpy, the worker."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    # the base interpreter's standard library, never a virtual environment's lib/ (its site-packages)
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    base |= {"installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
    paths = sysconfig.get_paths(vars=base)
    stdlib = {os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])}
    numpy_dir = os.path.dirname(os.path.realpath(np.__file__))
    argv = [bwrap, "--unshare-all", "--unshare-user"]
    if "--disable-userns" in options:
        argv.append("--disable-userns")
    argv += ["--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID), "--cap-drop", "ALL", "--hostname", "sandbox"]
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    for key, value in (
        ("LANG", "C.UTF-8"),
        ("PYTHONHASHSEED", "0"),
        ("OPENBLAS_NUM_THREADS", "1"),
        ("OMP_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "1"),
    ):
        argv += ["--setenv", key, value]
    # system libraries (the C library, libm, libffi, libz, OpenBLAS's dependencies), read-only
    for top in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/lib32", "/usr/lib32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    # the interpreter, its shared library, its standard library (site-packages hidden)
    binds = [exe, *sorted(stdlib)]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libpython = os.path.join(str(sysconfig.get_config_var("LIBDIR")), str(sysconfig.get_config_var("INSTSONAME")))
        if os.path.isfile(libpython):
            binds.append(os.path.realpath(libpython))
    for path in binds:
        argv += ["--ro-bind", path, path]
    for lib in sorted(stdlib):
        site = os.path.join(lib, "site-packages")
        if os.path.isdir(site) and not numpy_dir.startswith(site + os.sep):
            argv += ["--tmpfs", site, "--remount-ro", site]
    # numpy (and its vendored libraries) under /sandbox/site; the worker and its filter under /sandbox/lib
    argv += ["--ro-bind", numpy_dir, f"{_CHILD_SITE}/numpy"]
    if os.path.isdir(numpy_dir + ".libs"):
        argv += ["--ro-bind", numpy_dir + ".libs", f"{_CHILD_SITE}/numpy.libs"]
    for name in ("child.py", "seccomp_filter.py"):
        argv += ["--ro-bind", os.path.join(_HERE, name), f"{_CHILD_LIB}/{name}"]
    argv += ["--dev", "/dev"]
    if "--size" in options:
        argv += ["--size", str(1 << 20)]
    argv += ["--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp"]
    _refuse_source_tree([exe, *stdlib])
    argv += [exe, "-s", "-S", "-B", f"{_CHILD_LIB}/child.py", _CHILD_SITE, _CHILD_LIB]
    return argv


def _refuse_source_tree(bound: list[str]) -> None:
    """Refuse a view that would contain this project's source checkout (the repository holding `service/`)
    or a virtual environment's directories (its site-packages: the service's own dependencies)."""
    checkout = os.path.dirname(os.path.dirname(_HERE))
    venv = os.path.realpath(sys.prefix) if sys.prefix != sys.base_prefix else None
    for path in bound:
        if not os.path.isdir(path):
            continue
        inside = path.rstrip(os.sep) + os.sep
        if os.path.isfile(os.path.join(checkout, "pyproject.toml")) and (checkout + os.sep).startswith(inside):
            raise SandboxUnavailable(f"the sandbox view would contain the source checkout {checkout} (through {path})")
        if venv and (path + os.sep).startswith(venv + os.sep):
            raise SandboxUnavailable(f"the sandbox view would contain the virtual environment {venv} (through {path})")


# ---------------------------------------------------------------------------------------------
# one worker process


class _Dead(Exception):
    """The worker is gone (exit or closed pipe)."""


class _Timeout(Exception):
    pass


class _TooMuchOutput(Exception):
    pass


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


class _Worker:
    """One bubblewrap process tree running child.py, with non-blocking pipes and a framed exchange."""

    def __init__(self, mechanism: _Mechanism, limits: SandboxLimits) -> None:
        self.limits = limits
        try:
            self.proc = subprocess.Popen(
                list(mechanism.argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
            )
        except OSError as exc:
            raise SandboxUnavailable(f"cannot start {mechanism.bwrap}: {exc}") from exc
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._err = self.proc.stderr.fileno()
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._out, selectors.EVENT_READ)
        self._sel.register(self._err, selectors.EVENT_READ)
        self._rbuf = bytearray()
        self._err_tail = b""
        self.err_count = 0
        self.killed_for: str | None = None

    @property
    def alive(self) -> bool:
        return self.killed_for is None and self.proc.poll() is None

    def kill(self, why: str = "closed") -> None:
        """Kill the process tree and close the pipes (only from the thread that uses them, or when none does)."""
        if self.killed_for is None:
            self.killed_for = why
        try:
            self._sel.close()
        except (OSError, ValueError):
            pass
        self._finalizer()

    def signal_kill(self) -> None:
        """Kill the process tree but leave the pipes to the thread in a call (it sees EOF and cleans up)."""
        if self.killed_for is None:
            self.killed_for = "closed"
        if self.proc.poll() is None:
            for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass

    def exchange(self, parts: list[memoryview], deadline: float, payload_max: int) -> tuple[dict[str, Any], bytes]:
        """Write `parts` (may be empty) and read one answer frame before `deadline` (time.monotonic)."""
        # one buffer, one write where the pipe takes it: each write wakes the worker
        pending = [memoryview(b"".join(parts))] if parts else []
        writing = bool(pending)
        if writing:
            self._sel.register(self._in, selectors.EVENT_WRITE)
        frame = None
        try:
            while True:
                if frame is None:
                    frame = self._parse(payload_max)
                if frame is not None and not pending:
                    return frame  # (the worker answers `ready` before it reads the init frame)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Timeout
                for key, _ in self._sel.select(remaining):
                    if key.fd == self._in:
                        self._write_some(pending)
                        if not pending:
                            self._sel.unregister(self._in)
                            writing = False
                    elif key.fd == self._out:
                        data = self._read(self._out, 1 << 20)
                        if data is None:
                            continue
                        if not data:
                            raise _Dead
                        self._rbuf += data
                    else:
                        self._drain_err()
        finally:
            if writing:
                try:
                    self._sel.unregister(self._in)
                except (KeyError, ValueError):
                    pass

    def _write_some(self, pending: list[memoryview]) -> None:
        while pending:
            try:
                n = os.write(self._in, pending[0])
            except BlockingIOError:
                return
            except (BrokenPipeError, ConnectionResetError):
                pending.clear()  # the worker is gone; its stdout closes next
                return
            if n == len(pending[0]):
                pending.pop(0)
            else:
                pending[0] = pending[0][n:]

    @staticmethod
    def _read(fd: int, n: int) -> bytes | None:
        try:
            return os.read(fd, n)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EPIPE):
                return b""
            raise

    def _drain_err(self) -> None:
        data = self._read(self._err, 1 << 16)
        if data is None:
            return
        if not data:
            self._sel.unregister(self._err)
            return
        self.err_count += len(data)
        self._err_tail = (self._err_tail + data)[-400:]
        if self.err_count > self.limits.output_bytes:
            raise _TooMuchOutput

    def _parse(self, payload_max: int) -> tuple[dict[str, Any], bytes] | None:
        buf = self._rbuf
        if len(buf) < _FRAME.size:
            return None
        head_len, payload_len = _FRAME.unpack_from(buf)
        if head_len > _ANSWER_HEADER_MAX:
            raise _Malformed(f"answer header of {head_len} bytes")
        if payload_len > payload_max:
            raise _TooMuchOutput
        end = _FRAME.size + head_len + payload_len
        if len(buf) < end:
            return None
        try:
            header = json.loads(bytes(buf[_FRAME.size : _FRAME.size + head_len]))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _Malformed(f"answer header is not JSON: {str(exc)[:100]}") from None
        if not isinstance(header, dict):
            raise _Malformed("answer header is not an object")
        payload = bytes(buf[_FRAME.size + head_len : end])
        del buf[:end]
        return header, payload

    def stderr_tail(self) -> str:
        text = self._err_tail.decode("utf-8", "replace")
        return "".join(c if c.isprintable() else " " for c in text).strip()

    def death(self, phase: str, cpu_s: float) -> CodeFailure:
        """The failure for a worker that went away on its own (exit status of bubblewrap: 128 + signal)."""
        try:
            rc = self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.kill("closed its answer pipe")
            return CodeFailure("code_error", f"the worker closed its answer pipe during {phase}")
        try:
            while self._drain_err_final():
                pass
        except (OSError, ValueError):
            pass
        closed = self.killed_for == "closed"
        self.kill(f"exited with status {rc}")
        if closed:
            return CodeFailure("code_error", "program worker is gone (closed during the call)")
        tail = self.stderr_tail()
        sig = rc - 128 if rc > 128 else (-rc if rc < 0 else 0)
        if sig in (signal.SIGPROF, signal.SIGXCPU):
            name = signal.Signals(sig).name
            return CodeFailure("code_timeout", f"CPU limit of {cpu_s:g} s exceeded ({name}) during {phase}")
        if sig == signal.SIGKILL:
            return CodeFailure("code_limit", f"the worker was killed (SIGKILL, likely out of memory) during {phase}")
        if sig == signal.SIGXFSZ:
            return CodeFailure("code_limit", f"file size limit exceeded (SIGXFSZ) during {phase}")
        if sig:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            reason: Reason = "code_limit" if "MemoryError" in tail else "code_error"
            return CodeFailure(reason, f"the worker died of {name} during {phase}: {tail[-200:]}")
        return CodeFailure("code_error", f"the worker exited with status {rc} during {phase}: {tail[-200:]}")

    def _drain_err_final(self) -> bool:
        data = self._read(self._err, 1 << 16)
        if data:
            self._err_tail = (self._err_tail + data)[-400:]
            return True
        return False


class _Malformed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# state encoding


# numpy dtype kind -> the dtype a state array travels as
_WIRE_DTYPES = {"b": "|b1", "i": "<i8", "u": "<i8", "f": "<f8"}


def _encode_state(state: Mapping[str, Any], num_res: int) -> tuple[dict[str, Any], list[memoryview]]:
    """The call header and the payload buffers of `state` (no copy of C-contiguous arrays of the wire dtype)."""
    scalars: dict[str, bool | int | float | str] = {}
    arrays: list[dict[str, Any]] = []
    parts: list[memoryview] = []
    offset = 0
    for name, value in state.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
            raise ValueError(f"state key {name!r} is not a plain identifier")
        if isinstance(value, bool | np.bool_):
            scalars[name] = bool(value)
        elif isinstance(value, int | np.integer):
            scalars[name] = int(value)
        elif isinstance(value, float | np.floating):
            scalars[name] = float(value)
        elif isinstance(value, str):
            scalars[name] = value
        elif isinstance(value, np.ndarray):
            wire = _WIRE_DTYPES.get(value.dtype.kind)
            if wire is None:
                raise TypeError(f"state[{name!r}] has dtype {value.dtype}; expected an integer, float or bool array")
            arr: np.ndarray = np.ascontiguousarray(value, dtype=wire)
            arrays.append({"name": name, "dtype": wire, "shape": list(arr.shape), "offset": offset})
            if arr.nbytes:
                parts.append(arr.reshape(-1).data.cast("B"))
            offset += arr.nbytes
            if offset % 8:
                pad = 8 - offset % 8
                parts.append(memoryview(bytes(pad)))
                offset += pad
        else:
            raise TypeError(
                f"state[{name!r}] is {type(value).__name__}; expected a numpy array or an int, float, bool, str"
            )
    header = {"op": "call", "num_res": num_res, "scalars": scalars, "arrays": arrays}
    return header, parts


def _frame(header: dict[str, Any], parts: list[memoryview]) -> list[memoryview]:
    head = json.dumps(header, allow_nan=True).encode()
    size = sum(len(p) for p in parts)
    return [memoryview(_FRAME.pack(len(head), size) + head), *parts]


# ---------------------------------------------------------------------------------------------
# public API


class Program:
    """A compiled untrusted program in its own confined worker; call it with a state to get owners [R].

    The worker serves many calls. After a code_error raised by the program itself (an exception, a
    wrong return value) it stays alive; after a timeout, a limit or a crash it is dead and is not
    restarted: further calls raise CodeFailure("code_error", "program worker is gone").
    """

    def __init__(self, worker: _Worker, digest: str, limits: SandboxLimits, facts: dict[str, Any]) -> None:
        self._worker = worker
        self.digest = digest
        self.limits = limits
        self.facts = facts
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._worker.alive

    def __call__(self, state: Mapping[str, Any], num_res: int, timeout_s: float | None = None) -> np.ndarray:
        num_res = int(num_res)
        if num_res < 0:
            raise ValueError("num_res must be non-negative")
        wall = self.limits.wall_s if timeout_s is None else min(float(timeout_s), self.limits.wall_s)
        if not wall > 0:
            raise ValueError("timeout_s must be positive")
        header, parts = _encode_state(state, num_res)
        frame = _frame(header, parts)
        with self._lock:
            worker = self._worker
            if not worker.alive:
                raise CodeFailure("code_error", "program worker is gone")
            worker.err_count = 0
            deadline = time.monotonic() + wall
            try:
                answer, payload = worker.exchange(frame, deadline, payload_max=self.limits.output_bytes)
            except _Timeout:
                worker.kill("timeout")
                raise CodeFailure("code_timeout", f"wall-clock limit of {wall:g} s exceeded") from None
            except _TooMuchOutput:
                worker.kill("output")
                raise CodeFailure("code_limit", f"output limit of {self.limits.output_bytes} bytes exceeded") from None
            except _Malformed as exc:
                worker.kill("malformed answer")
                raise CodeFailure("code_error", f"malformed answer from the worker: {exc}") from None
            except _Dead:
                raise worker.death("the call", self.limits.cpu_s) from None
            return self._owner(answer, payload, num_res)

    def _owner(self, answer: dict[str, Any], payload: bytes, num_res: int) -> np.ndarray:
        if answer.get("ok") is True:
            if answer.get("n") != num_res or len(payload) != 8 * num_res:
                self._worker.kill("malformed answer")
                raise CodeFailure("code_error", "malformed answer from the worker: wrong owner vector length")
            return np.frombuffer(payload, dtype="<i8").astype(np.int64)
        reason = answer.get("reason")
        detail = answer.get("detail")
        if answer.get("ok") is not False or reason not in REASONS or not isinstance(detail, str):
            self._worker.kill("malformed answer")
            raise CodeFailure("code_error", "malformed answer from the worker")
        if reason != "code_error":
            self._worker.kill(str(reason))
        raise CodeFailure(reason, detail)

    def close(self) -> None:
        """Kill the worker (idempotent). A call in flight on another thread ends with code_error."""
        if self._lock.acquire(blocking=False):
            try:
                self._worker.kill()
            finally:
                self._lock.release()
        else:
            self._worker.signal_kill()

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Program(digest={self.digest[:12]}, alive={self.alive})"


class Sandbox:
    """Runs untrusted scheduling programs confined: bubblewrap namespaces, seccomp, rlimits, restricted Python.

    `bwrap` names the bubblewrap executable (default: `bwrap` on PATH). `python_guard=False` turns
    off the in-process layer (restricted builtins, import allow-list, syntax check) and leaves the
    kernel layers alone in force; the tests use it to prove those layers, the service never does.
    """

    def __init__(
        self, limits: SandboxLimits = SandboxLimits(), *, bwrap: str | None = None, python_guard: bool = True
    ) -> None:
        self.limits = limits
        self._bwrap = bwrap
        self._python_guard = python_guard

    @staticmethod
    def check(bwrap: str | None = None) -> str:
        """Start one confined worker and run a probe; the mechanism in force, or SandboxUnavailable. Cached."""
        mech = _mechanism(bwrap)
        with _lock:
            found = _checked.get(mech.bwrap)
        if found is None:
            try:
                found = _probe(mech)
            except _ProbeTimeout:
                raise  # a loaded machine, perhaps: not cached, the next check tries again
            except SandboxUnavailable as exc:
                found = exc
            with _lock:
                _checked[mech.bwrap] = found
        if isinstance(found, SandboxUnavailable):
            raise SandboxUnavailable(str(found))
        return found

    def compile(self, code: str) -> Program:
        """Start a confined worker holding `code` compiled; CodeFailure if the code does not compile or start."""
        self.check(self._bwrap)
        return _start(_mechanism(self._bwrap), code, self.limits, self._python_guard)

    def run(self, code: str, state: Mapping[str, Any], num_res: int, timeout_s: float | None = None) -> np.ndarray:
        """Compile `code`, call it once on `state`, close it."""
        with self.compile(code) as program:
            return program(state, num_res, timeout_s)


def _start(mech: _Mechanism, code: str, limits: SandboxLimits, python_guard: bool) -> Program:
    if not isinstance(code, str):
        raise TypeError("code must be a str")
    if len(code) > _CODE_MAX:
        raise CodeFailure("code_error", f"the program is longer than {_CODE_MAX} characters")
    digest = hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
    init = {
        "op": "init",
        "limits": asdict(limits),
        "seccomp_nr": mech.seccomp_nr,
        "python_guard": python_guard,
        "code": code,
    }
    worker = _Worker(mech, limits)
    deadline = time.monotonic() + limits.compile_timeout_s
    phase = "startup"
    try:
        ready, _ = worker.exchange(_frame(init, [memoryview(mech.bpf)]), deadline, payload_max=0)
        if ready.get("ready") is not True:
            raise _Malformed("no ready frame")
        phase = "compile"
        answer, _ = worker.exchange([], deadline, payload_max=0)
    except _Timeout:
        worker.kill("timeout")
        raise CodeFailure(
            "code_timeout", f"worker start and compile took over {limits.compile_timeout_s:g} s ({phase})"
        ) from None
    except _TooMuchOutput:
        worker.kill("output")
        raise CodeFailure(
            "code_limit", f"output limit of {limits.output_bytes} bytes exceeded during {phase}"
        ) from None
    except _Malformed as exc:
        worker.kill("malformed answer")
        raise CodeFailure("code_error", f"malformed answer from the worker: {exc}") from None
    except _Dead:
        failure = worker.death(phase, limits.compile_timeout_s)
        if phase == "startup":
            raise SandboxUnavailable(
                f"{mech.bwrap} could not start the worker ({failure.detail}); "
                "user namespaces may be disabled here (a container's seccomp or AppArmor profile, "
                "kernel.unprivileged_userns_clone=0 or user.max_user_namespaces=0)"
            ) from None
        raise failure from None
    if "setup_error" in answer:
        worker.kill("setup error")
        raise SandboxUnavailable(f"the worker could not confine itself: {answer['setup_error']}")
    if answer.get("ok") is not True:
        reason, detail = answer.get("reason"), answer.get("detail")
        worker.kill(str(reason))
        if reason not in REASONS or not isinstance(detail, str):
            raise CodeFailure("code_error", "malformed answer from the worker")
        raise CodeFailure(reason, detail)
    facts = answer.get("facts")
    return Program(worker, digest, limits, facts if isinstance(facts, dict) else {})


def _probe(mech: _Mechanism) -> str:
    """Start a worker with the default limits, run a tiny program, describe what is in force."""
    limits = SandboxLimits()
    try:
        program = _start(mech, _PROBE_CODE, limits, python_guard=True)
        with program:
            owner = program({"k": 7}, 3)
    except CodeFailure as exc:
        kind = _ProbeTimeout if exc.reason == "code_timeout" else SandboxUnavailable
        raise kind(f"the probe program failed in the sandbox: {exc}") from None
    facts = program.facts
    if owner.tolist() != [7, 7, 7]:
        raise SandboxUnavailable(f"the probe program returned {owner.tolist()}, expected [7, 7, 7]")
    if facts.get("uid") != _SANDBOX_UID:
        raise SandboxUnavailable(f"the worker runs as uid {facts.get('uid')}, not {_SANDBOX_UID}: no user namespace")
    if not facts.get("seccomp"):
        raise SandboxUnavailable("the worker reports no seccomp filter")
    rl = facts.get("rlimits", {})
    return (
        f"{mech.bwrap_version} ({mech.bwrap}): user+pid+net+ipc+uts+mount namespaces, uid {_SANDBOX_UID}, "
        f"no network, read-only view of the interpreter and numpy only, tmpfs /tmp, clean environment; "
        f"seccomp deny-list ({len(mech.bpf) // 8} BPF instructions, {facts['seccomp']}); "
        f"rlimits AS={rl.get('AS')} B, CPU={limits.cpu_s:g} s/call, FSIZE={rl.get('FSIZE')}, "
        f"NOFILE={rl.get('NOFILE')}, NPROC={rl.get('NPROC')}, CORE={rl.get('CORE')}; "
        "restricted builtins + import allow-list (numpy, math, heapq, itertools)"
    )
