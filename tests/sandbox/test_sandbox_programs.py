"""Programs in the sandbox: results, reuse of one worker, state transfer, and every failure reason."""

from __future__ import annotations

import textwrap
import time

import numpy as np
import pytest

from service.sandbox import CodeFailure, Sandbox, SandboxLimits, SandboxUnavailable

GREEDY = """
import numpy as np

def schedule(state):
    score = state.rate * state.weight[:, None]
    owner = np.argmax(score, axis=0)
    owner[~state.usable.any(axis=0)] = -1
    return owner
"""


def expected_greedy(state: dict) -> np.ndarray:
    owner = np.argmax(state["rate"] * state["weight"][:, None], axis=0)
    owner[~state["usable"].any(axis=0)] = -1
    return owner


def random_state(rng: np.random.Generator, users: int = 100, res: int = 68) -> dict:
    usable = rng.random((users, res)) > 0.3
    usable[:, rng.integers(res)] = False
    return {
        "rate": rng.random((users, res)) * 1e6,
        "weight": rng.random(users),
        "usable": usable,
        "buffer_bytes": rng.integers(0, 10_000, users),
        "slot": int(rng.integers(1000)),
        "load": float(rng.random()),
        "tdd": bool(rng.random() > 0.5),
    }


def failure(sandbox: Sandbox, code: str, state: dict | None = None, num_res: int = 4, **kw: float) -> CodeFailure:
    with pytest.raises(CodeFailure) as info:
        sandbox.run(code, state or {}, num_res, **kw)
    return info.value


def test_a_correct_program_returns_the_expected_owner_vector(sandbox: Sandbox) -> None:
    state = random_state(np.random.default_rng(1))
    owner = sandbox.run(GREEDY, state, 68)
    assert owner.dtype == np.int64 and owner.shape == (68,)
    np.testing.assert_array_equal(owner, expected_greedy(state))
    assert (owner == -1).sum() >= 1


def test_one_program_serves_fifty_calls_with_different_states(sandbox: Sandbox) -> None:
    rng = np.random.default_rng(2)
    with sandbox.compile(GREEDY) as program:
        assert program.alive
        for _ in range(50):
            state = random_state(rng, users=int(rng.integers(1, 120)), res=68)
            np.testing.assert_array_equal(program(state, 68), expected_greedy(state))
        assert program.alive
    assert not program.alive


def test_the_program_sees_scalars_and_read_only_arrays_of_each_dtype(sandbox: Sandbox) -> None:
    code = """
def schedule(state):
    assert state.ints.dtype.kind == "i" and state.ints.dtype.itemsize == 8, state.ints.dtype
    assert state.floats.dtype.kind == "f" and state.floats.dtype.itemsize == 8
    assert state.flags.dtype.kind == "b" and state.flags.shape == (2, 3)
    assert state.empty.shape == (0,)
    assert state.n == 3 and state.x == 0.5 and state.on is True and state.preset == "mac"
    try:
        state.ints[0] = 99
    except ValueError:
        pass
    else:
        raise AssertionError("state arrays are writable")
    return [int(state.ints.sum()), int(state.floats.sum() * 2), int(state.flags.sum()), state.n]
"""
    state = {
        "ints": np.array([1, 2, 3], dtype=np.int32),
        "floats": np.array([0.25, 0.75]),
        "flags": np.array([[True, False, True], [False, False, True]]),
        "empty": np.zeros(0),
        "n": 3,
        "x": 0.5,
        "on": True,
        "preset": "mac",
    }
    assert sandbox.run(code, state, 4).tolist() == [6, 2, 3, 3]


def test_the_allowed_imports_classes_and_a_long_program_work(sandbox: Sandbox) -> None:
    code = (
        textwrap.dedent(
            """
            import heapq
            import itertools
            import math
            import numpy.linalg as la
            from numpy.random import default_rng
            from numpy import argsort

            class Picker:
                def __init__(self, k):
                    self.k = k

                def __call__(self, weights):
                    return [i for _, i in heapq.nlargest(self.k, zip(weights, itertools.count()))]

            def schedule(state):
                rng = default_rng(state.seed)
                noise = rng.random(len(state.weight)) * 1e-9
                top = Picker(state.n)(list(state.weight + noise))
                assert math.isclose(la.norm([3.0, 4.0]), 5.0)
                assert list(argsort([2, 1])) == [1, 0]
                return top
            """
        )
        + "# padding\n" * 20_000  # a program longer than a pipe buffer
    )
    assert len(code) > 150_000
    weight = np.array([0.1, 0.9, 0.5, 0.7])
    assert sandbox.run(code, {"weight": weight, "n": 3, "seed": 1}, 3).tolist() == [1, 3, 2]


