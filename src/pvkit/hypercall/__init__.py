"""Arch-neutral hypercall core: Call values, the ID namespace, policy and dispatch."""
