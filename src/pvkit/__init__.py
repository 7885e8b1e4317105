"""pvkit: a hypervisor built around the paravirtual interface."""

__version__ = "0.1.0"
