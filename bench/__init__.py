"""Benchmarks behind `vidx bench ...` (outside the runtime path)."""
