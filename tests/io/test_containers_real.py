"""Real containers (fixtures/containers, made by fixtures/capture_containers.py) and compressed
captures read by every command as the plain stream they hold.

* qcow2 with two ``savevm`` snapshots (QEMU 7.2): ``info memory-devices --json`` of each snapshot
  equals what QMP ``query-memory-devices`` answered when it was taken; ``ram``, ``check``,
  ``info memory-devices`` equal those of the plain stream QEMU's migration wrote of the same
  stopped VM; the snapshot list equals ``qemu-img snapshot -l``; v2 images (``qemu-img amend
  -o compat=0.10``) read the same.
* libvirt 9.0 ``virsh save`` images in every format it wrote: every command gives the same result as
  on the plain stream cut out at ``92 + data_len`` (the header layout) and decompressed by the
  format's own command-line tool; ``info memory-devices`` equals libvirt's QMP answer.
* gzip / xz / bzip2 / zstd / lzop / lz4 compressions of a real capture, as files and from a pipe.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import lz4.frame
import pytest

from vmig.cli import main
from vmig.testing import fixtures as fx

CDIR = fx.FIXTURES_DIR / "containers"
REPO = Path(__file__).resolve().parents[2]
QCOW2 = json.loads((CDIR / "savevm-2snap.json").read_text())
LIBVIRT = json.loads((CDIR / "libvirt-save.json").read_text())
WRITTEN = [f for f, e in LIBVIRT["images"].items() if e.get("written", True)]
TOOLS = {"gzip": ["gzip", "-dc"], "bzip2": ["bzip2", "-dc"], "xz": ["xz", "-dc"], "lzop": ["lzop", "-dc"],
         "zstd": ["zstd", "-dc"]}


def _need_tool(name: str) -> None:
    """The format's own command-line tool (installed by scripts/test): fail under CI, else skip."""
    if shutil.which(name) is None:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"{name} program missing")


def _unlz4(name: str, dst: Path) -> Path:
    dst.write_bytes(lz4.frame.decompress((CDIR / name).read_bytes()))
    return dst


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _results(capsys, path: str, *extra: str) -> dict[str, str]:
    """What each reading command prints for ``path`` (names of the input removed)."""
    res = {}
    for cmd in (["info", "memory-devices", "--json"], ["ram", "--json"], ["analyze"], ["check"],
                ["sections", "--json"]):
        head = 2 if cmd[0] == "info" else 1
        rc, out, err = _run(capsys, *cmd[:head], path, *cmd[head:], *extra)
        assert rc == 0, (cmd, err)
        res[" ".join(cmd[:head])] = out.replace(path, "PATH")
    return res


# ------------------------------------------------------------------------------------ qcow2

@pytest.fixture(scope="module")
def qcow2_image(tmp_path_factory) -> Path:
    return _unlz4(QCOW2["image"]["file"], tmp_path_factory.mktemp("qcow2") / "disk.qcow2")


@pytest.mark.parametrize("snap", QCOW2["snapshots"], ids=[s["name"] for s in QCOW2["snapshots"]])
def test_savevm_snapshot_memory_devices_equal_qmp_at_capture(snap, qcow2_image, capsys):
    rc, out, err = _run(capsys, "info", "memory-devices", str(qcow2_image), "--snapshot", snap["name"],
                        "--json", "--id", "0000:00:02.0=vm0")
    assert rc == 0, err
    assert json.loads(out) == snap["query-memory-devices"]
    assert snap["query-memory-devices"][0]["data"]["size"] == snap["requested-size"]


