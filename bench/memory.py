"""The memory benchmark's driver (run by bench/memory.sh): the resident memory of
`darkroom serve` (the release binary, embedded default: SQLite, local bucket, built-in
simulator) idle, with 10,000 queued tasks, and with 1,000 open SSE clients. Each figure
is the process's VmRSS read from /proc after the state is reached, and its peak (VmHWM)."""

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from support import free_port, png, stop, upload_form, wait_http

BINARY = sys.argv[1]
QUEUED = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
CLIENTS = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000

work = tempfile.mkdtemp(prefix="darkroom-bench-memory-")


def kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise SystemExit(f"no {field} for {pid}")


def settle(pid, seconds=3.0):
    """After a pause (allocators hand memory back lazily): RSS, its peak, and RSS split
    into anonymous memory (the heap, stacks) and file pages (the binary's code mapped
    in: clean, shared with the page cache, reclaimable)."""
    time.sleep(seconds)
    return (kib(pid, "VmRSS:"), kib(pid, "VmHWM:"), kib(pid, "RssAnon:"), kib(pid, "RssFile:"))


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.status, answer.read()


def serve(env):
    port = free_port()
    full = dict(os.environ)
    full.update(
        {
            "DARKROOM_DATA_DIR": os.path.join(work, f"data-{port}"),
            "DARKROOM_LISTEN": f"127.0.0.1:{port}",
            "DARKROOM_LOG": "warn",
        }
    )
    full.update(env)
    child = subprocess.Popen(
        [BINARY, "serve"], env=full, cwd=work,
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"serve-{port}.log"), "w"),
    )
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return child, f"http://127.0.0.1:{port}"


def queue(base, count):
    """`count` tasks queued through the API (workers off: they stay queued)."""
    body, content_type = upload_form(png())
    _, answer = http("POST", f"{base}/api/upload", body, {"Content-Type": content_type})
    key = json.loads(answer)["uploaded"][0]["key"]
    queued = 0
    while queued < count:
        n = min(10, count - queued)
        request = json.dumps({"prompt": "memory", "uploads": [{"key": key}] * n}).encode()
        _, answer = http("POST", f"{base}/api/generate", request,
                         {"Content-Type": "application/json"})
        queued += len(json.loads(answer)["taskIds"])
    return queued


def sse_clients(base, count):
    """`count` open `GET /api/events` streams, each past its response headers."""
    host, port = base.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        sockets.append(s)
    for s in sockets:
        s.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("a stream closed before its headers")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"a stream was refused: {head[:200]!r}")
    return sockets


def main():
    # The server inherits this limit: 1,000 streams need more than the usual 1,024 files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, CLIENTS * 2 + 512)), hard))
    rows = []

    child, base = serve({})
    rows.append(("idle (embedded default, nothing queued)", *settle(child.pid)))
    sockets = sse_clients(base, CLIENTS)
    rows.append((f"{CLIENTS:,} open SSE clients", *settle(child.pid)))
    for s in sockets:
        s.close()
    stop(child)

    child, base = serve({"DARKROOM_WORKERS": "false"})
    queued = queue(base, QUEUED)
    rows.append((f"{queued:,} queued tasks (workers off)", *settle(child.pid)))
    stop(child)

    print()
    print("| state | RSS MiB | peak RSS MiB | of which anonymous MiB | of which file (code) MiB |")
    print("|---|---|---|---|---|")
    for what, rss, peak, anon, file in rows:
        print(f"| {what} | {rss / 1024:.1f} | {peak / 1024:.1f} | {anon / 1024:.1f} | {file / 1024:.1f} |")
    # For bench/all.sh.
    mib = lambda n, i: f"{rows[n][i] / 1024:.1f}"
    print(f"\nSUMMARY idle_rss_mib={mib(0, 1)} idle_anon_mib={mib(0, 3)} sse_rss_mib={mib(1, 1)} "
          f"sse_anon_mib={mib(1, 3)} sse_clients={CLIENTS} serve_queued_rss_mib={mib(2, 1)} "
          f"serve_queued_anon_mib={mib(2, 3)} serve_queued={queued}")


try:
    main()
finally:
    shutil.rmtree(work, ignore_errors=True)
