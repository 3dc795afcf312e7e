"""Runtimes that start and stop configs: `local` (processes, CPU configs) and `docker` (compose)."""
