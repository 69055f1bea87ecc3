"""``service.cores``: the cores a process is given (affinity capped by the cgroup CPU quota), and
``Settings.worker_count``, which turns ``--workers 0`` into one server process per such core."""

from __future__ import annotations

import math
import os
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.cores import cgroup_cpu_quota, cores_given

AFFINITY = len(os.sched_getaffinity(0))


def _cgroup(tmp_path: Path, files: dict[str, str], own: str | None = None) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::/{own}\n" if own is not None else "")
    return root, proc


@pytest.mark.parametrize(
    ("files", "own", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, None, 1.5),  # cgroup v2, a container's view of its own cgroup
        ({"cpu.max": "max 100000\n"}, None, None),  # no limit
        ({"kubepods/pod1/cpu.max": "200000 100000", "cpu.max": "max 100000"}, "kubepods/pod1", 2.0),  # own path
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, None, 3.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None, None),
        ({"cpu.max": "garbage here"}, None, None),
        ({}, None, None),  # nothing readable
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path, files, own, quota) -> None:
    root, proc = _cgroup(tmp_path, files, own)
    assert cgroup_cpu_quota(root, proc) == quota
    want = AFFINITY if quota is None else max(1, min(AFFINITY, math.ceil(quota)))
    assert cores_given(root, proc) == want  # a partial core counts as one


def test_a_quota_below_one_core_still_gives_one(tmp_path) -> None:
    root, proc = _cgroup(tmp_path, {"cpu.max": "10000 100000"})
    assert cores_given(root, proc) == 1


def test_workers_zero_is_one_per_core_with_shared_state_and_one_with_in_process_state(monkeypatch) -> None:
    import service.cores

    monkeypatch.setattr(service.cores, "cores_given", lambda *a, **k: 6)
    assert Settings().workers == 0 and Settings().worker_count() == 1  # memory://: a cell stays in one process
    assert Settings(state_url="redis://127.0.0.1:6379/0").worker_count() == 6
    assert Settings(state_url="redis://127.0.0.1:6379/0", workers=3).worker_count() == 3  # asked: as asked
    assert Settings(workers=2).worker_count() == 2  # asked, even with in-process state (serve warns)
    assert Settings(state_url="redis://x:1/0", rest_port=0).worker_count() == 1  # gRPC alone: one process
    with pytest.raises(ValueError):
        Settings(workers=-1)


def test_serve_with_redis_state_starts_one_worker_per_core_given(serve_process, redis_url) -> None:
    cores = cores_given()
    proc = serve_process("--grpc-port", "0", "--state-url", redis_url).wait_ready()
    pids = set()
    for _ in range(200 if cores > 1 else 3):  # a new connection each: the kernel spreads them over the workers
        with httpx.Client(base_url=proc.url, timeout=10) as c:
            pids.add(c.get("/healthz").json()["pid"])
        if len(pids) == cores:
            break
    out = proc.stop()
    assert f"gnbsched serve: {cores} worker process(es) (asked: 0)" in out, out
    assert len(pids) == cores, (pids, out)
