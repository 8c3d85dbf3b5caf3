"""Benchmarks for `make bench`; each measures against a bare baseline in the same run."""