@pytest.mark.parametrize("snap", QCOW2["snapshots"], ids=[s["name"] for s in QCOW2["snapshots"]])
def test_savevm_snapshot_reads_like_the_migrated_stream_of_the_same_vm(snap, qcow2_image, tmp_path, capsys):
    plain = _unlz4(snap["migrate"]["file"], tmp_path / "plain.bin")
    inside = _results(capsys, str(qcow2_image), "--snapshot", snap["name"])
    outside = _results(capsys, str(plain))
    assert inside["info memory-devices"] == outside["info memory-devices"]
    ram_in, ram_out = json.loads(inside["ram"]), json.loads(outside["ram"])
    assert ram_in["totals"] == ram_out["totals"]
    assert ram_in["blocks"] == ram_out["blocks"]
    assert inside["check"] == outside["check"] == "PATH: ok\n"
    # separate writes of the same VM (RAM split into passes differently, timers): the same devices
    keys = ("idstr", "instance_id", "version_id")
    rows_in = [tuple(r[k] for k in keys) for r in json.loads(inside["sections"]) if r["type"] == "section_full"]
    rows_out = [tuple(r[k] for k in keys) for r in json.loads(outside["sections"]) if r["type"] == "section_full"]
    assert rows_in == rows_out and len(rows_in) > 20
    assert json.loads(inside["analyze"]).keys() == json.loads(outside["analyze"]).keys()


def test_savevm_snapshot_by_id_and_listing_like_qemu_img(qcow2_image, capsys, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")  # qemu-img printed local time on a UTC host
    time.tzset()
    try:
        rc, out, _ = _run(capsys, "info", str(qcow2_image))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert rc == 0
    listing = "\n".join(line[2:] for line in out.splitlines() if line.startswith("  "))
    assert listing.strip("\n") == QCOW2["qemu-img-snapshot-l"].strip("\n")
    by_id = _run(capsys, "info", "memory-devices", str(qcow2_image), "--snapshot", "2", "--json")[1]
    by_name = _run(capsys, "info", "memory-devices", str(qcow2_image), "--snapshot", "snap-100m", "--json")[1]
    assert by_id == by_name


def test_savevm_several_snapshots_need_a_choice(qcow2_image, capsys):
    rc, out, err = _run(capsys, "check", str(qcow2_image))
    assert rc == 2
    assert "2 snapshots" in err and "snap-300m" in err and "snap-100m" in err and "--snapshot" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, "ram", str(qcow2_image), "--snapshot", "nope")
    assert rc == 2 and "no snapshot 'nope'" in err and "1 'snap-300m'" in err


def test_qcow2_v2_image_reads_the_same(qcow2_image, tmp_path, capsys):
    _need_tool("qemu-img")
    v2 = tmp_path / "v2.qcow2"
    shutil.copy(qcow2_image, v2)
    subprocess.run(["qemu-img", "amend", "-f", "qcow2", "-o", "compat=0.10", str(v2)], check=True)
    assert struct.unpack(">I", v2.read_bytes()[4:8])[0] == 2
    for snap in QCOW2["snapshots"]:
        out = _run(capsys, "info", "memory-devices", str(v2), "--snapshot", snap["name"], "--json",
                   "--id", "0000:00:02.0=vm0")[1]
        assert json.loads(out) == snap["query-memory-devices"]


@pytest.mark.parametrize("snap", QCOW2["qemu-img-info"]["snapshots"], ids=lambda s: s["name"])
def test_snapshot_stream_has_qemu_img_size_and_reads_like_its_unwrapped_copy(snap, qcow2_image, tmp_path, capsys):
    """The VM state vmig reads is as long as ``qemu-img info`` says, and every command gives on the
    image what it gives on the stream ``vmig convert`` wrote out of it."""
    plain = tmp_path / "plain.bin"
    assert _run(capsys, "convert", str(qcow2_image), str(plain), "--snapshot", snap["id"])[0] == 0
    assert plain.stat().st_size == snap["vm-state-size"]
    inside = _results(capsys, str(qcow2_image), "--snapshot", snap["name"])
    outside = _results(capsys, str(plain))
    assert inside == outside


