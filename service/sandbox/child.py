"""The sandboxed worker: runs one untrusted scheduling program inside bubblewrap.

The parent (`runner.py`) starts this file as `python -s -S -B child.py SITE LIBDIR` inside a
bubblewrap sandbox. It reads requests on its standard input and writes answers on its standard
output in the framing described in `runner.py`; at once it moves those two pipes to other file
descriptors and points fd 0 at /dev/null and fd 1 at its stderr, so that whatever the program
writes raw lands in the stderr pipe, which the parent counts against the output limit.

The life of a worker:
1. import numpy, math, heapq, itertools and the modules they need (before any restriction);
2. send a `ready` frame, read the `init` frame (limits, the BPF seccomp filter, the code);
3. set the rlimits (address space, file size 0, open files, processes, core 0), install the
   seccomp filter and check that a socket is refused; any failure ends the worker before the
   code is even parsed;
4. check the code's syntax tree (imports only from the allow-list, no dunder names outside a
   short list, no frame, code or ctypes attributes), compile it and run its top level with
   restricted builtins and a restricted `__import__`, and find `schedule`;
5. answer each `call` frame: build the state namespace over the received buffer (read-only numpy
   arrays, no copy), arm the CPU limit of the call, call `schedule(state)`, and send the owner
   vector as int64 bytes, or a failure (`code_error` or `code_limit`).

The worker trusts nothing it runs after step 3 and the parent trusts nothing the worker sends.
This module imports nothing from `service`; `seccomp_filter.py`, bound beside it, is its one
companion.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import math
import os
import resource
import signal
import struct
import sys
import types
from typing import Any

_FRAME = "<II"  # header length (bytes of UTF-8 JSON), payload length (bytes)
_HEADER_MAX = 1 << 20
_DETAIL_MAX = 500

# What `import` may name inside a program; anything else raises ImportError.
ALLOWED_IMPORTS = frozenset({"numpy", "numpy.linalg", "numpy.random", "math", "heapq", "itertools"})
# numpy attributes a program may not read: file I/O, foreign memory, tooling.
NUMPY_DENIED = frozenset(
    {
        "ctypeslib",
        "f2py",
        "distutils",
        "testing",
        "lib",
        "load",
        "save",
        "savez",
        "savez_compressed",
        "savetxt",
        "loadtxt",
        "genfromtxt",
        "fromfile",
        "fromregex",
        "memmap",
        "DataSource",
        "show_config",
        "show_runtime",
        "test",
    }
)
# Dunder attribute and variable names a program may use; every other `__x__` is refused at compile.
ALLOWED_DUNDERS = frozenset(
    {
        "__init__",
        "__name__",
        "__len__",
        "__iter__",
        "__next__",
        "__getitem__",
        "__setitem__",
        "__contains__",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__hash__",
        "__repr__",
        "__str__",
        "__call__",
        "__add__",
        "__sub__",
        "__mul__",
        "__truediv__",
        "__floordiv__",
        "__mod__",
        "__neg__",
        "__bool__",
    }
)
# Attribute names a program may not use: frames, code and tracebacks (routes to other modules' globals
# without a dunder) and numpy's door to ctypes.
DENIED_ATTRIBUTES = frozenset(
    {
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "cr_await",
        "ag_frame",
        "ag_code",
        "ag_await",
        "f_back",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_code",
        "tb_frame",
        "tb_next",
        "co_code",
        "co_consts",
        "ctypes",
        "_ctypes",
    }
)
SAFE_BUILTINS = (
    "abs all any ascii bin bool bytearray bytes callable chr complex dict divmod enumerate filter float format "
    "frozenset hash hex int isinstance issubclass iter len list map max min next object oct ord pow "
    "range repr reversed round set slice sorted str sum tuple zip True False None NotImplemented "
    "Ellipsis ArithmeticError AssertionError AttributeError BaseException Exception IndexError KeyError "
    "LookupError NameError NotImplementedError OverflowError RecursionError RuntimeError StopIteration "
    "TypeError ValueError ZeroDivisionError property staticmethod classmethod super __build_class__"
).split()


class _Stop(Exception):
    """A failure to report: reason (code_error, code_limit) and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:_DETAIL_MAX]


class _OutputLimit(BaseException):
    """Raised inside the program when it prints past the output limit (the flag stays set if caught)."""


def _read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError
        got += k
    return buf


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        k = os.write(fd, view)
        view = view[k:]


