#!/usr/bin/env bash
# Runs darkroom's whole test suite with every service it needs, on a fresh machine:
#   - an S3 server (moto, from PyPI, in ./.venv made here) on a free loopback port,
#     passed to the tests as DARKROOM_TEST_S3_URL;
#   - prometheus_client (from PyPI, in the same venv), whose parser reads /metrics in the
#     metrics test, passed as DARKROOM_TEST_PROMETHEUS_PARSER (that venv's python);
#   - PostgreSQL on 127.0.0.1:5432 (started if it is down), passed as
#     DARKROOM_TEST_POSTGRES_URL;
# then `cargo test`, then the page's browser test (Debian's chromium, headless, driven by
# playwright-core from tests/browser), then schemathesis (from PyPI, in ./.venv-schemathesis)
# against the server's own OpenAPI document, and stops what it started. Extra arguments go
# to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"
PROMETHEUS_CLIENT_VERSION="0.26.0"
VENV=".venv"
SCHEMATHESIS_VERSION="4.32.5"
# Its own venv: schemathesis and moto pin different versions of shared packages.
ST_VENV=".venv-schemathesis"
started_pids=()

cleanup() {
    for pid in "${started_pids[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

log() { printf '[test.sh] %s\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for_http() {
    local url=$1 name=$2
    for _ in $(seq 1 100); do
        if curl -s -o /dev/null "$url"; then return 0; fi
        sleep 0.2
    done
    log "$name did not answer at $url"
    return 1
}

# The browser test needs Debian's chromium: installed here like moto (as root), else said
# before a long cargo test, not after.
CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        log "$CHROMIUM is missing: installing Debian's chromium for the browser test"
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; then
            log "installing chromium failed: the browser test needs Debian's chromium (apt-get install -y chromium)"
            exit 1
        fi
    else
        log "$CHROMIUM is missing: the browser test needs Debian's chromium; run as root: apt-get install -y chromium"
        exit 1
    fi
fi

# --- S3: moto's server -------------------------------------------------------
if [ ! -x "$VENV/bin/moto_server" ]; then
    log "creating $VENV with moto[server]==$MOTO_VERSION"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
# The metrics test parses /metrics with Prometheus' own Python client (its text parser).
if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(m.version('prometheus_client') != '$PROMETHEUS_CLIENT_VERSION')" 2>/dev/null; then
    log "installing prometheus_client==$PROMETHEUS_CLIENT_VERSION into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
fi
export DARKROOM_TEST_PROMETHEUS_PARSER="$PWD/$VENV/bin/python"
if [ -z "${DARKROOM_TEST_S3_URL:-}" ]; then
    s3_port=$(free_port)
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"${TMPDIR:-/tmp}/darkroom-moto-$s3_port.log" 2>&1 &
    started_pids+=($!)
    export DARKROOM_TEST_S3_URL="http://127.0.0.1:$s3_port"
    wait_for_http "$DARKROOM_TEST_S3_URL" "moto"
    log "moto S3 at $DARKROOM_TEST_S3_URL"
fi

# --- PostgreSQL ----------------------------------------------------------------
# Made ready here for the PostgreSQL backend's tests (scale-out); a server that cannot be
# started stops the run with a sentence instead of failing later in odd ways.
if [ -z "${DARKROOM_TEST_POSTGRES_URL:-}" ]; then
    if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
        log "starting PostgreSQL"
        if ! pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start; then
            log "PostgreSQL on 127.0.0.1:5432 is down and could not be started (pg_ctlcluster failed)"
            exit 1
        fi
        for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
        if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
            log "PostgreSQL was started but does not answer on 127.0.0.1:5432 after 10 s"
            exit 1
        fi
    fi
    export DARKROOM_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/test"
fi

log "cargo test $*"
cargo test --locked "$@"

# --- The web page in a real browser -------------------------------------------
log "browser test: chromium headless via playwright-core (tests/browser)"
cargo build --locked --bin darkroom
# The binary just built, wherever cargo puts its output (CARGO_TARGET_DIR may move it).
BINARY="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/darkroom"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error &&
    DARKROOM_BINARY="$BINARY" node page.test.mjs)

# --- The API against its own OpenAPI document (schemathesis) --------------------
# Every operation fuzzed from /api/openapi.json (streams excepted: they never end; the
# long-poll and the batch ZIP's `?wait=true` wait longer than a request may, with no worker
# to finish anything here; bad input on both is covered by tests/it/bad_input.rs), all checks: no 5xx, only documented status
# codes and content types, every answer valid against its schema, schema-invalid requests
# refused. Not "positive_data_acceptance": a schema cannot say that an upload key must
# name a stored upload or that a URL must reach a public host, so some schema-valid
# requests are rightly refused. Workers are off, so nothing leaves 127.0.0.1 (no task is
# submitted, no webhook sent). The seed is fixed so CI is repeatable; set
# SCHEMATHESIS_SEED to explore. One worker: with two, hypothesis's lambda-source cache is
# shared between threads and now and then fails inside the tool ("AST constructor
# recursion depth mismatch"), which is not a finding about darkroom.
if [ ! -x "$ST_VENV/bin/st" ]; then
    log "creating $ST_VENV with schemathesis==$SCHEMATHESIS_VERSION"
    python3 -m venv "$ST_VENV"
    "$ST_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
# Two passes: API keys off (every handler reachable), then on (the key middleware's 401
# and per-key 429 answers, owner checks); the second skips schemathesis's coverage phase,
# which the first already ran on the same document.
run_schemathesis() {
    local name=$1 phases=$2 st_port st_data st_log
    shift 2
    st_port=$(free_port)
    st_data=$(mktemp -d "${TMPDIR:-/tmp}/darkroom-schemathesis-XXXXXX")
    st_log="$st_data.log"
    env "$@" DARKROOM_WORKERS=false DARKROOM_LISTEN="127.0.0.1:$st_port" \
        DARKROOM_DATA_DIR="$st_data" DARKROOM_LOG=warn "$BINARY" serve >"$st_log" 2>&1 &
    local pid=$!
    started_pids+=("$pid")
    wait_for_http "http://127.0.0.1:$st_port/healthz" "darkroom (for schemathesis)"
    log "schemathesis, $name, against http://127.0.0.1:$st_port/api/openapi.json (log: $st_log)"
    local auth=()
    if [ -n "${ST_KEY:-}" ]; then auth=(-H "Authorization: Bearer $ST_KEY"); fi
    "$ST_VENV/bin/st" run "http://127.0.0.1:$st_port/api/openapi.json" "${auth[@]}" \
        --phases "$phases" --checks all --exclude-checks positive_data_acceptance \
        --exclude-path /api/events --exclude-path /api/ws --exclude-path '/api/tasks/{id}/wait' --exclude-path '/api/batches/{id}/zip' \
        --max-examples 50 --workers 1 --seed "${SCHEMATHESIS_SEED:-20261129}" --no-color
    kill "$pid" 2>/dev/null || true
    if grep -q -e 'internal error' -e 'panicked' "$st_log"; then
        log "darkroom logged internal errors under schemathesis: see $st_log"
        exit 1
    fi
    rm -rf "$st_data" "$st_log"
}
run_schemathesis "API keys off" examples,coverage,fuzzing,stateful
ST_KEY="dk_schemathesis_0123456789abcdef"
run_schemathesis "API keys on" fuzzing,stateful DARKROOM_API_KEYS="schemathesis:$ST_KEY"
