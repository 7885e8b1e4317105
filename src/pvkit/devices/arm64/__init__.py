"""Arm64 board devices: the GICv2 and GICv3 interrupt controllers."""
