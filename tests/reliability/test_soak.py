"""Soak in CI: ``service.bench.soak`` shortened (the 60 s run is the benchmark command,
``python -m service.bench.soak``). Twenty connections — 16 REST keep-alive connections and 4 gRPC
streams, one cell each, stateful (feedback every slot) — against a real ``gnbsched serve`` on
loopback: zero errors, every checked decision PAG-valid, the server's resident memory flat
within 5 % after warm-up, no file descriptor or thread left behind. The latency figures are
printed, not asserted (speed belongs to benchmarks)."""

from __future__ import annotations

from service.bench.soak import SoakConfig, run_soak
from service.config import Settings

#: relative RSS change allowed between the first and last samples after warm-up
RSS_TOLERANCE = 0.05


def test_soak_zero_errors_and_flat_memory() -> None:
    # the served (default) mac policy is loaded before the run: a model policy's one-time load
    # (onnxruntime session, its files and thread) is not a descriptor or thread left behind
    default_mac = Settings().default_policy("mac")  # the server inherits this environment
    cfg = SoakConfig(
        duration_s=14.0,
        warmup_s=4.0,
        connections=16,
        grpc_streams=4,
        rate_per_conn=25.0,
        num_ue=20,
        num_res=17,
        rss_interval_s=0.25,
        rss_window=8,
        check_every=5,
        serve_args=["--preload", default_mac],
    )
    result = run_soak(cfg)
    print("\n" + result.summary())
    assert result.errors == 0, result.error_samples
    assert result.rest.requests > 16 * 20 and result.grpc.requests > 4 * 20, result.summary()
    assert result.checked > 50
    assert abs(result.rss_drift) <= RSS_TOLERANCE, result.summary()
    assert result.fds_end <= result.fds_start + 2, result.summary()
    assert result.threads_end <= result.threads_start + 2, result.summary()
