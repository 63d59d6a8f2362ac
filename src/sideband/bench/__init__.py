"""Benchmarks behind `sideband bench`."""
