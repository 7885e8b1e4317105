"""Debugging guests: a gdb remote stub on top of the VM's control plane (docs/debugging.md)."""
