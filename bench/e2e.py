"""The end-to-end CPU benchmark's driver (run by bench/e2e.sh): darkroom's own CPU time
per task from the request to the stored result, with the provider in another process.

`darkroom serve` (SQLite, local bucket) talks to a standalone `darkroom kie-sim` (every
limit off, 1-5 ms generations, results of about 1 MB: a noisy 600x600 input, images of
600 px). Each round starts a fresh server, asks for TASKS tasks (`POST /api/generate`, 10
input URLs a request, the input served by this script), and waits until all have
succeeded (`GET /api/stats`, a few times a second). Each task goes the whole way: the
create at the simulator, its signed callback, the `recordInfo` check, the download through
the guarded client, the image check, the create-only write, every state change in
SQLite, the status board, events and the bucket records. The server's CPU time
(user + system, /proc/PID/stat) over that span divided by TASKS is the figure; the
simulator's is printed beside it (not darkroom's work: it renders and serves the images)."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import support
from support import free_port, serve_file, wait_http
from support import get_json as get
from support import post_json as post

BINARY, ROUNDS, TASKS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
TOKEN = "bench-token"
SIDE = 600
work = tempfile.mkdtemp(prefix="darkroom-bench-e2e-")
children = []
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def written_bytes(pid):
    """Bytes handed to write calls (files, sockets, pipes), from /proc/PID/io."""
    with open(f"/proc/{pid}/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def serve_input():
    """The noisy input the simulator fetches for every task, from a server of the bench's own."""
    root = os.path.join(work, "input")
    os.makedirs(root)
    path = os.path.join(root, "input.png")
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "noisy_png.py"),
                    str(SIDE), path], check=True)
    return serve_file(path)


def store_floor(root, size, count):
    """The kernel's share: CPU to write `count` files of `size` bytes under `root` the way a
    bucket directory is written (a staging file, renamed into place)."""
    payload = os.urandom(size)
    directory = tempfile.mkdtemp(dir=root)
    started = time.process_time()
    for n in range(count):
        path = os.path.join(directory, f"result-{n}.png")
        with open(path + ".staging", "wb") as f:
            f.write(payload)
        os.rename(path + ".staging", path)
    took = time.process_time() - started
    shutil.rmtree(directory, ignore_errors=True)
    return took * 1e6 / count


def read_switches(path):
    """The count `perf stat -x,` wrote, or None when it could not count (no permission)."""
    try:
        with open(path) as f:
            for line in f:
                fields = line.split(",")
                if len(fields) > 2 and fields[2] == "context-switches" and fields[0].isdigit():
                    return int(fields[0])
    except OSError:
        pass
    return None


