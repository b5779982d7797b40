#!/usr/bin/env bash
# Memory benchmark (issue 14, goal 5): the resident memory of `darkroom serve` (release
# build, embedded default) idle, with 1,000 open SSE clients, and with 10,000 queued
# tasks (workers off, queued through the API). Absolute figures (memory is stable from
# run to run, unlike time); prints one table and a SUMMARY line for bench/all.sh.
#
#   ./bench/memory.sh [queued=10000] [sse_clients=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin darkroom
binary="$(realpath "${CARGO_TARGET_DIR:-target}")/release/darkroom"
exec python3 bench/memory.py "$binary" "${1:-10000}" "${2:-1000}"
