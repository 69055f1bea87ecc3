"""The Sionna world (``trainer.sionna_world``): real Sionna SYS 2.2.0 (38.901 channel, PHY
abstraction, OLLA) on a tiny CPU configuration (one UMa site, 3 sectors, 3 UTs per sector, a few
dozen slots), driven through the service in process and over a real ``gnbsched serve``.

Sionna's ``PHYAbstraction`` is built once per process (``trainer.sionna_world.link``), so the
first test that needs it pays its seconds; drops and channels are shared per module.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainer.sionna_world import tbs as world_tbs
from trainer.sionna_world.traffic import TrafficSpec
from trainer.sionna_world.world import Exogenous, SionnaPF, SionnaWorld, WorldConfig, contract_has_retx

from service import tbs as service_tbs
from service.api.simulate import simulate_world
from service.cli import main
from service.config import Settings
from service.core import ServiceCore
from service.pag.checks import check_dcm
from service.state import MemoryStore

TINY = WorldConfig(sites=1, ues_per_sector=3, slots=60, seed=0)
FTP = TrafficSpec(kind="ftp", packet_bits=20_000, load_bps=8e6)


@pytest.fixture(scope="module")
def exo() -> Exogenous:
    """The tiny drop, its channel and (full-buffer) arrivals, shared by the module's worlds."""
    return Exogenous.build(TINY)


def _world(exo: Exogenous, **changes: Any) -> SionnaWorld:
    cfg = replace(TINY, **changes)
    if cfg.traffic is not TINY.traffic:
        exo = replace(exo, arrivals=cfg.traffic.arrivals(exo.drop.num_ut, cfg.slots + 1, cfg.carrier.slot_s, cfg.seed))
    return SionnaWorld(cfg, exo)


def _play(world: SionnaWorld, policy: str = "pf", *, guard: bool = False, retx: str | None = None) -> list[tuple]:
    """Run ``world`` to its end with ``policy`` decided by an in-process ServiceCore; returns
    (state, decision) of every cell and slot."""
    world.reset(retx=retx)
    core = ServiceCore(Settings(guard_enabled=guard), store=MemoryStore())
    seen = []
    feedback: dict[str, dict[int, float]] = {}
    while not world.done:
        owners, valid = {}, {}
        for state in world.states:
            d = core.schedule(state, policy=policy, feedback=feedback.get(state.cell_id, {}))
            owners[state.cell_id], valid[state.cell_id] = d.owner, d.valid_before_repair
            seen.append((state, d))
        feedback = world.step(owners, valid)
    core.close()
    return seen


# ------------------------------------------------------------------------------------------ TBS


def _float32_rule(mcs: np.ndarray, prb: np.ndarray, layers: np.ndarray, table: int, n_re_prb: int) -> np.ndarray:
    """TS 38.214 §5.1.3.2 steps 3–5 on ``N_info`` computed in float32 as Sionna computes it
    (the one way the two implementations of the clause may part)."""
    qm, rate = service_tbs.mcs_params(mcs, table)
    coded = np.float32(n_re_prb) * prb.astype(np.float32) * qm.astype(np.float32) * layers.astype(np.float32)
    n_info = (rate.astype(np.float32) * coded.astype(np.int32).astype(np.float32)).astype(np.float64)
    out = np.zeros(n_info.shape, np.int64)
    small = n_info <= service_tbs.N_INFO_TABLE_MAX
    n = np.maximum(3, np.floor(np.log2(n_info[small])).astype(np.int64) - 6)
    q = np.maximum(24, np.ldexp(1.0, n) * np.floor(n_info[small] / np.ldexp(1.0, n)))
    out[small] = service_tbs.TBS_TABLE[np.searchsorted(service_tbs.TBS_TABLE, q)]
    big, r = n_info[~small], rate[~small]
    n = np.floor(np.log2(big - 24)).astype(np.int64) - 5
    q = np.maximum(3840.0, np.ldexp(1.0, n) * np.floor((big - 24) / np.ldexp(1.0, n) + 0.5))
    c = np.where(r <= 0.25, np.ceil((q + 24) / 3816), np.where(q > 8424, np.ceil((q + 24) / 8424), 1.0))
    out[~small] = (8 * c * np.ceil((q + 24) / (8 * c)) - 24).astype(np.int64)
    return out


