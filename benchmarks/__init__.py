"""Benchmarks: measurements, not tests. Run ``python -m benchmarks.engine``."""
