"""The service core both transports call: a decoded slot in, a decision out, state advanced, observed.

``await ServiceCore.decide(...)`` is the one entry of the REST and gRPC transports. It chooses
the default policy of the preset, probes whether the decision may block on I/O (a policy or a
state store with ``blocking_io = True``: the LLM teacher, Redis) and then runs ``schedule`` in a
worker thread, else inline on the event loop (a baseline decides in well under a millisecond, a
thread hop would cost more than it saves), one slot per cell at a time (a lock per cell, so that
a slow slot of one cell never holds another), and reports failures to the observer (``service.metrics``).

``await ServiceCore.decide_cells(...)`` (the batched calls: ``ScheduleCells``, ``StreamTtis``,
``POST /schedule/batch``) hands the cells of one TTI to ``ServiceCore.schedule_cells`` in one
call: every slot admitted, the slots of one policy decided together (the student: one
onnxruntime call for all of them, ``service.pipeline.decide_many``), each written alone; every
cell's answer is the one ``schedule`` gives it alone.

``ServiceCore.schedule`` (synchronous) applies a slot to its cell exactly once: it loads the
cell's record (``service.state.record``), applies the slot rule (a new slot is decided, a retry
of an applied one is answered with its stored decision, an older one is refused), runs the
pipeline (through the run-time guard, ``service.guard``, when the policy is a guarded one) and
writes the new record by compare-and-set, deciding again on the newer state when another writer
won. A store that cannot be reached refuses the slot (retryable) rather than letting a copy
diverge; the store stays the one truth. Each process keeps its last copy of the cells it wrote
and gives it back to a store that lost the cell (a Redis restart without persistence). With
``settings.record_dir`` the decided slot is appended to the cell's trace file
(``service.trace.Recorder``), once for both transports.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
from cachetools import TTLCache

from service import assign, auction, batched
from service.api.contract import ScheduleArgs
from service.config import Settings
from service.errors import (
    ErrorKind,
    InvalidSlotError,
    SlotConflictError,
    StateContentionError,
    StateCorruptError,
    StateStoreError,
    StateStoreUnavailableError,
    kind_of,
)
from service.guard import Guard
from service.history import CellHistory, apply_feedback, record_decision
from service.pipeline import decide, decide_many
from service.policies.registry import PolicySet, names
from service.state import StateStore, open_store
from service.state.record import CellRecord, Verdict, decision_from_dict, legacy_request_digest, request_digest
from service.trace import Recorder
from service.types import Decision, SlotState

log = logging.getLogger("gnbsched.core")


def freeze_startup_objects() -> int:
    """Move every object the process holds after its start (modules, compiled kernels, models,
    sessions) out of the garbage collector's reach (``gc.freeze``, after one collection), so that
    no collection while serving scans them again: a full collection of a started server walks
    about 200 000 such objects, a pause in the middle of a slot. Objects freed later by reference
    counting are freed as before. Called by ``gnbsched serve`` once its core is preloaded; returns
    the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class Observer(Protocol):
    """What the core reports (implemented by ``service.metrics``)."""

    def decision(self, transport: str, state: SlotState, requested: str, decision: Decision) -> None: ...

    def store_error(self, op: str) -> None: ...

    def rejected(self, transport: str, preset: object = None) -> None: ...

    def error(self, transport: str, preset: str, policy: str) -> None: ...

    def observe_request(self, transport: str, seconds: float) -> None: ...

    def observe_stage(self, transport: str, preset: str, stage: str, seconds: float) -> None: ...

    def state_event(self, event: str) -> None: ...


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

    def observe_stage(self, transport: str, preset: str, stage: str, seconds: float) -> None:
        pass

    def state_event(self, event: str) -> None:
        pass


#: failures that are the request's fault: counted as rejections, not as service errors
REQUEST_KINDS = frozenset(
    {ErrorKind.INVALID_REQUEST, ErrorKind.LIMIT_EXCEEDED, ErrorKind.UNKNOWN_POLICY, ErrorKind.SLOT_CONFLICT}
)


