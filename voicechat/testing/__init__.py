"""Randomly initialised models in the real on-disk formats, for tests and benchmarks."""