@pytest.mark.parametrize(("n_symb", "n_dmrs"), [(12, 12), (14, 12), (7, 6), (13, 18)])
@pytest.mark.parametrize("table", [1, 2, 3])
def test_tbs_of_the_service_agrees_with_sionna(table: int, n_symb: int, n_dmrs: int) -> None:
    """Every (MCS, 1–275 PRBs, 1–4 layers) of the table: ``service.tbs`` equals Sionna's
    ``calculate_tb_size``, or the difference is Sionna's float32 ``N_info`` (none in 2.2.0)."""
    mcs, prb, lay = (a.ravel() for a in np.meshgrid(np.arange(len(service_tbs.MCS_TABLES[table])),
                                                     np.arange(1, 276), np.arange(1, 5), indexing="ij"))  # fmt: skip
    ours = service_tbs.transport_block_size(mcs, prb, table=table, layers=lay, n_symb=n_symb, n_dmrs_prb=n_dmrs)
    theirs = world_tbs.sionna_tb_size(mcs, prb, table=table, layers=lay, n_symb=n_symb, n_dmrs_prb=n_dmrs)
    differ = ours != theirs
    explained = theirs == _float32_rule(mcs, prb, lay, table, min(156, 12 * n_symb - n_dmrs))
    assert (explained | ~differ).all(), (
        f"{int((differ & ~explained).sum())} unexplained disagreements, e.g. (mcs, prb, layers, ours, sionna) = "
        f"{[(int(mcs[i]), int(prb[i]), int(lay[i]), int(ours[i]), int(theirs[i])) for i in np.flatnonzero(differ & ~explained)[:3]]}"
    )
    assert differ.sum() == 0  # Sionna 2.2.0 follows the clause exactly on this grid


# ------------------------------------------------------------------------------ link adaptation


def test_olla_moves_the_bler_to_its_target(exo: Exogenous) -> None:
    """CSI 6 dB too optimistic: OLLA's offset has to learn it. The first-transmission BLER (where
    OLLA has room both ways) starts far above 0.1 and ends within 0.04 of it."""
    world = _world(exo, csi_error_db=6.0)
    _play(world, "pf")
    f, n = world.inner_tx.sum(axis=1), world.inner_nack.sum(axis=1)
    half = world.cfg.slots // 2
    first, second = n[:half].sum() / f[:half].sum(), n[half:].sum() / f[half:].sum()
    assert f[half:].sum() >= 80, "too few first transmissions to measure a BLER"
    assert first > 0.2, f"6 dB of optimism should cost more than 0.2 BLER at first, got {first:.3f}"
    assert abs(second - 0.1) <= 0.04, f"second half BLER {second:.3f}, target 0.1"
    assert abs(second - 0.1) < abs(first - 0.1)
    assert (world.link.offset_db()[np.unique(world.exo.serving)] > 0).any()  # it learned a positive offset


# --------------------------------------------------------------------------------------- HARQ


