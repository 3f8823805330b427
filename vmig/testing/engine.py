"""Engine set-ups for tests: a migration source rebuilt from a real capture.

``from_capture`` is :func:`vmig.migration.vm.open_capture` (what ``vmig migrate`` uses): the
capture's events, its RAM as a :class:`~vmig.migration.ram.GuestRam`, the device-model machine
of its command line with the virtio-mem state the capture carried, and a ready
:class:`~vmig.migration.source.PrecopySource` whose virtio-mem sections come from the models and
whose notifiers keep unplugged blocks out of the stream::

    m = from_capture(fixtures.path("pc-guest"), fixtures.manifest("pc-guest")["argv"])
    data = m.source.setup() + m.source.iterate() + m.source.complete()
"""

from __future__ import annotations

from vmig.migration.vm import CapturedVm as EngineSetup
from vmig.migration.vm import open_capture as from_capture

__all__ = ["EngineSetup", "from_capture"]
