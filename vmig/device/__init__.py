"""Device models (virtio-mem) and their migration state."""
