"""The cells of one TTI in one onnxruntime call: each cell's logits and decision are bitwise the
ones it gets alone, whatever its batch, and a cell that fails falls back on its own."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.api.contract import ScheduleArgs
from service.config import Settings
from service.core import ServiceCore
from service.history import CellHistory, record_decision
from service.pipeline import decide_many
from service.policies import student as student_module
from service.policies.base import PolicyContext
from service.policies.registry import PolicySet
from service.policies.student import StudentPolicy
from service.policies.student_model import default_model_dir
from service.serialize.tensors import StudentBatch, serialize
from service.sim.mac import make_mac_env
from service.sim.spectrum import SpectrumConfig, SpectrumEnv
from service.types import SlotState


class CountingSession:
    """An onnxruntime session that counts its ``run`` and ``run_with_iobinding`` calls (and passes
    everything through)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.runs = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.session.run_with_iobinding(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def _cells(rng: np.random.Generator, preset: str, count: int, slots: int) -> list[list[SlotState]]:
    """``count`` cells of random sizes, each ``slots`` consecutive slots of its own world (a
    pf-like closed loop is not needed: the student sees each slot with its own history)."""
    out = []
    for k in range(count):
        seed = int(rng.integers(10**6))
        if preset == "mac":
            env = make_mac_env("standard", seed=seed, num_ue=int(rng.integers(1, 90)), num_rbg=int(rng.integers(1, 70)))
        else:
            n, r = int(rng.integers(1, 60)), int(rng.integers(1, 40))
            env = SpectrumEnv(SpectrumConfig(num_ue=n, num_channels=r, num_busy=int(rng.integers(0, r))), seed=seed)
        states = [env.reset()]
        for _ in range(slots - 1):
            states.append(env.step(np.zeros(states[-1].num_res, np.int64)).state)
        out.append([replace(s, cell_id=f"{preset}-{k}") for s in states])
    return out


@pytest.fixture(scope="module")
def student() -> StudentPolicy:
    """The shipped models (the repository's models/)."""
    return StudentPolicy(default_model_dir())


@pytest.mark.parametrize("preset", ["mac", "spectrum"])
def test_a_cells_logits_are_bitwise_its_logits_alone_in_any_padded_batch(student: StudentPolicy, preset: str) -> None:
    model = student.model(preset)
    assert model is not None and model.batched
    rng = np.random.default_rng(3)
    for _ in range(12):
        states = [cell[-1] for cell in _cells(rng, preset, int(rng.integers(1, 10)), 2)]
        inputs = [serialize(s) for s in states]
        batch = StudentBatch.empty(len(states), max(s.num_ue for s in states), max(s.num_res for s in states))
        for b, x in enumerate(inputs):
            batch.put(b, x)
        together = model.logits_batch(batch)
        assert together.shape == (len(states), batch.capacity[2], batch.capacity[1] + 1)
        for b, (s, x) in enumerate(zip(states, inputs, strict=True)):
            np.testing.assert_array_equal(together[b, : s.num_res, : s.num_ue + 1], model.logits(x))


def test_act_many_gives_every_cell_what_act_gives_it_alone(student: StudentPolicy) -> None:
    rng = np.random.default_rng(5)
    for _ in range(6):
        cells = _cells(rng, "mac", 6, 3) + _cells(rng, "spectrum", 3, 3)
        states, histories = [], []
        for cell in cells:  # a history of the cell's first slots (pf-like: whoever the student picks)
            history = CellHistory.empty()
            for s in cell[:-1]:
                owner = decide_many(
                    [s], [history], "student", policies=PolicySet(factories={"student": lambda: student})
                )[0]
                assert not isinstance(owner, Exception)
                history = record_decision(history, s, owner.owner)
            states.append(cell[-1])
            histories.append(history)
        ctxs = [PolicyContext(h.view(s), np.random.default_rng(0)) for s, h in zip(states, histories, strict=True)]
        many = student.act_many(states, ctxs)
        for s, h, (raw, serialize_us, policy_us) in zip(states, histories, many, strict=True):
            ctx = PolicyContext(h.view(s), np.random.default_rng(0))
            alone = student.act(s, ctx, student.serialize(s, ctx))
            assert not isinstance(raw, Exception)
            np.testing.assert_array_equal(raw, alone)
            assert serialize_us > 0 and policy_us > 0


def _args(state: SlotState, feedback: dict[int, float] | None = None) -> ScheduleArgs:
    return ScheduleArgs(state, None, None, feedback)


def _core(model_dir: Path | None = None) -> ServiceCore:
    """Guard on (the default), the student the default of both presets, models from ``model_dir``
    (default: the shipped ones)."""
    settings = Settings(
        state_url="memory://", default_policy_mac="student", default_policy_spectrum="student", preload_policies=[]
    )
    policies = None if model_dir is None else PolicySet(factories={"student": lambda: StudentPolicy(model_dir)})
    return ServiceCore(settings, policies=policies)


def _count_runs(core: ServiceCore) -> dict[str, CountingSession]:
    student = core.policies.get("student")
    assert isinstance(student, StudentPolicy)
    counters = {}
    for preset in ("mac", "spectrum"):
        model = student.model(preset)
        if model is not None:
            model.session = counters[preset] = CountingSession(model.session)
    return counters


def test_the_core_decides_a_tti_in_one_inference_per_preset_exactly_as_cell_by_cell() -> None:
    """Two cores, the same TTIs (guard on, feedback, each cell's history advancing): one decides
    every TTI in one ``schedule_cells`` call, the other every cell alone. Same decisions, same
    guard windows, one onnxruntime call per preset and TTI."""
    batched, alone = _core(), _core()
    runs = _count_runs(batched)
    rng = np.random.default_rng(11)
    cells = _cells(rng, "mac", 7, 12) + _cells(rng, "spectrum", 2, 12)
    feedback: dict[str, dict[int, float] | None] = {c[0].cell_id: None for c in cells}
    for t in range(12):
        args = [_args(c[t], feedback[c[t].cell_id]) for c in cells]
        before = {p: c.runs for p, c in runs.items()}
        together = batched.schedule_cells(args)
        assert {p: c.runs - before[p] for p, c in runs.items()} == {"mac": 1, "spectrum": 1}
        for a, d in zip(args, together, strict=True):
            assert not isinstance(d, Exception), d
            ref = alone.schedule(a.state, feedback=a.feedback)
            np.testing.assert_array_equal(d.owner, ref.owner)
            assert (d.policy, d.fallback, d.valid_before_repair, d.utility) == (
                ref.policy,
                ref.fallback,
                ref.valid_before_repair,
                ref.utility,
            )
            assert d.notes["guard"] == ref.notes["guard"]
            assert d.notes["model_version"] == ref.notes["model_version"]
            assert {"serialize", "policy", "check", "repair", "guard", "total"} <= set(d.timings_us)
            feedback[a.state.cell_id] = {int(u): float(rng.uniform(0, 5e4)) for u in a.state.user_ids[:2]}
        assert batched.record(cells[0][0].cell_id).history.avg_served.tolist() == (
            alone.record(cells[0][0].cell_id).history.avg_served.tolist()
        )


def test_a_cell_the_student_cannot_serve_falls_back_alone_and_the_others_stay_in_one_batch(tmp_path: Path) -> None:
    """Only a mac model: the spectrum cell of the TTI is served by the fallback with the reason it
    gets alone; a cell named twice is decided in order; the mac cells share one inference."""
    shutil.copytree(default_model_dir() / "student-mac", tmp_path / "student-mac")
    core, ref = _core(tmp_path), _core(tmp_path)
    runs = _count_runs(core)
    assert set(runs) == {"mac"}
    rng = np.random.default_rng(2)
    mac = _cells(rng, "mac", 4, 2)
    spectrum = _cells(rng, "spectrum", 1, 1)[0][0]
    args = [_args(c[0]) for c in mac] + [_args(spectrum), _args(mac[0][1])]
    out = core.schedule_cells(args)
    # one inference for the four mac cells; the second slot of cell 0 goes alone, in a second round
    assert runs["mac"].runs == 2
    out_second = out[-1]
    assert not isinstance(out_second, Exception) and out_second.policy == "student"
    for a, d in zip(args, out, strict=True):
        assert not isinstance(d, Exception), d
        want = ref.schedule(a.state)
        np.testing.assert_array_equal(d.owner, want.owner)
        assert (d.policy, d.fallback_reason) == (want.policy, want.fallback_reason)
    assert out[4].policy != "student" and out[4].fallback_reason == "unavailable"
    assert core.record(mac[0][0].cell_id).last_slot == mac[0][1].slot


def test_a_bad_cell_in_a_batch_is_its_own_answer() -> None:
    """A conflicting slot (older than the cell's last) and an unknown cell's feedback: each cell's
    exception in its place, the others decided."""
    core = _core()
    rng = np.random.default_rng(4)
    cells = _cells(rng, "mac", 3, 3)
    first = core.schedule_cells([_args(c[1]) for c in cells])
    assert all(not isinstance(d, Exception) for d in first)
    args = [
        _args(cells[0][2]),
        _args(cells[1][0]),  # older than the applied slot 1
        _args(cells[2][2], {10**6: 1.0}),  # not a user of the cell
    ]
    out = core.schedule_cells(args)
    assert not isinstance(out[0], Exception) and out[0].policy == "student"
    assert type(out[1]).__name__ == "SlotConflictError"
    assert type(out[2]).__name__ == "InvalidSlotError"
    assert core.record(cells[2][0].cell_id).last_slot == cells[2][1].slot  # nothing applied


def test_a_cell_whose_serialization_fails_falls_back_alone_and_the_batch_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core, ref = _core(), _core()
    runs = _count_runs(core)
    original, original_many = StudentPolicy.serialize, student_module.serialize_many

    def serialize(self: StudentPolicy, state: SlotState, ctx: PolicyContext):
        if state.cell_id == "mac-1":
            raise ValueError("a broken slot")
        return original(self, state, ctx)

    def serialize_many(states: list[SlotState], *args: Any) -> StudentBatch:
        if any(s.cell_id == "mac-1" for s in states):
            raise ValueError("a broken slot")
        return original_many(states, *args)

    monkeypatch.setattr(StudentPolicy, "serialize", serialize)
    monkeypatch.setattr(student_module, "serialize_many", serialize_many)
    cells = _cells(np.random.default_rng(8), "mac", 4, 1)
    args = [_args(c[0]) for c in cells]
    out = core.schedule_cells(args)
    assert runs["mac"].runs == 1
    for a, d in zip(args, out, strict=True):
        assert not isinstance(d, Exception), d
        want = ref.schedule(a.state)
        np.testing.assert_array_equal(d.owner, want.owner)
        assert (d.policy, d.fallback_reason, d.fallback) == (want.policy, want.fallback_reason, want.fallback)
    assert out[1].policy != "student" and out[1].fallback_reason == "error" and "a broken slot" in out[1].fallback
    assert all(d.policy == "student" for k, d in enumerate(out) if k != 1)


def test_a_batch_item_refilled_with_a_smaller_slot_is_padded_with_zeros_and_gives_it_back() -> None:
    rng = np.random.default_rng(12)
    small, big = sorted((cell[-1] for cell in _cells(rng, "mac", 2, 2)), key=lambda st: st.num_ue * st.num_res)
    assert small.num_ue * small.num_res < big.num_ue * big.num_res
    n, r = max(big.num_ue, small.num_ue), max(big.num_res, small.num_res)
    reused, fresh = StudentBatch.empty(2, n, r), StudentBatch.empty(2, n, r)
    reused.put(1, serialize(big))
    reused.put(1, serialize(small))
    fresh.put(1, serialize(small))
    for a, b in zip(reused.arrays(), fresh.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(reused.item(1).arrays(), serialize(small).arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert reused.shapes == [(0, 0), (small.num_ue, small.num_res)]


def test_a_batch_runs_through_its_bound_buffers_and_allocates_no_logits(student: StudentPolicy) -> None:
    """The cells of a TTI serialized into this thread's cached batch run through its IO binding:
    the logits come back in the same preallocated buffer every TTI, bitwise those of
    ``logits_batch`` on the same inputs."""
    model = student.model("mac")
    assert model is not None
    rng = np.random.default_rng(9)

    def run(states: list[SlotState]) -> tuple[np.ndarray, np.ndarray]:
        ctxs = [PolicyContext(CellHistory.empty().view(s), np.random.default_rng(0)) for s in states]
        buffers = student._batch_buffers(
            model, len(states), max(s.num_ue for s in states), max(s.num_res for s in states)
        )
        batch, failed = student._serialized(buffers, states, ctxs)
        assert not failed and batch is buffers.batch
        return student._logits_batch(model, buffers, batch), model.logits_batch(batch)

    for _ in range(3):
        bound, plain = run([replace(cell[-1], cell_id=f"c{k}") for k, cell in enumerate(_cells(rng, "mac", 4, 2))])
        np.testing.assert_array_equal(bound, plain)
    big = [replace(cell[-1], cell_id=f"big{k}") for k, cell in enumerate(_cells(rng, "mac", 4, 1))]
    first, _ = run(big)
    again, _ = run(big)
    assert first is again  # the same preallocated buffer
