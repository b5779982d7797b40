#!/usr/bin/env bash
# Submit benchmark (issue: engine). 2,000 queued tasks dispatched by darkroom's engine
# (claim under lease, fresh callback token, createTask over HTTP, guarded transition,
# status board, task record) into a simulator with its limit off and darkroom's own
# limits off, against the same simulator's createTask hit directly by a minimal client at
# the same concurrency (16). Alternates the sides; prints the median tasks/s, the ratio
# (min-max), the CPU time per task of each side (the process holds the simulator too, so
# darkroom's own share is the difference), and the memory with 10,000 queued tasks.
# darkroom runs its real worker loops (`Engine::run`, as `serve` does).
#
# The data directory (database and local bucket) is on tmpfs by default: on ext4 without a
# journal (this machine kind) creating a file scans the inodes deleted in the last minutes,
# so the task records' cost there depends on what ran before (seen: 600-1,250 tasks/s for
# the same build). BENCH_TMPDIR=/some/dir measures on another file system.
#
#   ./bench/submit.sh [rounds=3] [count=2000]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-2000}
export TMPDIR=${BENCH_TMPDIR:-/dev/shm}
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
cpu_direct = [float(r["cpu_us_per_task"]) for r in rows if r["mode"] == "direct"]
cpu_dark = [float(r["cpu_us_per_task"]) for r in rows if r["mode"] == "darkroom"]
queued = [r for r in rows if r["mode"] == "queued"][0]
print()
print(f"| simulator direct tasks/s (median) | darkroom tasks/s (median) | ratio median (min-max) | CPU µs/task direct | CPU µs/task darkroom |")
print(f"|---|---|---|---|---|")
print(f"| {statistics.median(direct):.0f} | {statistics.median(dark):.0f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {statistics.median(cpu_direct):.0f} | {statistics.median(cpu_dark):.0f} |")
print()
print(f"10,000 queued tasks: RSS {int(queued['rss_kib'])//1024} MiB (idle {int(queued['idle_rss_kib'])//1024} MiB), peak {int(queued['peak_rss_kib'])//1024} MiB")
# For bench/all.sh.
print()
print(f"SUMMARY submit_per_second={statistics.median(dark):.0f} submit_ratio={statistics.median(ratios):.2f} "
      f"submit_cpu_us_per_task={statistics.median(cpu_dark):.0f} submit_cpu_us_per_task_direct={statistics.median(cpu_direct):.0f} "
      f"queued_rss_mib={int(queued['rss_kib'])/1024:.1f} queued_count={queued['count']}")
PY
