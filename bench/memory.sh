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
# The code layout (build.rs, link/serve.order) decides most of the idle figure: say whether
# its list still names this binary's functions.
listed=$(grep -c . link/serve.order || true)
found=$(nm --defined-only --format=just-symbols "$binary" | sort -u | comm -12 - <(sort -u link/serve.order) | wc -l)
echo "link/serve.order: $found of $listed functions found in the binary"
if [ $((found * 10)) -lt $((listed * 9)) ]; then
    echo "warning: link/serve.order is stale (the build metadata changed); resident code will be larger: run scripts/symbol-order.sh" >&2
fi
exec python3 bench/memory.py "$binary" "${1:-10000}" "${2:-1000}"
