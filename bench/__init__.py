"""Benchmarks, run from the repository root as modules (``python -m bench.extract``); see
bench/README.md."""