def _conflict(verdict: Verdict, slot: int, record: CellRecord, epoch: int | None) -> SlotConflictError:
    if verdict is Verdict.STALE_EPOCH:
        return SlotConflictError("epoch", f"epoch {epoch} is older than the cell's epoch {record.epoch}")
    if verdict is Verdict.SLOT_REUSED:
        return SlotConflictError(
            "slot",
            f"slot {slot} was applied with other content; send a new slot, or a "
            f"new epoch (> {record.epoch}) to restart the cell",
        )
    return SlotConflictError(
        "slot",
        f"slot {slot} is older than the cell's last applied slot {record.last_slot} "
        f"(epoch {record.epoch}); send a later slot, or a new epoch to restart the cell",
    )


@dataclass(slots=True)
class _Admitted:
    """A slot the slot rule admitted: its cell's record and history (feedback applied)."""

    state: SlotState
    record: CellRecord
    history: CellHistory
    digest: str
    epoch: int | None
    feedback: Mapping[int, float] | None
    state_s: float = 0.0  # seconds of the state stage so far (``_schedule_round``)


def _known_feedback(history: CellHistory, feedback: Mapping[int, float]) -> Mapping[int, float]:
    """``feedback`` when every id is a user of the cell; a new cell (no history) has nothing to
    correct and takes none. Raises ``InvalidSlotError`` naming the first unknown user."""
    if history.user_ids.size == 0:
        return {}
    ids = np.fromiter(feedback.keys(), np.int64, len(feedback))
    pos = np.minimum(np.searchsorted(history.user_ids, ids), history.user_ids.size - 1)
    unknown = history.user_ids[pos] != ids
    if unknown.any():
        uid = int(ids[np.flatnonzero(unknown)[0]])
        raise InvalidSlotError(f"feedback.delivered_bits.{uid}", f"user {uid} is not a user of this cell")
    return feedback


