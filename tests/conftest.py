"""Shared fixtures: free ports, a real Redis server, a real uvicorn server, real ``gnbsched serve``.

Redis (``redis_url``, one per session), in order of preference:
  1. ``$GNBSCHED_TEST_REDIS_URL`` when set;
  2. a private ``redis-server --port <free> --save "" --appendonly no`` when the binary is on PATH;
  3. ``redis://127.0.0.1:6379`` when something answers there;
  otherwise the test fails (never skips) saying how to install or start Redis. Tests that use
  it keep to their own keys (unique cell ids / key prefixes), so a shared server is safe.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from testkit import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
PROMTOOL_HELP = ("promtool not found on PATH: install the Debian package `prometheus` "
                 "(apt-get install prometheus; tests/run.sh installs it when root)")
REDIS_HELP = ("a Redis server is needed: install it (Debian: `apt-get install redis-server`; tests/run.sh does "
              "this when root), or start one on 127.0.0.1:6379, or point $GNBSCHED_TEST_REDIS_URL at one")


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server for this test session (see the module docstring)."""
    env = os.environ.get("GNBSCHED_TEST_REDIS_URL")
    if env:
        if not _redis_answers(env):
            pytest.fail(f"$GNBSCHED_TEST_REDIS_URL={env} does not answer PING; {REDIS_HELP}")
        yield env
        return
    binary = shutil.which("redis-server")
    if binary:
        port = free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            wait_until(lambda: proc.poll() is not None or _redis_answers(url), 10, f"redis-server on port {port}")
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"redis-server exited with {proc.returncode}: {out[-2000:]}")
            yield url
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
        return
    if _redis_answers("redis://127.0.0.1:6379/0"):
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


class UvicornThread:
    """A real uvicorn server for ``app`` in a background thread, on a pre-bound free port.
    ``options`` go to ``uvicorn.Config`` (e.g. ``ssl_certfile`` / ``ssl_keyfile``: https)."""

    def __init__(self, app, host: str = "127.0.0.1", **options) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if options.get('ssl_certfile') else 'http'}://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 20, "uvicorn startup")
        if not self.server.started:
            raise RuntimeError("uvicorn failed to start (see the log above)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


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


class ServeProcess:
    """A real ``gnbsched serve`` subprocess (``python -m service.cli serve ...``)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, rest_port: int | None = None) -> None:
        self.rest_port = rest_port if rest_port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.argv = [sys.executable, "-m", "service.cli", "serve", "--rest-port", str(self.rest_port),
                     "--log-level", "warning", *args]
        full_env = {**os.environ, **(env or {})}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.output = ""

    def wait_ready(self, timeout_s: float = 60) -> ServeProcess:
        def up() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s, f"gnbsched serve on {self.url}", interval_s=0.1)
        if self.proc.poll() is not None:
            raise RuntimeError(f"gnbsched serve exited with {self.proc.returncode}:\n{self.stop()}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> str:
        """Send ``sig``, wait for the exit, return everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.output += self.proc.stdout.read()
            self.proc.stdout.close()
        return self.output


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    """Factory: ``serve_process("--grpc-port", "0", ...)`` starts ``gnbsched serve`` (not yet ready:
    call ``.wait_ready()``; starting several first lets them boot in parallel); all are stopped
    with SIGTERM at teardown."""
    procs: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        p = ServeProcess(*args, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
