#!/usr/bin/env bash
# All five benchmarks, this tree against BASE (another checkout's root, e.g. the tree before a change), in one sitting;
# each one's comparison table goes to stdout, progress to stderr. About 15-20 minutes on 2 shared cores.
#
# Usage: bench/compare_all.sh BASE [--quick]      (--quick: a smoke run of a few minutes, too short to judge by)
#        PYTHON=/path/to/venv/bin/python bench/compare_all.sh BASE > tables.txt
set -uo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=$(cd "$1" && pwd) || exit 2
QUICK=${2:-}
if [[ -d $BASE/src/unhardcoded ]]; then BASE_SRC=$BASE/src; else BASE_SRC=$BASE; fi
if [[ ! -f $BASE_SRC/unhardcoded/__init__.py ]]; then
  echo "compare_all.sh: no unhardcoded package in $BASE/src or $BASE" >&2
  exit 2
fi
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
cd "$ROOT" || exit 2
# This tree's source, whatever unhardcoded the interpreter has installed; bytecode kept out of both trees.
export PYTHONPATH=$ROOT/src
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-${TMPDIR:-/tmp}/unhardcoded-bench-pycache}

if [[ $QUICK == --quick ]]; then
  DECISION=(--sizes 100,1000 --iterations 500 --budget 1 --compare-rounds 3)
  TELEMETRY=(--iterations 1000 --rounds 3 --compare-rounds 3)
  REBUILD=(--decisions 1000 --rounds 3 --compare-rounds 3)
  PROCESSOR=(--decisions 1000 --pending 10000 --rounds 1)
  PROXY=(--seconds 3 --rounds 3 --rates 200)
elif [[ -n $QUICK ]]; then
  echo "compare_all.sh: unknown option $QUICK" >&2
  exit 2
else
  DECISION=(--sizes 50,100,500,1000 --iterations 5000 --budget 5 --compare-rounds 5)
  TELEMETRY=(--iterations 3000 --rounds 5 --compare-rounds 5)
  REBUILD=(--decisions 3000 --rounds 5 --compare-rounds 5)
  PROCESSOR=(--decisions 3000 --pending 100000 --rounds 3)
  PROXY=(--seconds 30 --rounds 5 --rates 50,200)
fi

failed=()
run() {
  echo
  echo "== $*"
  local t0=$SECONDS
  "$PYTHON" "$@" || failed+=("$1 (exit $?)")
  echo "   ($((SECONDS - t0)) s)" >&2
}

echo "this tree: $ROOT ($(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null | cut -c1-72))"
echo "base tree: $BASE ($(git -C "$BASE" log -1 --format='%h %s' 2>/dev/null | cut -c1-72))"
echo "python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
started=$SECONDS

run bench/decision.py --compare "$BASE" --no-litellm "${DECISION[@]}"
run bench/telemetry.py --compare "$BASE" "${TELEMETRY[@]}"
run bench/rebuild.py --compare "$BASE" "${REBUILD[@]}"
run bench/processor.py --against "$BASE" "${PROCESSOR[@]}"

# proxy.py prints one row per target and rate; the ratio of this tree's row to the base tree's (compare-1) is
# worked out here, by column name, so a change of the table's columns does not shift it.
proxy_out=$(mktemp)
run bench/proxy.py --compare "$BASE_SRC" --no-litellm "${PROXY[@]}" >"$proxy_out"
cat "$proxy_out"
awk '
  $1 == "target" { for (i = 1; i <= NF; i++) col[$i] = i; next }
  ("+p50" in col) && ($1 == "unhardcoded" || $1 == "compare-1") && NF >= col["cpu/req"] {
    p50[$1, $2] = $col["+p50"]; cpu[$1, $2] = $col["cpu/req"]; rates[$2] = 1
  }
  END {
    for (r in rates) if ((("unhardcoded", r) in cpu) && (("compare-1", r) in cpu) && cpu["compare-1", r] > 0) {
      printf "proxy at %s req/s, this tree / base tree: latency added p50 %.2f / %.2f ms, CPU per request %.2f / %.2f ms (ratio %.3f)\n",
        r, p50["unhardcoded", r], p50["compare-1", r], cpu["unhardcoded", r], cpu["compare-1", r], cpu["unhardcoded", r] / cpu["compare-1", r]
    }
  }' "$proxy_out"
rm -f "$proxy_out"

echo
echo "all five in $((SECONDS - started)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if ((${#failed[@]})); then
  echo "exited non-zero (failed, or --check/target missed): ${failed[*]}" >&2
  exit 1
fi
