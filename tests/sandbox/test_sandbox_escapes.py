"""Escape attempts: each is stopped with the right reason, and the parent process is unharmed.

Every attempt runs twice where it can: through the whole stack (`sandbox`: the Python guard stops
it first, at compile or at the call) and through the kernel layers alone (`bare`: bubblewrap,
seccomp and rlimits, with the program's builtins and imports left unrestricted), so that each
layer is shown to hold on its own.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.sandbox import CodeFailure, Sandbox

THIS_FILE = str(Path(__file__).resolve())


def program(body: str) -> str:
    """A program whose schedule(state) runs `body` (may use `n`, the number of resources) then returns zeros."""
    return (
        "def schedule(state):\n    n = state.n\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\n    return [0] * n\n"
    )


def stopped(sandbox: Sandbox, code: str, state: dict | None = None) -> CodeFailure:
    with pytest.raises(CodeFailure) as info:
        sandbox.run(code, {"n": 3, **(state or {})}, 3)
    return info.value


# --- the Python guard (whole stack) -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "import os",
        "import subprocess",
        "import socket",
        "import ctypes",
        "import builtins",
        "from os import system",
        "import numpy.ctypeslib",
        "from . import x",
        "__import__('os')",
        "().__class__.__base__.__subclasses__()",
        "(lambda: 0).__globals__",
        "import heapq\nheapq.nlargest.__globals__",
        "g = (x for x in [1])\ng.gi_frame.f_back.f_globals",
        "import numpy as np\nnp.zeros(1).ctypes",
    ],
)
def test_the_python_guard_refuses_at_compile(sandbox: Sandbox, body: str) -> None:
    with pytest.raises(CodeFailure) as info:
        sandbox.compile(program(body))
    assert info.value.reason == "code_error"
    assert "not allowed" in info.value.detail, info.value.detail


GUARDED_AT_RUN = {
    "open /etc/passwd": "open('/etc/passwd').read()",
    "open this file": f"open({THIS_FILE!r}).read()",
    "write /tmp": "open('/tmp/pwned', 'w').write('x')",
    "eval": "eval('1')",
    "exec": "exec('x = 1')",
    "compile": "compile('1', 'f', 'eval')",
    "globals": "globals()",
    "getattr": "getattr((), 'count')",
    "np.ctypeslib": "np.ctypeslib",
    "np.load": "np.load('/etc/passwd')",
    "np.lib": "np.lib.npyio",
    "np._core": "np._core",
}


def test_the_python_guard_refuses_at_run(sandbox: Sandbox) -> None:
    attempts = "".join(
        f"    try:\n        {body}\n        out.append(0)\n    except (NameError, AttributeError):\n        out.append(1)\n"
        for body in GUARDED_AT_RUN.values()
    )
    code = f"import numpy as np\ndef schedule(state):\n    out = []\n{attempts}    return out\n"
    refused = sandbox.run(code, {}, len(GUARDED_AT_RUN)).tolist()
    assert dict(zip(GUARDED_AT_RUN, refused, strict=True)) == dict.fromkeys(GUARDED_AT_RUN, 1)


# --- the kernel layers alone ------------------------------------------------------------------


def test_host_files_are_not_visible(bare: Sandbox) -> None:
    paths = ["/etc/passwd", THIS_FILE, "/root/.bashrc", "/proc/self/environ", "/proc/1/environ", "/work"]
    code = textwrap.dedent(
        f"""
        import os
        def schedule(state):
            seen = []
            for path in {paths!r}:
                try:
                    open(path).read()
                    seen.append("read")
                except OSError as exc:
                    seen.append(type(exc).__name__)
            raise RuntimeError((seen, sorted(os.listdir('/'))))
        """
    )
    fail = stopped(bare, code)
    seen, root = ast.literal_eval(fail.detail.split(": ", 1)[1].rsplit(" (line", 1)[0])
    assert dict(zip(paths, seen, strict=True)) == dict.fromkeys(paths, "FileNotFoundError")
    # what the sandbox sees at its root: the system libraries, the interpreter, numpy, a tmpfs /tmp
    assert set(root) <= {"dev", "lib", "lib64", "usr", "tmp", "sandbox", "root", "opt"}, root
    assert "etc" not in root and "proc" not in root and "work" not in root
    assert os.path.isfile(THIS_FILE) and os.path.isfile("/etc/passwd")  # they are there on the host


def test_files_cannot_be_written(bare: Sandbox, tmp_path: Path) -> None:
    host_target = tmp_path / "pwned.txt"
    fail = stopped(bare, program(f"open({str(host_target)!r}, 'w').write('pwned')"))
    assert fail.reason == "code_error" and "FileNotFoundError" in fail.detail
    assert not host_target.exists()
    # the sandbox's own /tmp is private and RLIMIT_FSIZE=0 refuses any byte
    fail = stopped(bare, program("with open('/tmp/pwned-by-sandbox', 'w') as f:\n    f.write('x' * 10)"))
    assert fail.reason in ("code_error", "code_limit") and "File too large" in fail.detail, fail.detail
    assert not Path("/tmp/pwned-by-sandbox").exists()
    # read-only elsewhere
    for path in ("/sandbox/site/numpy/x", "/usr/lib/x"):
        fail = stopped(bare, program(f"open({path!r}, 'w')"))
        assert fail.reason == "code_error" and "Read-only file system" in fail.detail, fail.detail


def test_tcp_to_a_loopback_listener_is_refused(bare: Sandbox, sandbox: Sandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        body = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\ns.sendall(b'PING')"
        fail = stopped(bare, program(body))
        assert fail.reason == "code_error"
        assert "PermissionError" in fail.detail and "Operation not permitted" in fail.detail, fail.detail
        assert stopped(sandbox, program(body)).reason == "code_error"  # import socket: refused by the guard
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()


# The interpreter is inside the sandbox's view, so where a program starts it again only seccomp
# stops it (EPERM from clone, clone3 or execve); /bin/sh is not in the view at all.
PROCESS_ATTEMPTS = {
    "fork": "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)",
    "subprocess": "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'print(1)'], check=True)",
    "execv": "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'print(1)'])",
    "posix_spawn": "import os, sys\nos.posix_spawn(sys.executable, [sys.executable, '-c', '1'], {})",
    "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    "system": "import os\nif os.system('/bin/true') != 0:\n    raise RuntimeError('system failed')",
}


@pytest.mark.parametrize("attempt", list(PROCESS_ATTEMPTS))
def test_processes_cannot_be_started(bare: Sandbox, attempt: str) -> None:
    fail = stopped(bare, program(PROCESS_ATTEMPTS[attempt]))
    assert fail.reason == "code_error", fail.detail
    expected = "system failed" if attempt == "system" else "Operation not permitted"
    assert expected in fail.detail, fail.detail


def test_threads_still_work(bare: Sandbox) -> None:
    code = textwrap.dedent(
        """
        import threading
        def schedule(state):
            out = []
            t = threading.Thread(target=lambda: out.append(7))
            t.start()
            t.join()
            return out * state.n
        """
    )
    assert bare.run(code, {"n": 3}, 3).tolist() == [7, 7, 7]


def test_the_parents_environment_is_not_visible(bare: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNBSCHED_SANDBOX_TEST_SECRET", "hunter2-secret")
    code = textwrap.dedent(
        """
        import os
        def schedule(state):
            raise RuntimeError(sorted(os.environ.items()))
        """
    )
    fail = stopped(bare, code)
    assert "hunter2" not in fail.detail and "GNBSCHED" not in fail.detail, fail.detail
    assert "OPENBLAS_NUM_THREADS" in fail.detail  # the environment the sandbox sets, nothing else
    assert os.environ["GNBSCHED_SANDBOX_TEST_SECRET"] == "hunter2-secret"


def test_the_parent_process_cannot_be_signalled(bare: Sandbox) -> None:
    body = "import os\nos.kill(state.parent, 9)"
    fail = stopped(bare, program(body), {"parent": os.getpid()})
    assert fail.reason == "code_error" and "ProcessLookupError" in fail.detail, fail.detail
    # the sandbox's own init ignores it, and nothing outside is touched
    try:
        bare.run(program("import os\nos.kill(1, 9)"), {"n": 3}, 3)
    except CodeFailure:
        pass
    os.kill(os.getpid(), 0)  # still here


def test_the_worker_runs_as_nobody_without_capabilities(bare: Sandbox) -> None:
    code = textwrap.dedent(
        """
        import os
        def schedule(state):
            with open('/proc/self/status') as f:
                pass
            return [0]
        """
    )
    fail = stopped(bare, code)  # no /proc in the view at all
    assert "FileNotFoundError" in fail.detail
    code = "import os\ndef schedule(state):\n    return [os.getuid(), os.getgid(), os.getpid()]\n"
    uid, gid, pid = bare.run(code, {}, 3).tolist()
    assert (uid, gid) == (65534, 65534)
    assert pid < 10  # its own pid namespace


def test_a_program_that_writes_garbage_to_the_answer_pipe_is_a_code_error(bare: Sandbox) -> None:
    """The program owns the worker process; the parent parses what comes back strictly."""
    code = textwrap.dedent(
        """
        import os, struct
        def schedule(state):
            for fd in range(3, 10):
                try:
                    os.write(fd, struct.pack('<II', 10**6, 10**9) + b'{' * 100)
                except OSError:
                    pass
            import time
            time.sleep(5)
        """
    )
    fail = stopped(bare, code)
    assert fail.reason in ("code_error", "code_limit"), fail.detail


def test_raw_writes_to_stdout_count_against_the_output_limit(bare: Sandbox) -> None:
    fail = stopped(bare, program("import os\nos.write(1, b'x' * (100 * 2**20))"))
    assert fail.reason == "code_limit" and "output" in fail.detail, fail.detail


# --- the seccomp filter on its own, without bubblewrap ----------------------------------------

SECCOMP_PROBE = r"""
import errno, os, socket, subprocess, sys, threading
from service.sandbox import seccomp_filter as sf
sf.install_filter(sf.build_filter(), sf.seccomp_syscall_number())
results = {}
def attempt(name, fn):
    try:
        fn()
        results[name] = "allowed"
    except OSError as exc:
        results[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def fork():
    if os.fork() == 0:
        os._exit(0)
attempt("fork", fork)
attempt("socket", lambda: socket.socket())
attempt("socketpair", lambda: socket.socketpair())
attempt("subprocess", lambda: subprocess.run(["/bin/true"]))
attempt("execv", lambda: os.execv("/bin/true", ["/bin/true"]))
out = []
t = threading.Thread(target=lambda: out.append(1)); t.start(); t.join()
results["thread"] = "allowed" if out else "failed"
print(results)
"""


def test_the_seccomp_filter_denies_processes_and_sockets_but_not_threads() -> None:
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", SECCOMP_PROBE], capture_output=True, text=True, timeout=60, cwd=repo, check=False
    )
    assert out.returncode == 0, out.stderr
    results = eval(out.stdout)  # our own probe's dict literal
    assert results == {
        "fork": "EPERM",
        "socket": "EPERM",
        "socketpair": "EPERM",
        "subprocess": "EPERM",
        "execv": "EPERM",
        "thread": "allowed",
    }


def test_signals_from_the_sandbox_do_not_reach_the_test_process(bare: Sandbox) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    try:
        fail = stopped(bare, program("import os\nos.kill(state.parent, 10)"), {"parent": os.getpid()})
        assert "ProcessLookupError" in fail.detail
        assert received == []
    finally:
        signal.signal(signal.SIGUSR1, previous)