def test_integral_floats_are_owner_ids_and_other_values_are_code_errors(sandbox: Sandbox) -> None:
    code = """
import math
import numpy as np

def schedule(state):
    return [
        [0.0, 1.0, -1.0, 2.0],
        [0.5, 1, 2, 3],
        ["a", "b", "c", "d"],
        None,
        {"a": 1},
        [math.nan] * 4,
        np.ones((2, 2), dtype=np.int64),
        [True, False, True, False],
        [2**64, 0, 0, 0],
    ][state.case]
"""
    with sandbox.compile(code) as program:
        assert program({"case": 0}, 4).tolist() == [0, 1, -1, 2]
        for case in range(1, 9):
            with pytest.raises(CodeFailure) as info:
                program({"case": case}, 4)
            assert info.value.reason == "code_error", (case, info.value.detail)
            assert program.alive


def test_a_wrong_length_is_a_code_error(sandbox: Sandbox) -> None:
    fail = failure(sandbox, "def schedule(state):\n    return [0, 1, 2]", num_res=4)
    assert fail.reason == "code_error"
    assert "(3,)" in fail.detail and "(4,)" in fail.detail


def test_a_syntax_error_and_a_missing_schedule_are_code_errors_at_compile(sandbox: Sandbox) -> None:
    with pytest.raises(CodeFailure) as info:
        sandbox.compile("def schedule(state):\n    return [0 1]\n")
    assert info.value.reason == "code_error" and "SyntaxError" in info.value.detail and "line 2" in info.value.detail
    with pytest.raises(CodeFailure) as info:
        sandbox.compile("def plan(state):\n    return []\n")
    assert info.value.reason == "code_error" and "schedule" in info.value.detail


def test_an_exception_is_a_code_error_with_its_line_and_the_worker_survives(sandbox: Sandbox) -> None:
    code = "def schedule(state):\n    if state.fail:\n        raise ValueError('no users')\n    return [1, 2]\n"
    with sandbox.compile(code) as program:
        with pytest.raises(CodeFailure) as info:
            program({"fail": True}, 2)
        assert info.value.reason == "code_error"
        assert info.value.detail == "ValueError: no users (line 3)"
        assert program.alive
        assert program({"fail": False}, 2).tolist() == [1, 2]


def test_an_infinite_loop_is_a_code_timeout_within_the_limits_and_kills_the_worker(sandbox: Sandbox) -> None:
    with sandbox.compile("def schedule(state):\n    while True:\n        pass\n") as program:
        t0 = time.monotonic()
        with pytest.raises(CodeFailure) as info:
            program({}, 4)
        elapsed = time.monotonic() - t0
        assert info.value.reason == "code_timeout"
        assert elapsed < sandbox.limits.wall_s + 1.0, elapsed
        assert not program.alive
        with pytest.raises(CodeFailure) as info:
            program({}, 4)
        assert (info.value.reason, info.value.detail) == ("code_error", "program worker is gone")


def test_the_wall_clock_limit_holds_when_the_cpu_limit_does_not(mechanism: str) -> None:
    slow = Sandbox(SandboxLimits(cpu_s=30.0, wall_s=0.8))
    with slow.compile("def schedule(state):\n    while True:\n        pass\n") as program:
        t0 = time.monotonic()
        with pytest.raises(CodeFailure) as info:
            program({}, 4)
        assert info.value.reason == "code_timeout" and "wall-clock" in info.value.detail
        assert time.monotonic() - t0 < 0.8 + 1.0
    # a call may ask for less than wall_s
    with slow.compile("def schedule(state):\n    while True:\n        pass\n") as program:
        t0 = time.monotonic()
        with pytest.raises(CodeFailure) as info:
            program({}, 4, timeout_s=0.2)
        assert info.value.reason == "code_timeout" and time.monotonic() - t0 < 0.2 + 1.0


def test_a_top_level_loop_is_a_code_timeout_at_compile(mechanism: str) -> None:
    sandbox = Sandbox(SandboxLimits(compile_timeout_s=1.0, cpu_s=30.0))
    t0 = time.monotonic()
    with pytest.raises(CodeFailure) as info:
        sandbox.compile("while True:\n    pass\n")
    assert info.value.reason == "code_timeout"
    assert time.monotonic() - t0 < 1.0 + 1.0


@pytest.mark.parametrize(
    "allocation",
    ["bytearray(4 * 2**30)", "[0] * (2**29)", "np.ones(2**29)", "np.zeros((2**15, 2**14))"],
)
def test_allocating_4_gb_is_a_code_limit(sandbox: Sandbox, allocation: str) -> None:
    code = f"import numpy as np\ndef schedule(state):\n    x = {allocation}\n    return [0] * 4\n"
    fail = failure(sandbox, code)
    assert fail.reason == "code_limit", fail.detail
    assert "memory" in fail.detail


