"""Emulated devices reached through MMIO (and, later, port I/O)."""
