"""vmig: QEMU migration streams and the virtio-mem device, in Python.

Subpackages:
  vmig.stream     the QEVM stream codec (sans-I/O decoder/encoder, RAM records, vmstate)
  vmig.device     the virtio-mem device model
  vmig.cli        the ``vmig`` command line (thin layer over the library)
  vmig.testing    pytest helpers and a real-QEMU driver for round-trip tests
"""

__version__ = "0.1.0"
