"""Runs of set entries in a bool array (a page bitmap, a virtio-mem block bitmap).

One convention everywhere: half-open ``[start, end)`` index pairs; callers that show
``(first, count)`` or byte ranges convert at their edge.
"""

from __future__ import annotations

from typing import Any

__all__ = ["true_runs"]


def true_runs(mask: Any) -> list[tuple[int, int]]:
    """Maximal runs of True in ``mask`` as half-open ``(start, end)`` index pairs, in order."""
    import numpy as np

    bits = np.asarray(mask, dtype=np.bool_)
    if bits.size == 0:
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([False], bits, [False])).view(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))