@pytest.mark.parametrize("retx", ["auto", "world"])
def test_failed_blocks_are_retransmitted_first_and_delivered_once(exo: Exogenous, retx: str) -> None:
    """FTP packets: a NACKed block comes back ``harq_rtt_slots`` later or after, with the same MCS,
    TBS and payload, at most ``max_retx`` times, before any new block of its UT; its bits are
    delivered exactly once (on its ACK) and the world's delivered bits equal the ACKed payloads.
    ``auto``: through the service's HARQ fields (retransmissions first in the PAG) when the
    contract has them; ``world``: the world reserves their RBGs."""
    world = _world(exo, traffic=FTP, harq_rtt_slots=2)
    seen = _play(world, "pf", retx=retx)
    log = world.block_log
    by_block: dict[int, list[dict]] = {}
    for b in log:
        by_block.setdefault(b["block"], []).append(b)
    assert len({(b["slot"], b["ue"]) for b in log}) == len(log), "a UT sent two blocks in one slot"
    retransmitted = [v for v in by_block.values() if len(v) > 1]
    assert any(v[-1]["ack"] for v in retransmitted), "no failed block was retransmitted successfully"
    for attempts in by_block.values():
        assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
        assert len(attempts) <= 1 + world.cfg.max_retx
        assert sum(a["ack"] for a in attempts) <= 1 and all(not a["ack"] for a in attempts[:-1])
        first = attempts[0]
        for a, prev in zip(attempts[1:], attempts, strict=False):
            assert (a["mcs"], a["tbs"], a["payload"], a["n_re"]) == (
                first["mcs"],
                first["tbs"],
                first["payload"],
                first["n_re"],
            )
            assert a["slot"] - prev["slot"] >= world.cfg.harq_rtt_slots
    acked = sum(b["payload"] for b in log if b["ack"])
    assert world.delivered.sum() == acked
    done_bits = sum(world.queues.packet_bits - u for u in world.queues.undelivered)
    assert done_bits == acked  # each acknowledged bit completed its packet's bits once
    assert world.kpis()["packets_done"] > 0
    if retx == "auto" and contract_has_retx():
        pending = [(s, d) for s, d in seen if s.retx_rbgs is not None and (s.retx_rbgs > 0).any()]
        assert pending, "no slot carried a pending retransmission to the service"
        sent = {(b["slot"], b["ue"]) for b in log if b["attempt"] > 1}
        for s, d in pending:  # the service granted the due retransmissions their RBGs first ...
            assert check_dcm(s, d.owner).valid
            held = np.bincount(d.owner, minlength=s.num_ue + 1)[1:]
            for u in np.flatnonzero((s.retx_need() > 0) & (held >= s.retx_need())).tolist():
                assert (s.slot, int(s.user_ids[u])) in sent  # ... and the world sent them on those RBGs
    else:
        reserved = [s for s, _ in seen if not s.resource_available.all()]
        assert reserved, "the world reserved no RBG for a retransmission"


def test_the_worlds_reservation_is_the_service_rule(exo: Exogenous) -> None:
    """The world reserves retransmissions (for a scheduler that knows no HARQ) by the service's own
    rule: pf through the HARQ fields and pf on the world's reservation play the same run, block
    for block, so Sionna's PF and the service's are compared on the same RBGs left."""
    assert contract_has_retx()
    world = _world(exo, traffic=FTP, harq_rtt_slots=2, slots=40)
    _play(world, "pf", retx="auto")
    auto_log, auto_delivered = list(world.block_log), world.delivered.copy()
    _play(world, "pf", retx="world")
    assert any(b["attempt"] > 1 for b in auto_log)  # retransmissions happened
    assert world.block_log == auto_log and np.array_equal(world.delivered, auto_delivered)


def test_the_world_sizes_blocks_with_the_service_tbs(exo: Exogenous) -> None:
    world = _world(exo, slots=20)
    _play(world, "rr")
    log = world.block_log
    assert log
    mcs = np.array([b["mcs"] for b in log])
    prb = np.array([b["n_prb"] for b in log])
    expect = service_tbs.transport_block_size(mcs, prb, table=1, n_symb=12, n_dmrs_prb=12)
    assert (np.array([b["tbs"] for b in log]) == expect).all()
    assert (np.array([b["n_re"] for b in log]) == 132 * prb).all()


# ------------------------------------------------------------------------------- the service


@pytest.mark.parametrize(("policy", "guard"), [("pf", False), ("student", False), ("student", True)])
def test_service_decisions_in_the_loop_are_valid(exo: Exogenous, policy: str, guard: bool) -> None:
    """Every decision the in-process ServiceCore returns for a cell of the world passes the PAG
    check of its slot (the HARQ rule included), and the world plays it; pf's and the shipped
    student's raw outputs are valid before repair."""
    world = _world(exo, slots=15)
    seen = _play(world, policy, guard=guard)
    assert len(seen) == 15 * len(world.cells)
    for state, d in seen:
        assert state.utility.shape == (state.num_ue, world.num_rbg)
        assert np.allclose(state.utility / state.tti_s, state.utility / world.carrier.slot_s)
        assert check_dcm(state, d.owner).valid, check_dcm(state, d.owner).violations
    assert all(d.valid_before_repair for _, d in seen)  # the baselines and pf_anchored serve retransmissions first
    k = world.kpis()
    assert k["cell_throughput_bps"] > 0 and 0 < k["jain_index"] <= 1


