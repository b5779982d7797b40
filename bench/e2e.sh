#!/usr/bin/env bash
# End-to-end CPU benchmark (issue 14, P2): darkroom's own CPU time per task from
# `POST /api/generate` to the stored result (create, signed callback, recordInfo check,
# download of a ~1 MB result, image check, create-only write, every state change, bucket
# records), against a standalone `darkroom kie-sim` in another process. Release build,
# SQLite, local bucket. Prints the median over rounds and a SUMMARY line for bench/all.sh.
#
#   ./bench/e2e.sh [rounds=3] [tasks=300]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin darkroom
binary="$(realpath "${CARGO_TARGET_DIR:-target}")/release/darkroom"
exec python3 bench/e2e.py "$binary" "${1:-3}" "${2:-300}"
