"""The arm64 engine: Unicorn glue, system registers, the architecture's constants."""
