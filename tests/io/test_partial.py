"""``--partial``: a real capture (pc-guest, QEMU 7.2) cut at many points, plain and gzip-compressed
(file and pipe). Every reading command reports what arrived and exits 1 with one stderr line
saying where and how the input ends; its results are consistent with the full stream's: record
rows are a prefix of the full rows, counts never exceed the full counts, devices are a subset,
virtio-mem devices are reported once their section arrived. Without ``--partial``: exit 2.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from vmig.cli import main
from vmig.testing import fixtures as fx

REPO = Path(__file__).resolve().parents[2]
DATA = fx.load("pc-guest")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _outputs(capsys, path: str, *extra: str) -> dict:
    out = {}
    for name, argv in (("ram", ["ram", path, "--json"]), ("info", ["info", path, "--json"]),
                       ("sections", ["sections", path, "--json"]),
                       ("mem", ["info", "memory-devices", path, "--json"])):
        rc, text, err = _run(capsys, *argv, *extra)
        out[name] = (rc, json.loads(text) if text.strip() else None, err)
    return out


def _vmem_offset() -> int:
    rows = json.loads(subprocess.run([sys.executable, "-m", "vmig", "sections", "-", "--json"], input=DATA,
                                     capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout)
    row = next(r for r in rows if (r.get("idstr") or "").endswith("/virtio-mem"))
    return row["offset"] + row["length"]


CUTS = sorted({int(len(DATA) * f) for f in (0.0005, 0.01, 0.05, 0.2, 0.45, 0.7, 0.9, 0.97, 0.99, 0.995, 0.999)})


def test_partial_at_many_cut_points(tmp_path, capsys):
    f = tmp_path / "full.bin"
    f.write_bytes(DATA)
    ref = _outputs(capsys, str(f))
    assert all(rc == 0 for rc, _, _ in ref.values())
    vmem_end = _vmem_offset()
    cuts = sorted(set(CUTS) | {vmem_end - 6, vmem_end - 5, vmem_end + 20})  # footer: 5 bytes
    for cut in cuts:
        p = tmp_path / f"cut-{cut}.bin"
        p.write_bytes(DATA[:cut])
        got = _outputs(capsys, str(p), "--partial")
        for name, (rc, _doc, err) in got.items():
            assert rc == 1, (cut, name, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "partial input:" in lines[0] and str(p) in lines[0], (cut, name, err)
        # records that arrived are the full stream's first records
        rows, full_rows = got["sections"][1], ref["sections"][1]
        assert rows == full_rows[: len(rows)] and len(rows) < len(full_rows)
        # RAM: never more than the full stream, per kind and per block
        ram, full_ram = got["ram"][1], ref["ram"][1]
        for k, v in ram["totals"].items():
            assert v <= full_ram["totals"][k], (cut, k)
        fb = {b["idstr"]: b for b in full_ram["blocks"]}
        for b in ram["blocks"]:
            assert b["normal"] <= fb[b["idstr"]]["normal"] and b["zero"] <= fb[b["idstr"]]["zero"]
        # summary: section counts and devices within the full ones
        info, full_info = got["info"][1], ref["info"][1]
        for k, v in info["sections"].items():
            assert v <= full_info["sections"][k]
        assert all(d in full_info["devices"] for d in info["devices"])
        assert info["stream"]["vmdesc_trailer"] is False  # the trailer is the last thing to arrive
        # virtio-mem: reported exactly when its state arrived whole (up to the section footer)
        mem = got["mem"][1]
        assert mem == (ref["mem"][1] if cut >= vmem_end - 5 else [])
        # without --partial the same input is an error
        rc, _, err = _run(capsys, "ram", str(p))
        assert rc == 2 and "partial input" not in err
    # RAM counts grow with the cut
    totals = []
    for cut in CUTS:
        p = tmp_path / f"cut-{cut}.bin"
        totals.append(_outputs(capsys, str(p), "--partial")["ram"][1]["totals"]["pages_sent"])
    assert totals == sorted(totals) and totals[-1] > totals[0]


def test_partial_compressed_capture_from_a_pipe(tmp_path, capsys):
    comp = gzip.compress(DATA, compresslevel=1)
    f = tmp_path / "full.bin"
    f.write_bytes(DATA)
    full_ram = json.loads(_run(capsys, "ram", str(f), "--json")[1])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for frac in (0.1, 0.5, 0.9):
        cut = comp[: int(len(comp) * frac)]
        r = subprocess.run([sys.executable, "-m", "vmig", "ram", "--json", "--partial", "-"], input=cut,
                           capture_output=True, env=env)
        assert r.returncode == 1, r.stderr
        assert b"gzip data ends early" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        doc = json.loads(r.stdout)
        assert 0 < doc["totals"]["pages_sent"] <= full_ram["totals"]["pages_sent"]
        r2 = subprocess.run([sys.executable, "-m", "vmig", "ram", "-"], input=cut, capture_output=True, env=env)
        assert r2.returncode == 2