def test_sionna_pf_and_the_service_pf_agree_on_equal_footing(exo: Exogenous) -> None:
    """Sionna's PFSchedulerSUMIMO started at the service PF's averages decides the first slot as
    the service's pf does; with Sionna's own start it runs the whole loop."""
    world = _world(exo, slots=10)
    world.reset(retx="world")
    ours = {
        s.cell_id: ServiceCore(Settings(), store=MemoryStore()).schedule(s, policy="pf").owner for s in world.states
    }
    theirs = SionnaPF(world, beta=0.99, initial="mean_rate").decide()
    assert ours.keys() == theirs.keys()
    for cell in ours:
        assert np.array_equal(ours[cell], theirs[cell]), cell
    world.reset(retx="world")
    pf = SionnaPF(world)
    while not world.done:
        pf.feedback(world.step(pf.decide()))
    assert world.kpis()["cell_throughput_bps"] > 0
    world.reset()
    if contract_has_retx():
        with pytest.raises(ValueError, match="retx='world'"):
            SionnaPF(world)


# ------------------------------------------------------------------------------- training


def test_training_draws_labelled_episodes_from_random_worlds() -> None:
    """``sionna_mac_rollout``: samples from several random worlds (N and R vary), every target a
    PAG-valid decision of its slot (retransmissions first), states in bit/s with the HARQ fields;
    the same seed gives the same samples, another seed other ones."""
    from trainer.sionna_world.rollout import sionna_mac_rollout
    from trainer.teachers import make_teacher

    lines: list[str] = []
    samples = sionna_mac_rollout(
        make_teacher("pf"), slots=90, seed=4, episode_slots=6, keep_state=True, progress=lines.append
    )
    assert len(samples) == 90 and len(lines) >= 2 and lines[-1].endswith("90/90 slots")
    assert len({s.shape for s in samples}) >= 3
    for s in samples:
        st = s.state
        assert st is not None and st.preset == "mac" and st.retx_bits is not None
        assert st.tti_s in (1e-3, 0.5e-3) and (st.utility >= 0).all()  # 15 / 30 kHz slots; bits per RBG per slot
        assert check_dcm(st, s.tokens).valid, check_dcm(st, s.tokens).violations
        assert s.tokens.shape == (st.num_res,) and s.needs.shape == (st.num_ue,)
    assert any((s.state.retx_rbgs > 0).any() for s in samples)  # HARQ retransmissions occur and are labelled
    again = sionna_mac_rollout(make_teacher("pf"), slots=90, seed=4, episode_slots=6)
    assert all(np.array_equal(a.tokens, b.tokens) and a.shape == b.shape for a, b in zip(samples, again, strict=True))
    other = sionna_mac_rollout(make_teacher("pf"), slots=30, seed=5, episode_slots=6)
    assert [s.shape for s in other] != [s.shape for s in samples[:30]]


def test_distill_trains_on_sionna_slots(tmp_path: Path) -> None:
    """``gnbsched train distill --sionna-samples K`` adds K Sionna-world slots per round and records
    them in the checkpoint's stage; the spectrum preset refuses them."""
    from trainer import distill
    from trainer.args import DistillArgs

    args = DistillArgs(
        preset="mac", teacher="pf", decode="pf_anchored", samples=30, sionna_samples=30, steps=4,
        batch_size=8, eval_every=0, eval_slots=1, out=str(tmp_path / "mac"),
    )  # fmt: skip
    ckpt = distill.main(args)
    stage = ckpt.stages[-1]
    assert stage["data"]["sionna_world_slots_per_round"] == 30 and stage["data"]["slots"] == 60
    assert (tmp_path / "mac" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="mac world"):
        distill.collect(replace(args, preset="spectrum"), None, 0, None)


