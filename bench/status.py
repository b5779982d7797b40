"""The status-path benchmark's driver (run by bench/status.sh): sets up 1,000 completed
tasks with darkroom itself, writes their status answers as nginx's static files, then
alternates wrk rounds over the sides and prints one table."""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from support import free_port, png, upload_form, wait_http

BINARY, ROUNDS, SECONDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
TASKS = 1000
KEY = "dk_bench_0123456789abcdef0123456789"
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
PG_DB = "darkroom_bench_status"
SERVER_CPU, LOAD_CPU = "1", "0"

work = tempfile.mkdtemp(prefix="darkroom-bench-status-", dir="/dev/shm")
# nginx's worker runs as an unprivileged user: the bodies must be readable by it.
os.chmod(work, 0o755)
children = []




def http(method, url, body=None, headers=None, timeout=30):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.status, answer.read()




def darkroom(env, port, binary=BINARY):
    full = dict(os.environ)
    full.update(
        {
            "DARKROOM_DATA_DIR": os.path.join(work, "data"),
            "DARKROOM_LISTEN": f"127.0.0.1:{port}",
            "DARKROOM_SIM_LATENCY_MS": "1-5",
            # Setting up 1,000 tasks quickly: the built-in simulator's and darkroom's own
            # create limits off (the benchmark measures status polls, not creates).
            "DARKROOM_SIM_RATE_LIMIT": "0",
            "DARKROOM_KIE_CREATES_PER_WINDOW": "0",
            "DARKROOM_KEY_RATE_PER_SEC": "1000000",
            "DARKROOM_KEY_RATE_BURST": "1000000",
            "DARKROOM_KEY_MAX_PENDING_TASKS": "100000",
            "DARKROOM_LOG": "warn",
        }
    )
    full.update(env)
    child = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, binary, "serve"],
        env=full,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, f"darkroom-{port}.log"), "w"),
    )
    children.append(child)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return child


def stop(child):
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=60)
    children.remove(child)


def populate(base):
    """1,000 tasks through the API (keys on, so the tasks have an owner), run to the end."""
    auth = {"Authorization": f"Bearer {KEY}"}
    body, content_type = upload_form(png())
    _, answer = http("POST", f"{base}/api/upload", body, {**auth, "Content-Type": content_type})
    url = json.loads(answer)["uploaded"][0]["url"]
    ids = []
    while len(ids) < TASKS:
        request = json.dumps({"prompt": "bench", "imageUrls": [url] * 10}).encode()
        _, answer = http(
            "POST", f"{base}/api/generate", request, {**auth, "Content-Type": "application/json"}
        )
        ids.extend(json.loads(answer)["taskIds"])
    deadline = time.time() + 300
    while True:
        done = 0
        for task in ids:
            _, answer = http("GET", f"{base}/api/task-status?taskId={task}", headers=auth)
            done += json.loads(answer)["status"] in ("completed", "failed")
        if done == len(ids):
            return ids
        if time.time() > deadline:
            raise SystemExit(f"only {done} of {len(ids)} tasks finished")
        time.sleep(1)



LUA = r"""
local ids = {}
for line in io.lines(os.getenv("IDS_FILE")) do ids[#ids + 1] = line end
local auth = os.getenv("AUTH") or ""
local i = 0
request = function()
  i = i % #ids + 1
  local headers = {}
  if auth ~= "" then headers["Authorization"] = "Bearer " .. auth end
  return wrk.format("GET", "/api/task-status?taskId=" .. ids[i], headers)
end
"""


def wrk(port, auth=""):
    env = dict(os.environ, IDS_FILE=os.path.join(work, "ids.txt"), AUTH=auth)
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{SECONDS}s", "--latency",
         "-s", os.path.join(work, "cycle.lua"), f"http://127.0.0.1:{port}"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{errors.group(1)} error answers:\n{out}")
    return rate, float(p99.group(1)) * scale


