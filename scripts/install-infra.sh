#!/usr/bin/env bash
# Build / install the real observability infrastructure used by unhardcoded's
# integration and end-to-end tests, into a cache OUTSIDE the repository:
#
#   ${UNHARDCODED_CACHE:-$HOME/.cache/unhardcoded}/bin/
#     otelcol-unhardcoded   OpenTelemetry Collector built with the Collector
#                           Builder from collector-config/builder-config.yaml
#     jaeger                Jaeger v2 (cmd/jaeger of github.com/jaegertracing/jaeger)
#     tempo                 Grafana Tempo (cmd/tempo of github.com/grafana/tempo)
#     prometheus, promtool  symlinks to Debian's prometheus package (/usr/bin)
#
# Usage: scripts/install-infra.sh [collector|jaeger|tempo|prometheus|all]...
#        (default: all). Versions come from collector-config/versions.env.
#
# Idempotent: every binary has a stamp (cache/stamps/NAME.stamp) recording what
# it was built from; when the binary exists and its stamp matches, the step is
# skipped. Delete the stamp (or the binary) to force a rebuild.
#
# Environment:
#   UNHARDCODED_CACHE   cache root (default $HOME/.cache/unhardcoded)
#   GO                  go binary (default: `go` on PATH, else /usr/local/go/bin/go)
#   INFRA_JOBS          parallel compile jobs, go build -p (default 2)
#   INFRA_KEEP_BUILD=1  keep the temporary build directories after success
#
# Go modules come from the configured Go module proxy (GOPROXY); builds use the
# normal Go module and build caches (GOMODCACHE, GOCACHE), never the repo.
set -Eeuo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
CONFIG_DIR="$REPO_ROOT/collector-config"
VERSIONS_FILE="$CONFIG_DIR/versions.env"
MANIFEST_TEMPLATE="$CONFIG_DIR/builder-config.yaml"

# Bump when the way a binary is built changes (flags, steps), so old builds
# are redone even though versions.env did not change.
RECIPE=1

CACHE=${UNHARDCODED_CACHE:-$HOME/.cache/unhardcoded}
BIN_DIR="$CACHE/bin"
STAMP_DIR="$CACHE/stamps"
BUILD_ROOT="$CACHE/build"
LOG_DIR="$CACHE/logs"
TOOLS_DIR="$CACHE/tools"

