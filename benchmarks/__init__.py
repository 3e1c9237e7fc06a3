"""Benchmarks: JSON results in benchmarks/results/, ratios measured side by side in one run."""
