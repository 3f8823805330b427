"""``vmig check STREAM --dest-capture OTHER`` against real QEMU 7.2 on every pair of the captures
whose framing differs (configuration section, section footers, vmdesc, postcopy): the
destination is started with OTHER's command line from its manifest (argv with its ``-global``s,
``postcopy-ram`` when its capabilities enable it), STREAM is loaded, and QEMU's error lines
must be exactly the lines vmig prints after "would fail to load:" (and "ok" when QEMU loads)."""

from __future__ import annotations

import itertools

import pytest

from vmig.cli import main
from vmig.testing import fixtures
from vmig.testing.qemu import load_stream

pytestmark = pytest.mark.qemu
NAMES = ("pc-paused", "pc-nofooter", "pc-noconfig", "pc-novmdesc", "postcopy-main")


@pytest.mark.parametrize(("stream", "dest"), list(itertools.product(NAMES, NAMES)))
def test_framing_prediction_matches_qemu(qemu_bin, lab_dir, capsys, stream, dest):
    man = fixtures.manifest(dest)
    args = fixtures.resolve_args(man["argv"], lab_dir)
    postcopy = bool(man.get("capabilities", {}).get("postcopy-ram"))
    res = load_stream(args, fixtures.load(stream), workdir=lab_dir, postcopy=postcopy)
    capsys.readouterr()
    rc = main(["check", str(fixtures.path(stream)), "--dest-capture", str(fixtures.path(dest))])
    out, err = capsys.readouterr()
    if res.ok:
        assert rc == 0 and out.strip().endswith(": ok"), err
        return
    qemu_lines = [ln.split(": ", 1)[1] for ln in res.stderr.splitlines() if ln.startswith("qemu-system")]
    assert qemu_lines, res.stderr
    assert rc == 1
    predicted = err.strip().split("would fail to load:\n", 1)[1].splitlines()
    assert predicted == qemu_lines
