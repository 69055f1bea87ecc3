# syntax=docker/dockerfile:1
# gnbsched: the scheduling service (`gnbsched serve`: REST on 8000, gRPC on 50051).
#
#   docker build -t gnbsched:0.2.0 .                              # CPU image (default target: runtime)
#   docker build --target runtime-gpu -t gnbsched:0.2.0-gpu .     # onnxruntime-gpu, CUDA + cuDNN from PyPI
#
# Stages: build (venv + compilers) -> build-gpu (onnxruntime swapped for onnxruntime-gpu)
#         base (user, env, shipped models, health check) -> runtime-gpu, runtime.
# The final images hold no compiler: only the slim Python base, the venv and models/.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the package and its dependencies ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A C toolchain for any dependency without a wheel for this platform; it stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY proto/ proto/
COPY models/ models/
RUN pip install --upgrade pip setuptools wheel \
 && pip install . \
 && gnbsched --help >/dev/null

# ---- build-gpu: the same venv with onnxruntime-gpu instead of onnxruntime ----------------
# The `gpu` extra of pyproject adds onnxruntime-gpu beside onnxruntime; both install the same
# `onnxruntime` module, so the CPU wheel is removed first. The [cuda,cudnn] extras bring the
# CUDA and cuDNN runtime libraries as wheels (their major versions follow the onnxruntime-gpu
# release: CUDA 13 for 1.31): the host only needs an NVIDIA driver for that CUDA major version
# and the container toolkit (`docker run --gpus all`, or the nvidia.com/gpu resource in k8s).
FROM build AS build-gpu
ARG ONNXRUNTIME_GPU="onnxruntime-gpu[cuda,cudnn]>=1.21"
RUN pip uninstall -y onnxruntime \
 && pip install "${ONNXRUNTIME_GPU}" \
 && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()"

# ---- base: what both runtime images share -------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
# bubblewrap: the sandbox of the teacher's code answer form (docs/sandbox.md). It also needs a
# seccomp profile that allows unprivileged user namespaces; without one the service refuses the
# code form at start-up and serves everything else.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 gnbsched \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gnbsched
# Settings are GNBSCHED_* (service/config.py); a container must bind all interfaces.
# The root filesystem may be read-only: the only writable path needed is /tmp (an emptyDir in
# Kubernetes, a tmpfs in compose), where `gnbsched serve` with more than one worker process
# (GNBSCHED_WORKERS; by default one per CPU given when the state is in Redis) creates the
# prometheus_client multiprocess directory, and numba's cache of the compiled kernels
# (NUMBA_CACHE_DIR; a process that finds it empty compiles them at start, before it turns ready).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    GNBSCHED_HOST=0.0.0.0 \
    GNBSCHED_REST_PORT=8000 \
    GNBSCHED_GRPC_PORT=50051 \
    GNBSCHED_STATE_URL=memory:// \
    GNBSCHED_MODEL_DIR=/opt/gnbsched/models
# The shipped ONNX students (models/student-*/<version>/model.onnx + model.json), read-only.
COPY models/ /opt/gnbsched/models/
WORKDIR /tmp
EXPOSE 8000 50051
# Liveness without curl: urlopen raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GNBSCHED_REST_PORT', '8000'), timeout=2)"
# On SIGTERM `gnbsched serve` stops accepting, drains in-flight requests (<= 10 s) and stops
# gRPC (5 s grace): within the 30 s grace period of the Kubernetes Deployment.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gnbsched"]
CMD ["serve"]

# ---- runtime-gpu ---------------------------------------------------------------------------
FROM base AS runtime-gpu
COPY --from=build-gpu /opt/venv /opt/venv
# Let the dynamic loader find the CUDA / cuDNN libraries that came as wheels.
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/nvidia-wheels.conf \
 && ldconfig
USER 10001:10001

# ---- runtime (default target, CPU) --------------------------------------------------------
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
