#!/usr/bin/env bash
# Statistics at scale (issue 14, P4): a million tasks written by bulk SQL (counted by the
# database's statistics triggers as they are stored), spread over the last 30 days and
# again all inside the last 24 hours; darkroom started on them; the median and p99 of 50
# requests of GET /api/stats for each window (each answer checked against a direct count)
# and of the newest and a deep page of GET /api/tasks; then the write cost of the rollup
# on a task's life (with it, without it, and with the covering index it replaced).
# SQLite always; PostgreSQL too when DARKROOM_BENCH_POSTGRES_URL (or
# DARKROOM_TEST_POSTGRES_URL) names a server (a fresh database is made and dropped).
#
#   ./bench/stats.sh [tasks=1000000] [rounds=50] [spreads=30d,24h]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench stats --no-run >/dev/null 2>&1 || cargo bench --bench stats --no-run
cargo bench --bench stats -- "${1:-1000000}" "${2:-50}" "${3:-30d,24h}"
