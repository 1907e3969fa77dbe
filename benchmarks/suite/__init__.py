"""The benchmark suite behind ``python -m benchmarks``: workloads, peers, timing, memory, report."""
