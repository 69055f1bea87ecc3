"""The CPU cores this process is given (read from the OS at the edge, for ``gnbsched serve``).

A container or a pod usually sees every core of its node through ``os.cpu_count()``; what it may
use is its CPU affinity (``taskset``, a cpuset) and, under Kubernetes CPU limits, the cgroup's
CFS quota: ``cpu.max`` (cgroup v2: ``"<quota> <period>"`` or ``"max <period>"``) or
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (cgroup v1, quota ``-1`` = none). A quota of 1.5
CPUs gives 2 cores (rounded up: a process per partial core still runs).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_v2(proc_cgroup: Path) -> str | None:
    """The process's cgroup v2 path (``0::/path`` of /proc/self/cgroup), or None."""
    text = _read(proc_cgroup)
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            return line[3:].lstrip("/")
    return None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5) of this process's cgroup, or None when there is none or it
    cannot be read. cgroup v2: the process's own ``cpu.max``, then the root's (a container sees
    its cgroup as the root); cgroup v1: ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``."""
    own = _own_cgroup_v2(proc_cgroup)
    for directory in dict.fromkeys([root / own if own else root, root]):
        text = _read(directory / "cpu.max")
        if text is None:
            continue
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = float(parts[0]), float(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota_text, period_text = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    try:
        quota, period = float(quota_text or "-1"), float(period_text or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cores_given(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Cores this process may use: its CPU affinity (``os.cpu_count()`` where the OS has none),
    capped by the cgroup CPU quota rounded up; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota - 1e-9))
    return max(1, cores)


__all__ = ["cgroup_cpu_quota", "cores_given"]
