"""The container image without a Docker engine: the Dockerfile's stages and hardening, the build
context that .dockerignore leaves (every file the Dockerfile copies, every shipped model), a wheel
built from exactly the files the build stage copies, and ``gnbsched serve`` run with the image's
environment, probed by the image's own HEALTHCHECK command and stopped with SIGTERM."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_support import (
    REPO,
    mac_request,
    post_schedule,
    render,
    run,
    shipped_students,
    spectrum_request,
    tool,
)
from testkit import ServeProcess

COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cmake", "libc6-dev", "rustc", "cargo")


# ----------------------------------------------------------------------------- Dockerfile model
@dataclass
class Instr:
    cmd: str  # upper case
    args: str  # raw text after the instruction, continuations joined

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """(``--flag=value`` options, remaining shell words) of COPY / FROM / HEALTHCHECK."""
        words = shlex.split(self.args)
        opts: dict[str, str] = {}
        while words and words[0].startswith("--"):
            key, _, value = words.pop(0)[2:].partition("=")
            opts[key] = value
        return opts, words

    def exec_form(self) -> list[str] | None:
        text = self.args.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Stage:
    name: str
    base: str  # image or earlier stage name, build args substituted
    instrs: list[Instr] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instr]:
        return [i for i in self.instrs if i.cmd == cmd]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order). Handles comments, ``\\`` continuations, ARG defaults."""
    lines: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    assert not buf, "Dockerfile ends inside a continued instruction"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        cmd, _, rest = line.partition(" ")
        ins = Instr(cmd.upper(), rest.strip())
        if ins.cmd == "ARG" and not stages:
            k, _, v = ins.args.partition("=")
            args[k] = v.strip('"')
            continue
        if ins.cmd == "FROM":
            words = ins.args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            stages.append(Stage(name, base))
            continue
        assert stages, f"instruction before FROM: {line}"
        stages[-1].instrs.append(ins)
    return args, stages


def chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in stages}
    out = [by_name[name]]
    while out[-1].base in by_name:
        out.append(by_name[out[-1].base])
    return out


def env_of(stages: list[Stage], name: str) -> dict[str, str]:
    """ENV values a container of stage ``name`` starts with (inherited ones first)."""
    env: dict[str, str] = {}
    for st in reversed(chain(stages, name)):
        for ins in st.all("ENV"):
            for word in shlex.split(ins.args):
                k, sep, v = word.partition("=")
                assert sep, f"use ENV key=value, not the legacy form: {ins.args}"
                env[k] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), v)
    return env


def last(stages: list[Stage], name: str, cmd: str) -> Instr | None:
    for st in chain(stages, name):
        found = st.all(cmd)
        if found:
            return found[-1]
    return None


# ----------------------------------------------------------------------------- .dockerignore
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus ``**``) as a regex on /-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def load_dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:].strip() if negate else line
        pat = pat.strip("/")
        rules.append((negate, _glob_regex(pat)))
    return rules


def excluded(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent dirs decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    verdict = False
    for negate, rx in rules:
        if any(rx.match(p) for p in prefixes):
            verdict = not negate
    return verdict


def build_context(rules: list[tuple[bool, re.Pattern[str]]]) -> set[str]:
    """Files (repo-relative) that ``docker build .`` would send, .dockerignore applied."""
    files = set()
    for p in REPO.rglob("*"):
        rel = p.relative_to(REPO).as_posix()
        if rel.startswith((".git/", ".venv/")) or not (p.is_file() or p.is_symlink()):
            continue
        if not excluded(rel, rules):
            files.add(rel)
    return files


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="module")
def context() -> set[str]:
    return build_context(load_dockerignore(REPO / ".dockerignore"))


def shipped_models() -> list[Path]:
    """models/student-*/<version>/ directories (each with model.onnx + model.json)."""
    return sorted(p.parent for p in REPO.glob("models/student-*/*/model.onnx"))


