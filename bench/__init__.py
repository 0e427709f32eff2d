"""Benchmarks: each prints its figures, the last line one JSON object (README, Benchmarks)."""
