"""Benchmarks: speed, memory and agreement measurements (benchmark.py) and FLOP counts (flops.py).
Map: docs/package-map.md."""
