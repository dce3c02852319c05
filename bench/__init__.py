"""Benchmarks: the loss benchmark (bench_kernel.py over harness.py) and the end-to-end training benchmark
(bench_e2e.py); the one GPU call that judges the kernel's targets is scripts/gpu_call.py."""
