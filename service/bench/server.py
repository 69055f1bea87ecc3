"""``gnbsched serve`` in a subprocess for the benchmarks (``bench perf``, ``bench soak``).

``ServeProcess`` starts the service on free loopback ports (REST, and gRPC unless disabled),
its output in a temporary log file, with a clean environment (no ``GNBSCHED_*`` or Prometheus
multiprocess variables of the caller), waits until REST answers ``/readyz`` and the gRPC port
accepts, and stops it with SIGTERM (then SIGKILL). ``peak_rss_mib`` reads the server's VmHWM,
``cpu_s`` its CPU time; ``command`` is the command line (a subclass serves something else, e.g.
the echo floor of ``bench perf``).
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``gnbsched serve`` on free loopback ports; a context manager (start, wait ready, stop)."""

    def __init__(self, extra: Sequence[str] = (), *, grpc: bool = True, startup_timeout_s: float = 60.0) -> None:
        self.rest_port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.extra = list(extra)
        self.timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        """The server's command line (a subclass may serve something else on the same ports,
        answering ``GET /readyz`` with 200)."""
        return [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--rest-port",
                str(self.rest_port), "--grpc-port", str(self.grpc_port), "--log-level", "warning", *self.extra]  # fmt: skip

    def start(self) -> ServeProcess:
        fd, name = tempfile.mkstemp(prefix="gnbsched-bench-server-", suffix=".log")
        self.log_path = Path(name)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GNBSCHED_") and k.lower() != "prometheus_multiproc_dir"
        }
        self.proc = subprocess.Popen(self.command(), stdout=fd, stderr=fd, env=env, start_new_session=True)
        os.close(fd)
        return self

    def wait_ready(self) -> ServeProcess:
        """Until REST answers ``/readyz`` 200 and the gRPC port (if any) accepts connections."""
        deadline = time.monotonic() + self.timeout_s
        rest_ok, grpc_ok = False, self.grpc_port == 0
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gnbsched serve exited with {self.proc.returncode}: {self.log_tail()}")
            if not rest_ok:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    conn = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=1.0)
                    conn.request("GET", "/readyz")
                    rest_ok = conn.getresponse().status == 200
                    conn.close()
            if rest_ok and not grpc_ok:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", self.grpc_port), timeout=0.5).close()
                    grpc_ok = True
            if rest_ok and grpc_ok:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"gnbsched serve not ready after {self.timeout_s:.0f} s: {self.log_tail()}")

    def output(self) -> str:
        """Everything the server printed so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 2000) -> str:
        return self.output()[-chars:]

    def peak_rss_mib(self) -> float:
        """VmHWM of the server process (Linux), MiB; NaN when unknown."""
        if self.proc is None:
            return math.nan
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return math.nan

    def cpu_s(self) -> float:
        """CPU time (user + system, every thread) the server process has used so far, seconds
        (Linux ``/proc``, clock-tick resolution); NaN when unknown."""
        if self.proc is None:
            return math.nan
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return math.nan

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; removes the log. Returns the exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> ServeProcess:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