def main() -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    site, libdir = sys.argv[1], sys.argv[2]
    sys.path[:0] = [libdir, site]

    def send(header: dict, payload: bytes | memoryview = b"") -> None:
        head = json.dumps(header).encode()
        _write_all(proto_out, struct.pack(_FRAME, len(head), len(payload)) + head)
        if len(payload):
            _write_all(proto_out, payload)

    def receive() -> tuple[dict, bytearray]:
        head_len, payload_len = struct.unpack(_FRAME, _read_exact(proto_in, struct.calcsize(_FRAME)))
        if head_len > _HEADER_MAX:
            raise ValueError("header too long")
        header = json.loads(bytes(_read_exact(proto_in, head_len)))
        return header, _read_exact(proto_in, payload_len)

    # 1. startup imports, unconfined by seccomp and rlimits but inside the namespaces
    import heapq
    import itertools

    import numpy as np
    import numpy.linalg
    import numpy.random
    import seccomp_filter

    send({"ready": True})
    try:
        init, bpf = receive()
    except EOFError:
        return
    limits = init["limits"]

    # 3. confinement of this process; any failure ends the worker before the code runs
    try:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file write past RLIMIT_FSIZE fails with EFBIG
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
        resource.setrlimit(resource.RLIMIT_NPROC, (16, 16))
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
        how = seccomp_filter.install_filter(bytes(bpf), init.get("seccomp_nr"))
        if not seccomp_filter.socket_denied():
            raise RuntimeError("the seccomp filter is installed but a socket was not refused")
    except Exception as exc:
        send({"setup_error": f"{type(exc).__name__}: {exc}"[:_DETAIL_MAX]})
        return
    facts = {
        "seccomp": how,
        "uid": os.getuid(),
        "pid": os.getpid(),
        "rlimits": {
            "AS": resource.getrlimit(resource.RLIMIT_AS)[0],
            "FSIZE": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
            "NOFILE": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "NPROC": resource.getrlimit(resource.RLIMIT_NPROC)[0],
            "CORE": resource.getrlimit(resource.RLIMIT_CORE)[0],
        },
    }
    output_cap = int(limits["output_bytes"])
    cpu_s = float(limits["cpu_s"])
    guard = bool(init.get("python_guard", True))

    def arm_cpu(seconds: float) -> None:
        """CPU limit of the next phase: SIGPROF (default action: terminate) after `seconds` of CPU time,
        and RLIMIT_CPU (whole seconds, SIGXCPU) one second later as the backstop."""
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(used.ru_utime + used.ru_stime + seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
        signal.setitimer(signal.ITIMER_PROF, seconds)

    def disarm_cpu() -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)

    class Output:
        """What the program prints: counted (characters) against the output limit, then dropped."""

        def __init__(self) -> None:
            self.count = 0
            self.exceeded = False

        def add(self, n: int) -> None:
            self.count += n
            if self.count > output_cap:
                self.exceeded = True
                raise _OutputLimit

    out = Output()

    def program_print(*args: object, sep: str | None = " ", end: str | None = "\n", **_: object) -> None:
        for i, arg in enumerate(args):
            out.add(len(str(arg)) + (len(sep or " ") if i else 0))
        out.add(len("\n" if end is None else end))

    numpy_view = _module_view(np, NUMPY_DENIED)
    modules = {"numpy": numpy_view, "math": math, "heapq": heapq, "itertools": itertools}

    def program_import(
        name: str, globals: object = None, locals: object = None, fromlist: object = (), level: int = 0
    ) -> object:
        top = name.partition(".")[0]
        if level == 0 and name in ALLOWED_IMPORTS:
            if fromlist and name != top:
                return getattr(np, name.partition(".")[2])
            return modules[top]
        if level == 0 and top == "numpy" and any(part.startswith("_") for part in name.split(".")[1:]):
            # numpy's own lazy imports from C code (they look up __import__ in the calling frame, the
            # program's); a program cannot write these: the syntax check allows only ALLOWED_IMPORTS
            module = importlib.import_module(name)
            return module if fromlist else numpy_view
        raise ImportError(f"import of {name!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_IMPORTS))})")

    if guard:
        program_builtins = {k: getattr(builtins, k) for k in SAFE_BUILTINS}
        program_builtins["print"] = program_print
        program_builtins["__import__"] = program_import
    else:  # the kernel layers alone: used by the tests that prove them
        program_builtins = dict(vars(builtins))
        program_builtins["print"] = program_print
    program_globals: dict = {"__builtins__": program_builtins, "__name__": "program"}

    # 4. compile the program and run its top level
    arm_cpu(float(limits["compile_timeout_s"]))
    try:
        tree = ast.parse(init["code"], "<program>", "exec")
        if guard:
            _check_tree(tree)
        code = compile(tree, "<program>", "exec")
        exec(code, program_globals)
        disarm_cpu()
        schedule = program_globals.get("schedule")
        if not callable(schedule):
            raise _Stop("code_error", "the program defines no function schedule(state)")
    except _Stop as stop:
        send({"ok": False, "reason": stop.reason, "detail": stop.detail})
        return
    except (MemoryError, _OutputLimit) as exc:
        send({"ok": False, "reason": "code_limit", "detail": _limit_detail(exc, out.count, output_cap, limits)})
        return
    except BaseException as exc:  # the program's own exception, SyntaxError included
        if out.exceeded:
            send({"ok": False, "reason": "code_limit", "detail": _limit_detail(_OutputLimit(), 0, output_cap, limits)})
        else:
            send({"ok": False, "reason": "code_error", "detail": _describe(exc)})
        return
    send({"ok": True, "facts": facts})

    # 5. calls
    while True:
        try:
            request, payload = receive()
        except EOFError:
            return
        state = types.SimpleNamespace(**request.get("scalars", {}))
        for spec in request.get("arrays", []):
            count = math.prod(spec["shape"])
            arr = np.frombuffer(payload, dtype=np.dtype(spec["dtype"]), count=count, offset=spec["offset"])
            arr = arr.reshape(spec["shape"])
            arr.flags.writeable = False
            setattr(state, spec["name"], arr)
        num_res = int(request["num_res"])
        out.count, out.exceeded = 0, False
        try:
            arm_cpu(cpu_s)
            value = schedule(state)
            owner = _owner_vector(value, num_res, output_cap - out.count, np)
            disarm_cpu()
        except _Stop as stop:
            reason, detail = stop.reason, stop.detail
        except (MemoryError, _OutputLimit) as exc:
            reason, detail = "code_limit", _limit_detail(exc, out.count, output_cap, limits)
        except BaseException as exc:
            reason, detail = "code_error", _describe(exc)
        else:
            if not out.exceeded:
                send({"ok": True, "n": num_res}, memoryview(owner).cast("B"))
                continue
        if out.exceeded:
            reason, detail = "code_limit", _limit_detail(_OutputLimit(), out.count, output_cap, limits)
        disarm_cpu()
        send({"ok": False, "reason": reason, "detail": detail})
        del state, payload


