"""Discovery data (device tree; later CPUID tables, ACPI) computed from the VM's services."""
