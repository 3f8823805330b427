"""``vmig check STREAM --dest-capture OTHER`` against real QEMU loads on every ordered pair of
captures: the QEMU 7.2 stream fixtures (``fixtures/``, all but the return path) into QEMU 7.2, and
QEMU 10.0 captures made here (trixie chroot; small paused VMs whose framing differs: default,
``send-section-footer=off``, ``send-configuration=off``, ``suppress-vmdesc=on``, postcopy, q35,
pc-paused's command line on 10.0 with its 7.2 machine type, and a running VM's
precopy) into QEMU 10.0, plus every pair across the two versions (each loaded into the QEMU that
wrote OTHER).

The destination is started with OTHER's command line from its manifest (argv with its
``-global``s, ``postcopy-ram`` when its capabilities enable it), STREAM is loaded, and QEMU's
error lines must be exactly the lines vmig prints after "would fail to load:" (and "ok" when QEMU
loads). Each capture is decompressed once per session into one folder, next to its manifest, so
that ``--dest-capture`` finds ``OTHER.json`` as it does beside a fixture.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu10 import capture, trixie_or_fail

from vmig.cli import main
from vmig.testing import fixtures
from vmig.testing.qemu import load_stream, require_qemu

pytestmark = pytest.mark.qemu

STREAMS_72 = [n for n in fixtures.names() if fixtures.manifest(n)["kind"] in ("precopy", "postcopy")]
STREAMS_10 = ["pc-10.0-paused", "pc-10.0-nofooter", "pc-10.0-noconfig", "pc-10.0-novmdesc",
              "pc-10.0-postcopy", "q35-10.0-smp2", "pc-paused-on-10.0", "pc-10.0-running"]


@dataclass(frozen=True)
class Capture:
    path: Path  # the raw stream; its manifest lies beside it (NAME.bin, NAME.json)
    args: list[str]  # the VM's command line (placeholders resolved)
    postcopy: bool  # its manifest enables postcopy-ram
    chroot: Path | None  # the QEMU 10.0 chroot, or None for the installed QEMU 7.2


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dest-pairs").resolve()


def _capture(workdir: Path, name: str, stream: bytes | Path, man: dict, chroot: Path | None) -> Capture:
    path = workdir / f"{name}.bin"
    if isinstance(stream, Path):
        shutil.copyfile(stream, path)
    else:
        path.write_bytes(stream)
    (workdir / f"{name}.json").write_text(json.dumps(man))
    return Capture(path, fixtures.resolve_args(man["argv"], workdir),
                   bool(man.get("capabilities", {}).get("postcopy-ram")), chroot)


@pytest.fixture(scope="session")
def captures_72(workdir: Path) -> dict[str, Capture]:
    require_qemu()
    return {n: _capture(workdir, n, fixtures.load(n), fixtures.manifest(n), None) for n in STREAMS_72}


@pytest.fixture(scope="session")
def captures_10(workdir: Path) -> dict[str, Capture]:
    root = trixie_or_fail()
    out = {}
    for n in STREAMS_10:
        path, _ = capture(n)
        out[n] = _capture(workdir, n, path, json.loads(path.with_suffix(".json").read_text()), root)
    return out


def _agrees(capsys: pytest.CaptureFixture[str], workdir: Path, stream: Capture, dest: Capture) -> None:
    res = load_stream(dest.args, stream.path, workdir=workdir, postcopy=dest.postcopy, chroot=dest.chroot)
    capsys.readouterr()
    rc = main(["check", str(stream.path), "--dest-capture", str(dest.path)])
    out, err = capsys.readouterr()
    if res.ok:
        assert rc == 0 and out.strip().endswith(": ok"), err
        return
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    assert qemu_lines, res.stderr
    assert rc == 1, out
    assert "would fail to load:\n" in err, err
    predicted = err.strip().split("would fail to load:\n", 1)[1].splitlines()
    assert predicted == qemu_lines


@pytest.mark.parametrize(("stream", "dest"), list(itertools.product(STREAMS_72, STREAMS_72)))
def test_qemu_7_2_pairs(captures_72, workdir, capsys, stream, dest):
    _agrees(capsys, workdir, captures_72[stream], captures_72[dest])


@pytest.mark.parametrize(("stream", "dest"), list(itertools.product(STREAMS_10, STREAMS_10)))
def test_qemu_10_0_pairs(captures_10, workdir, capsys, stream, dest):
    _agrees(capsys, workdir, captures_10[stream], captures_10[dest])


@pytest.mark.parametrize(("stream", "dest"), [*itertools.product(STREAMS_72, STREAMS_10),
                                              *itertools.product(STREAMS_10, STREAMS_72)])
def test_cross_version_pairs(captures_72, captures_10, workdir, capsys, stream, dest):
    both = {**captures_72, **captures_10}
    _agrees(capsys, workdir, both[stream], both[dest])
