#!/usr/bin/env bash
# Status-path benchmark (issue 14 P1; issue 12's metrics cost; issue 17's PostgreSQL
# figure). 1,000 completed tasks; `GET /api/task-status?taskId=…` cycled over them by wrk
# (64 connections, one thread pinned to CPU 0) against:
#   nginx      the same JSON bodies as static files (Debian's nginx-light, one worker on
#              CPU 1, the same URL through try_files): the baseline;
#   darkroom   the release binary on CPU 1, API keys off;
#   keys       the same with API keys on (every request carries its bearer key);
#   header     keys off, but every request carries the same bearer header (ignored): the
#              key check's cost is "keys" against this side, so wrk's own work for the
#              header (its Lua script builds it per request) is on both;
#   nometrics  keys off and DARKROOM_METRICS=false (no /metrics, nothing recorded per request);
#   postgres   keys off, the same tasks in PostgreSQL (rebuilt there by `darkroom reindex`
#              from the bucket), when PostgreSQL answers on 127.0.0.1:5432;
#   other build  keys off, the binary named by DARKROOM_BENCH_OTHER_BINARY when set (an
#              earlier build: before and after a change in one run).
# Rounds alternate the sides; the table gives each side's median requests/s, its ratio
# to nginx in the same round (median, min-max) and the median p99 latency.
#   ./bench/status.sh [rounds=3] [seconds=10]
# Installs nginx-light and wrk from Debian's packages when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
for tool in nginx wrk; do
    if ! command -v "$tool" >/dev/null; then
        pkg=$tool
        [ "$tool" = nginx ] && pkg=nginx-light
        echo "installing $pkg (Debian)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null ||
            { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; }
    fi
done
cargo build --release --locked --bin darkroom
binary="$(realpath "${CARGO_TARGET_DIR:-target}")/release/darkroom"
exec python3 bench/status.py "$binary" "$rounds" "$seconds"