def test_printing_100_mb_is_a_code_limit(sandbox: Sandbox) -> None:
    fail = failure(sandbox, "def schedule(state):\n    print('x' * (100 * 2**20))\n    return [0] * 4\n")
    assert fail.reason == "code_limit" and "output" in fail.detail
    # many small prints add up, and catching the limit does not help
    code = """
def schedule(state):
    try:
        for _ in range(10**6):
            print('y' * 1000)
    except BaseException:
        pass
    return [0] * 4
"""
    fail = failure(sandbox, code)
    assert fail.reason == "code_limit"


@pytest.mark.parametrize(
    "value",
    [
        "'x' * (100 * 2**20)",
        "np.zeros(100 * 2**17, dtype=np.int64)",
        "[1] * (100 * 2**17)",
        "['x' * (25 * 2**20)] * 4",  # the right length, 100 MB in its items
    ],
)
def test_returning_100_mb_is_a_code_limit(sandbox: Sandbox, value: str) -> None:
    fail = failure(sandbox, f"import numpy as np\ndef schedule(state):\n    return {value}\n")
    assert fail.reason == "code_limit", fail.detail


def test_printing_within_the_limit_is_fine(sandbox: Sandbox) -> None:
    code = "def schedule(state):\n    print('owners for', state.n, 'resources')\n    return list(range(state.n))\n"
    assert sandbox.run(code, {"n": 5}, 5).tolist() == [0, 1, 2, 3, 4]


def test_closing_a_program_during_a_call_on_another_thread_ends_that_call(sandbox: Sandbox) -> None:
    import threading

    with sandbox.compile("def schedule(state):\n    while True:\n        pass\n") as program:
        errors: list[CodeFailure] = []

        def call() -> None:
            try:
                program({}, 4, timeout_s=0.9)
            except CodeFailure as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        program.close()
        caller.join(5)
        assert not caller.is_alive() and time.monotonic() - t0 < 2.0
        assert [(e.reason, e.detail) for e in errors] == [
            ("code_error", "program worker is gone (closed during the call)")
        ]
        assert not program.alive


def test_the_digest_is_the_sha256_of_the_code(sandbox: Sandbox) -> None:
    import hashlib

    with sandbox.compile(GREEDY) as program:
        assert program.digest == hashlib.sha256(GREEDY.encode()).hexdigest()
    program.close()  # idempotent


def test_a_bad_state_is_the_callers_error_not_the_programs(sandbox: Sandbox) -> None:
    with sandbox.compile("def schedule(state):\n    return [0]\n") as program:
        with pytest.raises(TypeError):
            program({"names": np.array(["a", "b"])}, 1)
        with pytest.raises(TypeError):
            program({"items": [1, 2]}, 1)
        with pytest.raises(ValueError):
            program({"not an identifier": 1}, 1)
        assert program({}, 1).tolist() == [0]


def test_check_raises_sandbox_unavailable_without_bubblewrap(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        Sandbox.check()
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        Sandbox(bwrap=str(tmp_path / "bwrap")).compile(GREEDY)


def test_a_bubblewrap_that_cannot_make_namespaces_is_unavailable_and_nothing_runs(tmp_path) -> None:
    """As in a container whose profile forbids user namespaces: bwrap fails, the sandbox says so."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in --version) echo "bubblewrap 0.0-fake"; exit 0;; --help) exit 0;; esac\n'
        "echo 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="namespace"):
        Sandbox.check(str(fake))
    with pytest.raises(SandboxUnavailable):
        Sandbox(bwrap=str(fake)).run(GREEDY, random_state(np.random.default_rng(0)), 68)


def test_a_bubblewrap_that_runs_the_worker_unconfined_is_refused(tmp_path) -> None:
    """A 'bwrap' that ignores its options and runs the real worker directly, as root: the probe notices."""
    import sys
    from pathlib import Path

    import service.sandbox.runner as runner

    site = Path(np.__file__).resolve().parents[1]
    lib = Path(runner.__file__).resolve().parent
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in --version) echo "bubblewrap 0.0-fake"; exit 0;; --help) exit 0;; esac\n'
        f"exec {sys.executable} -s -S -B {lib / 'child.py'} {site} {lib}\n"
    )
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="uid"):
        Sandbox.check(str(fake))


def test_check_describes_the_mechanism_in_force(mechanism: str) -> None:
    assert "bubblewrap" in mechanism and "seccomp" in mechanism and "namespaces" in mechanism
    assert Sandbox.check() is mechanism or Sandbox.check() == mechanism
