"""Prints what the sandbox costs here: `python -m service.sandbox.measure [--calls N] [--starts N]`.

Times `Sandbox.check()` (first call: filter build + one probe worker), `Sandbox.compile` (worker
start + compile), and `Program.__call__` on a state of 100 users x 68 resources for a greedy
program and a trivial one, against the same greedy function called in process; then the
worker's memory. The figures of docs/sandbox.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import types

import numpy as np

from service.sandbox import Sandbox

GREEDY = """
import numpy as np

def schedule(state):
    score = state.rate * state.weight[:, None]
    owner = np.argmax(score, axis=0)
    owner[~state.usable.any(axis=0)] = -1
    return owner
"""
TRIVIAL = "def schedule(state):\n    return [0] * state.num_res\n"
USERS, RESOURCES = 100, 68


def _state(rng: np.random.Generator) -> dict[str, object]:
    return {
        "rate": rng.random((USERS, RESOURCES)) * 1e6,
        "weight": rng.random(USERS),
        "usable": rng.random((USERS, RESOURCES)) > 0.3,
        "buffer_bytes": rng.integers(0, 10_000, USERS),
        "slot": 3,
        "num_res": RESOURCES,
    }


def _worker_memory_kb() -> dict[str, int]:
    """VmRSS and VmSize (kB) of the sandboxed interpreter(s) descending from this process, summed."""
    total = {"VmRSS": 0, "VmSize": 0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"/sandbox/lib/child.py" not in cmdline or os.path.basename(cmdline.split(b"\0")[0]) == b"bwrap":
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in total:
                        total[key] += int(value.split()[0])
        except OSError:
            continue
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per program")
    parser.add_argument("--starts", type=int, default=10, help="timed compiles")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    mechanism = Sandbox.check()
    print(f"mechanism: {mechanism}")
    print(f"check, first call: {1e3 * (time.perf_counter() - t0):.0f} ms")
    sandbox = Sandbox()
    starts = []
    for _ in range(args.starts):
        t0 = time.perf_counter()
        program = sandbox.compile(GREEDY)
        starts.append(time.perf_counter() - t0)
        program.close()
    print(
        f"compile: median {1e3 * statistics.median(starts):.0f} ms, min {1e3 * min(starts):.0f}, max {1e3 * max(starts):.0f}"
    )

    rng = np.random.default_rng(0)
    states = [_state(rng) for _ in range(20)]
    for code, name in ((GREEDY, "greedy"), (TRIVIAL, "trivial")):
        with sandbox.compile(code) as program:
            for state in states:
                program(state, RESOURCES)
            times = []
            for i in range(args.calls):
                t0 = time.perf_counter()
                program(states[i % len(states)], RESOURCES)
                times.append(time.perf_counter() - t0)
            times.sort()
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            print(
                f"call, {name}, {USERS}x{RESOURCES}: median {1e6 * statistics.median(times):.0f} us, p99 {1e6 * p99:.0f} us"
            )
            if name == "greedy":
                memory = _worker_memory_kb()
    namespace: dict[str, object] = {}
    exec(GREEDY, namespace)  # our own program, in process, for the comparison
    schedule = namespace["schedule"]
    assert callable(schedule)
    times = []
    for i in range(args.calls):
        namespace_state = types.SimpleNamespace(**states[i % len(states)])
        t0 = time.perf_counter()
        schedule(namespace_state)
        times.append(time.perf_counter() - t0)
    print(f"the greedy function in process (no sandbox): median {1e6 * statistics.median(times):.0f} us")
    print(f"worker memory: {memory['VmRSS'] / 1024:.0f} MB resident, {memory['VmSize'] / 1024:.0f} MB virtual")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
