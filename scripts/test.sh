#!/usr/bin/env bash
# Installs everything the tests need into .venv, runs the gate (scripts/check.sh) and then the whole suite.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${UNHARDCODED_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing unhardcoded with test dependencies"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[test]'

echo "==> installing system test dependencies (Chromium, PostgreSQL)"
PYTHON_FOR_TESTS="$VENV/bin/python" bash scripts/install-test-deps.sh

# The end-to-end tests run the real Collector, Jaeger, Tempo and Prometheus. The script builds
# them once into ~/.cache/unhardcoded/bin from their Go modules and skips them when up to date.
echo "==> installing the real telemetry backends"
bash scripts/install-infra.sh all

echo "==> running the gate (scripts/check.sh)"
UNHARDCODED_VENV="$VENV" bash scripts/check.sh

echo "==> running tests"
# Subprocess tests run the `unhardcoded` console script: it must be this checkout's, from the venv.
export PATH="$PWD/$VENV/bin:$PATH"
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
