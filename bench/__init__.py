"""Benchmarks: each bench/<name>/ is a module run as `python -m bench.<name>`; it prints a table
and writes bench/results/<name>.json. `python -m bench` (make bench) runs them all."""
