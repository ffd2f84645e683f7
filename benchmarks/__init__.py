"""benchmarks (work in progress)."""
