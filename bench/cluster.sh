#!/usr/bin/env bash
# Scale-out benchmark (issue 17): submit throughput with 1 and with 3 darkroom instances
# (workers only) sharing one PostgreSQL database, into a standalone `darkroom kie-sim`
# with its limit off and darkroom's limits off; one SQLite instance as the reference.
# 2,000 tasks are queued first by an API-only instance; then the worker instances start
# and the simulator's own create count is timed from the first create to the last. Rounds
# alternate the sides; prints creates/s (median, min-max) and the ratio to the SQLite
# instance in the same round. Data directories on tmpfs (see bench/submit.sh for why).
#   ./bench/cluster.sh [rounds=3] [tasks=2000]
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth), as the test command does.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
tasks=${2:-2000}
cargo build --release --locked --bin darkroom
binary="$(realpath "${CARGO_TARGET_DIR:-target}")/release/darkroom"
exec python3 bench/cluster.py "$binary" "$rounds" "$tasks"
