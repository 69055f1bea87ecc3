"""The one settings tree: ``Settings`` (serve) with ``Settings.teacher`` (the LLM teacher), read from
the environment (``GNBSCHED_*``, ``GNBSCHED_TEACHER_*``) and the ``gnbsched serve`` flags."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from service.serialize.prompt_options import PromptOptions


Dialect = Literal["llamacpp", "llamacpp_grammar", "json_schema", "vllm", "vllm_legacy", "ollama", "plain"]


class TeacherSettings(BaseModel):
    """The LLM teacher (``service.policies.teacher``): ``Settings.teacher``, from ``GNBSCHED_TEACHER_<FIELD>``."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(default=None, description="API base URL, e.g. http://127.0.0.1:8080/v1 (None: no teacher)")
    model: str = Field(default="teacher", description="model name sent in requests; also the policy version")
    api_key: SecretStr | None = Field(default=None, description="bearer token, if the endpoint wants one")
    dialect: Dialect = Field(default="llamacpp", description="how the PAG constraint is sent (module doc)")
    tokenizer: Literal["auto", "estimate"] = Field(
        default="auto",
        description="auto: count prompt tokens with the endpoint's tokenizer when it has one "
        "(llama-cpp-python /extras/tokenize/count, llama.cpp and vLLM /tokenize); estimate: never ask",
    )
    budget_tokens: int = Field(default=2048, description="prompt token budget (SPEC §5)")
    answer_form: Literal["auto", "owner", "allocation", "code"] = Field(
        default="auto",
        description="answer form: auto / owner / allocation (JSON), or code (a program schedule(state) run in the "
        "sandbox; the serve command refuses it where the sandbox cannot be set up)",
    )
    code_reuse_slots: int = Field(
        default=1000,
        ge=1,
        description="code form: slots of a cell one program decides before the teacher is asked for a new one "
        "(also renewed when the cell's structure changes or the program fails)",
    )
    code_cache_size: int = Field(default=16, ge=1, description="code form: programs kept ready (one sandbox each)")
    code_cpu_s: float = Field(default=1.0, gt=0, description="code form: CPU seconds of a program's sandbox")
    code_wall_s: float = Field(
        default=0.5, gt=0, description="code form: wall seconds of one program call (the slot's deadline bounds it)"
    )
    code_memory_bytes: int = Field(default=512 * 2**20, gt=0, description="code form: address space of a sandbox")
    code_output_bytes: int = Field(default=2**20, gt=0, description="code form: bytes a program may return or print")
    owner_form_max_resources: int = Field(default=64, description="largest R answered in the owner form (auto)")
    pairs_per_row: int = Field(default=3, description="best partners listed per user / resource row")
    system_role: bool = Field(default=True, description="send a system message (False: merged into the user turn)")
    max_tokens: int = Field(default=1024, description="completion token limit")
    temperature: float = Field(default=0.0, description="sampling temperature (0 = greedy)")
    timeout_s: float = Field(default=30.0, description="request timeout; the slot's deadline bounds it further")
    connect_timeout_s: float = Field(default=2.0, description="TCP connect timeout")
    max_concurrency: int = Field(default=4, description="requests in flight at once (pooled connections)")
    cache_size: int = Field(default=0, description="LRU cache of answers keyed by the serialized state (0 = off)")
    record_path: str | None = Field(
        default=None, description="append (state, teacher decision) JSONL here (None = off)"
    )
    fallback_on_unparsable: bool = Field(
        default=True, description="answers without JSON raise (fallback) instead of repair"
    )
    fill_unused: bool = Field(
        default=True,
        description="a PAG-valid answer that leaves available resources unused (a "
        "partial answer over the users the prompt details, at large N) is completed greedily, "
        "highest utility first; invalid answers go to check and repair unchanged",
    )

    def prompt_options(self) -> PromptOptions:
        from service.serialize.prompt_options import PromptOptions

        return PromptOptions(
            budget_tokens=self.budget_tokens,
            answer_form="auto" if self.answer_form == "code" else self.answer_form,
            owner_form_max_resources=self.owner_form_max_resources,
            pairs_per_row=self.pairs_per_row,
            system_role=self.system_role,
        )

    def api_root(self) -> str:
        """The server root (the API base without a trailing ``/v1``)."""
        url = (self.url or "").rstrip("/")
        return url[:-3] if url.endswith("/v1") else url

    def chat_url(self) -> str:
        if self.dialect == "ollama":
            return self.api_root() + "/api/chat"
        url = (self.url or "").rstrip("/")
        return url + "/chat/completions" if url.endswith("/v1") else url + "/v1/chat/completions"


