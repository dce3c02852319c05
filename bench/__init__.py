"""Benchmarks: kernel (bench_kernel.py) and end-to-end; shared plumbing in common.py."""
