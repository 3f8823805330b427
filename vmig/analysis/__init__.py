"""What vmig tells about a decoded stream: RAM statistics, virtio-mem devices seen in it,
differences between two streams, extraction of guest memory."""
