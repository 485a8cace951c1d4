#!/usr/bin/env bash
# The gate: formatting, lint, types, layers and generated files, each must pass before the tests run.
# Usage: scripts/check.sh   (stops at the first check that fails and names it)
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${UNHARDCODED_VENV:-.venv}
# The checks read this checkout's source, whatever unhardcoded the venv has installed.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

run() {
  local name=$1
  shift
  echo "==> check: $name"
  if ! "$@"; then
    echo "error: check failed: $name ($*)" >&2
    exit 1
  fi
}

run "ruff format" "$VENV/bin/ruff" format --check --quiet
run "ruff check" "$VENV/bin/ruff" check --quiet
run "mypy" "$VENV/bin/mypy"
run "import layers" "$VENV/bin/lint-imports" --no-cache
run "unasync twins current" "$VENV/bin/python" scripts/unasync.py --check
run "semconv modules current" "$VENV/bin/python" scripts/generate_semconv.py --check
run "grafana dashboards current" "$VENV/bin/python" scripts/generate_grafana.py --check
echo "==> all checks passed"
