"""Command line: one verb per module, all logic in the library."""
