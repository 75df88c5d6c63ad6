"""Benchmarks (run as scripts: ``python bench/extract.py``)."""
