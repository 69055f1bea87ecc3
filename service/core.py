"""The service core both transports call: state in → ``decide()`` → state out, observed.

``ServiceCore.schedule`` loads the cell's history from the state store, applies the previous
slot's feedback, runs the pipeline (through the run-time guard, ``service.guard``, when the
policy is a guarded one), records the decision and saves the history; with
``settings.record_dir`` it also appends the slot (REST-format request and decision) to the
cell's trace file (``service.trace.Recorder``), once for both transports. Store
failures never fail a slot: the core keeps a write-through in-process copy of every cell it
served, decides from it while the store is down (``degraded``), and the newer of the two
copies (by slot) wins when the store answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from service.config import Settings
from service.errors import StateStoreError
from service.guard import Guard
from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import PolicySet, decide
from service.state.base import StateStore, open_store
from service.trace import Recorder
from service.types import Decision, SlotState

log = logging.getLogger("gnbsched.core")


class Observer(Protocol):
    """What the core reports (implemented by ``service.metrics``)."""

    def decision(self, transport: str, state: SlotState, requested: str, decision: Decision) -> None: ...

    def store_error(self, op: str) -> None: ...


class _NullObserver:
    def decision(self, transport: str, state: SlotState, requested: str, decision: Decision) -> None:
        pass

    def store_error(self, op: str) -> None:
        pass


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
