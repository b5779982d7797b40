"""The scale-out benchmark's driver (run by bench/cluster.sh)."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import support
from support import free_port, png, serve_file, wait_http
from support import get_json as get
from support import post_json as post

BINARY, ROUNDS, TASKS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
PG_DB = "darkroom_bench_cluster"
TOKEN = "bench-token"
work = tempfile.mkdtemp(prefix="darkroom-bench-cluster-", dir="/dev/shm")
children = []


def spawn(args, env=None, name="process"):
    return support.spawn(args, env, work, name, children)


def stop(child):
    support.stop(child)
    children.remove(child)


def serve_input():
    """A PNG for the simulator to fetch, from a server of the bench's own."""
    root = os.path.join(work, "input")
    os.makedirs(root)
    with open(os.path.join(root, "input.png"), "wb") as f:
        f.write(png())
    return serve_file(os.path.join(root, "input.png"))


def darkroom_env(sim, database, data, roles):
    env = dict(os.environ)
    env.update({
        "DARKROOM_DATA_DIR": data,
        "DARKROOM_BUCKET_DIR": os.path.join(work, "bucket"),
        "DARKROOM_ROLES": roles,
        "KIE_API_TOKEN": TOKEN,
        "KIE_BASE_URL": f"http://{sim}",
        "DARKROOM_TRUSTED_FETCH_HOSTS": sim,
        "DARKROOM_KIE_CREATES_PER_WINDOW": "0",
        "DARKROOM_KIE_MAX_IN_FLIGHT": "0",
        "DARKROOM_KIE_QUERIES_PER_SECOND": "0",
        "DARKROOM_DISPATCH_CONCURRENCY": "16",
        "DARKROOM_KEY_MAX_PENDING_TASKS": "1000000",
        "DARKROOM_LOG": "warn",
    })
    if database:
        env["DARKROOM_DATABASE_URL"] = database
    return env


def run_side(instances, postgres, sim, sim_port, input_url):
    shutil.rmtree(os.path.join(work, "bucket"), ignore_errors=True)
    data = tempfile.mkdtemp(dir=work)
    database = None
    if postgres:
        subprocess.run(["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"], check=True)
        subprocess.run(["psql", PG_ADMIN, "-qc", f"CREATE DATABASE {PG_DB}"], check=True)
        database = f"postgres://postgres@127.0.0.1:5432/{PG_DB}"
    # Queue every task first, with no worker running.
    port = free_port()
    env = darkroom_env(sim, database, data, "api")
    env["DARKROOM_LISTEN"] = f"127.0.0.1:{port}"
    api = spawn([BINARY, "serve"], env, "api")
    wait_http(f"http://127.0.0.1:{port}/healthz")
    queued = 0
    while queued < TASKS:
        answer = post(f"http://127.0.0.1:{port}/api/generate",
                      {"prompt": "bench", "imageUrls": [input_url] * 10})
        queued += len(answer["taskIds"])
    stop(api)
    before = get(f"http://127.0.0.1:{sim_port}/sim/stats")["created"]
    workers = []
    for i in range(instances):
        env = darkroom_env(sim, database, data if i == 0 else tempfile.mkdtemp(dir=work), "workers")
        env["DARKROOM_LISTEN"] = f"127.0.0.1:{free_port()}"
        workers.append(spawn([BINARY, "serve"], env, f"worker-{i}"))
    first = last = None
    deadline = time.time() + 600
    while True:
        created = get(f"http://127.0.0.1:{sim_port}/sim/stats")["created"] - before
        now = time.time()
        if created > 0 and first is None:
            first = now
        if created >= TASKS:
            last = now
            break
        if now > deadline:
            raise SystemExit(f"only {created} of {TASKS} created")
        time.sleep(0.02)
    for worker in workers:
        stop(worker)
    return TASKS / max(last - first, 1e-6)


def main():
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"]).returncode != 0:
        raise SystemExit("PostgreSQL does not answer on 127.0.0.1:5432")
    input_url = serve_input()
    sim_port = free_port()
    sim = f"127.0.0.1:{sim_port}"
    spawn([BINARY, "kie-sim", "--port", str(sim_port), "--rate-limit", "0",
           "--latency-ms", "1-5", "--token", TOKEN, "--credits", "1000000000"], None, "sim")
    wait_http(f"http://{sim}/sim/stats")
    sides = {"sqlite, 1 instance": (1, False), "postgres, 1 instance": (1, True),
             "postgres, 3 instances": (3, True)}
    results = {name: [] for name in sides}
    for round_no in range(ROUNDS):
        for name, (instances, postgres) in sides.items():
            rate = run_side(instances, postgres, sim, sim_port, input_url)
            results[name].append(rate)
            print(f"round {round_no + 1} {name}: {rate:.0f} creates/s", file=sys.stderr)
    base = results["sqlite, 1 instance"]
    print()
    print(f"| side | creates/s (median, min-max) | × SQLite 1 instance, same round |")
    print("|---|---|---|")
    for name, rates in results.items():
        ratios = [r / b for r, b in zip(rates, base)]
        print(f"| {name} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
              f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")


try:
    main()
finally:
    for child in children:
        child.kill()
    shutil.rmtree(work, ignore_errors=True)