def test_convert_unwraps_a_snapshot(qcow2_image, tmp_path, capsys):
    snap = QCOW2["snapshots"][0]
    for comp, magic in (("none", b"QEVM"), ("lz4", b"\x04\x22\x4d\x18"), ("zstd", b"\x28\xb5\x2f\xfd")):
        out = tmp_path / f"out-{comp}"
        assert _run(capsys, "convert", str(qcow2_image), str(out), "--snapshot", snap["name"],
                    "--compress", comp)[0] == 0
        assert out.read_bytes()[:4] == magic
        got = json.loads(_run(capsys, "info", "memory-devices", str(out), "--json", "--id", "0000:00:02.0=vm0")[1])
        assert got == snap["query-memory-devices"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-lz4", "out-none", "out-zstd"]  # no temp left


# ------------------------------------------------------------------------------------ libvirt

def _plain_from_libvirt(img: Path, fmt: str, dst: Path) -> Path:
    data = img.read_bytes()
    assert data[:16] == b"LibvirtQemudSave"
    data_len = struct.unpack_from("<I", data, 20)[0]
    payload = data[92 + data_len:]
    if fmt != "raw":
        payload = subprocess.run(TOOLS[fmt], input=payload, capture_output=True, check=True).stdout
    dst.write_bytes(payload)
    return dst


def test_libvirt_wrote_every_format_but_zstd():
    """libvirt 9.0 here writes raw, gzip, bzip2, xz and lzop images; zstd is refused."""
    assert sorted(WRITTEN) == ["bzip2", "gzip", "lzop", "raw", "xz"]
    assert "Invalid save image format" in LIBVIRT["images"]["zstd"]["virsh_save_output"]


@pytest.mark.parametrize("fmt", WRITTEN)
def test_libvirt_save_image_reads_like_the_stream_inside(fmt, tmp_path, capsys):
    if fmt != "raw":
        _need_tool(TOOLS[fmt][0])
    entry = LIBVIRT["images"][fmt]
    img = _unlz4(entry["file"], tmp_path / f"{fmt}.save")
    plain = _plain_from_libvirt(img, fmt, tmp_path / "plain.bin")
    inside = _results(capsys, str(img))
    outside = _results(capsys, str(plain))
    assert inside == outside
    qmp = entry["query-memory-devices"]
    got = json.loads(_run(capsys, "info", "memory-devices", str(img), "--json",
                          "--id", f"0000:00:02.0={qmp[0]['data']['id']}")[1])
    want = json.loads(json.dumps(qmp))
    for d in (got, want):
        for dev in d:
            dev["data"].pop("memdev")  # libvirt names the backend memvirtiomem0; the stream names its RAMBlock
    assert got == want
    rc, out, _ = _run(capsys, "info", str(img), "--json")
    doc = json.loads(out)
    lv = doc["containers"][0]
    assert lv["kind"] == "libvirt" and lv["domain"] == "vmig-save" and lv["compression"] == fmt
    assert [c["kind"] for c in doc["containers"]] == ["libvirt"] + ([] if fmt == "raw" else [fmt])
    assert lv["data_len"] == struct.unpack_from("<I", img.read_bytes(), 20)[0]
    assert doc["stream"]["machine"] == "pc-i440fx-7.2"
    rc, out, _ = _run(capsys, "info", str(img), "--xml")
    assert rc == 0 and out.startswith("<domain type='qemu'") and "<memory model='virtio-mem'>" in out


# ------------------------------------------------------------------------------------ compressed

COMPRESSORS = {"gzip": ["gzip", "-c"], "xz": ["xz", "-T1", "-c"], "bzip2": ["bzip2", "-c"],
               "zstd": ["zstd", "-q", "-c"], "lzop": ["lzop", "-c"], "lz4": None}


@pytest.fixture(scope="module")
def guest_stream(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("plain") / "pc-guest.bin"
    p.write_bytes(fx.load("pc-guest"))
    return p


@pytest.mark.parametrize("fmt", list(COMPRESSORS))
def test_compressed_capture_file_and_pipe(fmt, guest_stream, tmp_path, capsys):
    data = guest_stream.read_bytes()
    if COMPRESSORS[fmt] is None:
        comp = lz4.frame.compress(data)
    else:
        _need_tool(COMPRESSORS[fmt][0])
        comp = subprocess.run(COMPRESSORS[fmt], input=data, capture_output=True, check=True).stdout
    f = tmp_path / "capture.any"
    f.write_bytes(comp)
    assert _results(capsys, str(f)) == _results(capsys, str(guest_stream))
    doc = json.loads(_run(capsys, "info", str(f), "--json")[1])
    assert [c["kind"] for c in doc["containers"]] == [fmt]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    piped = subprocess.run([sys.executable, "-m", "vmig", "ram", "--json", "-"], input=comp,
                           capture_output=True, env=env)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == json.loads(_run(capsys, "ram", str(guest_stream), "--json")[1])
