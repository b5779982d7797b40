#!/usr/bin/env bash
# Runs darkroom's whole test suite with every service it needs, on a fresh machine:
#   - an S3 server (moto, from PyPI, in ./.venv made here) on a free loopback port,
#     passed to the tests as DARKROOM_TEST_S3_URL;
#   - PostgreSQL on 127.0.0.1:5432 (started if it is down), passed as
#     DARKROOM_TEST_POSTGRES_URL;
# then `cargo test`, then the page's browser test (Debian's chromium, headless, driven by
# playwright-core from tests/browser), and stops what it started. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.5"
VENV=".venv"
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

# The browser test needs Debian's chromium; say so before a long cargo test, not after.
CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
    log "$CHROMIUM is missing: the browser test needs Debian's chromium (apt-get install -y chromium; .ci/run installs it in CI)"
    exit 1
fi

# --- S3: moto's server -------------------------------------------------------
if [ ! -x "$VENV/bin/moto_server" ]; then
    log "creating $VENV with moto[server]==$MOTO_VERSION"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
if [ -z "${DARKROOM_TEST_S3_URL:-}" ]; then
    s3_port=$(free_port)
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"${TMPDIR:-/tmp}/darkroom-moto-$s3_port.log" 2>&1 &
    started_pids+=($!)
    export DARKROOM_TEST_S3_URL="http://127.0.0.1:$s3_port"
    wait_for_http "$DARKROOM_TEST_S3_URL" "moto"
    log "moto S3 at $DARKROOM_TEST_S3_URL"
fi

# --- PostgreSQL ----------------------------------------------------------------
if [ -z "${DARKROOM_TEST_POSTGRES_URL:-}" ]; then
    if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
        log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
        for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
    fi
    export DARKROOM_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/test"
fi

log "cargo test $*"
cargo test --locked "$@"

# --- The web page in a real browser -------------------------------------------
log "browser test: chromium headless via playwright-core (tests/browser)"
cargo build --locked --bin darkroom
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && node page.test.mjs)
