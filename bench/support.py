"""What the Python bench drivers (status.py, cluster.py, e2e.py, memory.py) and
scripts/symbol_order.py share: free ports, waiting for a server, JSON requests, serving a
file, an upload form, and a small PNG made with the standard library."""

import http.server
import json
import os
import signal
import socket
import subprocess
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url):
    """Returns once `url` answers at all (an error status counts: the server is up)."""
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def spawn(args, env, cwd, name, children):
    """Starts `args` in `cwd` with its stderr appended to `{name}.log` there, and adds it to
    `children` (the driver stops them all at its end)."""
    child = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(cwd, f"{name}.log"), "a"))
    children.append(child)
    return child


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def post_json(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def serve_file(path):
    """Serves the file at `path` over HTTP on loopback from a thread; returns its URL."""
    root, name = os.path.split(os.path.abspath(path))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args):
            super().__init__(*args, directory=root)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def upload_form(image):
    """A `POST /api/upload` body holding `image` (PNG bytes) as its one file, and the
    body's content type."""
    boundary = "darkroombench"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"s.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def png(width=64, height=48):
    """An RGB PNG with a gradient, made with the standard library only."""
    raw = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 4 % 256, y * 5 % 256, 120))
        for y in range(height)
    )

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def stop(child):
    """SIGTERM, as an operator stops darkroom; killed if it has not ended within a minute."""
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
