"""Bundled schema sets of QEMU 10.0 machine types, and ``--desc-from`` refusals, on real captures.

The sets ``pc-i440fx-10.0``, ``pc-q35-10.0`` and ``pc-i440fx-9.2`` were generated from QEMU 10.0
(the trixie chroot) by scripts/gen_machine_schemas.py. Here QEMU 10.0 writes streams without a
description (postcopy, ``suppress-vmdesc=on``): vmig must decode them with no ``--desc-from``,
and every device section must decode to the same state as with the description of a precopy
capture of the same command line (QEMU's own description of that VM).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qemu10 import capture

from vmig.cli import main
from vmig.vmstate.machines import available_machines, load_schema_set

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "fixtures"

# stream without a description -> (machine type, precopy capture of the same command line)
NO_DESC = {
    "pc-10.0-postcopy": ("pc-i440fx-10.0", "pc-10.0-paused"),
    "pc-10.0-novmdesc": ("pc-i440fx-10.0", "pc-10.0-paused"),
    "q35-10.0-novmdesc": ("pc-q35-10.0", "q35-10.0-smp2"),
    "pc-9.2-novmdesc": ("pc-i440fx-9.2", "pc-9.2-paused"),
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_sets_are_bundled_from_qemu_10() -> None:
    for machine in ("pc-i440fx-10.0", "pc-q35-10.0", "pc-i440fx-9.2"):
        assert machine in available_machines()
        doc = json.loads((REPO / "vmig" / "vmstate" / "machines" / f"{machine}.json").read_text())
        assert doc["machine"] == machine and doc["qemu_version"].startswith("10.0.")
        assert load_schema_set(machine) is not None


def _states(doc: dict) -> dict:
    return {(s["idstr"], s["instance_id"]): s.get("state") for s in doc["sections"] if s.get("kind") == "device"}


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NO_DESC))
def test_streams_without_description_decode_with_bundled_sets(capsys, name: str) -> None:
    machine, reference = NO_DESC[name]
    path, _ = capture(name)
    ref_path, _ = capture(reference)
    rc, out, err = run(capsys, "sections", str(path), "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert rows[-1]["type"] == "eof"  # no trailer
    if "postcopy" in name:
        assert any(r.get("command") == "PACKAGED" for r in rows)
    rc, out, err = run(capsys, "analyze", str(path))
    assert rc == 0, err
    doc = json.loads(out)
    devices = [s for s in doc["sections"] if s.get("kind") == "device"]
    assert devices
    used = {json.dumps(s.get("description")) for s in devices}
    assert json.dumps(f"builtin:{machine}") in used
    rc, out, err = run(capsys, "analyze", str(path), "--desc-from", str(ref_path))
    assert rc == 0, err
    assert _states(doc) == _states(json.loads(out))


@pytest.mark.qemu
@pytest.mark.slow
def test_desc_from_of_another_machine_type_is_refused(capsys) -> None:
    path, _ = capture("pc-10.0-novmdesc")
    rc, out, err = run(capsys, "analyze", str(path), "--desc-from", str(FIX / "pc-paused.bin.lz4"))
    assert rc == 2
    (line,) = err.strip().splitlines()
    assert str(path) in line and "pc-i440fx-7.2" in line and "pc-i440fx-10.0" in line
    assert "machine type" in line


@pytest.mark.qemu
@pytest.mark.slow
def test_desc_from_of_another_qemu_version_is_refused(capsys) -> None:
    """Same machine type (pc-i440fx-7.2), written by QEMU 10.0 and by QEMU 7.2."""
    newer, _ = capture("pc-7.2-on-10.0")
    older = FIX / "pc-paused.bin.lz4"
    for stream, other in ((older, newer), (newer, older)):
        rc, out, err = run(capsys, "sections", str(stream), "--desc-from", str(other))
        assert rc == 2
        (line,) = err.strip().splitlines()
        assert "another QEMU version" in line and str(other) in line


def test_desc_from_of_the_same_vm_is_accepted(capsys) -> None:
    rc, out, err = run(capsys, "sections", str(FIX / "postcopy-main.bin.lz4"), "--desc-from",
                       str(FIX / "postcopy-desc.bin.lz4"))
    assert rc == 0, err
    rc, out, err = run(capsys, "sections", str(FIX / "pc-novmdesc.bin.lz4"), "--desc-from",
                       str(FIX / "q35-numa.bin.lz4"))
    assert rc == 2 and "describes machine type pc-q35-7.2, the stream is pc-i440fx-7.2" in err
