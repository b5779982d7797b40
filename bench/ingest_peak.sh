#!/usr/bin/env bash
# Peak memory of ingest with large results (issue 14, P2): 100 results of about 10 MB,
# ingested 100 at once by darkroom's engine into the local bucket. The results are served
# by nginx in another process (one noisy PNG of about 10 MB under one URL), so the peak RSS
# printed (VmHWM of the bench process) is darkroom's and its runtime's alone; darkroom
# spools a result over 2 MiB to a temporary file as it arrives.
#   ./bench/ingest_peak.sh [count=100] [concurrency=100] [side=1830]
# Installs Debian's nginx-light when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-100}
concurrency=${2:-100}
side=${3:-1830}
if ! command -v nginx >/dev/null; then
    echo "installing nginx-light (Debian)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null ||
        { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
fi
work=$(mktemp -d)
nginx_pid=""
trap '[ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null; rm -rf "$work"' EXIT
python3 bench/noisy_png.py "$side" "$work/result.png"
# nginx's workers run as an unprivileged user: they must be able to read the file.
chmod 755 "$work"
chmod 644 "$work/result.png"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/logs"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    server {
        listen 127.0.0.1:$port;
        root $work;
        location = /result.png { default_type image/png; }
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/result.png" && break; sleep 0.1; done
bytes=$(stat -c %s "$work/result.png")
cargo bench --bench ingest --no-run >/dev/null 2>&1 || cargo bench --bench ingest --no-run
TMPDIR="$work" BENCH_RESULT_URL="http://127.0.0.1:$port/result.png" BENCH_CONCURRENCY="$concurrency" \
    cargo bench --bench ingest -- darkroom local "$count" >"$work/logs/bench.log" 2>&1 || true
line=$(grep '^RESULT' "$work/logs/bench.log" || true)
if [ -z "$line" ]; then
    echo "the benchmark printed no result; its output ends with:" >&2
    tail -20 "$work/logs/bench.log" >&2
    exit 1
fi
echo "$line"
python3 - "$line" "$bytes" "$count" "$concurrency" <<'PY'
import sys
line, size, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fields = dict(part.split("=", 1) for part in line.split()[1:])
peak = int(fields["peak_rss_kib"]) / 1024
before = int(fields["rss_before_kib"]) / 1024
print(f"\n{count} results of {size / 1e6:.1f} MB, {concurrency} at once: "
      f"{float(fields['per_second']):.1f} results/s, {int(fields['cpu_us_per_task']):,} µs CPU per result, "
      f"peak RSS {peak:.1f} MiB (before the ingest {before:.1f} MiB)")
print(f"\nSUMMARY ingest_peak_rss_mib={peak:.1f} ingest_peak_results={count} "
      f"ingest_peak_concurrency={concurrency} ingest_peak_result_mb={size / 1e6:.1f}")
PY
