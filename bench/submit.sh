#!/usr/bin/env bash
# Submit benchmark (issue: engine). 2,000 queued tasks dispatched by darkroom's engine
# (claim under lease, fresh callback token, createTask over HTTP, guarded transition,
# status board, task record) into a simulator with its limit off and darkroom's own
# limits off, against the same simulator's createTask hit directly by a minimal client at
# the same concurrency (16). Alternates the sides; prints the median tasks/s, the ratio
# (min-max), and the memory with 10,000 queued tasks.
#
#   ./bench/submit.sh [rounds=3] [count=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-2000}
cargo bench --bench submit --no-run >/dev/null 2>&1 || cargo bench --bench submit --no-run
out=$(mktemp)
for round in $(seq 1 "$rounds"); do
    for mode in direct darkroom; do
        cargo bench --bench submit -- "$mode" "$count" 2>/dev/null | grep '^RESULT' | tee -a "$out"
    done
done
cargo bench --bench submit -- queued 10000 2>/dev/null | grep '^RESULT' | tee -a "$out"
python3 - "$out" <<'PY'
import statistics, sys
rows = [dict(kv.split("=") for kv in line.split()[1:]) for line in open(sys.argv[1])]
direct = [float(r["per_second"]) for r in rows if r["mode"] == "direct"]
dark = [float(r["per_second"]) for r in rows if r["mode"] == "darkroom"]
ratios = [d / b for b, d in zip(direct, dark)]
queued = [r for r in rows if r["mode"] == "queued"][0]
print()
print(f"| simulator direct tasks/s (median) | darkroom tasks/s (median) | ratio median (min-max) |")
print(f"|---|---|---|")
print(f"| {statistics.median(direct):.0f} | {statistics.median(dark):.0f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
print()
print(f"10,000 queued tasks: RSS {int(queued['rss_kib'])//1024} MiB (idle {int(queued['idle_rss_kib'])//1024} MiB), peak {int(queued['peak_rss_kib'])//1024} MiB")
PY