class ServiceCore:
    """Settings, policies, the state store and an observer, wired once and shared by transports."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: StateStore | None = None,
        policies: PolicySet | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.store = (
            store
            if store is not None
            else open_store(self.settings.state_url, max_cells=self.settings.max_cells, ttl_s=self.settings.cell_ttl_s)
        )
        self.policies = policies or PolicySet()
        self.observer: Observer = observer or _NullObserver()
        #: this process's last copy of each cell it wrote, to restore a store that lost its data
        #: (an LRU with the cells' TTL: a cell the store forgot by its TTL is not brought back)
        self._cache: TTLCache[str, CellRecord] | None = (
            TTLCache(maxsize=self.settings.max_cells, ttl=self.settings.cell_ttl_s, timer=time.monotonic)
            if self.store.blocking_io
            else None
        )
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
        #: per event loop (REST and gRPC may run on two), each cell's lock while a slot of the cell
        #: holds or waits for it (weak values: a cell nobody decides has none)
        self._cell_locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, weakref.WeakValueDictionary[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
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
    def _load(self, cell_id: str) -> CellRecord:
        """The cell's record from the store; a store that lost the cell (a restart without
        persistence) gets this process's last copy back first. Raises ``StateStoreError``."""
        try:
            try:
                record = self.store.load(cell_id)
            except StateCorruptError as exc:  # set aside by the store: continue from our copy, or afresh
                log.warning("state: %s", exc)
                self._store_failed("load", exc)
                record = CellRecord.empty()
            if record.version == 0 and self._cache is not None:
                with self._lock:
                    cached = self._cache.get(cell_id)
                if cached is not None and self.store.restore(cell_id, cached):
                    log.warning(
                        "state: restored cell %r (version %d) into a store that had lost it", cell_id, cached.version
                    )
                    self.observer.state_event("restored")
                    record = self.store.load(cell_id)
        except StateStoreError as exc:
            self._store_failed("load", exc)
            raise
        self.degraded = False
        return record

    def _write(self, cell_id: str, expected_version: int, record: CellRecord) -> bool:
        try:
            ok = self.store.compare_and_set(cell_id, expected_version, record)
        except StateStoreError as exc:
            self._store_failed("write", exc)
            raise
        self.degraded = False
        if ok and self._cache is not None:
            with self._lock:
                self._cache[cell_id] = record
        return ok

    def _store_failed(self, op: str, exc: StateStoreError) -> None:
        if isinstance(exc, StateStoreUnavailableError):
            self.degraded = True
        self.store_errors += 1
        self.observer.store_error(op)

    def record(self, cell_id: str) -> CellRecord:
        """The cell's current record (raises ``StateStoreError`` when the store fails)."""
        return self._load(cell_id)

    def history(self, cell_id: str) -> CellHistory:
        """The cell's current history."""
        return self._load(cell_id).history

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

    def _policy_blocks_any(self, name: str) -> bool:
        """Does ``name`` or a fallback block on I/O (the LLM teacher)?"""
        return any(self._policy_blocks(n) for n in (name, *self.settings.fallbacks))

    def blocks(self, name: str) -> bool:
        """Does deciding with ``name`` (or a fallback) block on I/O (LLM teacher, Redis store)?"""
        return self._store_blocking or self._policy_blocks_any(name)

    def _cell_lock(self, cell_id: str) -> asyncio.Lock:
        """This event loop's lock of ``cell_id`` (made on first use, gone once nobody holds or
        waits for it)."""
        loop = asyncio.get_running_loop()
        locks = self._cell_locks.get(loop)
        if locks is None:
            locks = self._cell_locks[loop] = weakref.WeakValueDictionary()
        lock = locks.get(cell_id)
        if lock is None:
            lock = locks[cell_id] = asyncio.Lock()
        return lock

    async def decide(
        self,
        state: SlotState,
        *,
        policy: str | None = None,
        deadline_ms: float | None = None,
        feedback: Mapping[int, float] | None = None,
        epoch: int | None = None,
        transport: str = "inproc",
        timings_us: Mapping[str, float] | None = None,
    ) -> Decision:
        """Decide one decoded slot for a transport: ``schedule`` inline or in a worker thread.

        Raises what ``schedule`` raises (a ``GnbSchedError`` whose ``kind`` says why, or a bug);
        the observer counts it as a rejection (the request's fault) or an error.
        """
        name = policy or self.settings.default_policy(state.preset)
        run = partial(
            self.schedule,
            state,
            policy=name,
            deadline_ms=deadline_ms,
            feedback=feedback,
            epoch=epoch,
            transport=transport,
            timings_us=timings_us,
        )
        try:
            async with self._cell_lock(state.cell_id):
                return await asyncio.to_thread(run) if self.blocks(name) else run()
        except Exception as exc:
            self._failed(exc, transport, state.preset, name)
            raise

    async def decide_cells(
        self, cells: Sequence[ScheduleArgs | BaseException], *, transport: str = "inproc"
    ) -> list[Decision | BaseException]:
        """Decide the cells of one TTI: each exactly as ``decide`` would alone, answers in order.

        ``cells``: the decoded requests, or the decoding error of a cell that could not be
        decoded (answered in its place). A cell's failure is its own answer (the exception);
        the other cells are decided. The cells go to ``schedule_cells`` in one call (one
        onnxruntime call per TTI for the student), inline, or in one worker thread when the
        state store blocks on I/O (Redis); cells whose policy blocks on I/O (the LLM teacher),
        and other cells of the same cell id, are decided as ``decide`` decides them, in worker
        threads side by side.
        """
        answers: list[Decision | BaseException | None] = [None] * len(cells)
        by_name: dict[str, bool] = {}  # policy -> blocks on I/O, probed once per name

        def blocks(c: ScheduleArgs) -> bool:
            name = c.policy or self.settings.default_policy(c.state.preset)
            if name not in by_name:
                by_name[name] = self._policy_blocks_any(name)
            return by_name[name]

        blocking = {i for i, c in enumerate(cells) if isinstance(c, ScheduleArgs) and blocks(c)}
        blocking_ids = {cells[i].state.cell_id for i in blocking}  # type: ignore[union-attr]
        batch: list[int] = []
        alone: list[int] = []
        for i, c in enumerate(cells):
            if isinstance(c, BaseException):
                answers[i] = c
            elif i in blocking or c.state.cell_id in blocking_ids:
                alone.append(i)
            else:
                batch.append(i)

        async def one(i: int) -> None:
            a = cells[i]
            assert isinstance(a, ScheduleArgs)
            try:
                answers[i] = await self.decide(
                    a.state,
                    policy=a.policy,
                    deadline_ms=a.deadline_ms,
                    feedback=a.feedback,
                    epoch=a.epoch,
                    transport=transport,
                )
            except Exception as exc:  # the cell's own answer; the others go on
                answers[i] = exc

        async def together() -> None:
            args = [c for c in (cells[i] for i in batch) if isinstance(c, ScheduleArgs)]
            locks = [self._cell_lock(c) for c in sorted({a.state.cell_id for a in args})]
            held: list[asyncio.Lock] = []
            try:
                for lock in locks:  # in cell id order: no two batches wait on each other
                    await lock.acquire()
                    held.append(lock)
                if self._store_blocking:
                    results = await asyncio.to_thread(self.schedule_cells, args, transport=transport)
                else:
                    results = self.schedule_cells(args, transport=transport)
            finally:  # also when the call is cancelled while waiting for a lock
                for lock in held:
                    lock.release()
            for i, r in zip(batch, results, strict=True):
                answers[i] = r

        jobs = ([together()] if batch else []) + [one(i) for i in alone]
        if len(jobs) == 1:
            await jobs[0]
        elif jobs:
            await asyncio.gather(*jobs)
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]

    def schedule_cells(self, cells: Sequence[ScheduleArgs], *, transport: str = "inproc") -> list[Decision | Exception]:
        """``schedule`` for the cells of one TTI, answers in order, each the cell's decision (or
        the exception ``schedule`` would raise for it) as if decided alone.

        Every cell is admitted (the slot rule, feedback) first; the admitted slots of one
        policy and deadline are decided together (``pipeline.decide_many`` / ``Guard.decide_many``:
        one ``act_many`` for a policy that batches), then each is written by compare-and-set; a
        cell whose write lost to another writer is decided again alone (``schedule``). A cell
        id named twice is decided in order: its later slots in a later round.
        """
        answers: list[Decision | Exception | None] = [None] * len(cells)
        pending = list(range(len(cells)))
        while pending:
            seen: set[str] = set()
            now: list[int] = []
            later: list[int] = []
            for i in pending:
                cell_id = cells[i].state.cell_id
                (later if cell_id in seen else now).append(i)
                seen.add(cell_id)
            self._schedule_round(cells, now, answers, transport)
            pending = later
        return answers  # type: ignore[return-value]

    def _schedule_round(
        self,
        cells: Sequence[ScheduleArgs],
        idx: Sequence[int],
        answers: list[Decision | Exception | None],
        transport: str,
    ) -> None:
        """Distinct cells ``idx`` of ``cells``: admitted, decided together per (policy, deadline),
        written; answers filled in place, failures counted as ``decide`` counts them."""
        groups: dict[tuple[str, float | None], list[tuple[int, _Admitted]]] = {}
        clock = time.perf_counter
        for i in idx:
            a = cells[i]
            name = a.policy or self.settings.default_policy(a.state.preset)
            t0 = clock()
            try:
                admitted = self._admit(a.state, name, request_digest(a.state, name, a.feedback), a.feedback, a.epoch)
            except Exception as exc:
                answers[i] = self._failed(exc, transport, a.state.preset, name)
                continue
            if isinstance(admitted, Decision):
                answers[i] = admitted
                self.observer.observe_stage(transport, a.state.preset, "state", clock() - t0)
            else:
                admitted.state_s = clock() - t0
                groups.setdefault((name, a.deadline_ms), []).append((i, admitted))
        for (name, deadline_ms), members in groups.items():
            decided = self._run([m for _, m in members], name, deadline_ms)
            for (i, admitted), decision in zip(members, decided, strict=True):
                a = cells[i]
                t0 = clock()
                try:
                    if isinstance(decision, Exception):
                        raise decision
                    if not self._commit(admitted, decision):
                        self.observer.state_event("contended")  # another writer won: decide alone, again
                        answers[i] = self.schedule(
                            a.state,
                            policy=name,
                            deadline_ms=deadline_ms,
                            feedback=a.feedback,
                            epoch=a.epoch,
                            transport=transport,
                        )
                        continue
                except Exception as exc:
                    answers[i] = self._failed(exc, transport, a.state.preset, name)
                    continue
                self._observe(admitted, decision, name, deadline_ms, transport)
                answers[i] = decision
                self.observer.observe_stage(transport, a.state.preset, "state", admitted.state_s + clock() - t0)

    def _failed(self, exc: Exception, transport: str, preset: str, name: str) -> Exception:
        """Count a cell's failure as ``decide`` counts it (rejection or error); returns it."""
        if kind_of(exc) in REQUEST_KINDS:
            self.observer.rejected(transport, preset)
        else:
            self.observer.error(transport, preset, name)
        return exc

    def schedule(
        self,
        state: SlotState,
        *,
        policy: str | None = None,
        deadline_ms: float | None = None,
        feedback: Mapping[int, float] | None = None,
        epoch: int | None = None,
        transport: str = "inproc",
        timings_us: Mapping[str, float] | None = None,
    ) -> Decision:
        """Decide one slot of one cell and advance the cell's state, exactly once.

        The slot rule (``CellRecord.admit``): a new slot is decided and written by
        compare-and-set, retried on the new state when another writer got there first (up to
        ``state_write_attempts``, then ``StateContentionError``); the same slot and request
        again returns the stored decision (``replayed``); an older slot, an applied slot with
        other content or an older epoch is refused (``SlotConflictError``); a newer ``epoch``
        starts the cell afresh. A store that cannot be reached refuses the slot
        (``StateStoreUnavailableError``, retryable): no write goes around it. ``timings_us``: the
        transport's own stage times (REST ``decode``), kept with the decision so a replay
        answers the very same bytes.
        """
        s = self.settings
        t_start = time.perf_counter()
        decide_s = 0.0  # the pipeline's share of this call; the rest is the state stage
        name = policy or s.default_policy(state.preset)
        digest = request_digest(state, name, feedback)
        for _ in range(s.state_write_attempts):
            admitted = self._admit(state, name, digest, feedback, epoch)
            if isinstance(admitted, Decision):
                self.observer.observe_stage(transport, state.preset, "state", time.perf_counter() - t_start)
                return admitted
            t_run = time.perf_counter()
            decision = self._run([admitted], name, deadline_ms)[0]
            decide_s += time.perf_counter() - t_run
            if isinstance(decision, Exception):
                raise decision
            if timings_us:
                decision.timings_us.update(timings_us)
            if self._commit(admitted, decision):
                break
            self.observer.state_event("contended")  # another writer won: decide again on its state
        else:
            raise StateContentionError(
                f"cell {state.cell_id!r}: {s.state_write_attempts} concurrent writes won over this slot; retry it"
            )
        self._observe(admitted, decision, name, deadline_ms, transport)
        self.observer.observe_stage(transport, state.preset, "state", time.perf_counter() - t_start - decide_s)
        return decision

    # -- the stages of a slot, shared by ``schedule`` and ``schedule_cells`` ------------------
    def _admit(
        self,
        state: SlotState,
        name: str,
        digest: str,
        feedback: Mapping[int, float] | None,
        epoch: int | None,
    ) -> _Admitted | Decision:
        """The cell's record and the slot rule: the stored decision of a replay, a
        ``SlotConflictError``, or the slot admitted with its history (feedback applied)."""
        record = self._load(state.cell_id)
        legacy = partial(legacy_request_digest, state, name, feedback)  # a slot an older version applied
        verdict, stored = record.admit(state.slot, epoch, digest, legacy)
        if verdict is Verdict.REPLAY:
            assert stored is not None
            self.observer.state_event("replayed")
            return replace(decision_from_dict(stored.decision), replayed=True)
        if verdict is not Verdict.APPLY and verdict is not Verdict.RESET:
            self.observer.state_event(verdict.value)
            raise _conflict(verdict, state.slot, record, epoch)
        if verdict is Verdict.RESET:
            record = CellRecord(CellHistory.empty(), epoch=record.epoch, version=record.version)
        history = record.history
        if feedback:
            history = apply_feedback(history, _known_feedback(history, feedback), ewma_slots=self.settings.ewma_slots)
        return _Admitted(state, record, history, digest, epoch, feedback)

    def _run(self, admitted: Sequence[_Admitted], name: str, deadline_ms: float | None) -> list[Decision | Exception]:
        """The pipeline (through the guard when on) for admitted slots of distinct cells."""
        s = self.settings
        dl = deadline_ms if deadline_ms is not None else s.deadline_ms
        deadline_s = None if dl is None else dl / 1e3
        if len(admitted) == 1:  # one slot (the single-cell calls): no batch to form
            one = decide if self.guard is None else self.guard.decide
            a = admitted[0]
            try:
                return [
                    one(
                        a.state,
                        a.history,
                        name,
                        policies=self.policies,
                        fallbacks=s.fallbacks,
                        deadline_s=deadline_s,
                        seed=s.seed,
                    )
                ]
            except Exception as exc:
                return [exc]
        many = decide_many if self.guard is None else self.guard.decide_many
        return many(
            [a.state for a in admitted],
            [a.history for a in admitted],
            name,
            policies=self.policies,
            fallbacks=s.fallbacks,
            deadline_s=deadline_s,
            seed=s.seed,
        )

    def _commit(self, a: _Admitted, decision: Decision) -> bool:
        """Write the advanced record by compare-and-set; False when another writer won."""
        record = a.record
        new = record.advance(
            record_decision(
                a.history, a.state, decision.owner, ewma_slots=self.settings.ewma_slots, served=decision.served
            ),
            epoch=record.epoch if a.epoch is None else a.epoch,
            slot=a.state.slot,
            digest=a.digest,
            decision=decision,
        )
        return self._write(a.state.cell_id, record.version, new)

    def _observe(self, a: _Admitted, decision: Decision, name: str, deadline_ms: float | None, transport: str) -> None:
        self.observer.decision(transport, a.state, name, decision)
        if self.recorder is not None:  # never raises: a failed write is logged once and counted
            self.recorder.record(
                a.state, decision, policy=name, deadline_ms=deadline_ms, feedback=a.feedback, transport=transport
            )

    def ready(self) -> tuple[bool, dict[str, object]]:
        """(ready, details): policies preloaded and the state store answering."""
        try:
            store_ok = self.store.ping()
        except StateStoreError:
            store_ok = False
        loaded = sorted(self.policies.loaded())
        missing = [p for p in self.settings.preloaded_policies() if p not in loaded]
        ok = store_ok and not missing
        return ok, {
            "store": self.store.kind,
            "store_ok": store_ok,
            "degraded": self.degraded or not store_ok,
            "policies_loaded": loaded,
            "policies_missing": missing,
        }

    def preload(self) -> None:
        """Instantiate the configured policies (load models, open sessions; a student model load
        compiles the feature kernels) and compile the greedy fill's, round robin's, the batched
        baselines' and check's and the auction's kernels,
        before serving. Logs a line before (the first start after an install compiles the
        kernels: tens of seconds in which the service is not ready yet) and one with the time it
        took."""
        t0 = time.perf_counter()
        wanted = self.settings.preloaded_policies()
        log.info(
            "preparing: compiling the kernels%s (the first start after an install compiles them, "
            "up to a minute; later starts read them from numba's cache in seconds)",
            f" and loading {', '.join(wanted)}" if wanted else "",
        )
        assign.warm_up()
        batched.warm_up()
        auction.warm_up()
        for name in wanted:
            self.policies.get(name)
        log.info("prepared in %.1f s", time.perf_counter() - t0)

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
