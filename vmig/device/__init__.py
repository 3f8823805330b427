"""Device models (virtio-mem) and their migration state.

Sans-I/O re-implementation of QEMU's virtio-mem (hw/virtio/virtio-mem.c, 7.2 by default):

* :mod:`vmig.device.virtio_mem` — :class:`~vmig.device.virtio_mem.VirtioMem`, the device;
* :mod:`vmig.device.state` — :class:`~vmig.device.state.MigrationState`, the busy rule's input;
* :mod:`vmig.device.requests` — config / request / response wire structs (construct);
* :mod:`vmig.device.versions` — per-QEMU-version and machine-type behaviour;
* :mod:`vmig.device.guest` — a Linux-like guest driver simulator;
* :mod:`vmig.device.machine` — pc/q35 memory-device placement, QOM, QMP/HMP answers;
* :mod:`vmig.device.cmdline` — the model built from a QEMU command line;
* :mod:`vmig.device.sections` — load/re-encode virtio-mem sections of a decoded stream.

See README.md, section "The virtio-mem device model".
"""
