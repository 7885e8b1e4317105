"""PV services: one module each, arch- and backend-neutral."""
