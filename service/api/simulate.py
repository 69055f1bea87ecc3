"""``gnbsched simulate``: drive a scheduling service from the simulators, slot by slot.

    gnbsched simulate --target grpc://127.0.0.1:50051 --preset mac --slots 500 --stream
    gnbsched simulate --target http://127.0.0.1:8000 --preset spectrum --scenario u10-c15-b3
    gnbsched simulate --target inproc ...   # the same loop against an in-process ServiceCore
    gnbsched simulate --world sionna --sites 7 --ues-per-sector 4 --slots 100   # a 3GPP world

The closed loop is ``service.sim.base.run_episode``: each slot's state and the previous slot's
feedback (delivered bits per user id) go to the service, its decision (``owner`` as user ids)
is turned back into DCM tokens and played by the simulator; the KPIs are printed at the end.

The service sees exactly the simulator's slot: the utility matrix travels (fading and
interference included) as ``rate_bps`` in spectrum (bit/s) and as the unitless ``utility`` in
mac (the simulator's bits per RBG per slot, taken as given, so the buffers compare with it
bit-exactly; ``rate_bps`` is bit/s there and would be multiplied by ``tti_s``), together with
the physical fields the state has. With the
same ``--seed``, the same policy and a service on default decision settings (``GNBSCHED_SEED``,
``GNBSCHED_EWMA_SLOTS``, no deadline — as the in-process core reads them from the same
environment), a remote run gives the KPIs of ``--target inproc``. Each run uses its own cell id
(``--cell-id``, default ``sim-<preset>-<random>``) so the service's per-cell history starts
empty; random-draw policies also seed by cell id, so compare such runs with one ``--cell-id``.

``--world sionna`` replaces the preset's simulator by the TR 38.901 link-layer world on Sionna
SYS (``trainer.sionna_world``, the ``sionna`` extra, loaded by import string: the service never
imports it): every sector of the drop is a mac cell, decided every slot over the same targets
(``--batch``: the sectors of a slot in one call), with ``rate_bps`` from the channel and the
current MCS, the buffers and the pending HARQ retransmissions; the KPIs are the world's (cell and
5th-percentile user throughput, BLER, latency, ...). ``--scenario`` is then ``uma`` or ``umi``;
``--sites``, ``--ues-per-sector``, ``--scs-khz`` and ``--bandwidth-mhz`` shape the drop and the
carrier.

A service started with a bearer token (``--auth-token-file``) wants ``--token-file``; gRPC TLS
wants ``--tls-ca`` (the CA of the server's certificate) and, for mTLS, ``--tls-cert`` /
``--tls-key``. For an ``https://`` target (``serve --rest-tls-cert``, or TLS terminated in front
of the REST API) ``--tls-ca`` is the CA to trust and ``--tls-cert`` / ``--tls-key`` the client
certificate, if the server wants one.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import json
import math
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import numpy as np

from service.api.contract import CELL_HEADER
from service.api.grpc.convert import owner_ids_to_tokens
from service.sim.base import SlotEnv, StepResult, run_episode
from service.trace import rest_request
from service.types import SlotState

PRESETS = ("spectrum", "mac")
DEFAULT_SLOTS = 200
#: worlds other than the presets' simulators -> the module (import string) whose ``make_world(**options)``
#: builds one: ``states`` (one mac slot per cell), ``step(owners, valid) -> feedback per cell``, ``done``, ``kpis()``
WORLDS = {"sionna": "trainer.sionna_world.world"}
#: the extra that installs a world's dependencies
WORLD_EXTRAS = {"sionna": "sionna"}


# ------------------------------------------------------------------------------- simulators


def _sim_module(preset: str):
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}")
    return importlib.import_module(f"service.sim.{preset}")


def scenarios(preset: str) -> list[str]:
    """Scenario names of a preset's simulator (``service.sim.<preset>``)."""
    return list(getattr(_sim_module(preset), f"{preset.upper()}_SCENARIOS"))


def default_scenario(preset: str) -> str:
    mod = _sim_module(preset)
    return getattr(mod, "DEFAULT_SCENARIO", None) or scenarios(preset)[0]


