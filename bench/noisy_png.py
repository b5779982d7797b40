"""Writes a PNG of random pixels (it does not compress, so its size is about side² × 3
bytes): python3 bench/noisy_png.py SIDE PATH. For the ingest benchmarks' large results."""

import os
import struct
import sys
import zlib

side, path = int(sys.argv[1]), sys.argv[2]


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


rows = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))
png = (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(rows, 1))
    + chunk(b"IEND", b"")
)
with open(path, "wb") as f:
    f.write(png)
