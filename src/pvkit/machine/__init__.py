"""Machine layer: guest memory, vCPU power states, the VM run loop. Knows no ABI."""
