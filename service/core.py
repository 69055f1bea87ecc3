"""The service core both transports call: a decoded slot in, a decision out, state advanced, observed.

``await ServiceCore.decide(...)`` is the one entry of the REST and gRPC transports. It chooses
the default policy of the preset, probes whether the decision may block on I/O (a policy or a
state store with ``blocking_io = True``: the LLM teacher, Redis) and then runs ``schedule`` in a
worker thread, else inline on the event loop (a baseline decides in well under a millisecond, a
thread hop would cost more than it saves), one slot per cell at a time (striped per-cell locks),
and reports failures to the observer (``service.metrics``).

``ServiceCore.schedule`` (synchronous) loads the cell's history from the state store, applies the previous
slot's feedback, runs the pipeline (through the run-time guard, ``service.guard``, when the
policy is a guarded one), records the decision and saves the history; with
``settings.record_dir`` it also appends the slot (REST-format request and decision) to the
cell's trace file (``service.trace.Recorder``), once for both transports. Store
failures never fail a slot: the core keeps a write-through in-process copy of every cell it
served, decides from it while the store is down (``degraded``), and the newer of the two
copies (by slot) wins when the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

from service.config import Settings
from service.errors import ErrorKind, StateStoreError, kind_of
from service.guard import Guard
from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import decide
from service.policies.registry import PolicySet, names
from service.state import StateStore, open_store
from service.trace import Recorder
from service.types import Decision, SlotState

log = logging.getLogger("gnbsched.core")


class Observer(Protocol):
    """What the core reports (implemented by ``service.metrics``)."""

    def decision(self, transport: str, state: SlotState, requested: str, decision: Decision) -> None: ...

    def store_error(self, op: str) -> None: ...

    def rejected(self, transport: str, preset: object = None) -> None: ...

    def error(self, transport: str, preset: str, policy: str) -> None: ...

    def observe_request(self, transport: str, seconds: float) -> None: ...


class _NullObserver:
    def decision(self, transport: str, state: SlotState, requested: str, decision: Decision) -> None:
        pass

    def store_error(self, op: str) -> None:
        pass

    def rejected(self, transport: str, preset: object = None) -> None:
        pass

    def error(self, transport: str, preset: str, policy: str) -> None:
        pass

    def observe_request(self, transport: str, seconds: float) -> None:
        pass


#: per-cell lock stripes of the async entry (per event loop: REST and gRPC may run on two)
CELL_LOCK_STRIPES = 64
#: failures that are the request's fault: counted as rejections, not as service errors
REQUEST_KINDS = frozenset({ErrorKind.INVALID_REQUEST, ErrorKind.LIMIT_EXCEEDED, ErrorKind.UNKNOWN_POLICY})


def _newer(a: CellHistory, b: CellHistory) -> bool:
    return (a.last_slot, a.slots) > (b.last_slot, b.slots)


class ServiceCore:
    """Settings, policies, the state store and an observer, wired once and shared by transports."""

    def __init__(self, settings: Settings | None = None, *, store: StateStore | None = None,
                 policies: PolicySet | None = None, observer: Observer | None = None) -> None:
        self.settings = settings or Settings()
        self.store = store if store is not None else open_store(self.settings.state_url)
        self.policies = policies or PolicySet()
        self.observer: Observer = observer or _NullObserver()
        self._local: dict[str, CellHistory] = {}
        self._lock = threading.Lock()
        self.degraded = False
        self.store_errors = 0
        self.started = time.time()
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None
        #: the run-time guard of learned / LLM policies (``service.guard``), None when off
        self.guard: Guard | None = Guard(self.settings) if self.settings.guard_enabled else None
        #: the slot recorder (``settings.record_dir``, ``service.trace``), None when off
        self.recorder: Recorder | None = Recorder.from_settings(self.settings) if self.settings.record_dir else None
        self._store_blocking = bool(getattr(self.store, "blocking_io", False))
        self._blocking: dict[str, tuple[object, bool]] = {}
        self._cell_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[asyncio.Lock]] = \
            weakref.WeakKeyDictionary()
        self._known: frozenset[str] = frozenset()
        self.refresh_known()

    # -- what requests may name ---------------------------------------------------------------
    def refresh_known(self) -> frozenset[str]:
        """Policy names a request may ask for: registered, configured factories, loaded ones."""
        p = self.policies
        self._known = frozenset(names()) | frozenset(p.factories) | frozenset(p.loaded())
        return self._known

    def known_policies(self, name: str | None = None) -> frozenset[str]:
        """The names a request may ask for; refreshed when ``name`` is not among them (registered
        after start)."""
        if name is not None and name not in self._known:
            self.refresh_known()
        return self._known

    # -- state ---------------------------------------------------------------------------
    def _load(self, cell_id: str) -> CellHistory:
        with self._lock:
            local = self._local.get(cell_id)
        try:
            remote = self.store.load(cell_id)
            self.degraded = False
        except StateStoreError:
            self._store_failed("load")
            return local or CellHistory.empty()
        if local is not None and _newer(local, remote):
            return local  # written while the store was down: resynchronized on the next save
        return remote

    def _save(self, cell_id: str, history: CellHistory) -> None:
        with self._lock:
            self._local[cell_id] = history
        try:
            self.store.save(cell_id, history)
            self.degraded = False
        except StateStoreError:
            self._store_failed("save")

    def _store_failed(self, op: str) -> None:
        self.degraded = True
        self.store_errors += 1
        self.observer.store_error(op)

    def history(self, cell_id: str) -> CellHistory:
        """The cell's current history (store, or the local copy while degraded)."""
        return self._load(cell_id)

    # -- the slot ------------------------------------------------------------------------
    def _policy_blocks(self, name: str) -> bool:
        try:
            pol = self.policies.get(name)
        except Exception:  # unknown or broken: the pipeline falls back and reports it
            return False
        cached = self._blocking.get(name)
        if cached is None or cached[0] is not pol:  # first use, or the instance was replaced
            cached = self._blocking[name] = (pol, bool(getattr(pol, "blocking_io", False)))
        return cached[1]

    def blocks(self, name: str) -> bool:
        """Does deciding with ``name`` (or a fallback) block on I/O (LLM teacher, Redis store)?"""
        return self._store_blocking or any(self._policy_blocks(n) for n in (name, *self.settings.fallbacks))

    def _cell_lock(self, cell_id: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        locks = self._cell_locks.get(loop)
        if locks is None:
            locks = self._cell_locks[loop] = [asyncio.Lock() for _ in range(CELL_LOCK_STRIPES)]
        return locks[hash(cell_id) % CELL_LOCK_STRIPES]

    async def decide(self, state: SlotState, *, policy: str | None = None, deadline_ms: float | None = None,
                     feedback: Mapping[int, float] | None = None, transport: str = "inproc") -> Decision:
        """Decide one decoded slot for a transport: ``schedule`` inline or in a worker thread.

        Raises what ``schedule`` raises (a ``GnbSchedError`` whose ``kind`` says why, or a bug);
        the observer counts it as a rejection (the request's fault) or an error.
        """
        name = policy or self.settings.default_policy(state.preset)
        try:
            async with self._cell_lock(state.cell_id):
                if self.blocks(name):
                    return await asyncio.to_thread(self.schedule, state, policy=name, deadline_ms=deadline_ms,
                                                   feedback=feedback, transport=transport)
                return self.schedule(state, policy=name, deadline_ms=deadline_ms, feedback=feedback,
                                     transport=transport)
        except Exception as exc:
            if kind_of(exc) in REQUEST_KINDS:
                self.observer.rejected(transport, state.preset)
            else:
                self.observer.error(transport, state.preset, name)
            raise

    def schedule(self, state: SlotState, *, policy: str | None = None, deadline_ms: float | None = None,
                 feedback: Mapping[int, float] | None = None, transport: str = "inproc") -> Decision:
        """Decide one slot of one cell and advance the cell's history."""
        s = self.settings
        name = policy or s.default_policy(state.preset)
        history = self._load(state.cell_id)
        if feedback:
            history = apply_feedback(history, feedback, ewma_slots=s.ewma_slots)
        dl = deadline_ms if deadline_ms is not None else s.deadline_ms
        run = decide if self.guard is None else self.guard.decide
        decision = run(state, history, name, policies=self.policies, fallbacks=s.fallbacks,
                       deadline_s=None if dl is None else dl / 1e3, seed=s.seed)
        self._save(state.cell_id, record_decision(history, state, decision.owner, ewma_slots=s.ewma_slots))
        self.observer.decision(transport, state, name, decision)
        if self.recorder is not None:  # never raises: a failed write is logged once and counted
            self.recorder.record(state, decision, policy=name, deadline_ms=deadline_ms, feedback=feedback,
                                 transport=transport)
        return decision

    def ready(self) -> tuple[bool, dict[str, object]]:
        """(ready, details): policies preloaded and the state store answering."""
        try:
            store_ok = self.store.ping()
        except StateStoreError:
            store_ok = False
        loaded = sorted(self.policies.loaded())
        missing = [p for p in self.settings.preload_policies if p not in loaded]
        ok = store_ok and not missing
        return ok, {"store": self.store.kind, "store_ok": store_ok, "degraded": self.degraded or not store_ok,
                    "policies_loaded": loaded, "policies_missing": missing}

    def preload(self) -> None:
        """Instantiate the configured policies (load models, open sessions) before serving."""
        for name in self.settings.preload_policies:
            self.policies.get(name)

    # -- models ---------------------------------------------------------------------------
    def refresh_models(self) -> dict[str, dict[str, str]]:
        """One pass of the model watch: every loaded policy with a ``refresh()`` (the student)
        swaps in the newest valid model on disk. Returns {policy: {preset: new version, or
        ``<preset>:error``: why the new file was refused}} for the policies that changed."""
        changed: dict[str, dict[str, str]] = {}
        for name, policy in self.policies.loaded().items():
            refresh: Any = getattr(policy, "refresh", None)
            if callable(refresh):
                out = refresh()
                if out:
                    changed[name] = dict(out)
        return changed

    def start_model_watch(self) -> None:
        """Run ``refresh_models`` every ``settings.model_watch_s`` seconds in a daemon thread until
        ``close()`` (no-op when 0 or already running). Swaps and refusals are logged."""
        interval = self.settings.model_watch_s
        if interval <= 0 or self._watch is not None:
            return

        def watch() -> None:
            while not self._watch_stop.wait(interval):
                try:
                    changed = self.refresh_models()
                except Exception:  # a watch pass never takes the service down
                    log.exception("model watch: refresh failed")
                    continue
                for name, versions in changed.items():
                    log.warning("model watch: %s -> %s", name, versions)

        self._watch = threading.Thread(target=watch, name="gnbsched-model-watch", daemon=True)
        self._watch.start()

    def close(self) -> None:
        self._watch_stop.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
        if self.recorder is not None:
            self.recorder.close()
        self.store.close()
