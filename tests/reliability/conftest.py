"""Fixtures of the reliability tests (real processes: ``testkit``; artifacts: ``support``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testkit import RedisProcess, ServeProcess

from .support import FakeTeacher, Pki, make_pki


@pytest.fixture
def service(serve_process: Callable[..., ServeProcess]) -> Callable[..., ServeProcess]:
    """The ``serve_process`` factory of tests/conftest.py under the name these tests use:
    ``service(*serve_args, env=..., grpc=...)`` starts ``gnbsched serve`` (call ``.wait_ready()``);
    every one started is stopped at teardown."""
    return serve_process


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A private redis-server of this test only (it may kill and restart it)."""
    with RedisProcess() as proc:
        yield proc.start()


@pytest.fixture
def fake_teacher() -> Iterator[FakeTeacher]:
    fake = FakeTeacher()
    yield fake
    fake.close()


#: the teacher's settings in the tests: no tokenizer probes, a small concurrency limit
TEACHER_ENV = {
    "GNBSCHED_TEACHER_TOKENIZER": "estimate",
    "GNBSCHED_TEACHER_TIMEOUT_S": "30",
    "GNBSCHED_TEACHER_MAX_CONCURRENCY": "2",
}


@pytest.fixture(scope="session")
def teacher_stack() -> Iterator[tuple[FakeTeacher, ServeProcess]]:
    """(fake teacher, service using it with the greedy fallback), shared by the tests that switch
    the fake's behaviour; each test resets it with ``reset_teacher``."""
    fake = FakeTeacher()
    svc = ServeProcess(
        "--grpc-port", "0", "--fallbacks", "greedy", env={**TEACHER_ENV, "GNBSCHED_TEACHER_URL": fake.url}
    )
    try:
        svc.wait_ready()
        yield fake, svc
    finally:
        svc.close()
        fake.close()


def reset_teacher(fake: FakeTeacher, **changes) -> FakeTeacher:
    fake.mode, fake.text, fake.raw, fake.status, fake.delay_s = "text", '{"owner": []}', b"not json", 500, 0.0
    for key, value in changes.items():
        setattr(fake, key, value)
    return fake


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory, token: str) -> Path:
    path = tmp_path_factory.mktemp("secret") / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path
