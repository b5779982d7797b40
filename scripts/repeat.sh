#!/usr/bin/env bash
# Runs the Rust test suite N times in a row (default 20) and prints how many runs failed,
# with the names of the tests that failed in each: the flake count for docs/RELIABILITY.md's
# R13. Not part of CI (too long); run it by hand for a session's note.
#
#   scripts/repeat.sh [N] [cargo test arguments...]
#   scripts/repeat.sh 20                   # the whole Rust suite, 20 times
#   scripts/repeat.sh 5 --test it live::   # one area, 5 times
#
# Services are set up once, as scripts/test.sh does: moto on a free port when
# DARKROOM_TEST_S3_URL is unset, PostgreSQL on 127.0.0.1:5432 (started if down). The browser test and schemathesis are not repeated here.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-20}
shift || true
logs=$(mktemp -d "${TMPDIR:-/tmp}/darkroom-repeat-XXXXXX")
started_pid=""
cleanup() { [ -n "$started_pid" ] && kill "$started_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${DARKROOM_TEST_S3_URL:-}" ]; then
    if [ ! -x .venv/bin/moto_server ]; then
        python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==5.2.5"
    fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$logs/moto.log" 2>&1 &
    started_pid=$!
    export DARKROOM_TEST_S3_URL="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do curl -s -o /dev/null "$DARKROOM_TEST_S3_URL" && break; sleep 0.2; done
fi

if [ -z "${DARKROOM_TEST_POSTGRES_URL:-}" ]; then
    if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
        for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
    fi
    export DARKROOM_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/test"
fi

cargo test --locked --no-run "$@" >"$logs/build.log" 2>&1 || { cat "$logs/build.log"; exit 1; }
failed=0
for run in $(seq 1 "$runs"); do
    start=$(date +%s)
    if cargo test --locked "$@" >"$logs/run-$run.log" 2>&1; then
        echo "run $run/$runs: passed in $(( $(date +%s) - start )) s"
    else
        failed=$((failed + 1))
        echo "run $run/$runs: FAILED in $(( $(date +%s) - start )) s (log: $logs/run-$run.log)"
        grep -E '^test .* FAILED$|^    [a-z_:]+$' "$logs/run-$run.log" | sort -u | sed 's/^/    /' || true
    fi
done
echo "repeat: $runs runs, $failed failed, $((runs - failed)) passed (logs: $logs)"
[ "$failed" -eq 0 ]
