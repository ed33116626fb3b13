"""Benchmarks for tidings: run `python -m bench --help` to list them."""
