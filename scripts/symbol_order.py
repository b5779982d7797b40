"""The driver of scripts/symbol-order.sh: records which functions `darkroom serve` runs,
from its start through what an idle instance and a working one do, and writes them to
link/serve.order for the linker (build.rs).

The release binary runs under valgrind's callgrind, which lists every function executed,
however briefly (a sampling profiler misses the ones run once at start-up, which are most
of them). It answers a request of each kind a front end or an operator sends, uploads an
image, generates three tasks through the built-in simulator to the end, and stops on
SIGTERM. Functions are written most instructions first, so the hot ones share pages.

    python3 scripts/symbol_order.py <binary> <order file>"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from support import free_port, png, stop, upload_form, wait_http  # noqa: E402

BINARY, ORDER = os.path.abspath(sys.argv[1]), sys.argv[2]
work = tempfile.mkdtemp(prefix="darkroom-symbol-order-")
profile = os.path.join(work, "callgrind.out")


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.read()
    except urllib.error.HTTPError as e:
        return e.read()


def exercise(base):
    for path in ("/healthz", "/readyz", "/api/info", "/", "/metrics", "/api/stats",
                 "/api/tasks", "/api/openapi.json"):
        http("GET", base + path)
    body, content_type = upload_form(png())
    answer = json.loads(http("POST", f"{base}/api/upload", body, {"Content-Type": content_type}))
    key = answer["uploaded"][0]["key"]
    request = json.dumps({"prompt": "order", "uploads": [{"key": key}] * 3}).encode()
    answer = json.loads(http("POST", f"{base}/api/generate", request,
                             {"Content-Type": "application/json"}))
    for task in answer["taskIds"]:
        for _ in range(120):
            status = json.loads(http("GET", f"{base}/api/task-status?taskId={task}"))
            if status.get("status") in ("completed", "failed"):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"task {task} did not end under valgrind within a minute")
        http("GET", f"{base}/api/tasks/{task}")


def executed_functions():
    """Function names in the callgrind profile with their instruction counts."""
    counts = {}
    current = None
    with open(profile) as f:
        for line in f:
            if line.startswith("fn="):
                # Recursion levels are written as `name'2`.
                current = re.sub(r"'\d+$", "", line[3:].strip())
                counts.setdefault(current, 0)
            elif current and line[:1].isdigit():
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    counts[current] += int(parts[1])
    return sorted(counts, key=lambda name: -counts[name])


def main():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DARKROOM_DATA_DIR=os.path.join(work, "data"),
               DARKROOM_LISTEN=f"127.0.0.1:{port}", DARKROOM_LOG="warn")
    log = open(os.path.join(work, "serve.log"), "w")
    child = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--demangle=no", "--compress-strings=no",
         "--compress-pos=no", f"--callgrind-out-file={profile}", BINARY, "serve"],
        env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(10):  # valgrind starts slowly: up to 5 minutes
            try:
                wait_http(f"{base}/healthz")
                break
            except SystemExit:
                continue
        time.sleep(2)  # what an idle instance does after start-up
        exercise(base)
        time.sleep(2)
    finally:
        stop(child)
    defined = set(subprocess.run(["nm", "--defined-only", "--format=just-symbols", BINARY],
                                 check=True, capture_output=True, text=True).stdout.split())
    names = [name for name in executed_functions() if name in defined]
    with open(ORDER, "w") as out:
        out.write("\n".join(names) + "\n")
    print(f"{len(names)} functions written to {ORDER}")


main()
