"""vCPU engines. Only this package imports Unicorn."""
