"""Helpers for tests of migration streams: real-QEMU driver and pytest fixtures."""
