"""Shared fixtures: a real Redis server, a real uvicorn server, real ``gnbsched serve`` processes
(the helpers behind them are in ``testkit``). The report of a failed test ends with the log tail
of every server process still open (``testkit.live_processes``).

Redis (``redis_url``, one per session), in order of preference:
  1. ``$GNBSCHED_TEST_REDIS_URL`` when set;
  2. a private ``redis-server --port <free> --save "" --appendonly no`` when the binary is on PATH;
  3. ``redis://127.0.0.1:6379`` when something answers there;
  otherwise the test fails (never skips) saying how to install or start Redis. Tests that use
  it keep to their own keys (unique cell ids / key prefixes), so a shared server is safe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from testkit import RedisProcess, ServeProcess, UvicornThread, live_processes, redis_answers

PROMTOOL_HELP = (
    "promtool not found on PATH: install the Debian package `prometheus` "
    "(apt-get install prometheus; tests/run.sh installs it when root)"
)
REDIS_HELP = (
    "a Redis server is needed: install it (Debian: `apt-get install redis-server`; tests/run.sh does "
    "this when root), or start one on 127.0.0.1:6379, or point $GNBSCHED_TEST_REDIS_URL at one"
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report shows the end of the log of every server process still open."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for proc in live_processes():
            state = "running" if proc.running else f"exited with {proc.returncode}"
            report.sections.append(
                (f"{proc.name} (pid {proc.pid}, {state}): end of {proc.log_path}", proc.log_tail(3000))
            )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server for this test session (see the module docstring)."""
    env = os.environ.get("GNBSCHED_TEST_REDIS_URL")
    if env:
        if not redis_answers(env):
            pytest.fail(f"$GNBSCHED_TEST_REDIS_URL={env} does not answer PING; {REDIS_HELP}")
        yield env
        return
    if shutil.which("redis-server"):
        with RedisProcess() as server:
            yield server.start().url
        return
    if redis_answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    pytest.fail(f"no redis-server on PATH and nothing answers on 127.0.0.1:6379; {REDIS_HELP}")


@pytest.fixture(scope="session")
def promtool_check() -> Callable[[str], None]:
    """``promtool_check(text)``: assert that ``promtool check metrics`` accepts a text exposition.
    Fails (never skips) when promtool is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_HELP)

    def check(text: str) -> None:
        out = subprocess.run([path, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"promtool check metrics failed:\n{out.stdout}{out.stderr}\n--- input ---\n{text}"

    return check


@pytest.fixture(scope="module")
def uvicorn_server() -> Iterator[Callable[..., UvicornThread]]:
    """Factory: ``uvicorn_server(app, **uvicorn_options)`` starts it and returns the running ``UvicornThread``;
    every server started is stopped when the test module ends."""
    started: list[UvicornThread] = []

    def start(app, **options) -> UvicornThread:
        srv = UvicornThread(app, **options).__enter__()
        started.append(srv)
        return srv

    yield start
    for srv in reversed(started):
        srv.__exit__(None, None, None)


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    """Factory: ``serve_process(*serve_args, env=..., grpc=..., rest=..., rest_verify=...)`` starts
    ``gnbsched serve`` (``testkit.ServeProcess``: not yet ready, call ``.wait_ready()``; starting
    several first lets them boot in parallel); every one started is stopped at teardown."""
    started: list[ServeProcess] = []

    def start(*args: str, **kwargs: Any) -> ServeProcess:
        proc = ServeProcess(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.close()
