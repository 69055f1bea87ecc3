"""The test kit: helpers shared by every test folder (imported as ``testkit``: ``tests/`` is on
``sys.path``). Fixtures stay in the ``conftest.py`` files; what they build lives here.

Kept out of ``conftest.py`` on purpose: several folders have a ``conftest.py`` of their own, so
``from conftest import ...`` picks whichever was imported last (``tests/api`` and ``tests/trainer``
collected in one command used to clash on it).

* ports and polling: ``free_port``, ``port_open``, ``http_ok``, ``wait_until``;
* real processes: ``ServerProcess`` (any server subprocess), ``ServeProcess`` (``gnbsched serve``
  on free ports), ``RedisProcess`` (a private ``redis-server``; ``RedisProcess.replica_of`` a
  replica of one), ``SentinelProcess`` (a Redis Sentinel watching a master), ``RedisClusterNodes``
  (a Redis Cluster of private nodes), ``child_env``, ``redis_answers``, ``redis_info``;
  every process started and not yet closed is listed by ``live_processes`` (tests/conftest.py adds
  their log tails to the report of a failed test);
* an in-process server: ``UvicornThread``;
* policies for the fallback tests: ``AllToFirst``, ``Broken``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from service.history import HistoryView
from service.policies.base import Policy, PolicyContext
from service.types import SlotState, make_slot

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
#: environment a child server never inherits: the developer's settings, Prometheus multiprocess dirs
PRIVATE_ENV_PREFIXES = ("GNBSCHED_", "PROMETHEUS_", "prometheus_multiproc")
REDIS_MISSING = (
    "redis-server is not on PATH: install it (Debian: `apt-get install redis-server`; tests/run.sh does this when root)"
)
REDIS_CLI_MISSING = (
    "redis-cli is not on PATH (it creates the test Redis Cluster): install it with redis-server "
    "(Debian: `apt-get install redis-server`; tests/run.sh does this when root)"
)
#: a master starts a full resync at once (redis-server 7 waits 5 s for more replicas by default)
REDIS_FAST_SYNC = ("--repl-diskless-sync-delay", "0")


# ----------------------------------------------------------------------------- ports and polling


def held_history(avg_served: Any, cum_resources: Any, first_seen_slot: Any = 0) -> HistoryView:
    """A ``HistoryView`` of users all known and never served, with the given PF averages and
    resources held so far (float [N]) and first-seen slots (int [N] or one for all; None: unknown)."""
    avg = np.asarray(avg_served, np.float64)
    n = avg.size
    first = None if first_seen_slot is None else np.broadcast_to(np.asarray(first_seen_slot, np.int64), (n,)).copy()
    return HistoryView(avg, np.asarray(cum_resources, np.float64), np.full(n, -1, np.int64), np.ones(n, bool), first)


def light_mac_slot(rng: np.random.Generator, slot: int = 20) -> SlotState:
    """A random mac slot of 2-11 users on 2-15 RBGs, mostly light buffers (RBGs often left idle):
    log-normal rates with 10 % zero-rate pairs, random ids, busy RBGs, ineligible users and caps."""
    n, r = int(rng.integers(2, 12)), int(rng.integers(2, 16))
    return make_slot(
        "mac",
        rng.choice(1000, n, replace=False),
        rng.choice(1000, r, replace=False),
        rate_bps=np.exp(rng.normal(np.log(1e6), 1.0, (n, r))) * (rng.random((n, r)) > 0.1),
        buffer_bits=rng.choice([0.0, 200.0, 800.0, 3_000.0, 1e5], n),
        resource_available=rng.random(r) > 0.2,
        user_eligible=rng.random(n) > 0.1,
        max_resources_per_user=int(rng.choice([1, 2, 4, 100])),
        tti_s=1e-3,
        slot=slot,
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a child process to bind; or, left unbound, a
    port nobody listens on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, status: int = 200, verify: Any = True, timeout_s: float = 2.0) -> bool:
    """Whether ``GET url`` answers ``status`` (``verify``: as httpx's, e.g. an ``ssl.SSLContext``)."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout_s, verify=verify).status_code == status
    except httpx.HTTPError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ----------------------------------------------------------------------------- server processes


def child_env(**settings: str) -> dict[str, str]:
    """This process's environment without ``PRIVATE_ENV_PREFIXES``, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_ENV_PREFIXES)}
    env.update(settings)
    return env


_LIVE: list[ServerProcess] = []


def live_processes() -> list[ServerProcess]:
    """Every ``ServerProcess`` started and not yet closed (running or not)."""
    return list(_LIVE)


class ServerProcess:
    """A server subprocess: its own session (``stop``/``close`` also clear stray children of its
    group), stdout and stderr to a log file (``log_path``, else a temporary file removed by
    ``close``), readiness waits that fail with the log's tail, graceful stop.

    Not started by the constructor: ``start()`` (again after a stop or kill: same command, same
    log, appended). A context manager: ``close()`` on exit.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.env = env if env is not None else child_env()
        self.cwd = cwd if cwd is not None else REPO
        self.name = name or Path(self.argv[0]).name
        self._own_log = log_path is None
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix=f"{self.name.replace(' ', '-')}-", suffix=".log")
            os.close(fd)
            log_path = Path(tmp)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        if self.running:
            raise RuntimeError(f"{self.name} (pid {self.pid}) is already running")
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self not in _LIVE:
            _LIVE.append(self)
        return self

    def _popen(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.proc

    @property
    def pid(self) -> int:
        return self._popen().pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: the signal that ended it), else None."""
        return self._popen().poll()

    def output(self) -> str:
        """Everything it printed so far (stdout and stderr, every start)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def _failure(self, what: str) -> str:
        return f"{self.name} {what}; the end of its log ({self.log_path}):\n{self.log_tail()}"

    def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1
    ) -> ServerProcess:
        """Poll ``predicate`` until it holds; ``RuntimeError`` if the process exits first,
        ``TimeoutError`` after ``timeout_s`` (both with the log's tail)."""
        proc = self._popen()
        end = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(self._failure(f"exited with {proc.returncode} before {what}"))
            if predicate():
                return self
            if time.monotonic() >= end:
                raise TimeoutError(self._failure(f"not ready after {timeout_s:.0f} s: no {what}"))
            time.sleep(interval_s)

    def wait_http(self, url: str, timeout_s: float = 60.0, status: int = 200, verify: Any = True) -> ServerProcess:
        """Wait until ``GET url`` answers ``status`` (see ``wait_for``)."""
        return self.wait_for(lambda: http_ok(url, status, verify), timeout_s, f"HTTP {status} from {url}")

    def _kill_group(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> str:
        """Send ``sig`` and wait for the exit; return everything it printed. Not exited within
        ``timeout_s``: killed, and ``AssertionError`` (a graceful stop is part of the contract)."""
        proc = self._popen()
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_group()
                proc.wait(5)
                raise AssertionError(self._failure(f"did not exit within {timeout_s:.0f} s of signal {sig}")) from None
        self._kill_group()  # stray children of its group, if any
        return self.output()

    def kill(self) -> None:
        """SIGKILL (its whole group): it vanishes without closing anything cleanly."""
        if self.running:
            self._kill_group()
            self._popen().wait(5)

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop it (SIGTERM, killed after ``timeout_s``, no error) and remove a temporary log."""
        if self.proc is not None:
            with contextlib.suppress(AssertionError):
                self.stop(timeout_s=timeout_s)
        if self in _LIVE:
            _LIVE.remove(self)
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: ``gnbsched serve`` from this checkout (the console script is ``gnbsched serve``)
SERVE_COMMAND = (sys.executable, "-m", "service.cli", "serve")


class ServeProcess(ServerProcess):
    """``gnbsched serve`` on free loopback ports, started at once but not yet ready: call
    ``wait_ready()`` (several started first boot in parallel).

    REST on a free port (``rest_port``, ``url``) unless ``rest=False``; gRPC on a free port
    (``grpc_port``, ``grpc_target``) when ``grpc=True``, else off. The ports go on the command line
    (``--rest-port``, ``--grpc-port``, ``--log-level warning``) before ``args``, so a flag in
    ``args`` wins; with ``settings_in_env=True`` they go into ``GNBSCHED_HOST`` / ``_REST_PORT`` /
    ``_GRPC_PORT`` instead, as a container sets them, and no flag is added. The environment is
    ``child_env()`` (none of the developer's ``GNBSCHED_*``) plus ``env``. ``rest_verify``: an
    ``ssl.SSLContext`` for a service started with ``--rest-tls-cert`` (``url`` is then https and
    readiness is polled with it). ``command``: what to run instead of ``SERVE_COMMAND`` (e.g. the
    installed console script, or an image's entry point).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        rest: bool = True,
        grpc: bool = False,
        rest_verify: Any = None,
        command: Sequence[str] = SERVE_COMMAND,
        settings_in_env: bool = False,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.rest_port = free_port() if rest else 0
        self.grpc_port = free_port() if grpc else 0
        self.verify = rest_verify if rest_verify is not None else True
        self.url = f"{'https' if rest_verify is not None else 'http'}://{LOOPBACK}:{self.rest_port}"
        self.grpc_target = f"{LOOPBACK}:{self.grpc_port}"
        full_env = child_env(**(env or {}))
        flags: list[str] = []
        if settings_in_env:
            full_env.update(
                GNBSCHED_HOST=LOOPBACK, GNBSCHED_REST_PORT=str(self.rest_port), GNBSCHED_GRPC_PORT=str(self.grpc_port)
            )
        else:
            flags = ["--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port), "--log-level", "warning"]
        super().__init__([*command, *flags, *args], env=full_env, cwd=cwd, log_path=log_path, name="gnbsched serve")
        self.start()

    def wait_ready(self, timeout_s: float = 60.0, path: str = "/healthz") -> ServeProcess:
        """Wait until REST answers 200 on ``path`` (gRPC only: until its port accepts)."""
        if self.rest_port:
            self.wait_http(self.url + path, timeout_s, verify=self.verify)
        elif self.grpc_port:
            self.wait_for(lambda: port_open(self.grpc_port), timeout_s, f"gRPC listening on {self.grpc_target}")
        else:
            raise ValueError("neither REST nor gRPC to wait for")
        return self


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """Whether the Redis server at ``url`` answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def redis_info(port: int, section: str = "", host: str = LOOPBACK, timeout_s: float = 1.0) -> dict[str, str]:
    """``INFO [section]`` of the Redis server (or Sentinel) on ``host:port`` as {field: value};
    {} when it does not answer."""
    import redis

    try:
        client = redis.Redis(host=host, port=port, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            raw = client.execute_command("INFO", section) if section else client.execute_command("INFO")
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return {}
    if isinstance(raw, dict):  # redis-py parses INFO (values as str, int or float)
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


class RedisProcess(ServerProcess):
    """A private ``redis-server`` on a free loopback port (``port``, ``url``), no persistence,
    that a test may stop, kill and ``start()`` again on the same port; ``start()`` returns once
    it answers PING. ``dir``: its working directory; ``args``: more ``redis-server`` flags."""

    def __init__(
        self,
        dir: Path | None = None,
        log_path: Path | None = None,
        args: Sequence[str] = (),
        name: str = "redis-server",
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError(REDIS_MISSING)
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        argv = [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        if dir is not None:
            argv += ["--dir", str(dir)]
        super().__init__([*argv, *args], log_path=log_path, name=name)

    @classmethod
    def replica_of(cls, master: RedisProcess, dir: Path | None = None, args: Sequence[str] = ()) -> RedisProcess:
        """A ``redis-server --replicaof`` ``master`` (not started; ``wait_in_sync`` after ``start``)."""
        return cls(
            dir=dir,
            args=[*REDIS_FAST_SYNC, "--replicaof", LOOPBACK, str(master.port), *args],
            name=f"redis-replica-of-{master.port}",
        )

    def info(self, section: str = "") -> dict[str, str]:
        """Its ``INFO [section]`` ({} when it does not answer)."""
        return redis_info(self.port, section)

    def wait_in_sync(self, timeout_s: float = 15.0) -> RedisProcess:
        """Wait until this replica's link to its master is up (the initial sync is done)."""
        return self.wait_for(
            lambda: self.info("replication").get("master_link_status") == "up",
            timeout_s,
            "master_link_status:up (replica in sync)",
        )

    def start(self, timeout_s: float = 10.0) -> RedisProcess:
        super().start()
        self.wait_for(self.answers, timeout_s, f"PING answered on port {self.port}", interval_s=0.02)
        return self

    def answers(self) -> bool:
        return redis_answers(self.url, 0.3)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)


class SentinelProcess(ServerProcess):
    """A private Redis Sentinel (``redis-server <dir>/sentinel-<port>.conf --sentinel``) on a free
    loopback port, monitoring ``master`` as ``name`` with quorum 1 and fast failure detection
    (``down_after_ms``, ``failover_timeout_ms``). ``start()`` returns once it answers PING;
    ``url(**options)`` is the ``redis+sentinel://`` state URL of the monitored master.

    ``down_after_ms`` below about 1 s makes Sentinel flap: it reconnects a link at most once a
    second, so a freshly promoted master looks down at once and is failed over again (measured
    with 300 ms: 4 to 5 switches in 10 s; with 1500 ms: one, complete about 4.5 s after a kill)."""

    def __init__(
        self,
        master: RedisProcess,
        dir: Path,
        name: str = "m",
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 2000,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError(REDIS_MISSING)
        self.port = free_port()
        self.master_name = name
        self.conf = Path(dir) / f"sentinel-{self.port}.conf"  # Sentinel rewrites it: one per process
        self.conf.write_text(
            f"port {self.port}\nbind {LOOPBACK}\ndir {dir}\n"
            f"sentinel monitor {name} {LOOPBACK} {master.port} 1\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
        )
        super().__init__([binary, str(self.conf), "--sentinel"], name="redis-sentinel")

    def start(self, timeout_s: float = 10.0) -> SentinelProcess:
        super().start()
        self.wait_for(
            lambda: redis_answers(f"redis://{LOOPBACK}:{self.port}", 0.3),
            timeout_s,
            f"PING answered on port {self.port}",
            interval_s=0.02,
        )
        return self

    def url(self, **options: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis+sentinel://{LOOPBACK}:{self.port}/{self.master_name}" + (f"?{query}" if query else "")

    def _ask(self, *command: str) -> Any:
        import redis

        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def master_port(self) -> int | None:
        """The port of the master as this Sentinel reports it now (None: it does not answer)."""
        try:
            addr = self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        except Exception:
            return None
        return int(addr[1]) if addr else None

    def replica_ports(self) -> list[int]:
        """Ports of the replicas it knows and sees up."""
        import redis

        try:
            replicas = self._ask("SENTINEL", "REPLICAS", self.master_name)
        except (redis.RedisError, OSError):
            return []
        out = []
        for r in replicas:
            fields = r if isinstance(r, dict) else dict(zip(r[::2], r[1::2], strict=True))
            flags = str(fields.get("flags", ""))
            if "s_down" not in flags and "disconnected" not in flags:
                out.append(int(fields["port"]))
        return sorted(out)

    def wait_replicas(self, ports: Sequence[int], timeout_s: float = 15.0) -> SentinelProcess:
        """Wait until it knows every replica in ``ports`` (up)."""
        want = set(ports)
        return self.wait_for(
            lambda: want <= set(self.replica_ports()),
            timeout_s,
            f"Sentinel knowing the replicas on ports {sorted(want)}",
        )

    def wait_failover(self, old_port: int, timeout_s: float = 20.0) -> int:
        """Wait until it reports a master other than ``old_port``; returns the new master's port."""
        self.wait_for(
            lambda: self.master_port() not in (None, old_port),
            timeout_s,
            f"a failover away from the master on port {old_port}",
        )
        port = self.master_port()
        assert port is not None
        return port


class RedisClusterNodes:
    """A Redis Cluster of ``size`` private primaries (no replicas) under ``dir``: ``start()``
    starts the nodes (``nodes``, ``RedisProcess``es), joins them with ``redis-cli --cluster
    create`` and returns once every node reports ``cluster_state:ok``. ``url``: the
    ``redis+cluster://`` URL of the first node. A context manager: ``close()`` stops them all."""

    def __init__(self, dir: Path, size: int = 3) -> None:
        self.dir = Path(dir)
        self.nodes: list[RedisProcess] = []
        for _ in range(size):
            node = RedisProcess(dir=self.dir, name="redis-cluster-node")
            # the bus port on its own free port: port + 10000 (the default) may be taken or above 65535
            node.argv += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / f"nodes-{node.port}.conf"),
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                "5000",
            ]
            self.nodes.append(node)
        self.url = f"redis+cluster://{LOOPBACK}:{self.nodes[0].port}"

    def start(self, timeout_s: float = 20.0) -> RedisClusterNodes:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise AssertionError(REDIS_CLI_MISSING)
        for node in self.nodes:
            node.start()
        out = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"{LOOPBACK}:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({out.returncode}):\n{out.stdout}{out.stderr}")
        for node in self.nodes:
            node.wait_for(lambda n=node: self._ready(n), timeout_s, "cluster_state:ok with every node known")
        return self

    def cluster_info(self, node: RedisProcess) -> dict[str, str]:
        """``CLUSTER INFO`` of ``node`` ({} when it does not answer)."""
        import redis

        try:
            client = redis.Redis(host=LOOPBACK, port=node.port, socket_timeout=1, decode_responses=True)
            try:
                raw = client.execute_command("CLUSTER INFO")
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return {}
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)

    def _ready(self, node: RedisProcess) -> bool:
        info = self.cluster_info(node)
        return info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(len(self.nodes))

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- in-process server


class UvicornThread:
    """A real uvicorn server for ``app`` in a background thread, on a pre-bound free port.
    ``options`` go to ``uvicorn.Config`` (e.g. ``ssl_certfile`` / ``ssl_keyfile``: https)."""

    def __init__(self, app: Any, host: str = LOOPBACK, **options: Any) -> None:
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


# ----------------------------------------------------------------------------- policies


class AllToFirst(Policy):
    """Raw output that breaks the grammar: every resource to user 1 (busy-resource and cap violations)."""

    name = "all_to_first"

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        return np.ones(state.num_res, np.int64)


class Broken(Policy):
    """A policy that always fails (exercises the fallback chain)."""

    name = "broken"

    def act(self, state: SlotState, ctx: PolicyContext, obs: object) -> np.ndarray:
        raise RuntimeError("model exploded")