def test_same_seed_same_world_other_seed_other_world(exo: Exogenous) -> None:
    again = Exogenous.build(TINY)
    assert np.array_equal(again.trace.gain, exo.trace.gain) and np.array_equal(again.serving, exo.serving)
    other = Exogenous.build(replace(TINY, seed=1))
    assert not np.array_equal(other.drop.ut_xy, exo.drop.ut_xy)


def test_grpc_serve_drives_the_world_as_the_inproc_core(serve_process) -> None:
    """A real ``gnbsched serve`` over a gRPC stream decides a few slots of the world exactly as an
    in-process ServiceCore (same seed: same drop, channel and ACK draws; pf is deterministic)."""
    svc = serve_process(grpc=True, rest=False).wait_ready()
    options = {"sites": 1, "ues_per_sector": 2, "traffic": "ftp"}
    remote = simulate_world(f"grpc://{svc.grpc_target}", options=options, policy="pf", slots=6, seed=2, stream=True)
    local = simulate_world("inproc", options=options, policy="pf", slots=6, seed=2)
    assert remote["valid_before_repair"] == 1.0
    assert remote == pytest.approx(local, nan_ok=True)


def test_gnbsched_simulate_world_sionna_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["simulate", "--world", "sionna", "--target", "inproc", "--slots", "3", "--ues-per-sector", "2",
               "--policy", "pf", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(out)
    assert doc["world"] == "sionna" and doc["sites"] == 1 and doc["kpis"]["slots"] == 3
    assert doc["kpis"]["cell_throughput_bps"] > 0


def test_bench_sionna_writes_its_table_and_figure(tmp_path: Path) -> None:
    from trainer.sionna_world import bench

    args = argparse.Namespace(
        out=str(tmp_path), quick=True, seed=0, slots=12, policies="sionna-pf,pf,student+guard", sites=1,
        ues_per_sector=2, scenario=None, scs_khz=None, bandwidth_mhz=None, traffic="full", load_mbps=None,
        packet_bits=None, warmup_slots=2, drops=2, jobs=2,
    )  # fmt: skip
    assert bench.run(args) == 0  # two spawned worker processes, two drops
    out = tmp_path / "docs" / "bench" / "sionna"
    doc = json.loads((out / "results.json").read_text())
    assert [r["policy"] for r in doc["rows"]] == ["sionna-pf", "pf", "student+guard"]
    assert all(r["drops"] == 2 and len(r["user_throughput_bps"]) == 12 for r in doc["rows"])  # pooled UTs
    assert sorted((r["drop_seed"], r["policy"]) for r in doc["per_drop"]) == sorted(
        (seed, p) for seed in (0, 1) for p in ("sionna-pf", "pf", "student+guard")
    )
    by_drop = {(r["drop_seed"], r["policy"]): r for r in doc["per_drop"]}
    assert by_drop[(0, "pf")]["user_throughput_bps"] != by_drop[(1, "pf")]["user_throughput_bps"]  # other drops
    pooled = {r["policy"]: r for r in doc["rows"]}["pf"]
    users = by_drop[(0, "pf")]["user_throughput_bps"] + by_drop[(1, "pf")]["user_throughput_bps"]
    assert pooled["user_throughput_p5_bps"] == pytest.approx(float(np.percentile(users, 5)))
    mean_cell = (by_drop[(0, "pf")]["cell_throughput_bps"] + by_drop[(1, "pf")]["cell_throughput_bps"]) / 2
    assert pooled["cell_throughput_bps"] == pytest.approx(mean_cell)
    assert any(t["target"].startswith("pf within 2%") for t in doc["targets"])
    assert (out / "results.csv").read_text().startswith("traffic,policy,")
    assert (out / "user_throughput_cdf.png").stat().st_size > 0
    assert "| full | pf |" in (out / "table.md").read_text() and "| 1 | full |" in (out / "table.md").read_text()
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- generated by: gnbsched bench sionna" in report and "| full | student+guard |" in report
