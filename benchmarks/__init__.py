"""lazymat benchmarks: ``python -m benchmarks`` (see README.md) and standalone scripts."""
