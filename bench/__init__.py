"""Benchmarks: `make bench` runs every section and merges the figures into bench/results/latest.json."""
