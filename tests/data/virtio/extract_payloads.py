#!/usr/bin/env python3
"""Extract the virtio-mem section payloads of real captures into small test files.

Used once to make ``tests/data/virtio/*.payloads.lz4`` from captures of QEMU 10.0.13 (Debian
trixie, run from a chroot as in lab-notes.md) so the 9.2/10.0 layouts (early section, MSI-X)
are tested without that QEMU. Output per capture: an lz4 frame of JSON
``{"machine", "qemu", "query-memory-devices", "hmp", "sections": [{"idstr", "payload" (hex)}]}``.

Usage: python tests/data/virtio/extract_payloads.py CAPTURE.bin [...]  (each with CAPTURE.bin.json
holding "query-memory-devices" and "hmp" from the source QEMU at migration time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lz4.frame

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from vmig.stream.decoder import decode  # noqa: E402
from vmig.stream.events import Configuration, DeviceState  # noqa: E402


def main(argv: list[str]) -> int:
    out_dir = Path(__file__).resolve().parent
    for name in argv:
        src = Path(name)
        man = json.loads(Path(str(src) + ".json").read_text())
        events = decode(src.read_bytes())
        machine = next(e.name for e in events if isinstance(e, Configuration))
        sections = [
            {"idstr": e.idstr, "payload": bytes(e.payload).hex()}
            for e in events
            if isinstance(e, DeviceState) and "/virtio-mem" in e.idstr
        ]
        doc = {"machine": machine, "qemu": "10.0.13 (Debian trixie)", "argv": man["argv"],
               "query-memory-devices": man["query-memory-devices"], "hmp": man["hmp"],
               "sections": sections}
        dest = out_dir / (src.name[: -len(".bin")] + ".payloads.lz4")
        dest.write_bytes(lz4.frame.compress(json.dumps(doc).encode()))
        print(dest, dest.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