def _module_view(module: Any, denied: frozenset[str]) -> types.ModuleType:
    """A module object that forwards attribute reads to `module` except the `denied` and private names."""

    class ModuleView(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            if name in denied or (name.startswith("_") and name != "__version__"):
                raise AttributeError(f"{module.__name__}.{name} is not available in a scheduling program")
            return getattr(module, name)

    view = ModuleView(module.__name__)
    view.__doc__ = module.__doc__
    return view


def _check_tree(tree: ast.AST) -> None:
    """Refuse imports outside ALLOWED_IMPORTS, and dunder attributes and names outside ALLOWED_DUNDERS (the
    usual routes out of restricted builtins)."""
    allowed = ", ".join(sorted(ALLOWED_IMPORTS))
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.Import):
                names, relative = [alias.name for alias in node.names], False
            else:
                names, relative = [node.module or ""], bool(node.level)
            for module in names:
                if module not in ALLOWED_IMPORTS or relative:
                    raise _Stop(
                        "code_error",
                        f"ImportError: import of {module!r} is not allowed (allowed: {allowed}) (line {line})",
                    )
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
            if name in DENIED_ATTRIBUTES:
                raise _Stop("code_error", f"use of .{name} is not allowed in a scheduling program (line {line})")
        elif isinstance(node, ast.Name):
            name = node.id
        if name and name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS:
            raise _Stop("code_error", f"use of {name} is not allowed in a scheduling program (line {line})")


def _owner_vector(value: Any, num_res: int, budget: int, np: Any) -> Any:
    """`value` as a little-endian int64 vector of length `num_res`, or _Stop."""
    if isinstance(value, str | bytes | bytearray | memoryview):
        size = len(value)
    elif isinstance(value, np.ndarray):
        size = value.nbytes
    elif isinstance(value, list | tuple):
        size = 8 * len(value)
        if size <= budget:
            size += sum(len(v) for v in value if isinstance(v, str | bytes | bytearray))
    else:
        size = 0
    if size > budget:
        raise _Stop("code_limit", f"the program returned about {size} bytes, over the output limit of {budget} bytes")
    try:
        arr = np.asarray(value)
    except MemoryError:
        raise
    except Exception as exc:
        raise _Stop("code_error", f"the return value is not an array: {_describe(exc)}") from None
    if arr.shape != (num_res,):
        raise _Stop("code_error", f"schedule returned shape {arr.shape}, expected ({num_res},)")
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise _Stop("code_error", "schedule returned an owner id beyond int64")
    elif arr.dtype.kind == "f":
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise _Stop("code_error", "schedule returned non-integer owner ids")
    else:
        raise _Stop("code_error", f"schedule returned {arr.dtype} values, expected integer owner ids")
    return np.ascontiguousarray(arr, dtype="<i8")


def _describe(exc: BaseException) -> str:
    """`Type: message (line N)` for an exception raised by the program."""
    line = None
    try:
        if isinstance(exc, SyntaxError):
            message, line = str(exc.msg), exc.lineno
        else:
            message = str(exc)
    except BaseException:
        message = "?"
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (line {line})" if line else ""
    text = f"{type(exc).__name__}: {message[:300]}{where}"
    return text[:_DETAIL_MAX]


def _limit_detail(exc: BaseException, printed: int, cap: int, limits: dict) -> str:
    if isinstance(exc, MemoryError):
        return f"memory limit of {limits['memory_bytes']} bytes (RLIMIT_AS) exceeded: MemoryError"
    return f"output limit of {cap} bytes exceeded (printed {printed} characters)"


if __name__ == "__main__":
    main()