def nginx(port):
    root = os.path.join(work, "www")
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /api/task-status {{
            default_type application/json;
            try_files /status/$arg_taskId.json =404;
        }}
    }}
}}
""")
    child = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, "nginx", "-c", conf, "-p", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    children.append(child)
    wait_http(f"http://127.0.0.1:{port}/")
    return child


# DARKROOM_BENCH_PROFILE=1: each darkroom side's last round is sampled by perf, and the
# symbols with the most self time are printed (the top frames of its flame graph).
PROFILE = os.environ.get("DARKROOM_BENCH_PROFILE") == "1"


def profile_start(server, name):
    data = os.path.join(work, f"perf-{name.replace(' ', '-')}.data")
    child = subprocess.Popen(
        ["perf", "record", "-F", "499", "-g", "-o", data, "-p", str(server.pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return child, data


def profile_stop(child, data):
    child.send_signal(signal.SIGINT)
    child.wait(timeout=60)
    report = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--stdio", "--percent-limit", "1.5",
         "-g", "none", "--sort", "symbol"],
        capture_output=True, text=True,
    ).stdout
    lines = (
        re.sub(r"\s+", " ", re.sub(r"[\s-]+$", "", line)).strip()
        for line in report.splitlines()
        if line.strip() and not line.startswith("#")
    )
    return "\n".join(f"    {line}" for line in lines)


def postgres_ready():
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"]).returncode == 0


def main():
    with open(os.path.join(work, "cycle.lua"), "w") as f:
        f.write(LUA)
    port = free_port()
    keys = {"DARKROOM_API_KEYS": f"bench:{KEY}"}
    setup = darkroom(keys, port)
    ids = populate(f"http://127.0.0.1:{port}")
    os.makedirs(os.path.join(work, "www", "status"))
    sizes = []
    for task in ids:
        _, body = http("GET", f"http://127.0.0.1:{port}/api/task-status?taskId={task}",
                       headers={"Authorization": f"Bearer {KEY}"})
        sizes.append(len(body))
        with open(os.path.join(work, "www", "status", f"{task}.json"), "wb") as f:
            f.write(body)
    with open(os.path.join(work, "ids.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    stop(setup)
    print(f"{len(ids)} tasks, status answers {min(sizes)}-{max(sizes)} bytes", file=sys.stderr)

    sides = {
        "nginx": (None, ""),
        "darkroom": ({}, ""),
        "keys": (keys, KEY),
        # Keys off, but wrk sends the same bearer header (ignored): what wrk itself pays for
        # building that header, so the key check's cost is keys against this side.
        "header": ({}, KEY),
        "nometrics": ({"DARKROOM_METRICS": "false"}, ""),
    }
    binaries = {}
    # Another build of darkroom as a side of its own, keys off (a before/after in one run).
    other = os.environ.get("DARKROOM_BENCH_OTHER_BINARY")
    if other:
        sides["other build"] = ({}, "")
        binaries["other build"] = other
    if postgres_ready():
        subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {PG_DB}"], check=True)
        subprocess.run(["psql", PG_ADMIN, "-qc", f"CREATE DATABASE {PG_DB}"], check=True)
        pg_url = f"postgres://postgres@127.0.0.1:5432/{PG_DB}"
        subprocess.run(
            [BINARY, "reindex"],
            env=dict(os.environ, DARKROOM_DATA_DIR=os.path.join(work, "data"),
                     DARKROOM_DATABASE_URL=pg_url, DARKROOM_LOG="warn"),
            check=True, stdout=subprocess.DEVNULL,
        )
        sides["postgres"] = ({"DARKROOM_DATABASE_URL": pg_url}, "")
    else:
        print("PostgreSQL does not answer on 127.0.0.1:5432: no postgres side", file=sys.stderr)

    results = {name: [] for name in sides}
    profiles = {}
    for round_no in range(ROUNDS):
        for name, (env, auth) in sides.items():
            port = free_port()
            server = (
                nginx(port) if env is None else darkroom(env, port, binaries.get(name, BINARY))
            )
            wrk(port, auth)  # warm-up: caches, connections
            profiler = None
            if PROFILE and env is not None and round_no == ROUNDS - 1:
                profiler = profile_start(server, name)
            rate, p99 = wrk(port, auth)
            if profiler:
                profiles[name] = profile_stop(*profiler)
            results[name].append((rate, p99))
            print(f"round {round_no + 1} {name}: {rate:.0f} req/s, p99 {p99:.2f} ms", file=sys.stderr)
            if env is None:
                server.send_signal(signal.SIGQUIT)
                server.wait(timeout=30)
                children.remove(server)
            else:
                stop(server)

    for name, top in profiles.items():
        print(f"\nwhere {name}'s CPU went (perf, self time, last round):\n{top}")
    base = [r for r, _ in results["nginx"]]
    print()
    print("| side | requests/s (median) | × nginx, same round (median, min-max) | p99 ms (median) |")
    print("|---|---|---|---|")
    summary = []
    for name, rows in results.items():
        rates = [r for r, _ in rows]
        ratios = [r / b for r, b in zip(rates, base)]
        p99 = statistics.median(p for _, p in rows)
        print(f"| {name} | {statistics.median(rates):,.0f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) | {p99:.2f} |")
        side = name.replace(" ", "_")
        summary += [f"status_ratio_{side}={statistics.median(ratios):.2f}",
                    f"status_p99_ms_{side}={p99:.2f}"]
    # What the key check costs: keys on against keys off with the same header sent (wrk's
    # own work for the header is on both sides), round by round.
    costs = [100 * (1 - k / d) for (k, _), (d, _) in zip(results["keys"], results["header"])]
    print(f"\nthe key check costs {statistics.median(costs):.0f} % of the requests/s "
          f"(keys on against keys off with the same header sent, same round; median, "
          f"min-max {min(costs):.0f}-{max(costs):.0f} %)")
    header = [100 * (1 - h / d) for (h, _), (d, _) in zip(results["header"], results["darkroom"])]
    print(f"sending the header costs {statistics.median(header):.0f} % (keys off both; wrk's "
          f"Lua builds it per request: min-max {min(header):.0f}-{max(header):.0f} %)")
    summary.append(f"status_key_cost_pct={statistics.median(costs):.0f}")
    # For bench/all.sh.
    print("\nSUMMARY " + " ".join(summary))


try:
    main()
finally:
    for child in children:
        child.kill()
    shutil.rmtree(work, ignore_errors=True)
