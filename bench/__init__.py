"""Benchmarks: each prints a table and writes bench/results/<name>.json, comparing side by side
in one run."""
