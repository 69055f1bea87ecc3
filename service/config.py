"""One settings object, read once from the environment (``GNBSCHED_*``) and CLI flags."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every field can be set as ``GNBSCHED_<FIELD>`` (lists as JSON)."""

    model_config = SettingsConfigDict(env_prefix="GNBSCHED_", extra="ignore")

    host: str = Field("127.0.0.1", description="address the REST and gRPC servers bind to")
    rest_port: int = Field(8000, description="REST (FastAPI/uvicorn) port; 0 disables REST")
    grpc_port: int = Field(50051, description="gRPC port; 0 disables gRPC")
    workers: int = Field(1, description="uvicorn worker processes (metrics use multiprocess mode when > 1)")
    state_url: str = Field("memory://", description="per-cell state: memory:// (in process) or redis://host:port/db")
    default_policy_spectrum: str = Field(
        "auction", description="policy when a spectrum request names none (exact: km below 160k pairs, certified auction above)")
    default_policy_mac: str = Field(
        "student", description="policy when a mac request names none (the shipped ONNX student; falls back when no model)")
    fallbacks: list[str] = Field(default_factory=lambda: ["greedy"],
                                 description="policies tried in order when the requested one fails or overruns")
    deadline_ms: float | None = Field(None, description="default per-slot policy deadline (None = none)")
    seed: int = Field(0, description="seed of the per-(cell, slot) random generators")
    ewma_slots: float = Field(100.0, description="PF averaging window in slots")
    max_users: int = Field(4096, description="largest N accepted")
    max_resources: int = Field(4096, description="largest R accepted")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="largest request body accepted")
    preload_policies: list[str] = Field(default_factory=list,
                                        description="policies instantiated at start (readiness waits for them)")
    record_dir: str | None = Field(
        None, description="record every decided slot: one JSON Lines row per slot (the request in the REST "
                          "format and the decision) appended to <record_dir>/<cell id>.jsonl (service.trace); "
                          "None = off")
    record_max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="a trace file that would grow beyond this rotates to "
                                            "<name>.1.jsonl (one old file kept per cell)")
    # -- run-time guard of learned / LLM policies (service.guard) ---------------------------------
    guard_enabled: bool = Field(True, description="decide a cheap reference on the same slot as a guarded policy "
                                                  "and serve the reference while the guarded one does worse")
    guard_policies: list[str] = Field(default_factory=lambda: ["student", "teacher"],
                                      description="policies the guard watches")
    guard_reference: dict[str, str] = Field(
        default_factory=lambda: {"spectrum": "greedy", "mac": "pf"},
        description="reference policy per preset; a preset without one is not guarded")
    guard_exempt: list[str] = Field(
        default_factory=list, description="policy/preset pairs not guarded, e.g. [\"teacher/mac\"] (default none)")
    guard_ratio: float = Field(0.97, ge=0.0, description="serve the reference while sum(guarded utility) / "
                                                          "sum(reference utility) over the window is below this")
    guard_floor: float = Field(0.5, ge=0.0, description="serve the reference on a slot whose own utility ratio "
                                                         "is below this")
    guard_window_slots: int = Field(50, ge=1, description="the window: the cell's last this many slots")
    guard_min_slots: int = Field(10, ge=1, description="the window ratio is judged once the window holds this "
                                                        "many slots (the floor from the first)")
    # -- access (service.security) -----------------------------------------------------------
    auth_token: SecretStr | None = Field(
        None, description="bearer token required on scheduling, policy metadata and admin endpoints "
                          "(REST Authorization header, gRPC authorization metadata); None = open")
    auth_token_file: str | None = Field(
        None, description="file holding the bearer token (first line); alternative to auth_token")
    admin_enabled: bool = Field(False, description="serve the admin endpoints (POST /admin/reload); off by default")
    model_watch_s: float = Field(
        0.0, description="every this many seconds, swap in any newer model of the loaded model-backed policies "
                         "(the student's hot reload); how every worker of --workers N and every replica on a "
                         "shared model volume follows a new `latest`; 0 = off")
    rest_tls_cert: str | None = Field(None, description="PEM server certificate (chain): REST over TLS (https)")
    rest_tls_key: str | None = Field(None, description="PEM private key of rest_tls_cert")
    rest_tls_client_ca: str | None = Field(
        None, description="PEM CA bundle: REST requires client certificates signed by it (mTLS; probes need one too)")
    grpc_tls_cert: str | None = Field(None, description="PEM server certificate (chain): gRPC over TLS")
    grpc_tls_key: str | None = Field(None, description="PEM private key of grpc_tls_cert")
    grpc_tls_client_ca: str | None = Field(
        None, description="PEM CA bundle: gRPC requires client certificates signed by it (mTLS)")
    grpc_keepalive_s: float = Field(
        30.0, description="gRPC keepalive ping interval; a peer that does not answer is dropped")
    grpc_keepalive_timeout_s: float = Field(10.0, description="gRPC keepalive ping answer timeout")
    grpc_stream_stall_s: float = Field(
        30.0, description="cancel a StreamSlots stream whose answer cannot be written for this long "
                          "(the client stopped reading); 0 = never")

    def default_policy(self, preset: str) -> str:
        return self.default_policy_spectrum if preset == "spectrum" else self.default_policy_mac

    def public(self) -> dict[str, Any]:
        """Settings safe to print / expose (no secrets: the token is shown as ``***``)."""
        out = self.model_dump()
        if out.get("auth_token") is not None:
            out["auth_token"] = "***"
        return out
