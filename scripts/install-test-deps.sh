#!/usr/bin/env bash
# System packages the processor tests need, installed only when missing:
#   chromium     renders the receipt page headless (tests/test_processor_pages.py)
#   postgresql   initdb/pg_ctl for a throwaway cluster (the PostgreSQL store tests)
#   redis-server a throwaway Redis on a loopback port (the shared-state tests, `serve --state redis://`)
# Python packages come from pyproject's test extra (psycopg[binary] among them);
# this script installs psycopg too when it is missing, so a bare checkout works.
# Idempotent: a second run changes nothing. Needs root (or sudo) for apt-get.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Chromium renders text with whatever fonts exist; without any, the page test sees tofu.
if ! fc-list 2>/dev/null | grep -qi 'dejavu'; then
  need+=(fonts-dejavu-core)
fi

if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  echo "install-test-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "install-test-deps: chromium, postgresql and redis-server already installed"
fi

PY=${PYTHON_FOR_TESTS:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3 || command -v python); fi
fi
if ! "$PY" -c 'import psycopg' >/dev/null 2>&1; then
  echo "install-test-deps: installing psycopg[binary] into $PY"
  "$PY" -m pip install --quiet 'psycopg[binary]>=3.1'
fi
if ! "$PY" -c 'import redis.asyncio' >/dev/null 2>&1; then
  echo "install-test-deps: installing redis into $PY"
  "$PY" -m pip install --quiet 'redis>=5.0'
fi