def copies(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY from the build context."""
    out = []
    for ins in stage.all("COPY"):
        opts, words = ins.flags()
        if "from" not in opts:
            out.append((words[:-1], words[-1]))
    return out


# ----------------------------------------------------------------------------- static checks
def test_stages_targets_and_non_root_user(dockerfile):
    _args, stages = dockerfile
    names = [s.name for s in stages]
    assert names[-1] == "runtime", "the default target (last stage) must be the CPU runtime image"
    assert "runtime-gpu" in names
    for target in ("runtime", "runtime-gpu"):
        images = [s.base for s in chain(stages, target)]
        assert "slim" in images[-1], f"{target} is not built on a slim base image: {images}"
        user = last(stages, target, "USER")
        assert user is not None, f"{target}: no USER (the image would run as root)"
        uid = user.args.split(":")[0]
        assert uid.isdigit() and int(uid) > 0, (
            f"{target}: USER must be a numeric non-root uid (runAsNonRoot), got {uid}"
        )
        # the uid the Kubernetes Deployment runs as is the image's user
        for overlay in ("dev", "prod"):
            dep = next(d for d in render(overlay) if d["kind"] == "Deployment")
            assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


#: the only system packages a final image may install: the code form's sandbox
RUNTIME_PACKAGES = {"bubblewrap"}


def test_final_images_hold_no_compiler(dockerfile):
    _, stages = dockerfile
    build_names = {s.name for s in stages} - {st.name for t in ("runtime", "runtime-gpu") for st in chain(stages, t)}
    for target in ("runtime", "runtime-gpu"):
        for st in chain(stages, target):
            for ins in st.all("RUN"):
                words = set(re.findall(r"[\w.+-]+", ins.args))
                found = words & set(COMPILERS)
                assert not found, f"stage {st.name} of {target} installs or runs {found}: {ins.args}"
                for m in re.finditer(r"apt-get install((?:\s+(?!&&)\S+)+)", ins.args):
                    packages = {w for w in m.group(1).split() if not w.startswith("-") and w != "\\"}
                    assert packages <= RUNTIME_PACKAGES, f"stage {st.name} installs {packages} into {target}"
            for ins in st.all("COPY"):
                opts, words = ins.flags()
                if "from" in opts:
                    assert opts["from"] in build_names, opts
                    assert words[:-1] == ["/opt/venv"], f"only the venv comes from a build stage: {ins.args}"
    # the toolchain is in a build stage
    build_runs = " ".join(i.args for s in stages if s.name in build_names for i in s.all("RUN"))
    assert "gcc" in build_runs and "pip install ." in build_runs


def test_gpu_target_swaps_onnxruntime_for_onnxruntime_gpu(dockerfile):
    _, stages = dockerfile
    gpu_venv_stage = next(
        i.flags()[0]["from"] for i in chain(stages, "runtime-gpu")[0].all("COPY") if "from" in i.flags()[0]
    )
    runs = " ".join(i.args for s in chain(stages, gpu_venv_stage) for i in s.all("RUN"))
    arg_defaults = " ".join(i.args for s in chain(stages, gpu_venv_stage) for i in s.all("ARG"))
    assert "pip uninstall -y onnxruntime" in runs
    assert "onnxruntime-gpu" in arg_defaults + runs
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    gpu_extra = pyproject["project"]["optional-dependencies"]["gpu"]
    assert any(d.startswith("onnxruntime-gpu") for d in gpu_extra), gpu_extra
    assert "CUDAExecutionProvider" in runs, "the gpu build must prove CUDA support is compiled in"


def test_env_ports_entrypoint_and_healthcheck(dockerfile):
    _, stages = dockerfile
    env = env_of(stages, "runtime")
    assert env["GNBSCHED_HOST"] == "0.0.0.0", "inside a container the server must bind all interfaces"
    exposed = {int(p.split("/")[0]) for i in chain(stages, "runtime")[-1].all("EXPOSE") for p in i.args.split()}
    exposed |= {
        int(p.split("/")[0]) for st in chain(stages, "runtime") for i in st.all("EXPOSE") for p in i.args.split()
    }
    assert {int(env["GNBSCHED_REST_PORT"]), int(env["GNBSCHED_GRPC_PORT"])} <= exposed
    assert last(stages, "runtime", "ENTRYPOINT").exec_form() == ["gnbsched"]
    assert last(stages, "runtime", "CMD").exec_form() == ["serve"]
    assert last(stages, "runtime", "STOPSIGNAL").args == "SIGTERM"
    hc = last(stages, "runtime", "HEALTHCHECK")
    assert hc is not None
    assert "/healthz" in hc.args and "python" in hc.args
    assert not re.search(r"\b(curl|wget)\b", hc.args), "the slim image has neither curl nor wget"
    # settings in the image are real Settings fields (or the model directory the service reads)
    from service.config import Settings

    known = {f"GNBSCHED_{k.upper()}" for k in Settings.model_fields} | {"GNBSCHED_MODEL_DIR"}
    assert {k for k in env if k.startswith("GNBSCHED_")} <= known


def test_models_dir_is_shipped_where_the_service_looks(dockerfile, context):
    _, stages = dockerfile
    env = env_of(stages, "runtime")
    model_copies = [
        (src, dst)
        for st in chain(stages, "runtime")
        for src, dst in copies(st)
        if any(s.rstrip("/") == "models" for s in src)
    ]
    assert model_copies, "the runtime image must COPY models/"
    assert {dst.rstrip("/") for _, dst in model_copies} == {env["GNBSCHED_MODEL_DIR"].rstrip("/")}
    models = shipped_models()
    assert models, "no shipped student (models/student-*/<version>/model.onnx) to put in the image"
    for d in models:
        for name in ("model.onnx", "model.json"):
            rel = (d / name).relative_to(REPO).as_posix()
            assert (d / name).is_file(), f"{rel} is missing"
            assert rel in context, f"{rel} is excluded from the build context by .dockerignore"


def test_every_copied_path_is_in_the_build_context(dockerfile, context):
    _, stages = dockerfile
    for st in stages:
        for sources, _dst in copies(st):
            for src in sources:
                path = REPO / src
                assert path.exists(), f"stage {st.name}: COPY {src}: no such file in the repo"
                rel = src.rstrip("/")
                if path.is_dir():
                    inside = [f for f in context if f.startswith(rel + "/")]
                    assert inside, f"stage {st.name}: COPY {src}: .dockerignore leaves nothing of it"
                else:
                    assert rel in context, f"stage {st.name}: COPY {src} is excluded by .dockerignore"
    # what must never be sent to the daemon
    for f in context:
        assert not f.startswith(("tests/", ".ci/", "deploy/", "runs/")), f"{f} is in the build context"
        assert "__pycache__" not in f and not f.endswith((".pyc", ".pt", ".ckpt")), f
    assert "service/api/serve.py" in context and "pyproject.toml" in context


def test_build_stage_files_build_the_package(dockerfile, tmp_path):
    """The files the build stage copies (nothing more) build a wheel with the gnbsched command."""
    _, stages = dockerfile
    ctx = build_context(load_dockerignore(REPO / ".dockerignore"))
    stage_dir = tmp_path / "src"
    for sources, dst in copies(chain(stages, "build")[0]):
        for src in sources:
            rel = src.rstrip("/")
            files = [f for f in ctx if f == rel or f.startswith(rel + "/")]
            for f in files:
                target = stage_dir / (
                    f
                    if dst in ("./", ".") or dst.rstrip("/") == rel
                    else Path(dst.rstrip("/")) / Path(f).relative_to(rel)
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, target)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(stage_dir),
        ],
        timeout=120,
    )
    wheel = next((tmp_path / "dist").glob("gnbsched-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "service/api/serve.py" in names and "service/cli.py" in names
    assert re.search(r"^gnbsched\s*=\s*service\.cli:main", entry_points, re.M), entry_points


# ----------------------------------------------------------------------------- the entry command
def healthcheck_argv(dockerfile) -> list[str]:
    _, stages = dockerfile
    hc = last(stages, "runtime", "HEALTHCHECK")
    _opts, words = hc.flags()
    assert words[0] == "CMD"
    cmd = hc.args[hc.args.index("CMD") + 3 :].strip()
    return json.loads(cmd) if cmd.startswith("[") else ["/bin/sh", "-c", cmd]


def test_serve_with_the_image_environment(dockerfile, tmp_path):
    """``gnbsched serve`` started as the image starts it (its ENV, its CMD, cwd = WORKDIR-like
    empty dir). Only the bind address and ports differ: loopback and free ports on this machine.
    The image's HEALTHCHECK passes against it, /readyz and gRPC health answer, the students
    in the image's model directory serve, and SIGTERM stops it cleanly within the pod's grace
    period."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, stages = dockerfile
    image_env = env_of(stages, "runtime")
    # the model directory as the image has it: models/ after .dockerignore, copied like COPY does
    model_dir = tmp_path / image_env["GNBSCHED_MODEL_DIR"].lstrip("/")
    for rel in build_context(load_dockerignore(REPO / ".dockerignore")):
        if rel.startswith("models/"):
            (model_dir / rel.removeprefix("models/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, model_dir / rel.removeprefix("models/"), follow_symlinks=False)
    settings = {k: v for k, v in image_env.items() if k.startswith(("GNBSCHED_", "PYTHON"))}
    argv = [tool(last(stages, "runtime", "ENTRYPOINT").exec_form()[0]), *last(stages, "runtime", "CMD").exec_form()]
    # host and ports in GNBSCHED_HOST / _REST_PORT / _GRPC_PORT (loopback, free ports), as the image's ENV sets them
    serve = ServeProcess(
        env={**settings, "GNBSCHED_MODEL_DIR": str(model_dir)},
        grpc=True,
        command=argv,
        settings_in_env=True,
        log_path=tmp_path / "serve.log",
        cwd=tmp_path,
    )
    proc, rest_port, grpc_port = serve.proc, serve.rest_port, serve.grpc_port
    hc_env = dict(serve.env, PATH=f"{Path(sys.executable).parent}:{serve.env.get('PATH', '')}")
    try:
        serve.wait_ready(path="/readyz")
        hc = subprocess.run(healthcheck_argv(dockerfile), env=hc_env, capture_output=True, text=True, timeout=10)
        assert hc.returncode == 0, f"HEALTHCHECK failed against a healthy server: {hc.stderr}"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        # the students shipped in the image's model directory serve
        for preset, version in shipped_students():
            make = mac_request if preset == "mac" else spectrum_request
            d = post_schedule(f"http://127.0.0.1:{rest_port}", make(f"cell-{preset}", 0, policy="student"))
            assert d["policy"] == "student" and version in d["policy_version"], d
        # graceful stop: SIGTERM, exit 0 before Kubernetes would SIGKILL (grace minus preStop sleep)
        dep = next(d for d in render("prod") if d["kind"] == "Deployment")
        pod = dep["spec"]["template"]["spec"]
        pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        budget_s = pod["terminationGracePeriodSeconds"] - float(pre_stop[-1])
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(budget_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gnbsched serve still running {budget_s} s after SIGTERM: Kubernetes would SIGKILL it")
        log = (tmp_path / "serve.log").read_text()
        # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM (exit 143 in a container)
        assert code in (0, -signal.SIGTERM), f"exit code {code} after SIGTERM:\n{log[-3000:]}"
        assert "Application shutdown complete" in log, f"no graceful shutdown after SIGTERM:\n{log[-3000:]}"
        hc = subprocess.run(healthcheck_argv(dockerfile), env=hc_env, capture_output=True, text=True, timeout=10)
        assert hc.returncode != 0, "HEALTHCHECK passed with the server stopped"
    finally:
        serve.close()


# ----------------------------------------------------------------------------- compose
def test_compose_runs_the_image_as_the_manifests_do(dockerfile, monkeypatch):
    """compose.yaml builds the default target, runs it as the image's user with a read-only
    root and a writable /tmp, with settings that parse, against a Redis service it waits for."""
    import os

    import yaml

    from service.config import Settings

    _, stages = dockerfile
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert set(compose["services"]) == {"gnbsched", "redis", "prometheus", "grafana"}
    svc = compose["services"]["gnbsched"]
    assert svc["build"]["context"] == "." and svc["build"]["target"] in {s.name for s in stages}
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert svc["image"] == f"gnbsched:{version}"
    assert svc["user"] == last(stages, svc["build"]["target"], "USER").args
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert svc["cap_drop"] == ["ALL"]
    env = env_of(stages, svc["build"]["target"]) | svc["environment"]
    for k in list(os.environ):
        if k.startswith("GNBSCHED_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith("GNBSCHED_"):
            monkeypatch.setenv(k, str(v))
    s = Settings()
    assert s.host == "0.0.0.0"
    host = s.state_url.removeprefix("redis://").split(":")[0]
    assert host in compose["services"] and svc["depends_on"][host]["condition"] == "service_healthy"
    assert "healthcheck" in compose["services"][host]
    published = {p.split(":")[-1] for p in svc["ports"]}
    assert published == {str(s.rest_port), str(s.grpc_port)}
    assert all(
        p.startswith("127.0.0.1:") for name in compose["services"] for p in compose["services"][name].get("ports", [])
    ), "publish on loopback only"
    grace = svc["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= 30
