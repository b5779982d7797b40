#!/usr/bin/env bash
# Ingest benchmark (issue: storage). 200 results of ~1 MB made by the KIE simulator are
# ingested by darkroom (download through the guarded client, spool, type check,
# create-only write, state change, task record) and, as the floor, plainly downloaded and
# written by a minimal loop with the same concurrency (8). Both into the local directory
# and into moto's S3. Sides alternate (floor, darkroom, floor, darkroom, ...), each in its
# own process so peak RSS is its own. Prints the median results/s, the ratio to the floor
# (min-max over rounds), the process's CPU time per result over the measured part (the
# in-process simulator serving the downloads is in both sides) and peak RSS.
#
#   ./bench/ingest.sh [rounds=3] [count=200]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${2:-200}

pids=()
trap 'for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done' EXIT
if [ ! -x .venv/bin/moto_server ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
pids+=($!)
export DARKROOM_TEST_S3_URL="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -s -o /dev/null "$DARKROOM_TEST_S3_URL" && break; sleep 0.2; done

cargo bench --bench ingest --no-run >/dev/null 2>&1 || cargo bench --bench ingest --no-run
out=$(mktemp)
for backend in local s3; do
    for round in $(seq 1 "$rounds"); do
        for mode in floor darkroom; do
            export BENCH_BUCKET="bench-$backend-$mode-$round-$RANDOM"
            curl -s -X PUT "$DARKROOM_TEST_S3_URL/$BENCH_BUCKET" >/dev/null
            cargo bench --bench ingest -- "$mode" "$backend" "$count" 2>/dev/null | grep '^RESULT' | tee -a "$out"
        done
    done
done

python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict(kv.split("=") for kv in line.split()[1:]) for line in open(sys.argv[1])]
print()
print("| backend | floor results/s (median) | darkroom results/s (median) | ratio median (min-max) | CPU µs/result floor / darkroom | peak RSS MiB floor / darkroom |")
print("|---|---|---|---|---|---|")
summary = []
for backend in ("local", "s3"):
    floor = [r for r in rows if r["backend"] == backend and r["mode"] == "floor"]
    dark = [r for r in rows if r["backend"] == backend and r["mode"] == "darkroom"]
    ratios = [float(d["per_second"]) / float(f["per_second"]) for f, d in zip(floor, dark)]
    med = lambda xs: statistics.median(float(x) for x in xs)
    print(f"| {backend} | {med(r['per_second'] for r in floor):.1f} | {med(r['per_second'] for r in dark):.1f} | "
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
          f"{med(r['cpu_us_per_task'] for r in floor):.0f} / {med(r['cpu_us_per_task'] for r in dark):.0f} | "
          f"{med(r['peak_rss_kib'] for r in floor)/1024:.0f} / {med(r['peak_rss_kib'] for r in dark)/1024:.0f} |")
    summary.append(f"ingest_ratio_{backend}={statistics.median(ratios):.2f}")
    summary.append(f"ingest_peak_rss_mib_{backend}={med(r['peak_rss_kib'] for r in dark)/1024:.0f}")
    summary.append(f"ingest_cpu_us_{backend}={med(r['cpu_us_per_task'] for r in dark):.0f}")
    summary.append(f"ingest_cpu_us_floor_{backend}={med(r['cpu_us_per_task'] for r in floor):.0f}")
# For bench/all.sh.
print()
print("SUMMARY " + " ".join(summary))
PY
