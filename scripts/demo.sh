#!/usr/bin/env bash
# Installs unhardcoded into .venv and runs the main job: `unhardcoded demo` on the embedded defaults
# (built-in catalog, simulated providers on loopback, the per-user SQLite receipt store).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${UNHARDCODED_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e .
exec "$VENV/bin/unhardcoded" demo "$@"
