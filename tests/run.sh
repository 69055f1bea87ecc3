#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# Sets up .venv with the project and its test + train extras, makes sure the system tools the
# integration tests use are present (redis-server), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,train]'

# System tools: install from Debian's packages when missing and we are root.
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)  # promtool + the Prometheus server
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
