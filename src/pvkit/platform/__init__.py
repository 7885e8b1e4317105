"""Boards: where machine, backend, ABI, services, devices and discovery are put together."""