log() { printf '%s\n' "$*"; }
die() { printf 'install-infra: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -Eeuo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------- timing ----
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# run_step LABEL LOGFILE CMD...: run CMD with its output in LOGFILE, print how
# long it took; on failure show the end of the log and stop.
run_step() {
  local label=$1 logfile=$2 t0 rc=0
  shift 2
  t0=$(now)
  log "  - $label ..."
  # Subshell: steps may cd; errexit is off inside `||`, so steps check
  # their own commands.
  ( "$@" ) >>"$logfile" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '    FAILED after %s (exit %s): %s\n' "$(elapsed "$t0")" "$rc" "$label" >&2
    printf '    last lines of %s:\n' "$logfile" >&2
    tail -n 40 "$logfile" | sed 's/^/      | /' >&2
    die "$label failed (full log: $logfile)"
  fi
  log "    done in $(elapsed "$t0")"
}

# ----------------------------------------------------------------- stamps ---
stamp_file() { printf '%s/%s.stamp' "$STAMP_DIR" "$1"; }

# up_to_date NAME KEY BINARY...: true when every BINARY exists and the stamp
# of NAME holds exactly KEY.
up_to_date() {
  local name=$1 key=$2 f
  shift 2
  for f in "$@"; do [ -x "$f" ] || return 1; done
  [ -f "$(stamp_file "$name")" ] && [ "$(cat "$(stamp_file "$name")")" = "$key" ]
}

write_stamp() { printf '%s\n' "$2" >"$(stamp_file "$1").tmp" && mv -f "$(stamp_file "$1").tmp" "$(stamp_file "$1")"; }

# new_build_dir NAME: a fresh temporary directory for one build, under the cache.
new_build_dir() {
  rm -rf "$BUILD_ROOT/$1".* # leftovers of an earlier failed build
  mktemp -d "$BUILD_ROOT/$1.XXXXXX"
}

finish_build_dir() {
  if [ "${INFRA_KEEP_BUILD:-0}" = 1 ]; then
    log "    build directory kept: $1"
  else
    chmod -R u+w "$1" 2>/dev/null || true
    rm -rf "$1"
  fi
}

# install_binary SRC NAME: atomically put SRC into BIN_DIR/NAME.
install_binary() {
  install -m 0755 "$1" "$BIN_DIR/.$2.new"
  mv -f "$BIN_DIR/.$2.new" "$BIN_DIR/$2"
}

# ------------------------------------------------------------------- go -----
setup_go() {
  [ -n "${GO_READY:-}" ] && return 0
  if [ -z "${GO:-}" ]; then
    GO=$(command -v go || true)
    [ -n "$GO" ] || GO=/usr/local/go/bin/go
  fi
  [ -x "$GO" ] || die "Go toolchain not found (set GO=/path/to/go or put go on PATH)"
  export PATH="$(dirname "$GO"):$PATH" # the Collector Builder calls `go` itself
  # Never let a go.mod's toolchain line trigger a toolchain download.
  export GOTOOLCHAIN=local
  export GOMAXPROCS=${GOMAXPROCS:-2}
  export GOFLAGS="${GOFLAGS:-} -p=${INFRA_JOBS:-2}"
  export CGO_ENABLED=${CGO_ENABLED:-0}
  log "  go: $("$GO" version) (GOMAXPROCS=$GOMAXPROCS, -p=${INFRA_JOBS:-2})"
  GO_READY=1
}

# go_mod_source MODULE@VERSION EXPECTED_SUM: download a module's source through
# the Go module proxy into the module cache and print its directory. The
# module's hash must equal EXPECTED_SUM (pinned in versions.env).
go_mod_source() {
  local modver=$1 want=$2 json dir sum
  json=$("$GO" mod download -json "$modver") || {
    printf '%s\n' "$json" >&2
    die "could not download $modver from the Go module proxy"
  }
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  sum=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $modver gave no source directory"
  [ "$sum" = "$want" ] || die "$modver: module hash $sum does not match the pinned $want (versions.env)"
  printf '%s\n' "$dir"
}

# copy_module_source DIR DEST: writable copy of a module-cache directory.
copy_module_source() {
  cp -R "$1" "$2"
  chmod -R u+w "$2"
}

# --------------------------------------------------------------- collector --
# The manifest with the versions substituted (but not the output path): its
# hash is what the collector's stamp records.
# Every ${NAME} where NAME is a variable of versions.env is substituted.
render_manifest_versions() {
  local text name
  text=$(cat "$MANIFEST_TEMPLATE")
  for name in $(sed -n 's/^\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$VERSIONS_FILE"); do
    text=${text//"\${$name}"/${!name}}
  done
  printf '%s\n' "$text"
}

# Component types the built collector must report (`components` subcommand).
COLLECTOR_EXPECTED_COMPONENTS="otlp batch memory_limiter tail_sampling span_metrics otlp_grpc otlp_http prometheus debug load_balancing health_check zpages"

check_collector() {
  local bin=$1 out missing="" c
  "$bin" --version || return 1
  out=$("$bin" components) || return 1
  printf '%s\n' "$out"
  for c in $COLLECTOR_EXPECTED_COMPONENTS; do
    printf '%s\n' "$out" | grep -Eq "^[[:space:]-]*name: $c\$" || missing="$missing $c"
  done
  if [ -n "$missing" ]; then
    echo "components missing from the collector:$missing"
    return 1
  fi
}

install_collector() {
  local name=otelcol-unhardcoded manifest_sha key dir logf ocb
  [ -f "$MANIFEST_TEMPLATE" ] || die "missing $MANIFEST_TEMPLATE"
  manifest_sha=$(render_manifest_versions | sha256sum | cut -d' ' -f1)
  key="$name ocb=$OCB_VERSION core=$COLLECTOR_CORE_VERSION contrib=$COLLECTOR_CONTRIB_VERSION manifest_sha256=$manifest_sha recipe=$RECIPE"
  if up_to_date collector "$key" "$BIN_DIR/$name"; then
    log "$name $OTELCOL_DIST_VERSION: up to date"
    return 0
  fi
  log "$name $OTELCOL_DIST_VERSION: building (builder v$OCB_VERSION)"
  setup_go
  logf="$LOG_DIR/collector.log"
  : >"$logf"

  ocb="$TOOLS_DIR/ocb-v$OCB_VERSION/builder"
  if [ ! -x "$ocb" ]; then
    run_step "go install go.opentelemetry.io/collector/cmd/builder@v$OCB_VERSION" "$logf" \
      env GOBIN="$TOOLS_DIR/ocb-v$OCB_VERSION" "$GO" install "go.opentelemetry.io/collector/cmd/builder@v$OCB_VERSION"
  else
    log "  - builder v$OCB_VERSION already installed ($ocb)"
  fi

  dir=$(new_build_dir collector)
  local text
  text=$(render_manifest_versions)
  text=${text//'${OUTPUT_PATH}'/$dir/dist}
  printf '%s\n' "$text" >"$dir/builder-config.yaml"
  if grep -v '^[[:space:]]*#' "$dir/builder-config.yaml" | grep '\${' >&2; then
    die "unsubstituted variable left in the builder manifest (see lines above)"
  fi

  run_step "generate, fetch modules and compile with the Collector Builder" "$logf" \
    bash -c 'cd "$1" && "$2" --config="$1/builder-config.yaml"' _ "$dir" "$ocb"
  [ -x "$dir/dist/$name" ] || die "the builder produced no $dir/dist/$name (log: $logf)"
  run_step "check: $name --version / components" "$logf" check_collector "$dir/dist/$name"
  install_binary "$dir/dist/$name" "$name"
  write_stamp collector "$key"
  finish_build_dir "$dir"
  log "  $name -> $BIN_DIR/$name"
}

# ------------------------------------------------------------------ jaeger --
JAEGER_MODULE=github.com/jaegertracing/jaeger

build_jaeger() {
  local src=$1 out=$2 vpkg="$JAEGER_MODULE/internal/version"
  # The jaeger-ui bundle is not part of the Go module (it is built with npm
  # from a git submodule); cmd/jaeger then serves a placeholder page instead of
  # the UI. The query APIs (HTTP /api/..., gRPC) are complete.
  cd "$src" && "$GO" build -trimpath \
    -ldflags "-s -w -X $vpkg.latestVersion=$JAEGER_VERSION -X $vpkg.commitSHA=$JAEGER_MODULE@$JAEGER_MODULE_VERSION -X $vpkg.date=$JAEGER_BUILD_DATE" \
    -o "$out" ./cmd/jaeger
}

check_jaeger() {
  local out
  out=$("$1" version 2>&1) || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  printf '%s\n' "$out" | grep -q "\"gitVersion\":\"$JAEGER_VERSION\"" || {
    echo "jaeger version does not report $JAEGER_VERSION"
    return 1
  }
}

install_jaeger() {
  local key dir src logf
  key="jaeger version=$JAEGER_VERSION module=$JAEGER_MODULE@$JAEGER_MODULE_VERSION sum=$JAEGER_MODULE_SUM recipe=$RECIPE"
  if up_to_date jaeger "$key" "$BIN_DIR/jaeger"; then
    log "jaeger $JAEGER_VERSION: up to date"
    return 0
  fi
  log "jaeger $JAEGER_VERSION: building ($JAEGER_MODULE@$JAEGER_MODULE_VERSION)"
  setup_go
  logf="$LOG_DIR/jaeger.log"
  : >"$logf"
  dir=$(new_build_dir jaeger)
  # `go install $JAEGER_MODULE/cmd/jaeger@version` is refused: the module's
  # go.mod has replace directives. Fetch the source and build it instead.
  local t0
  t0=$(now)
  log "  - fetch $JAEGER_MODULE@$JAEGER_MODULE_VERSION source (Go module proxy) ..."
  src=$(go_mod_source "$JAEGER_MODULE@$JAEGER_MODULE_VERSION" "$JAEGER_MODULE_SUM")
  copy_module_source "$src" "$dir/src"
  log "    done in $(elapsed "$t0")"
  JAEGER_BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  run_step "go build ./cmd/jaeger (dependencies via the module proxy)" "$logf" build_jaeger "$dir/src" "$dir/jaeger"
  run_step "check: jaeger version" "$logf" check_jaeger "$dir/jaeger"
  install_binary "$dir/jaeger" jaeger
  write_stamp jaeger "$key"
  finish_build_dir "$dir"
  log "  jaeger -> $BIN_DIR/jaeger"
}

# ------------------------------------------------------------------- tempo --
TEMPO_MODULE=github.com/grafana/tempo

build_tempo() {
  local src=$1 out=$2 rev=${TEMPO_MODULE_VERSION##*-}
  # Tempo's own Makefile builds with -mod=vendor; the module zip has no
  # vendor/ directory, so dependencies come from the module proxy (go.sum).
  cd "$src" && "$GO" build -trimpath -mod=mod \
    -ldflags "-s -w -X main.Version=$TEMPO_VERSION -X main.Revision=$rev -X main.Branch=main" \
    -o "$out" ./cmd/tempo
}

check_tempo() {
  local out
  out=$("$1" --version 2>&1) || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  printf '%s\n' "$out" | grep -q "version $TEMPO_VERSION" || {
    echo "tempo --version does not report $TEMPO_VERSION"
    return 1
  }
}

install_tempo() {
  local key dir src logf t0
  key="tempo version=$TEMPO_VERSION module=$TEMPO_MODULE@$TEMPO_MODULE_VERSION sum=$TEMPO_MODULE_SUM recipe=$RECIPE"
  if up_to_date tempo "$key" "$BIN_DIR/tempo"; then
    log "tempo $TEMPO_VERSION: up to date"
    return 0
  fi
  log "tempo $TEMPO_VERSION: building ($TEMPO_MODULE@$TEMPO_MODULE_VERSION)"
  setup_go
  logf="$LOG_DIR/tempo.log"
  : >"$logf"
  dir=$(new_build_dir tempo)
  t0=$(now)
  log "  - fetch $TEMPO_MODULE@$TEMPO_MODULE_VERSION source (Go module proxy) ..."
  # The checksum database has no record of this pseudo-version; its hash is
  # checked against TEMPO_MODULE_SUM instead.
  src=$(GONOSUMDB="$TEMPO_MODULE${GONOSUMDB:+,$GONOSUMDB}" go_mod_source "$TEMPO_MODULE@$TEMPO_MODULE_VERSION" "$TEMPO_MODULE_SUM")
  copy_module_source "$src" "$dir/src"
  log "    done in $(elapsed "$t0")"
  run_step "go build ./cmd/tempo (dependencies via the module proxy)" "$logf" build_tempo "$dir/src" "$dir/tempo"
  run_step "check: tempo --version" "$logf" check_tempo "$dir/tempo"
  install_binary "$dir/tempo" tempo
  write_stamp tempo "$key"
  finish_build_dir "$dir"
  log "  tempo -> $BIN_DIR/tempo"
}

# -------------------------------------------------------------- prometheus --
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "installing $PROMETHEUS_DEBIAN_PACKAGE needs root (run as root or install sudo)"
  fi
}

debian_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

apt_install_prometheus() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install Prometheus $PROMETHEUS_DEBIAN_VERSION some other way"
  local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
  # Keep the package from starting its service: policy-rc.d exiting 101 makes
  # invoke-rc.d / deb-systemd-invoke refuse every start.
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 0755 $policy"
    made_policy=1
  fi
  if ! apt-cache show "$PROMETHEUS_DEBIAN_PACKAGE=$PROMETHEUS_DEBIAN_VERSION" >/dev/null 2>&1; then
    as_root apt-get update || rc=$?
  fi
  [ "$rc" -eq 0 ] && { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "$PROMETHEUS_DEBIAN_PACKAGE=$PROMETHEUS_DEBIAN_VERSION" || rc=$?; }
  [ "$made_policy" = 1 ] && as_root rm -f "$policy"
  # If a service manager started it anyway, stop and disable it.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  return "$rc"
}

check_prometheus() {
  "$BIN_DIR/prometheus" --version && "$BIN_DIR/promtool" --version
}

install_prometheus() {
  local have key logf
  have=$(debian_version "$PROMETHEUS_DEBIAN_PACKAGE")
  key="prometheus debian=$PROMETHEUS_DEBIAN_VERSION recipe=$RECIPE"
  if [ "$have" = "$PROMETHEUS_DEBIAN_VERSION" ] && up_to_date prometheus "$key" "$BIN_DIR/prometheus" "$BIN_DIR/promtool"; then
    log "prometheus $PROMETHEUS_DEBIAN_VERSION: up to date"
    return 0
  fi
  log "prometheus $PROMETHEUS_DEBIAN_VERSION: installing (Debian package $PROMETHEUS_DEBIAN_PACKAGE)"
  logf="$LOG_DIR/prometheus.log"
  : >"$logf"
  if [ "$have" != "$PROMETHEUS_DEBIAN_VERSION" ]; then
    run_step "apt-get install $PROMETHEUS_DEBIAN_PACKAGE=$PROMETHEUS_DEBIAN_VERSION (service not started)" "$logf" apt_install_prometheus
  else
    log "  - Debian package already installed ($have)"
  fi
  [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || die "/usr/bin/prometheus or /usr/bin/promtool missing after install"
  ln -sfn /usr/bin/prometheus "$BIN_DIR/prometheus"
  ln -sfn /usr/bin/promtool "$BIN_DIR/promtool"
  run_step "check: prometheus --version / promtool --version" "$logf" check_prometheus
  write_stamp prometheus "$key"
  log "  prometheus -> $BIN_DIR/prometheus, promtool -> $BIN_DIR/promtool (links to /usr/bin)"
}

# -------------------------------------------------------------------- main --
write_env_file() {
  # Paths for tests and people: `. $CACHE/infra.env`.
  cat >"$CACHE/infra.env.tmp" <<EOF
# Written by scripts/install-infra.sh; paths of the infrastructure binaries.
UNHARDCODED_INFRA_BIN=$BIN_DIR
UNHARDCODED_OTELCOL_BIN=$BIN_DIR/otelcol-unhardcoded
UNHARDCODED_JAEGER_BIN=$BIN_DIR/jaeger
UNHARDCODED_TEMPO_BIN=$BIN_DIR/tempo
UNHARDCODED_PROMETHEUS_BIN=$BIN_DIR/prometheus
UNHARDCODED_PROMTOOL_BIN=$BIN_DIR/promtool
EOF
  mv -f "$CACHE/infra.env.tmp" "$CACHE/infra.env"
}

main() {
  local targets=() t
  for t in "$@"; do
    case "$t" in
      -h | --help) usage; exit 0 ;;
      all) targets+=(collector jaeger tempo prometheus) ;;
      collector | otelcol | otelcol-unhardcoded) targets+=(collector) ;;
      jaeger | tempo | prometheus) targets+=("$t") ;;
      *) usage >&2; die "unknown target '$t' (expected collector, jaeger, tempo, prometheus or all)" ;;
    esac
  done
  [ "${#targets[@]}" -gt 0 ] || targets=(collector jaeger tempo prometheus)

  [ -f "$VERSIONS_FILE" ] || die "missing $VERSIONS_FILE"
  # shellcheck source=../collector-config/versions.env
  . "$VERSIONS_FILE"
  local v
  for v in OCB_VERSION COLLECTOR_CORE_VERSION COLLECTOR_CONTRIB_VERSION OTELCOL_DIST_VERSION \
    JAEGER_MODULE_VERSION JAEGER_VERSION JAEGER_MODULE_SUM TEMPO_MODULE_VERSION TEMPO_VERSION \
    TEMPO_MODULE_SUM PROMETHEUS_DEBIAN_PACKAGE PROMETHEUS_DEBIAN_VERSION; do
    [ -n "${!v:-}" ] || die "$v is not set in $VERSIONS_FILE"
  done

  mkdir -p "$CACHE"
  CACHE=$(cd "$CACHE" && pwd -P)
  case "$CACHE/" in
    "$(cd "$REPO_ROOT" && pwd -P)/"*) die "UNHARDCODED_CACHE ($CACHE) is inside the repository; use a directory outside it" ;;
  esac
  BIN_DIR="$CACHE/bin" STAMP_DIR="$CACHE/stamps" BUILD_ROOT="$CACHE/build" LOG_DIR="$CACHE/logs" TOOLS_DIR="$CACHE/tools"
  mkdir -p "$BIN_DIR" "$STAMP_DIR" "$BUILD_ROOT" "$LOG_DIR" "$TOOLS_DIR"

  # One install at a time per cache.
  exec 9>"$CACHE/.install.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -n 9 || { log "another install-infra.sh is running on $CACHE; waiting ..."; flock 9; }
  fi

  local t_all t1 seen=" "
  t_all=$(now)
  for t in "${targets[@]}"; do
    case "$seen" in *" $t "*) continue ;; esac
    seen="$seen$t "
    t1=$(now)
    "install_$t"
    log "[$t] $(elapsed "$t1")"
  done
  write_env_file
  log "install-infra: all done in $(elapsed "$t_all"); binaries in $BIN_DIR"
}

main "$@"
