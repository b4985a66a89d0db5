"""Benchmarks: each bench/<name>/ package has a main() that prints a table and writes
bench/results/<name>.json."""
