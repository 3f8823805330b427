"""Byte sizes: the binary unit constants, QEMU's size syntax and human-readable sizes.

``parse_size`` follows QEMU's ``qemu_strtosz`` (``util/cutils.c``): a decimal or ``0x`` number
with an optional ``B``/``k``/``M``/``G``/``T``/``P``/``E`` suffix (binary multiples, any case),
a fraction only with a suffix, the result below 2^64; the error text is that of QEMU's option
visitor for a size property.
"""

from __future__ import annotations

import re

from vmig.errors import DeviceError, VmigError

__all__ = ["KiB", "MiB", "GiB", "TiB", "parse_size", "human_size", "exact_size"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_SUFFIX = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": 1 << 50, "E": 1 << 60}
_SIZE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?)\s*([bBkKmMgGtTpPeE]?)")


def parse_size(text: str, name: str = "size", *, error: type[VmigError] = DeviceError) -> int:
    """``qemu_strtosz``: a number with an optional k/M/G/T/P/E suffix (fractions allowed), in bytes.

    Raises:
        ``error`` (DeviceError by default): QEMU's visitor message for property ``name``.
    """
    m = _SIZE.fullmatch(text)
    err = (
        f"Parameter '{name}' expects a non-negative number below 2^64\n"
        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
        "and exabytes, respectively."
    )
    if not m:
        raise error(err)
    num, suf = m.group(1), m.group(2).upper()
    mult = _SUFFIX[suf]
    if num.lower().startswith("0x"):
        val = int(num, 16) * (mult if suf and suf != "B" else 1)
    elif "." in num:
        if not suf or suf == "B":
            raise error(err)
        whole, frac = num.split(".")
        frac = frac or "0"
        val = int(whole) * mult + (int(frac) * mult) // (10 ** len(frac))
    else:
        val = int(num) * mult
    if val >= 1 << 64:
        raise error(err)
    return val


def human_size(n: int) -> str:
    """``n`` bytes rounded to one decimal in the largest binary unit below it (``1.5 MiB``)."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    raise AssertionError("unreachable")


def exact_size(n: int) -> str:
    """``n`` bytes in the largest of GiB/MiB/KiB that divides it exactly, else bytes (``2 MiB``)."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"
