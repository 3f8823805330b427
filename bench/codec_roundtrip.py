"""Rough throughput of the codec core: decode + re-encode of a synthetic RAM-heavy stream.

Usage: python bench/codec_roundtrip.py [MiB]   (default 1024)

Writes a stream of PAGE|CONTINUE records (random page contents) to a temp file, then times
(1) mmap'ed decode + encode via vmig.io.streams.iter_events and StreamEncoder (zero-copy path),
(2) chunked decode (1 MiB chunks, as from a pipe) + encode. Prints GB/s for each and checks the
re-encoded bytes are identical. Not part of the test suite.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import tempfile
import time

from vmig.io.streams import iter_events
from vmig.stream.decoder import StreamDecoder
from vmig.stream.encoder import StreamEncoder


def write_stream(path: str, mib: int) -> None:
    n = mib * 256
    ps = 4096
    page = os.urandom(ps)
    with open(path, "wb") as f:
        f.write(struct.pack(">II", 0x5145564D, 3))
        f.write(b"\x07" + struct.pack(">I", 13) + b"pc-i440fx-7.2")
        f.write(b"\x01" + struct.pack(">I", 2) + b"\x03ram" + struct.pack(">II", 0, 4))
        f.write(struct.pack(">Q", (n * ps) | 4) + b"\x06pc.ram" + struct.pack(">Q", n * ps))
        f.write(struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2) + b"\x02" + struct.pack(">I", 2))
        buf = bytearray(struct.pack(">Q", 8) + b"\x06pc.ram" + page)
        for i in range(1, n):
            buf += struct.pack(">Q", (i * ps) | 0x28) + page
            if len(buf) > (16 << 20):
                f.write(buf)
                buf = bytearray()
        f.write(buf + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 2) + b"\x00")


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big.bin")
        write_stream(path, mib)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()

        t = time.perf_counter()
        h = hashlib.sha256()
        enc = StreamEncoder()
        for ev in iter_events(path):
            enc.send(ev)
        dt = time.perf_counter() - t
        print(f"mmap   decode+encode: {size / dt / 1e9:.2f} GB/s ({size} bytes, {dt:.2f} s)")

        t = time.perf_counter()
        enc = StreamEncoder()
        dec = StreamDecoder()
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                dec.receive_data(chunk)
                for ev in dec.events():
                    h.update(enc.send(ev))
                if not chunk:
                    break
        dt = time.perf_counter() - t
        print(f"chunked decode+encode(+sha256): {size / dt / 1e9:.2f} GB/s ({dt:.2f} s)")
        print("identical:", h.hexdigest() == want)


if __name__ == "__main__":
    main()
