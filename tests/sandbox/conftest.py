"""Fixtures of the sandbox tests: the sandbox must work here (the tests fail, never skip, when it does not),
and no test leaves a worker process behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from service.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

CHILD_MARK = b"/sandbox/lib/child.py"

# Short limits keep the timeout tests fast; the behaviour is the same as with the defaults.
FAST = SandboxLimits(cpu_s=0.5, wall_s=1.0, compile_timeout_s=5.0)


def worker_pids() -> set[int]:
    """Host pids of this process's descendants that run the sandbox worker."""
    parents: dict[int, int] = {}
    marked: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
        if CHILD_MARK in cmdline:
            marked.add(int(entry))
    me = os.getpid()
    found = set()
    for pid in marked:
        seen, cur = 0, pid
        while cur > 1 and seen < 64:
            cur = parents.get(cur, 0)
            seen += 1
            if cur == me:
                found.add(pid)
                break
    return found


@pytest.fixture(scope="session")
def mechanism() -> str:
    try:
        return Sandbox.check()
    except SandboxUnavailable as exc:
        pytest.fail(f"the sandbox is not available on this machine: {exc} (tests/run.sh installs bubblewrap when root)")


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    before = worker_pids()
    yield
    deadline = time.monotonic() + 2.0  # a killed sandbox's inner processes go a moment after bubblewrap
    while (left := worker_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"sandbox worker processes left running: {sorted(left)}"


@pytest.fixture
def sandbox(mechanism: str) -> Sandbox:
    return Sandbox(FAST)


@pytest.fixture
def bare(mechanism: str) -> Sandbox:
    """The kernel layers alone (bubblewrap, seccomp, rlimits), without the in-process Python guard."""
    return Sandbox(FAST, python_guard=False)
