#!/usr/bin/env bash
# Records the functions `darkroom serve` runs into link/serve.order, which build.rs hands to
# the linker so that they sit together in the release binary: start-up and serving touch
# a few MiB of machine code instead of pages spread over all 19 MiB (idle resident memory
# 24.8 -> 15.5 MiB, bench/memory.sh). Needs valgrind. Takes about a minute plus a release
# build.
#
# Run it again when bench/memory.sh says the list is stale: symbol names carry a hash of
# the crate's build metadata, which changes with the dependency set (Cargo.lock) or the
# version; a stale list costs memory, never correctness.
#
#   scripts/symbol-order.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian package valgrind)" >&2; exit 1; }
cargo build --release --locked --bin darkroom
binary="$(realpath "${CARGO_TARGET_DIR:-target}")/release/darkroom"
python3 scripts/symbol_order.py "$binary" link/serve.order
# Link again with the new list.
cargo build --release --locked --bin darkroom
