#!/usr/bin/env bash
# Every performance benchmark, one after the other, and one table of their figures
# against issue 14's goals. Each script's own table is kept in the log directory printed
# at the end; the table here is read from the `SUMMARY` line each script prints.
#
#   ./bench/all.sh                       # everything (about 40 minutes here)
#   BENCH_ONLY="status memory" ./bench/all.sh
#
# Scripts: status (P1), ingest, ingest_peak (P2: 100 results of 10 MB at once) and e2e
# (P2: darkroom's own CPU per task from the request to the stored result), stats (P4: 10^6 tasks, SQLite and, when PostgreSQL
# answers on 127.0.0.1:5432, PostgreSQL), submit (P5), memory (goal 5). Figures are
# ratios against a baseline measured in the same run where one exists (docs/OPERATIONS.md
# "Benchmarks"); memory is absolute.
set -euo pipefail
cd "$(dirname "$0")/.."
only=${BENCH_ONLY:-status ingest ingest_peak e2e stats submit memory}
logs=$(mktemp -d "${TMPDIR:-/tmp}/darkroom-bench-XXXXXX")
if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    export DARKROOM_BENCH_POSTGRES_URL=${DARKROOM_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
fi
for bench in $only; do
    echo "== $bench (log: $logs/$bench.log)" >&2
    case $bench in
        status) ./bench/status.sh 3 10 ;;
        ingest) ./bench/ingest.sh 3 200 ;;
        ingest_peak) ./bench/ingest_peak.sh 100 100 ;;
        e2e) ./bench/e2e.sh 3 300 ;;
        stats) ./bench/stats.sh 1000 50 30d && ./bench/stats.sh 1000000 50 30d ;;
        submit) ./bench/submit.sh 3 2000 ;;
        memory) ./bench/memory.sh 10000 1000 ;;
        *) echo "unknown benchmark $bench" >&2; exit 2 ;;
    esac >"$logs/$bench.log" 2>&1 || { echo "$bench failed:" >&2; tail -n 30 "$logs/$bench.log" >&2; exit 1; }
done
python3 - "$logs" <<'PY'
import glob, os, sys

figures = {}
stats = []
for path in glob.glob(os.path.join(sys.argv[1], "*.log")):
    for line in open(path, errors="replace"):
        if line.startswith("SUMMARY "):
            pairs = dict(kv.split("=", 1) for kv in line.split()[1:])
            if "backend" in pairs:
                stats.append(pairs)
            else:
                figures.update(pairs)


def num(key):
    value = figures.get(key)
    return None if value is None else float(value)


rows = []


def row(goal, what, value, target, met, unit=""):
    if value is None:
        rows.append((goal, what, "not run", target, "—"))
    elif target == "—":
        rows.append((goal, what, f"{value:g}{unit}", target, "—"))
    else:
        rows.append((goal, what, f"{value:g}{unit}", target, "yes" if met(value) else "NO"))


row("P1", "status polls × nginx, keys off", num("status_ratio_darkroom"), "≥ 1.0", lambda v: v >= 1.0)
row("P1", "status polls × nginx, keys on", num("status_ratio_keys"), "≥ 1.0", lambda v: v >= 1.0)
row("P1", "what the key check costs (keys on against keys off sending the same header, same round, median)",
    num("status_key_cost_pct"), "≤ 10 %", lambda v: v <= 10, " %")
row("P1", "p99, keys off", num("status_p99_ms_darkroom"), "≤ 5 ms", lambda v: v <= 5, " ms")
row("P1", "p99, keys on", num("status_p99_ms_keys"), "≤ 5 ms", lambda v: v <= 5, " ms")
row("P2", "ingest × floor, local bucket", num("ingest_ratio_local"), "≥ 0.8", lambda v: v >= 0.8)
row("P2", "ingest × floor, S3 (moto)", num("ingest_ratio_s3"), "≥ 0.8", lambda v: v >= 0.8)
row("P2", "peak RSS while ingesting (local)", num("ingest_peak_rss_mib_local"), "—", lambda v: True, " MiB")
row("P2", "peak RSS, 100 results of about 10 MB ingested at once (local)", num("ingest_peak_rss_mib"),
    "≤ 150 MiB", lambda v: v <= 150, " MiB")
