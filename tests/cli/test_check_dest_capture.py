"""``vmig check --dest-capture OTHER`` predicts what QEMU 7.2 says when the stream is loaded into
the VM that wrote OTHER (same command line): both are run on the same pairs of captures."""

from __future__ import annotations

import pytest

from vmig.cli import main
from vmig.testing import fixtures
from vmig.testing.qemu import load_stream


@pytest.mark.parametrize("stream, dest", [
    ("pc-paused", "q35-numa"),   # machine type
    ("pc-guest", "pc-paused"),   # a section the destination lacks (serial)
    ("pc-paused", "pc-guest"),   # loads
    ("q35-numa", "pc-guest"),    # machine type the other way round
])
def test_dest_capture_prediction_matches_qemu(qemu_bin, lab_dir, capsys, stream, dest):
    args = fixtures.resolve_args(fixtures.manifest(dest)["argv"], lab_dir)
    res = load_stream(args, fixtures.load(stream), workdir=lab_dir)
    rc = main(["check", str(fixtures.path(stream)), "--dest-capture", str(fixtures.path(dest))])
    out, err = capsys.readouterr()
    if res.ok:
        assert rc == 0 and out.strip().endswith(": ok")
        return
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    assert rc == 1
    assert err.strip().endswith("would fail to load: " + " / ".join(qemu_lines))
