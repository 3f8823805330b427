"""``vmig diff`` compares device state semantically, on real captures.

* postcopy-desc and postcopy-main: the same VM command line migrated with precopy and with
  postcopy (QEMU 7.2): the device sections travel top level in one and packaged in the other,
  yet they compare field by field;
* the same VM on a pc-i440fx-10.0 and a pc-i440fx-7.2 machine type (QEMU 10.0 captures, and the
  QEMU 7.2 fixture): virtio-mem's early section (8.0+ machine types) merges into the device, so
  the virtio-mem device state shows no difference; what differs is the transport (10.0's MSI-X).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qemu10 import capture

from vmig.cli import main

FIX = Path(__file__).resolve().parents[2] / "fixtures"
VMEM = "0000:00:02.0/virtio-mem[0]"


def diff_json(capsys, *argv: str) -> dict:
    rc = main(["diff", *argv, "--json"])
    out, err = capsys.readouterr()
    assert rc in (0, 1), err
    return json.loads(out)


def test_precopy_and_postcopy_of_one_vm_compare_fields(capsys) -> None:
    doc = diff_json(capsys, str(FIX / "postcopy-desc.bin.lz4"), str(FIX / "postcopy-main.bin.lz4"))
    diffs = doc["differences"]
    # every section of one is in the other (packaged or not): no section-only entries
    assert [d for d in diffs if d["kind"] == "section"] == []
    assert doc["sections_compared"] >= 30
    fields = {d["path"]: d for d in diffs if d["kind"] == "field"}
    assert "cpu[0].env.eip" in fields  # two boots of one kernel: the vCPU stopped elsewhere
    assert all(isinstance(d["a"], int) and isinstance(d["b"], int) for p, d in fields.items()
               if p.startswith("cpu[0].env.regs"))
    # the virtio-mem device (plugged 416 MiB on both) is the same device state
    assert not [p for p in fields if p.startswith(VMEM + ".virtio.decoded.device")]
    rc = main(["diff", str(FIX / "postcopy-desc.bin.lz4"), str(FIX / "postcopy-main.bin.lz4")])
    text = capsys.readouterr().out
    assert rc == 1 and f"cpu[0].env.eip: {fields['cpu[0].env.eip']['a']:#x} -> " in text
    assert "more differences (--all lists them)" in text
    rc = main(["diff", str(FIX / "postcopy-desc.bin.lz4"), str(FIX / "postcopy-main.bin.lz4"), "--all"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(diffs) and "more differences" not in "\n".join(lines)


def test_ignore_leaves_out_paths(capsys) -> None:
    a, b = str(FIX / "postcopy-desc.bin.lz4"), str(FIX / "postcopy-main.bin.lz4")
    full = diff_json(capsys, a, b)["differences"]
    doc = diff_json(capsys, a, b, "--ignore", "cpu[0]", "timer[0].cpu_*")
    kept = doc["differences"]
    assert not [d for d in kept if d["path"].startswith("cpu[0].") or d["path"].startswith("timer[0].cpu_")]
    assert len(kept) == len([d for d in full if not (d["path"].startswith("cpu[0].")
                                                      or d["path"].startswith("timer[0].cpu_"))])


def _vmem_device_diffs(doc: dict) -> list[dict]:
    return [d for d in doc["differences"]
            if "virtio-mem-device-early" in d["path"] or d["path"].startswith(VMEM + ".virtio.decoded.device")
            or d["path"] == VMEM + ".virtio.decoded.config"]


@pytest.mark.qemu
@pytest.mark.slow
def test_same_vm_on_10_0_and_7_2_machine_types_has_no_virtio_mem_difference(capsys) -> None:
    old, _ = capture("pc-7.2-on-10.0")
    new, _ = capture("pc-10.0-paused")
    doc = diff_json(capsys, str(old), str(new))
    assert {"kind": "config", "path": "configuration.name", "a": "pc-i440fx-7.2", "b": "pc-i440fx-10.0"} \
        in doc["differences"]
    assert _vmem_device_diffs(doc) == []
    # what the 10.0 machine type really changes in the device: MSI-X vectors
    paths = {d["path"] for d in doc["differences"] if d["path"].startswith(VMEM)}
    assert VMEM + ".virtio.decoded.msix.table" in paths
    # and against QEMU 7.2 itself (fixture pc-paused: same device, 512 MiB guest)
    doc = diff_json(capsys, str(FIX / "pc-paused.bin.lz4"), str(new))
    assert _vmem_device_diffs(doc) == []
