"""The fuzzing command (``bench/fuzz.py``): a short seeded campaign finds no failure, and the
harness itself reports what it is there to report (a planted crash, a hang, a changed input)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "bench" / "fuzz.py"


def _load():
    spec = importlib.util.spec_from_file_location("vmig_bench_fuzz", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fuzz():
    return _load()


@pytest.fixture(scope="module")
def seeds(fuzz):
    return fuzz.load_seeds()


def test_seeds_are_reduced_real_captures(fuzz, seeds) -> None:
    from vmig.io.decoding import decode_bytes
    from vmig.stream.events import DeviceState

    whole = [s for s in seeds if "#" not in s.name]
    assert [s.name for s in whole] == list(fuzz.SEED_FILES)
    for s in whole:
        if s.rp:
            continue
        assert len(s.data) < 400_000, s.name
        decode_bytes(s.data)  # a reduced capture is still a valid stream
        assert len(s.offsets) > 30
        # its slices are valid streams too, and together hold each of its device sections once
        parts = [p for p in seeds if p.name.startswith(s.name + "#")]
        assert len(parts) >= 2, s.name
        got = []
        for p in parts:
            assert p.capture == s.name and len(p.data) < len(s.data)
            got += [(e.idstr, e.instance_id, bytes(e.payload)) for e in decode_bytes(p.data)
                    if isinstance(e, DeviceState)]
        want = [(e.idstr, e.instance_id, bytes(e.payload)) for e in decode_bytes(s.data)
                if isinstance(e, DeviceState)]
        assert sorted(got) == sorted(want), s.name


def test_inputs_are_reproducible_and_mutated(fuzz, seeds) -> None:
    a = [fuzz.build_input(5, i, seeds) for i in range(200)]
    b = [fuzz.build_input(5, i, seeds) for i in range(200)]
    assert [x[2] for x in a] == [x[2] for x in b]
    assert sum(x[2] != x[0].data for x in a) >= 190
    assert {x[1] for x in a} >= set(fuzz.COMMANDS)


def test_harness_reports_crashes_hangs_and_modified_inputs(fuzz, seeds, tmp_path, monkeypatch) -> None:
    import vmig.cli.sections as sections

    seed = seeds[0]
    work = str(tmp_path)
    assert fuzz.run_one("sections", seed.data, work, seed, 30) is None

    def crash(args):
        raise IndexError("planted")

    monkeypatch.setattr(sections, "handler", crash)
    monkeypatch.setenv("VMIG_DEBUG", "1")
    f = fuzz.run_one("sections", seed.data, work, seed, 30)
    # the planted function is not vmig's: the innermost vmig frame is the CLI's call of it
    assert f["type"] == "IndexError" and f["rc"] == 3
    assert f["where"].startswith("vmig/cli/__init__.py"), f

    def hang(args):
        while True:
            pass

    import signal

    signal.signal(signal.SIGALRM, fuzz._on_alarm)
    monkeypatch.setattr(sections, "handler", hang)
    f = fuzz.run_one("sections", seed.data, work, seed, 0.5)
    assert f["type"] == "Timeout"

    def scribble(args):
        with open(args.stream, "ab") as fh:
            fh.write(b"x")
        return 0

    monkeypatch.setattr(sections, "handler", scribble)
    f = fuzz.run_one("sections", seed.data, work, seed, 30)
    assert f["type"] == "InputModified"

    from vmig.errors import StreamError, UsageError

    def unnamed(args):  # a report that does not say which file it is about
        raise UsageError("something is wrong")

    monkeypatch.setattr(sections, "handler", unnamed)
    f = fuzz.run_one("sections", seed.data, work, seed, 30)
    assert f["type"] == "ErrorLine" and f["rc"] == 2

    def stream_error(args):  # a stream error without a path: the CLI names the input
        raise StreamError("bad \x1b byte", offset=3)

    monkeypatch.setattr(sections, "handler", stream_error)
    assert fuzz.run_one("sections", seed.data, work, seed, 30) is None


def test_an_interrupted_campaign_removes_its_workers_folders() -> None:
    """SIGTERM stops the workers (killed) and the campaign still removes every folder they
    wrote in."""
    import signal
    import time

    fz = _load()
    base = Path(fz._work_base() or os.environ.get("TMPDIR", "/tmp"))
    before = {p.name for p in base.glob("vmig-fuzz-*")}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, str(FUZZ), "--seed", "3", "--seconds", "120", "--jobs", "2",
                          "--report-every", "0.5"], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    p.stdout.readline()  # a progress report: the workers are running
    during = {q.name for q in base.glob("vmig-fuzz-*")} - before
    assert during, "the campaign's work folder"
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    out = p.stdout.read()
    assert p.wait(timeout=60) == 1
    assert json.loads(out.strip().splitlines()[-1])["interrupted"] is True
    assert not ({q.name for q in base.glob("vmig-fuzz-*")} & during)


def test_destination_consumers(fuzz, seeds, tmp_path, monkeypatch) -> None:
    """The unmutated captures load into destinations configured from their manifests; an
    exception other than a VmigError from the destination is a failure, a VmigError is not."""
    from vmig.errors import MigrationError
    from vmig.migration import destination

    work = str(tmp_path)
    for seed in seeds:
        if "#" not in seed.name and not seed.rp:
            for cmd in ("dest", "dest-open"):
                assert fuzz.run_one(cmd, seed.data, work, seed, 60) is None, (cmd, seed.name)
    cfg = fuzz.dest_config("fixtures/q35-numa.bin.lz4")
    assert cfg.argv and cfg.kw["machine_type"] == "pc-q35-7.2" and cfg.ram_bytes > 1 << 30
    seed = next(s for s in seeds if s.name == "fixtures/q35-numa.bin.lz4")

    def refuse(self, ev):
        raise MigrationError("refused")

    monkeypatch.setattr(destination.Destination, "feed", refuse)
    assert fuzz.run_one("dest", seed.data, work, seed, 60) is None

    def crash(self, ev):
        raise IndexError("planted")

    monkeypatch.setattr(destination.Destination, "feed", crash)
    f = fuzz.run_one("dest-open", seed.data, work, seed, 60)
    assert f["type"] == "IndexError" and f["cmd"] == "dest-open", f


@pytest.mark.fuzz
def test_seeded_campaign_has_no_failure() -> None:
    """A 2-minute seeded campaign on 2 workers: no failure, and a meaningful number of inputs
    (the campaign runs several hundred inputs a second on this project's 2-core machine)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(FUZZ), "--seed", "20261207", "--seconds", "120",
                        "--jobs", "2", "--report-every", "1000"],
                       capture_output=True, text=True, env=env, timeout=900)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failures"] == 0, r.stdout[-3000:]
    assert r.returncode == 0
    assert summary["inputs"] >= 10_000, summary  # the campaign really ran, at speed