row("P2", "CPU per ~1 MB result ingested, local (process, simulator included)", num("ingest_cpu_us_local"), "—", lambda v: True, " µs")
row("P2", "the same for the floor's plain download and write", num("ingest_cpu_us_floor_local"), "—", lambda v: True, " µs")
row("P2", "darkroom's CPU per task end to end, ~1 MB result, data on disk (simulator in another process)",
    num("e2e_cpu_us_disk"), "≤ 2,000 µs", lambda v: v <= 2000, " µs")
row("P2", "the same with the data directory in memory (tmpfs)", num("e2e_cpu_us_tmpfs"), "≤ 2,000 µs",
    lambda v: v <= 2000, " µs")
row("P2", "of it, writing the result file alone, disk", num("e2e_write_floor_us_disk"), "—", lambda v: True, " µs")
row("P2", "of it, writing the result file alone, tmpfs", num("e2e_write_floor_us_tmpfs"), "—", lambda v: True, " µs")
small = {s["backend"]: s for s in stats if int(s["tasks"]) <= 1000}
for s in sorted((s for s in stats if int(s["tasks"]) > 1000), key=lambda s: s["backend"]):
    at = f"at {int(s['tasks']):,} tasks ({s['backend']}, {s['spread']})"
    row("P4", f"/api/stats p99 {at}", float(s["stats_p99_ms"]), "< 50 ms", lambda v: v < 50, " ms")
    row("P4", f"/api/tasks page p99 {at}", float(s["tasks_page_p99_ms"]), "< 50 ms", lambda v: v < 50, " ms")
    base = small.get(s["backend"])
    for kind, what in (("cold", "from the database"), ("warm", "from the board")):
        key = f"status_{kind}_p99_ms"
        ratio = None if base is None else round(float(s[key]) / float(base[key]), 2)
        row("P4", f"status p99 of the newest tasks {what} {at}, × the figure at 1,000 tasks",
            ratio, "≤ 1.5", lambda v: v <= 1.5)
    row("P4", f"start-up (serve to /healthz) {at}", float(s["start_s"]), "—", lambda v: True, " s")
    row("P4", f"RSS after start-up {at}", float(s["start_rss_mib"]), "—", lambda v: True, " MiB")
if not stats:
    row("P4", "/api/stats and /api/tasks at 10^6 tasks", None, "< 50 ms", None)
row("P5", "tasks/s submitted, unthrottled simulator", num("submit_per_second"), "≥ 2,000", lambda v: v >= 2000)
row("P5", "CPU µs per task (process, simulator included)", num("submit_cpu_us_per_task"), "—", lambda v: True, " µs")
row("5", "idle RSS", num("idle_rss_mib"), "≤ 16 MiB", lambda v: v <= 16, " MiB")
row("5", "idle RSS, anonymous only (no code pages)", num("idle_anon_mib"), "—", lambda v: True, " MiB")
row("5", "RSS, 10,000 queued tasks", num("serve_queued_rss_mib"), "≤ 32 MiB", lambda v: v <= 32, " MiB")
row("5", "RSS, 10,000 queued tasks, anonymous only", num("serve_queued_anon_mib"), "—", lambda v: True, " MiB")
row("5", "RSS, 1,000 open SSE clients", num("sse_rss_mib"), "≤ 64 MiB", lambda v: v <= 64, " MiB")

print()
print("| goal | what | measured | target | met |")
print("|---|---|---|---|---|")
for goal, what, value, target, met in rows:
    print(f"| {goal} | {what} | {value} | {target} | {met} |")
print(f"\n(each benchmark's own table: {sys.argv[1]})")
PY
