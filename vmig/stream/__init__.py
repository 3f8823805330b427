"""The QEVM migration stream: constants, framing, sans-I/O decoder and encoder, RAM, vmstate."""