def run_round(sim, sim_process, input_url, root):
    data = tempfile.mkdtemp(dir=root)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DARKROOM_DATA_DIR=data, DARKROOM_LISTEN=f"127.0.0.1:{port}",
               KIE_API_TOKEN=TOKEN, KIE_BASE_URL=f"http://{sim}",
               DARKROOM_TRUSTED_FETCH_HOSTS=sim, DARKROOM_KIE_CREATES_PER_WINDOW="0",
               DARKROOM_KIE_MAX_IN_FLIGHT="0", DARKROOM_KIE_QUERIES_PER_SECOND="0",
               DARKROOM_KEY_MAX_PENDING_TASKS="1000000", DARKROOM_CALLBACK_RATE_PER_SEC="100000",
               DARKROOM_CALLBACK_RATE_BURST="100000", DARKROOM_LOG="warn")
    server = support.spawn([BINARY, "serve"], env, work, "serve", children)
    try:
        wait_http(f"{base}/healthz")
        time.sleep(1)
        profiler = None
        if os.environ.get("BENCH_PERF_OUT"):
            # darkroom's own profile over the measured span (perf record -g), for a closer look.
            profiler = subprocess.Popen(["perf", "record", "-F", "1000", "--call-graph", "dwarf,16384", "-p", str(server.pid),
                                         "-o", os.environ["BENCH_PERF_OUT"]],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        # Context switches of every thread, those started and ended during the round too
        # (perf counts them; /proc keeps only live threads'): the thread hand-overs.
        switches_file = os.path.join(data, "switches.csv")
        switches = None
        if shutil.which("perf"):
            switches = subprocess.Popen(["perf", "stat", "-x,", "-e", "context-switches", "-p", str(server.pid),
                                         "-o", switches_file],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        cpu_before = cpu_seconds(server.pid)
        written_before = written_bytes(server.pid)
        sim_before = cpu_seconds(sim_process.pid)
        started = time.time()
        asked = 0
        while asked < TASKS:
            n = min(10, TASKS - asked)
            asked += len(post(f"{base}/api/generate",
                              {"prompt": "bench", "imageUrls": [input_url] * n})["taskIds"])
        deadline = time.time() + 600
        while True:
            stats = get(f"{base}/api/stats?window=1h")
            if stats["succeeded"] >= TASKS:
                break
            if stats["failed"]:
                raise SystemExit(f"{stats['failed']} tasks failed: {stats['failures']}")
            if time.time() > deadline:
                raise SystemExit(f"only {stats['succeeded']} of {TASKS} succeeded in 10 minutes")
            time.sleep(0.2)
        took = time.time() - started
        cpu = cpu_seconds(server.pid) - cpu_before
        written = written_bytes(server.pid) - written_before
        sim_cpu = cpu_seconds(sim_process.pid) - sim_before
        if profiler:
            profiler.send_signal(2)
            profiler.wait()
        context_switches = None
        if switches:
            switches.send_signal(2)
            switches.wait()
            context_switches = read_switches(switches_file)
        results = [os.path.getsize(os.path.join(dirpath, name))
                   for dirpath, _, names in os.walk(os.path.join(data, "bucket", "generated"))
                   for name in names]
        if len(results) != TASKS:
            raise SystemExit(f"{len(results)} results stored for {TASKS} tasks")
    finally:
        support.stop(server)
        children.remove(server)
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {data}", file=sys.stderr)
        else:
            shutil.rmtree(data, ignore_errors=True)
    floor = store_floor(root, int(statistics.mean(results)), TASKS)
    return {"floor_us": floor, "per_second": TASKS / took, "cpu_us": cpu * 1e6 / TASKS,
            "sim_cpu_us": sim_cpu * 1e6 / TASKS,
            "switches": None if context_switches is None else context_switches / TASKS,
            "written_mb": written / 1e6 / TASKS, "result_mb": statistics.mean(results) / 1e6}


# Where the server's data directory (SQLite and the bucket) lives: the disk of the working
# directory's filesystem, and memory (tmpfs), where writing a file costs the kernel far less.
DISKS = [(name, root) for name, root in [("disk", None), ("tmpfs", "/dev/shm")]
         if name in os.environ.get("BENCH_DISKS", "disk tmpfs").split()]


def main():
    input_url = serve_input()
    sim_port = free_port()
    sim = f"127.0.0.1:{sim_port}"
    sim_process = support.spawn([BINARY, "kie-sim", "--port", str(sim_port), "--rate-limit", "0",
                         "--latency-ms", "1-5", "--token", TOKEN, "--credits", "1000000000",
                         "--image-long-side", str(SIDE)], None, work, "sim", children)
    wait_http(f"http://{sim}/sim/stats")
    rounds = {name: [] for name, _ in DISKS}
    for number in range(ROUNDS):
        for name, root in DISKS:
            if root and not os.path.isdir(root):
                continue
            r = run_round(sim, sim_process, input_url, root or work)
            rounds[name].append(r)
            print(f"round {number + 1}, {name}: {r['per_second']:.0f} tasks/s, darkroom "
                  f"{r['cpu_us']:,.0f} µs CPU per task, writing the result alone {r['floor_us']:,.0f} µs, "
                  f"simulator {r['sim_cpu_us']:,.0f} µs, results {r['result_mb']:.2f} MB, "
                  f"{'-' if r['switches'] is None else format(r['switches'], '.0f')} context switches per task, "
                  f"darkroom wrote {r['written_mb']:.2f} MB per task", file=sys.stderr)
    print()
    print("| data directory on | darkroom CPU µs per task (median, min-max) | of it, writing the result file alone | darkroom without it | simulator CPU µs per task | tasks/s | MB written per task | context switches per task |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for name, _ in DISKS:
        rs = rounds[name]
        if not rs:
            continue
        med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
        own = statistics.median(r["cpu_us"] - r["floor_us"] for r in rs)
        counted = [r["switches"] for r in rs if r["switches"] is not None]
        switches = statistics.median(counted) if counted else None
        print(f"| {name} | {med('cpu_us'):,.0f} ({min(r['cpu_us'] for r in rs):,.0f}-{max(r['cpu_us'] for r in rs):,.0f}) "
              f"| {med('floor_us'):,.0f} | {own:,.0f} | {med('sim_cpu_us'):,.0f} | {med('per_second'):.0f} "
              f"| {med('written_mb'):.2f} | {'-' if switches is None else format(switches, '.0f')} |")
        summary += [f"e2e_cpu_us_{name}={med('cpu_us'):.0f}", f"e2e_write_floor_us_{name}={med('floor_us'):.0f}",
                    f"e2e_tasks_per_s_{name}={med('per_second'):.0f}"]
        if switches is not None:
            summary.append(f"e2e_context_switches_{name}={switches:.0f}")
    print(f"\n{TASKS} tasks a round, {ROUNDS} rounds, results of "
          f"{statistics.mean(r['result_mb'] for rs in rounds.values() for r in rs):.2f} MB; "
          "goal: at most 2,000 µs of darkroom's CPU per task. \"writing the result file alone\" is a "
          "plain loop writing files of the results' size into the same filesystem (staging file, "
          "rename), measured right after each round: the kernel's share that any copy pays.")
    print("\nSUMMARY " + " ".join(summary))


try:
    main()
finally:
    for child in list(children):
        support.stop(child)
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
