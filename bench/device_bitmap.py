"""Benchmark: virtio-mem model bitmap operations on a 1 TiB device with 2 MiB blocks.

Claim checked: a 1 GiB request (512 blocks) — PLUG, STATE, UNPLUG through the 24-byte request
path — takes well under a millisecond each, because the bitmap is a numpy bool array and a range
is one slice (``any``/``all``/assignment), independent of the device size.
Also times UNPLUG_ALL on the full device and the wire-word packing of the 524288-block bitmap
(what pre_save hands to the vmstate encoder).

Run: ``python bench/device_bitmap.py`` (prints times; not part of the test suite).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from vmig.device.requests import RequestType, build_request
from vmig.device.virtio_mem import (
    MemoryBackend,
    VirtioMem,
    VirtioMemProperties,
)
from vmig.units import GiB, MiB
from vmig.vmstate.virtio_mem import bool_to_words

TiB = 1 << 40


def best(fn, repeat: int = 200) -> float:
    """Best wall time of ``fn`` over ``repeat`` runs, in microseconds."""
    t_best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t_best = min(t_best, time.perf_counter() - t0)
    return t_best * 1e6


def main() -> None:
    base = 0x10000000000
    dev = VirtioMem.realize(
        VirtioMemProperties(MemoryBackend("mem0", TiB), id="vm0", memaddr=base, block_size=2 * MiB,
                            requested_size=TiB - 256 * MiB)
    )
    nb = GiB // dev.block_size  # 512 blocks
    addr = base + 300 * GiB
    plug = build_request(RequestType.PLUG, addr, nb)
    unplug = build_request(RequestType.UNPLUG, addr, nb)
    state = build_request(RequestType.STATE, addr, nb)
    print(f"device: 1 TiB, block 2 MiB, {dev.nb_blocks} blocks; request: 1 GiB = {nb} blocks")

    def cycle() -> None:
        assert dev.handle_request(plug)[:2] == b"\x00\x00"
        assert dev.handle_request(unplug)[:2] == b"\x00\x00"

    t_cycle = best(cycle)
    dev.handle_request(plug)
    t_state = best(lambda: dev.handle_request(state))
    dev.handle_request(unplug)
    t_plug = best(lambda: (dev.handle_request(plug), dev.bitmap.__setitem__(slice(None), False),
                           setattr(dev, "size", 0)), 100)
    dev.drain_events()
    print(f"PLUG+UNPLUG 1 GiB (two requests): {t_cycle:8.1f} us")
    print(f"PLUG 1 GiB (+ reset of the bitmap): {t_plug:8.1f} us")
    print(f"STATE 1 GiB:                       {t_state:8.1f} us")
    dev.bitmap[::3] = True
    dev.size = int(dev.bitmap.sum()) * dev.block_size
    t_words = best(lambda: bool_to_words(dev.bitmap), 50)
    print(f"pack 524288-block bitmap to words: {t_words:8.1f} us")
    t_all = best(lambda: (dev.unplug_all(), dev.bitmap.__setitem__(slice(0, None, 3), True),
                          setattr(dev, "size", 1)), 50)
    print(f"UNPLUG_ALL (+ refill):             {t_all:8.1f} us")
    verdict = "OK" if max(t_cycle / 2, t_state) < 1000 else "TOO SLOW"
    print(f"1 GiB request under 1 ms: {verdict}")


if __name__ == "__main__":
    main()