class Settings(BaseSettings):
    """Service settings. Every field can be set as ``GNBSCHED_<FIELD>`` (lists as JSON)."""

    model_config = SettingsConfigDict(
        env_prefix="GNBSCHED_", extra="ignore", env_nested_delimiter="_", env_nested_max_split=1
    )

    host: str = Field("127.0.0.1", description="address the REST and gRPC servers bind to")
    rest_port: int = Field(8000, description="REST (FastAPI/uvicorn) port; 0 disables REST")
    grpc_port: int = Field(50051, description="gRPC port; 0 disables gRPC")
    workers: int = Field(
        0,
        ge=0,
        description="server processes, each with REST and gRPC on the same ports (metrics use multiprocess "
        "mode when > 1); 0: one per core the process is given (CPU affinity, capped by the cgroup CPU quota) "
        "when per-cell state is shared (redis), and 1 with in-process state, where a cell must stay in one "
        "process",
    )
    state_url: str = Field(
        "memory://",
        description="per-cell state: memory:// (in process) or redis://host:port/db, "
        "redis+sentinel://host:port,.../<master>, redis+cluster://host:port,...",
    )
    max_cells: int = Field(
        100_000,
        ge=1,
        description="cells kept in process (the memory:// store; the restore cache "
        "of a Redis store); beyond it the least recently used is evicted",
    )
    cell_ttl_s: float = Field(
        86_400.0, gt=0, description="a cell not written for this long is forgotten (memory:// LRU, Redis key TTL)"
    )
    state_write_attempts: int = Field(
        4,
        ge=1,
        description="compare-and-set attempts of one slot against concurrent "
        "writers of its cell before it is refused (retryable)",
    )
    default_policy_spectrum: str = Field(
        "auction",
        description="policy when a spectrum request names none (exact: km below 160k pairs, certified auction above)",
    )
    default_policy_mac: str = Field(
        "student",
        description="policy when a mac request names none (the shipped ONNX student; falls back when no model)",
    )
    fallbacks: list[str] = Field(
        default_factory=lambda: ["greedy"],
        description="policies tried in order when the requested one fails or overruns",
    )
    deadline_ms: float | None = Field(None, description="default per-slot policy deadline (None = none)")
    seed: int = Field(0, description="seed of the per-(cell, slot) random generators")
    ewma_slots: float = Field(100.0, description="PF averaging window in slots")
    max_users: int = Field(4096, description="largest N accepted")
    max_resources: int = Field(4096, description="largest R accepted")
    max_cells_per_call: int = Field(
        256,
        ge=1,
        description="largest number of cells in one batched call (ScheduleCells, StreamTtis, POST /schedule/batch)",
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, description="largest request body accepted")
    # -- hostile and careless connections (service.api.rest.protocol, service.api.grpc.server) -----
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="largest REST request line + headers; beyond it the client gets 431 and "
        "the connection is closed, before any application work (authentication "
        "included)",
    )
    header_timeout_s: float = Field(
        5.0,
        gt=0,
        description="a REST request's line and headers must arrive whole within this many seconds (of "
        "the connection's accept, or of the request's first byte on a kept-alive "
        "connection; over TLS, of the handshake's end): 408 and closed otherwise (slow "
        "loris); also the gRPC connection handshake timeout (TLS and HTTP/2 preface)",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="once its headers are in, a REST request's body must arrive whole within this "
        "many seconds: 408 and closed otherwise",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="open REST connections per process (each worker of --workers N); a connection "
        "beyond it is answered 503 at once and closed",
    )
    preload_policies: list[str] | None = Field(
        None,
        description="policies instantiated at start (readiness waits for them); unset: the presets' "
        "default policies (default_policy_mac, default_policy_spectrum), so that the first slot is "
        "not the one that loads them; empty: none",
    )
    record_dir: str | None = Field(
        None,
        description="record every decided slot: one JSON Lines row per slot (the request in the REST "
        "format and the decision) appended to <record_dir>/<cell id>.jsonl (service.trace); "
        "None = off",
    )
    record_max_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="a trace file that would grow beyond this rotates to <name>.1.jsonl (one old file kept per cell)",
    )
    model_dir: str | None = Field(
        None,
        description="directory of the shipped models (student-<preset>/<version>/); None = the repository's models/",
    )
    # -- run-time guard of learned / LLM policies (service.guard) ---------------------------------
    guard_enabled: bool = Field(
        True,
        description="decide a cheap reference on the same slot as a guarded policy "
        "and serve the reference while the guarded one does worse",
    )
    guard_policies: list[str] = Field(
        default_factory=lambda: ["student", "teacher"], description="policies the guard watches"
    )
    guard_reference: dict[str, str] = Field(
        default_factory=lambda: {"spectrum": "greedy", "mac": "pf"},
        description="reference policy per preset; a preset without one is not guarded",
    )
    guard_exempt: list[str] = Field(
        default_factory=list, description='policy/preset pairs not guarded, e.g. ["teacher/mac"] (default none)'
    )
    guard_ratio: float = Field(
        0.97,
        ge=0.0,
        description="serve the reference while sum(guarded utility) / "
        "sum(reference utility) over the window is below this",
    )
    guard_floor: float = Field(
        0.5, ge=0.0, description="serve the reference on a slot whose own utility ratio is below this"
    )
    guard_window_slots: int = Field(50, ge=1, description="the window: the cell's last this many slots")
    guard_min_slots: int = Field(
        10,
        ge=1,
        description="the window ratio is judged once the window holds this many slots (the floor from the first)",
    )
    # -- access (service.security) -----------------------------------------------------------
    auth_token: SecretStr | None = Field(
        None,
        description="bearer token required on scheduling, policy metadata and admin endpoints "
        "(REST Authorization header, gRPC authorization metadata); None = open",
    )
    auth_token_file: str | None = Field(
        None, description="file holding the bearer token (first line); alternative to auth_token"
    )
    admin_enabled: bool = Field(False, description="serve the admin endpoints (POST /admin/reload); off by default")
    model_watch_s: float = Field(
        0.0,
        description="every this many seconds, swap in any newer model of the loaded model-backed policies "
        "(the student's hot reload); how every worker of --workers N and every replica on a "
        "shared model volume follows a new `latest`; 0 = off",
    )
    rest_tls_cert: str | None = Field(None, description="PEM server certificate (chain): REST over TLS (https)")
    rest_tls_key: str | None = Field(None, description="PEM private key of rest_tls_cert")
    rest_tls_client_ca: str | None = Field(
        None, description="PEM CA bundle: REST requires client certificates signed by it (mTLS; probes need one too)"
    )
    grpc_tls_cert: str | None = Field(None, description="PEM server certificate (chain): gRPC over TLS")
    grpc_tls_key: str | None = Field(None, description="PEM private key of grpc_tls_cert")
    grpc_tls_client_ca: str | None = Field(
        None, description="PEM CA bundle: gRPC requires client certificates signed by it (mTLS)"
    )
    grpc_keepalive_s: float = Field(
        30.0, description="gRPC keepalive ping interval; a peer that does not answer is dropped"
    )
    grpc_keepalive_timeout_s: float = Field(10.0, description="gRPC keepalive ping answer timeout")
    grpc_max_concurrent_streams: int = Field(
        64,
        ge=1,
        description="concurrent RPCs (HTTP/2 streams) one gRPC connection may open "
        "(SETTINGS_MAX_CONCURRENT_STREAMS): a conforming client queues calls beyond it until "
        "a stream ends; a stream opened regardless is reset (REFUSED_STREAM: UNAVAILABLE, "
        "retryable, at the client)",
    )
    grpc_max_metadata_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="largest gRPC request metadata (all headers, counted as HPACK does: name "
        "+ value + 32 bytes each); a call with more is refused "
        "(RESOURCE_EXHAUSTED) before its handler runs",
    )
    grpc_max_concurrent_rpcs: int = Field(
        1024,
        ge=0,
        description="RPCs in progress on the gRPC server, all connections together (grpc has no "
        "connection limit: this bounds what connections can hold); beyond it a new call "
        "is answered RESOURCE_EXHAUSTED at once; 0 = no limit",
    )
    grpc_max_connection_idle_s: float = Field(
        300.0,
        ge=0,
        description="a gRPC connection with no RPC for this long is sent GOAWAY and closed (a client "
        "reconnects on its next call); 0 = never",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")
    access_log: bool = Field(False, description="log every request (off: it costs latency)")
    grpc_stream_stall_s: float = Field(
        30.0,
        description="cancel a StreamSlots stream whose answer cannot be written for this long "
        "(the client stopped reading); 0 = never",
    )

    teacher: TeacherSettings = Field(default_factory=TeacherSettings, description="the LLM teacher policy")

    def worker_count(self) -> int:
        """Server processes to run: ``workers``, or for 0 one per core given
        (``service.cores.cores_given``) when the state store is shared, so that every worker sees
        every cell, and 1 with in-process state. gRPC alone (``rest_port`` 0) runs one process."""
        if self.rest_port == 0:
            return 1
        if self.workers > 0:
            return self.workers
        if self.state_url.startswith("memory"):
            return 1
        from service.cores import cores_given

        return cores_given()

    def preloaded_policies(self) -> list[str]:
        """The policies ``ServiceCore.preload`` instantiates: ``preload_policies``, or when unset
        the presets' default policies (each once)."""
        if self.preload_policies is not None:
            return list(self.preload_policies)
        return list(dict.fromkeys((self.default_policy_mac, self.default_policy_spectrum)))

    def default_policy(self, preset: str) -> str:
        return self.default_policy_spectrum if preset == "spectrum" else self.default_policy_mac

    def public(self) -> dict[str, Any]:
        """Settings safe to print / expose (no secrets: the token is shown as ``***``)."""
        out = self.model_dump()
        if out.get("auth_token") is not None:
            out["auth_token"] = "***"
        if out["teacher"].get("api_key") is not None:
            out["teacher"]["api_key"] = "***"
        return out
