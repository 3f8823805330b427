"""A multi-GB compressed capture read from a pipe keeps the reader's peak RSS bounded.

The stream is generated here (format per the spec: header, configuration, a ``ram`` START with
the block list, PART sections of PAGE records, END, EOF): 2 GiB of RAM in normal pages whose
content repeats an 8-byte word (so the compressed file stays small and every compressed block
expands by a large factor, the worst case for output buffering). It is compressed while generated
(zstd and gzip) into a file, then ``cat FILE | vmig ram --json -`` runs under a small wrapper
that reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (vmig and cat are its only children).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PS = 4096
GIB = 1 << 30
SIZE = 2 * GIB
PER_CHUNK = 256  # pages per PART section
BLOCK = b"pc.ram"


def _counted(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def _stream_chunks():
    eos = struct.pack(">Q", 0x10)
    yield struct.pack(">II", 0x5145564D, 3) + b"\x07" + struct.pack(">I", 13) + b"pc-i440fx-7.2"
    yield (b"\x01" + struct.pack(">I", 2) + _counted(b"ram") + struct.pack(">II", 0, 4)
           + struct.pack(">Q", SIZE | 0x04) + _counted(BLOCK) + struct.pack(">Q", SIZE) + eos
           + b"\x7e" + struct.pack(">I", 2))
    for base in range(0, SIZE // PS, PER_CHUNK):
        parts = [b"\x02" + struct.pack(">I", 2)]
        for i in range(base, base + PER_CHUNK):
            addr = i * PS
            if i == base:
                parts.append(struct.pack(">Q", addr | 0x08) + _counted(BLOCK))
            else:
                parts.append(struct.pack(">Q", addr | 0x08 | 0x20))
            parts.append(struct.pack(">Q", i) * (PS // 8))
        parts.append(eos + b"\x7e" + struct.pack(">I", 2))
        yield b"".join(parts)
    yield b"\x03" + struct.pack(">I", 2) + eos + b"\x7e" + struct.pack(">I", 2) + b"\x00"


def _write_compressed(kind: str, path: Path) -> None:
    with open(path, "wb") as raw:
        if kind == "zstd":
            import zstandard

            with zstandard.ZstdCompressor(level=1, write_checksum=True).stream_writer(raw, closefd=False) as w:
                for c in _stream_chunks():
                    w.write(c)
        else:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as g:
                for c in _stream_chunks():
                    g.write(c)


WRAPPER = """
import resource, subprocess, sys
cat = subprocess.Popen(["cat", sys.argv[1]], stdout=subprocess.PIPE)
r = subprocess.run([sys.executable, "-m", "vmig", "ram", "--json", "-"], stdin=cat.stdout, capture_output=True)
cat.stdout.close(); cat.wait()
sys.stderr.write(r.stderr.decode())
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stdout.write(r.stdout.decode())
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_multi_gb_compressed_pipe_peak_rss(kind, tmp_path):
    f = tmp_path / f"big.{kind}"
    _write_compressed(kind, f)
    assert f.stat().st_size < SIZE // 50  # it really is a compressed capture
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", WRAPPER, str(f)], capture_output=True, text=True, env=env,
                       timeout=1800)
    first, _, doc = r.stdout.partition("\n")
    rc, maxrss_kib = map(int, first.split())
    assert rc == 0, r.stderr
    totals = json.loads(doc)["totals"]
    assert totals["normal"] == SIZE // PS and totals["zero"] == 0
    print(f"{kind}: {f.stat().st_size} compressed bytes, {SIZE} stream RAM bytes, peak RSS {maxrss_kib} KiB")
    assert maxrss_kib <= 100 * 1024, f"peak RSS {maxrss_kib} KiB"