def make_env(preset: str, scenario: str | None, seed: int) -> SlotEnv:
    """The simulator of ``preset`` for the named scenario (``make_<preset>_env``)."""
    mod = _sim_module(preset)
    return getattr(mod, f"make_{preset}_env")(scenario or default_scenario(preset), seed=seed)


# ------------------------------------------------------------------------------- transports


def rest_body(
    state: SlotState,
    feedback: Mapping[int, float] | None = None,
    *,
    policy: str | None = None,
    deadline_ms: float | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """The ``POST /schedule`` JSON body of a slot (the REST contract), utility as ``rate_bps``
    in spectrum (bit/s) and as ``utility`` in mac (bits per RBG per slot, used as given)
    (``service.trace.rest_request``: the one place a slot becomes a REST body)."""
    body = rest_request(state, feedback, policy=policy, deadline_ms=deadline_ms, epoch=epoch)
    if state.preset == "mac" and "rate_bps" in body:  # mac rate_bps is bit/s: the exact matrix is `utility`
        body["utility"] = body.pop("rate_bps")
    return body


class TargetError(RuntimeError):
    """The service refused a slot or could not be reached."""


#: ``(state, feedback) -> (owner tokens int64 [R], valid_before_repair)``
Decider = Callable[[SlotState, Mapping[int, float]], tuple[np.ndarray, bool]]


@dataclass(frozen=True)
class Access:
    """How to reach a guarded service: bearer token, TLS trust and client certificate (PEM paths)."""

    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @staticmethod
    def from_files(
        token_file: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> Access:
        """Read the token (first line of ``token_file``); check the PEM files exist. ValueError names
        the file that is missing or unusable."""
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        for flag, path in (("--tls-ca", tls_ca), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{flag}: no such file {path}")
        token = None
        if token_file is not None:
            try:
                lines = Path(token_file).read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
            token = lines[0].strip() if lines else ""
            if not token:
                raise ValueError(f"--token-file: {token_file} is empty")
        return Access(token, tls_ca, tls_cert, tls_key)


def _remote_target(target: str, stream: bool) -> SplitResult:
    """``target`` parsed: ``http(s)://host:port`` or ``grpc://host:port`` (``--stream``: grpc only)."""
    url = urlsplit(target)
    if url.scheme not in ("http", "https", "grpc") or not url.netloc:
        raise ValueError(f"--target must be inproc, http://host:port or grpc://host:port, got {target!r}")
    if stream and url.scheme != "grpc":
        raise ValueError("--stream needs a grpc:// target")
    return url


@contextlib.contextmanager
def _grpc_client(url: SplitResult, access: Access, timeout_s: float) -> Iterator[Any]:
    """A ``SchedulerClient`` for ``url`` with ``access`` (token, TLS), once the channel is ready."""
    import grpc

    from service.api.grpc.client import SchedulerClient

    with SchedulerClient(url.netloc, timeout_s=timeout_s, token=access.token, tls_ca=access.tls_ca,
                         tls_cert=access.tls_cert, tls_key=access.tls_key) as client:  # fmt: skip
        try:
            client.wait_ready(timeout_s)
        except grpc.FutureTimeoutError:
            hint = (
                " or the TLS handshake failed (check --tls-ca, --tls-cert, --tls-key)"
                if access.tls
                else " (a TLS-only service needs --tls-ca)"
            )
            raise TargetError(f"no gRPC service at {url.netloc}{hint}") from None
        yield client


@contextlib.contextmanager
def _http_client(url: SplitResult, access: Access, timeout_s: float) -> Iterator[Any]:
    """An ``httpx.Client`` for ``url`` with ``access`` (bearer token, CA and client certificate)."""
    import httpx

    verify: ssl.SSLContext | bool = True
    if url.scheme == "https" and access.tls:
        verify = ssl.create_default_context(cafile=access.tls_ca)
        if access.tls_cert is not None:
            verify.load_cert_chain(access.tls_cert, access.tls_key)
    headers = {"authorization": f"Bearer {access.token}"} if access.token else {}
    with httpx.Client(base_url=f"{url.scheme}://{url.netloc}", timeout=timeout_s, verify=verify, headers=headers) as http:  # fmt: skip
        yield http


@contextlib.contextmanager
def connect(
    target: str,
    *,
    policy: str | None = None,
    deadline_ms: float | None = None,
    stream: bool = False,
    timeout_s: float = 30.0,
    access: Access | None = None,
    epoch: int | None = None,
) -> Iterator[Decider]:
    """A decider ``(state, feedback) -> (owner tokens [R], valid_before_repair)`` against
    ``target``: ``inproc``, ``http(s)://host:port`` (POST /schedule) or ``grpc://host:port``
    (unary, or the per-TTI stream with ``stream``), with ``access`` (token, TLS) for a guarded
    service. ``epoch``: sent with every slot (a run that restarts a cell the service has seen
    needs a larger epoch than the run before)."""
    access = access or Access()
    if target == "inproc":
        from service.config import Settings
        from service.core import ServiceCore
        from service.state import MemoryStore

        core = ServiceCore(Settings(), store=MemoryStore())

        def decide_inproc(state: SlotState, feedback: Mapping[int, float]) -> tuple[np.ndarray, bool]:
            decision = core.schedule(state, policy=policy, deadline_ms=deadline_ms, feedback=feedback, epoch=epoch)
            return decision.owner, decision.valid_before_repair

        try:
            yield decide_inproc
        finally:
            core.close()
        return

    url = _remote_target(target, stream)

    if url.scheme == "grpc":
        import grpc

        from service.api.grpc.client import owner_tokens
        from service.api.grpc.convert import slot_to_request

        with _grpc_client(url, access, timeout_s) as client:
            send: Callable[[Any], Any]
            with contextlib.ExitStack() as stack:
                if stream:
                    send = stack.enter_context(client.stream()).send
                else:
                    send = client.schedule_request

                def decide_grpc(state: SlotState, feedback: Mapping[int, float]) -> tuple[np.ndarray, bool]:
                    req = slot_to_request(state, feedback=feedback, policy=policy, deadline_ms=deadline_ms, epoch=epoch)
                    try:
                        msg = send(req)
                    except grpc.RpcError as exc:
                        raise TargetError(f"slot {state.slot}: {exc.code().name}: {exc.details()}") from None
                    if msg.HasField("error"):
                        raise TargetError(f"slot {state.slot}: {msg.error.code}: {msg.error.message}")
                    return owner_tokens(state, msg), msg.valid_before_repair

                yield decide_grpc
        return

    import httpx
    import orjson

    with _http_client(url, access, timeout_s) as http:

        def decide_http(state: SlotState, feedback: Mapping[int, float]) -> tuple[np.ndarray, bool]:
            body = orjson.dumps(rest_body(state, feedback, policy=policy, deadline_ms=deadline_ms, epoch=epoch))
            try:
                resp = http.post(
                    "/schedule", content=body, headers={"content-type": "application/json", CELL_HEADER: state.cell_id}
                )
            except httpx.HTTPError as exc:
                raise TargetError(f"slot {state.slot}: {type(exc).__name__}: {exc}") from None
            if resp.status_code != 200:
                raise TargetError(f"slot {state.slot}: HTTP {resp.status_code}: {resp.text[:500]}")
            doc = resp.json()
            owner = np.array([-1 if o is None else o for o in doc["owner"]], dtype=np.int64)
            return owner_ids_to_tokens(state, owner), bool(doc["valid_before_repair"])

        yield decide_http


#: decides every cell of one TTI: ``(states, feedbacks) -> [(owner tokens [R], valid_before_repair)]``
CellsDecider = Callable[[list[SlotState], list[Mapping[int, float]]], list[tuple[np.ndarray, bool]]]


@contextlib.contextmanager
def connect_cells(
    target: str,
    *,
    policy: str | None = None,
    deadline_ms: float | None = None,
    stream: bool = False,
    timeout_s: float = 30.0,
    access: Access | None = None,
    epoch: int | None = None,
) -> Iterator[CellsDecider]:
    """A decider of every cell of one TTI in ONE call: ``POST /schedule/batch`` (http), gRPC
    ``ScheduleCells`` (or one ``StreamTtis`` call with ``stream``), or the cells one after the
    other in process (``inproc``, the reference). A cell the service could not decide raises
    ``TargetError`` naming it."""
    access = access or Access()
    if target == "inproc":
        with connect("inproc", policy=policy, deadline_ms=deadline_ms, epoch=epoch) as decide:
            yield lambda states, feedbacks: [decide(s, f) for s, f in zip(states, feedbacks, strict=True)]
        return
    url = _remote_target(target, stream)
    if url.scheme == "grpc":
        import grpc

        from service.api.grpc.client import owner_tokens
        from service.api.grpc.convert import slot_to_request
        from service.api.grpc.gen.gnbsched.v1 import scheduler_pb2 as pb

        with _grpc_client(url, access, timeout_s) as client:
            with contextlib.ExitStack() as stack:
                send = stack.enter_context(client.stream_ttis()).send if stream else client.schedule_cells

                def decide_grpc(states: list[SlotState], feedbacks: list[Mapping[int, float]]) -> list[tuple[np.ndarray, bool]]:  # fmt: skip
                    reqs = [slot_to_request(s, feedback=f, policy=policy, deadline_ms=deadline_ms, epoch=epoch)
                            for s, f in zip(states, feedbacks, strict=True)]  # fmt: skip
                    try:
                        msg = send(pb.CellsRequest(cells=reqs))
                    except grpc.RpcError as exc:
                        raise TargetError(f"TTI of slot {states[0].slot}: {exc.code().name}: {exc.details()}") from None
                    out = []
                    for s, d in zip(states, msg.decisions, strict=True):
                        if d.HasField("error"):
                            raise TargetError(f"cell {s.cell_id} slot {s.slot}: {d.error.code}: {d.error.message}")
                        out.append((owner_tokens(s, d), d.valid_before_repair))
                    return out

                yield decide_grpc
        return

    import httpx
    import orjson

    with _http_client(url, access, timeout_s) as http:

        def decide_http(states: list[SlotState], feedbacks: list[Mapping[int, float]]) -> list[tuple[np.ndarray, bool]]:  # fmt: skip
            cells = [rest_body(s, f, policy=policy, deadline_ms=deadline_ms, epoch=epoch)
                     for s, f in zip(states, feedbacks, strict=True)]  # fmt: skip
            try:
                resp = http.post("/schedule/batch", content=orjson.dumps({"cells": cells}),
                                 headers={"content-type": "application/json"})  # fmt: skip
            except httpx.HTTPError as exc:
                raise TargetError(f"TTI of slot {states[0].slot}: {type(exc).__name__}: {exc}") from None
            if resp.status_code != 200:
                raise TargetError(f"TTI of slot {states[0].slot}: HTTP {resp.status_code}: {resp.text[:500]}")
            out = []
            for s, doc in zip(states, resp.json()["decisions"], strict=True):
                if "error" in doc:
                    raise TargetError(
                        f"cell {s.cell_id} slot {s.slot}: {doc['status']} {doc['error']}: {doc['message']}"
                    )
                owner = np.array([-1 if o is None else o for o in doc["owner"]], dtype=np.int64)
                out.append((owner_ids_to_tokens(s, owner), bool(doc["valid_before_repair"])))
            return out

        yield decide_http


def simulate_cells(
    target: str,
    *,
    cells: int,
    preset: str = "spectrum",
    scenario: str | None = None,
    policy: str | None = None,
    slots: int = DEFAULT_SLOTS,
    seed: int = 0,
    stream: bool = False,
    cell_id: str | None = None,
    deadline_ms: float | None = None,
    timeout_s: float = 30.0,
    access: Access | None = None,
    epoch: int | None = None,
) -> dict[str, float]:
    """``cells`` cells (simulator seeds ``seed``, ``seed + 1``, ...), every TTI decided in one
    batched call; the KPIs are the mean over the cells of each cell's KPIs."""
    base = cell_id or f"sim-{preset}-{uuid.uuid4().hex[:12]}"
    if epoch is None and cell_id is not None:
        epoch = time.time_ns() // 1_000_000
    envs = [_RecordValid(make_env(preset, scenario, seed + k)) for k in range(cells)]
    ids = [f"{base}-{k}" for k in range(cells)]
    states = [replace(env.reset(seed=seed + k), cell_id=ids[k]) for k, env in enumerate(envs)]
    feedbacks: list[Mapping[int, float]] = [{} for _ in envs]
    done = [False] * cells
    with connect_cells(target, policy=policy, deadline_ms=deadline_ms, stream=stream, timeout_s=timeout_s,
                       access=access, epoch=epoch) as decide:  # fmt: skip
        for _ in range(slots):
            live = [k for k in range(cells) if not done[k]]
            if not live:
                break
            answers = decide([states[k] for k in live], [feedbacks[k] for k in live])
            for k, (owner, valid) in zip(live, answers, strict=True):
                envs[k].raw_valid = valid
                res = envs[k].step(owner)
                states[k], feedbacks[k], done[k] = replace(res.state, cell_id=ids[k]), res.feedback, res.done
    per_cell = [env.kpis() for env in envs]
    return {name: float(np.mean([k[name] for k in per_cell])) for name in per_cell[0]}


def simulate(
    target: str,
    *,
    preset: str = "spectrum",
    scenario: str | None = None,
    policy: str | None = None,
    slots: int = DEFAULT_SLOTS,
    seed: int = 0,
    stream: bool = False,
    cell_id: str | None = None,
    deadline_ms: float | None = None,
    timeout_s: float = 30.0,
    access: Access | None = None,
    epoch: int | None = None,
) -> dict[str, float]:
    """Run one closed-loop episode against ``target`` and return the simulator's KPIs.

    The episode restarts its cell at slot 0: with a ``cell_id`` of your own the cell may exist
    already, so the run sends a new ``epoch`` (default: milliseconds since 1970, larger than any
    earlier run's) and the service starts the cell afresh; a random cell id needs none."""
    env = _RecordValid(make_env(preset, scenario, seed))
    cell = cell_id or f"sim-{preset}-{uuid.uuid4().hex[:12]}"
    if epoch is None and cell_id is not None:
        epoch = time.time_ns() // 1_000_000
    with connect(
        target, policy=policy, deadline_ms=deadline_ms, stream=stream, timeout_s=timeout_s, access=access, epoch=epoch
    ) as decide:

        def decide_in_cell(state: SlotState, feedback: Mapping[int, float]) -> np.ndarray:
            owner, env.raw_valid = decide(replace(state, cell_id=cell), feedback)
            return owner

        return run_episode(env, decide_in_cell, slots=slots, seed=seed)


def simulate_world(
    target: str,
    *,
    world: str = "sionna",
    options: Mapping[str, Any] | None = None,
    policy: str | None = None,
    slots: int = DEFAULT_SLOTS,
    seed: int = 0,
    stream: bool = False,
    batch: bool = False,
    cell_id: str | None = None,
    deadline_ms: float | None = None,
    timeout_s: float = 30.0,
    access: Access | None = None,
    epoch: int | None = None,
) -> dict[str, float]:
    """Drive ``target`` from a multi-cell world (``WORLDS``, loaded by import string) for ``slots``
    slots: every cell of a slot decided (one call per cell, or one batched call with ``batch``),
    the decisions played, each cell's feedback sent with its next slot. Cell ids are
    ``<cell_id>-<site>-<sector>`` (default base ``sim-<world>-<random>``, as ``simulate``; a
    given base gets a new ``epoch``). Returns the world's KPIs."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; expected one of {sorted(WORLDS)}")
    base = cell_id or f"sim-{world}-{uuid.uuid4().hex[:12]}"
    if epoch is None and cell_id is not None:
        epoch = time.time_ns() // 1_000_000
    env = importlib.import_module(WORLDS[world]).make_world(
        slots=slots, seed=seed, cell_prefix=base, **dict(options or {})
    )
    feedback: dict[str, Mapping[int, float]] = {s.cell_id: {} for s in env.states}
    with contextlib.ExitStack() as stack:
        decide_cells: CellsDecider
        if batch:
            decide_cells = stack.enter_context(
                connect_cells(target, policy=policy, deadline_ms=deadline_ms, stream=stream, timeout_s=timeout_s,
                              access=access, epoch=epoch)
            )  # fmt: skip
        else:
            decide = stack.enter_context(
                connect(target, policy=policy, deadline_ms=deadline_ms, stream=stream, timeout_s=timeout_s,
                        access=access, epoch=epoch)
            )  # fmt: skip

            def decide_cells(states: list[SlotState], fbs: list[Mapping[int, float]]) -> list[tuple[np.ndarray, bool]]:
                return [decide(s, f) for s, f in zip(states, fbs, strict=True)]

        while not env.done:
            states = env.states
            answers = decide_cells(states, [feedback.get(s.cell_id, {}) for s in states])
            owners = {s.cell_id: owner for s, (owner, _) in zip(states, answers, strict=True)}
            valid = {s.cell_id: ok for s, (_, ok) in zip(states, answers, strict=True)}
            feedback = env.step(owners, valid)
    return dict(env.kpis())


class _RecordValid(SlotEnv):
    """Passes the service's ``valid_before_repair`` of each slot to simulators that count it
    (``step(owner, raw_valid=...)``: the valid action rate KPI of the mac preset)."""

    def __init__(self, env: SlotEnv) -> None:
        self.env = env
        self.preset = env.preset
        self.raw_valid: bool | None = None
        self._takes_valid = "raw_valid" in inspect.signature(env.step).parameters

    def reset(self, seed: int | None = None) -> SlotState:
        return self.env.reset(seed=seed)

    def step(self, owner: np.ndarray) -> StepResult:
        if self._takes_valid:
            return self.env.step(owner, raw_valid=self.raw_valid)  # type: ignore[call-arg]
        return self.env.step(owner)

    def kpis(self) -> dict[str, float]:
        return self.env.kpis()


# ------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="inproc", help="inproc (default), http(s)://host:port (REST) or grpc://host:port"
    )
    parser.add_argument("--preset", choices=PRESETS, default="spectrum", help="simulator (default spectrum)")
    parser.add_argument(
        "--scenario",
        default=None,
        help="scenario of the preset's simulator (default: its first); with --world sionna: uma or umi (default uma)",
    )
    parser.add_argument("--policy", default=None, help="policy to ask for (default: the service's for the preset)")
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help=f"slots to play (default {DEFAULT_SLOTS})")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--stream", action="store_true", help="gRPC: one StreamSlots call for the episode")
    parser.add_argument("--cell-id", default=None, help="cell id sent to the service (default sim-<preset>-<random>)")
    parser.add_argument("--cells", type=int, default=1, help="cells simulated side by side (default 1)")
    parser.add_argument(
        "--batch",
        action="store_true",
        help="decide every cell of a TTI in one call (POST /schedule/batch, gRPC ScheduleCells, or StreamTtis "
        "with --stream); the KPIs are the mean over the cells",
    )
    parser.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="cell epoch sent with every slot (default: a new one per run when --cell-id is given, "
        "so the service restarts that cell)",
    )
    parser.add_argument("--deadline-ms", type=float, default=None, help="per-slot policy deadline to ask for")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout (default 30 s)")
    parser.add_argument(
        "--token-file",
        default=None,
        help="file whose first line is the service's bearer token (serve --auth-token-file)",
    )
    parser.add_argument("--tls-ca", default=None, help="PEM: CA of the server's certificate (gRPC TLS, https)")
    parser.add_argument("--tls-cert", default=None, help="PEM: client certificate (mTLS), with --tls-key")
    parser.add_argument("--tls-key", default=None, help="PEM: the client certificate's key")
    parser.add_argument(
        "--world",
        choices=["preset", *WORLDS],
        default="preset",
        help="what drives the service: the preset's simulator (default) or the TR 38.901 world on Sionna SYS "
        "(sionna: every sector a mac cell; needs the [sionna] extra)",
    )
    parser.add_argument(
        "--sites", type=int, choices=[1, 7, 19], default=1, help="--world sionna: sites, 3 sectors each (default 1)"
    )
    parser.add_argument(
        "--ues-per-sector", type=int, default=4, help="--world sionna: UTs dropped per sector (default 4)"
    )
    parser.add_argument(
        "--scs-khz", type=int, choices=[15, 30], default=30, help="--world sionna: subcarrier spacing (default 30)"
    )
    parser.add_argument("--bandwidth-mhz", type=int, default=20, help="--world sionna: channel bandwidth (default 20)")
    parser.add_argument("--json", action="store_true", help="print the KPIs as one JSON object")
    parser.add_argument("--list-scenarios", action="store_true", help="list the preset's scenarios and exit")


def _print_kpis(header: Mapping[str, Any], kpis: Mapping[str, float], as_json: bool) -> None:
    if as_json:
        clean = {k: float(v) if math.isfinite(v) else None for k, v in kpis.items()}  # NaN is not JSON
        print(json.dumps({**header, "kpis": clean}, sort_keys=True))
        return
    print("gnbsched simulate: " + " ".join(f"{k}={v}" for k, v in header.items()))
    width = max(map(len, kpis), default=0)
    for name, value in kpis.items():
        print(f"  {name:<{width}}  {value:.6g}")


def _run_world(args: argparse.Namespace) -> int:
    """``--world <name>``: the multi-cell world against the target (``simulate_world``)."""
    scenario = args.scenario or "uma"
    options = {
        "scenario": scenario,
        "sites": args.sites,
        "ues_per_sector": args.ues_per_sector,
        "scs_khz": args.scs_khz,
        "bandwidth_mhz": args.bandwidth_mhz,
    }
    base = args.cell_id or f"sim-{args.world}-{uuid.uuid4().hex[:12]}"
    try:
        access = Access.from_files(args.token_file, args.tls_ca, args.tls_cert, args.tls_key)
        kpis = simulate_world(
            args.target,
            world=args.world,
            options=options,
            policy=args.policy,
            slots=args.slots,
            seed=args.seed,
            stream=args.stream,
            batch=args.batch,
            cell_id=base,
            deadline_ms=args.deadline_ms,
            timeout_s=args.timeout_s,
            access=access,
            epoch=args.epoch,
        )
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("sionna", "torch"):
            raise
        extra = WORLD_EXTRAS.get(args.world, args.world)
        print(f"gnbsched simulate: --world {args.world} needs {exc.name!r}; install the [{extra}] extra: "
              f"pip install -e '.[{extra}]'", file=sys.stderr)  # fmt: skip
        return 2
    except (ValueError, KeyError, TargetError) as exc:
        print(f"gnbsched simulate: {exc}", file=sys.stderr)
        return 2
    header = {
        "target": args.target,
        "world": args.world,
        **options,
        "policy": args.policy or "default",
        "slots": args.slots,
        "seed": args.seed,
        "stream": args.stream,
        "cell_id": base,
        **({"batch": True} if args.batch else {}),
    }
    _print_kpis(header, kpis, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_scenarios:
        print("\n".join(scenarios(args.preset)))
        return 0
    if args.slots < 1:
        print("gnbsched simulate: --slots must be >= 1", file=sys.stderr)
        return 2
    if args.cells < 1 or (args.cells > 1 and not args.batch):
        print("gnbsched simulate: --cells must be >= 1, and more than one cell needs --batch", file=sys.stderr)
        return 2
    if args.world != "preset":
        return _run_world(args)
    scenario = args.scenario or default_scenario(args.preset)
    cell = args.cell_id or f"sim-{args.preset}-{uuid.uuid4().hex[:12]}"
    try:
        access = Access.from_files(args.token_file, args.tls_ca, args.tls_cert, args.tls_key)
        run_fn: Callable[..., dict[str, float]] = (
            functools.partial(simulate_cells, cells=args.cells) if args.batch else simulate
        )
        kpis = run_fn(
            args.target,
            preset=args.preset,
            scenario=scenario,
            policy=args.policy,
            slots=args.slots,
            seed=args.seed,
            stream=args.stream,
            cell_id=cell,
            deadline_ms=args.deadline_ms,
            timeout_s=args.timeout_s,
            access=access,
            epoch=args.epoch,
        )
    except (ValueError, KeyError, TargetError) as exc:
        print(f"gnbsched simulate: {exc}", file=sys.stderr)
        return 2
    header = {
        "target": args.target,
        "preset": args.preset,
        "scenario": scenario,
        "policy": args.policy or "default",
        "slots": args.slots,
        "seed": args.seed,
        "stream": args.stream,
        "cell_id": cell,
        **({"cells": args.cells, "batch": True} if args.batch else {}),
    }
    _print_kpis(header, kpis, args.json)
    return 0
